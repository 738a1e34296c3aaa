/// \file topic.hpp
/// The device-bound MQTT topic `devices/{id}/messages/devicebound/{bag}` and
/// the message property bag it carries (SPEC 5.7-5.10, 9): written and read
/// here only, for the stock topic and for the extension protocol's send
/// requests and deliveries alike. The wire rules are in docs/protocol.md.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../device_id.hpp"
#include "../errors.hpp"
#include "../message.hpp"
#include "iso8601.hpp"
#include "keys.hpp"
#include "property_bag.hpp"

namespace devicebound::codec {

/// What a device-bound topic carries: the device and the message properties
/// (the payload travels as the PUBLISH body, not in the topic).
struct decoded_topic {
  std::string device_id;
  devicebound::message message;

  friend bool operator==(const decoded_topic&, const decoded_topic&) = default;
};

/// Choices for `encode_devicebound_topic`.
struct devicebound_topic_options {
  /// Also write `$.ctime` (creation time). Off by default: IoT Hub does not
  /// send it on C2D (SPEC 5.8: only application and user-settable system
  /// properties), and the Node, Python and C# device SDKs would show it to the
  /// app as an application property named `$.ctime`. Turn it on between
  /// devicebound's own ends, whose decoder maps it back to `creation_time_utc`.
  bool include_creation_time = false;
  /// Write every `.` of the bag as `%2E` (`bag_options::escape_dots`): needed
  /// when RabbitMQ is the broker, which turns `.` into `/` on the way to the
  /// device. The Azure device SDKs decode it back (docs/scale-out.md).
  bool escape_dots = false;
};

namespace detail {

inline constexpr std::string_view devicebound_topic_head = "devices/";
inline constexpr std::string_view devicebound_topic_tail = "/messages/devicebound";

constexpr bool is_devicebound_system_key(std::string_view key) noexcept {
  for (auto k : message_property_keys)
    if (k == key)
      return true;
  return false;
}

}  // namespace detail

/// `devices/{device_id}/messages/devicebound`, the topic without its bag.
inline std::string devicebound_topic_prefix(std::string_view device_id) {
  std::string s(detail::devicebound_topic_head);
  s += device_id;
  s += detail::devicebound_topic_tail;
  return s;
}

/// `devices/{device_id}/messages/devicebound/#`, what every SDK subscribes to (SPEC 5.7).
inline std::string devicebound_topic_filter(std::string_view device_id) {
  return devicebound_topic_prefix(device_id) + "/#";
}

/// Whether `topic` matches the filter `devices/{device_id}/messages/devicebound/#`
/// by MQTT rules: `#` also matches the parent level, so the topic without the
/// trailing `/` matches too.
inline bool matches_devicebound_filter(std::string_view topic, std::string_view device_id) {
  const std::size_t n = detail::devicebound_topic_head.size() + device_id.size() +
                        detail::devicebound_topic_tail.size();
  if (topic.size() < n || !topic.starts_with(detail::devicebound_topic_head))
    return false;
  std::string_view rest = topic.substr(detail::devicebound_topic_head.size());
  if (!rest.starts_with(device_id))
    return false;
  rest.remove_prefix(device_id.size());
  if (!rest.starts_with(detail::devicebound_topic_tail))
    return false;
  rest.remove_prefix(detail::devicebound_topic_tail.size());
  return rest.empty() || rest.front() == '/';
}

/// Writes the message property bag of `m` (SPEC 5.9, 9.3): each only when
/// set, `$.mid $.cid $.uid $.to $.exp $.ct $.ce` (`$.ctime` only when asked),
/// then `iothub-ack` unless the ack mode is `none`, then the application
/// properties sorted by name, leaving out one named like a system key. The
/// device-bound topic and the extension protocol's send and delivery bags are
/// all built by this.
inline void write_message_properties(bag_writer& w, const message& m,
                                     const devicebound_topic_options& options = {}) {
  const auto put = [&w](std::string_view key, const std::optional<std::string>& value) {
    if (value)
      w.add(key, *value);
  };
  put(key_message_id, m.message_id);
  put(key_correlation_id, m.correlation_id);
  put(key_user_id, m.user_id);
  put(key_to, m.to);
  if (m.expiry_time_utc)
    w.add(key_expiry, format_iso8601(*m.expiry_time_utc));
  put(key_content_type, m.content_type);
  put(key_content_encoding, m.content_encoding);
  if (options.include_creation_time && m.creation_time_utc)
    w.add(key_creation_time, format_iso8601(*m.creation_time_utc));
  // SPEC 9.3: IoT Hub sends iothub-ack only when feedback is requested.
  if (m.ack != ack_mode::none)
    w.add(key_ack, to_string(m.ack));
  for (const auto& [name, value] : m.app_properties)
    if (!detail::is_devicebound_system_key(name))
      w.add(name, value);
}

/// The topic IoT Hub publishes a C2D message on (SPEC 5.8, 9.1-9.4):
/// `devices/{device_id}/messages/devicebound/{bag}`, the `/` after
/// `devicebound` always present. The device id goes in raw: it must pass
/// `validate_device_id` (so it holds no `/ + #`). The bag holds, each only when
/// set, `$.mid $.cid $.uid $.to $.exp $.ct $.ce` (`$.ctime` only when asked),
/// then `iothub-ack` unless the ack mode is `none`, then the application
/// properties sorted by name; always `key=value` or `key=`, never a bare key.
/// Times are `YYYY-MM-DDThh:mm:ss.mmmZ` (clamped to years 0001..9999). An
/// application property named exactly like one of those system keys (which
/// `validate_app_property` refuses) is left out, so no key appears twice.
inline std::string encode_devicebound_topic(std::string_view device_id, const message& m,
                                            const devicebound_topic_options& options = {}) {
  bag_writer w(devicebound_topic_prefix(device_id) + '/', bag_options{options.escape_dots});
  write_message_properties(w, m, options);
  return std::move(w).take();
}

/// Reads a message property bag (what follows `devicebound/`), as the Azure
/// device SDKs do (SPEC 5.9, 5.10); the body is not in it:
///
/// - A leading `?` is skipped (the D-MQTT example); a `/` is refused (SDKs
///   would cut the bag there).
/// - The bag is read by `decode_unique_bag`. Known keys fill the system
///   properties: `$.mid $.cid $.uid $.ct $.ce` verbatim, `$.to` verbatim
///   (`devicebound` or `deviceBound`), `$.exp` and `$.ctime` as ISO-8601
///   times (any fraction digits, offsets allowed), `iothub-ack` with its value
///   in any case. Every other key, unknown `$.` and `iothub-` keys included, is
///   an application property under its decoded name, as the Node, Python and
///   C# SDKs pass them through.
/// - A bare `key` (the null value) is taken as absent, as the Python and C
///   SDKs skip it: a null system property stays unset, a null application
///   property is left out (`message` cannot hold a null value).
///
/// Errors are `errc::malformed`, naming the problem.
inline result<message> decode_message_properties(std::string_view bag) {
  const auto fail = [](const std::string& problem) -> result<message> {
    return make_error(errc::malformed, problem);
  };
  if (bag.find('/') != std::string_view::npos)
    return fail("the property bag holds a '/' (SDKs would cut the bag there)");
  if (bag.starts_with('?'))
    bag.remove_prefix(1);
  auto decoded = decode_unique_bag(bag);
  if (!decoded)
    return decoded.error();
  message m;
  for (const auto& p : *decoded) {
    if (!p.value)
      continue;  // null: absent (SPEC 5.10, as the Python and C SDKs do)
    const std::string& v = *p.value;
    const auto time = [&](std::optional<time_point>& field) -> std::optional<error> {
      auto t = parse_iso8601(v);
      if (!t)
        return fail(p.key + " is not a time: " + t.error().message).error();
      field = *t;
      return std::nullopt;
    };
    if (p.key == key_message_id) {
      m.message_id = v;
    } else if (p.key == key_correlation_id) {
      m.correlation_id = v;
    } else if (p.key == key_user_id) {
      m.user_id = v;
    } else if (p.key == key_to) {
      m.to = v;
    } else if (p.key == key_expiry) {
      if (auto e = time(m.expiry_time_utc))
        return *e;
    } else if (p.key == key_content_type) {
      m.content_type = v;
    } else if (p.key == key_content_encoding) {
      m.content_encoding = v;
    } else if (p.key == key_creation_time) {
      if (auto e = time(m.creation_time_utc))
        return *e;
    } else if (p.key == key_ack) {
      const auto ack = parse_ack_mode(v);
      if (!ack)
        return fail("iothub-ack is " + detail::quote_for_message(v) +
                    "; expected none, positive, negative or full (any case)");
      m.ack = *ack;
    } else {
      m.app_properties.emplace(p.key, v);
    }
  }
  return m;
}

/// Parses a device-bound topic as IoT Hub sends it and the Azure device SDKs
/// read it (SPEC 5.8-5.10):
///
/// - `devices/{id}/messages/devicebound`, optionally followed by `/` and a bag;
///   the bag may start with `?` (the D-MQTT example). `{id}` must pass
///   `validate_device_id`.
/// - The bag is read by `decode_message_properties`.
///
/// Rejected with `errc::malformed`, the message naming the problem: a topic not
/// of that shape (wrong prefix, a `/` inside the bag, a bad device id), a bad
/// percent escape, invalid UTF-8 once decoded, an empty key, a key that appears
/// twice, a `$.exp`/`$.ctime` that is not an ISO-8601 time, an `iothub-ack`
/// that is not `none`/`positive`/`negative`/`full`.
inline result<decoded_topic> decode_devicebound_topic(std::string_view topic) {
  const auto fail = [&](const std::string& problem) -> result<decoded_topic> {
    return make_error(errc::malformed,
                      "device-bound topic " + detail::quote_for_message(topic) + ": " + problem);
  };
  if (!topic.starts_with(detail::devicebound_topic_head))
    return fail("does not start with 'devices/'");
  std::string_view rest = topic.substr(detail::devicebound_topic_head.size());
  const std::size_t slash = rest.find('/');
  if (slash == std::string_view::npos)
    return fail("has no '/messages/devicebound' after the device id");
  decoded_topic out;
  out.device_id = std::string(rest.substr(0, slash));
  if (auto r = validate_device_id(out.device_id); !r)
    return fail(r.error().message);
  rest.remove_prefix(slash);
  if (!rest.starts_with(detail::devicebound_topic_tail))
    return fail("expected '/messages/devicebound' after the device id");
  rest.remove_prefix(detail::devicebound_topic_tail.size());
  if (!rest.empty() && rest.front() != '/')
    return fail("expected '/' or the end after 'devicebound'");
  if (!rest.empty())
    rest.remove_prefix(1);
  auto m = decode_message_properties(rest);
  if (!m)
    return fail(m.error().message);
  out.message = std::move(*m);
  return out;
}

}  // namespace devicebound::codec
