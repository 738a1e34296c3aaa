/// \file topic.hpp
/// The device-bound MQTT topic `devices/{id}/messages/devicebound/{bag}` and
/// its property bag (SPEC 5.7-5.10, 9). The wire rules are in docs/protocol.md.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../message.hpp"
#include "../validate.hpp"
#include "iso8601.hpp"

namespace devicebound::codec {

namespace detail {

/// Length of the well-formed UTF-8 sequence starting at `s[i]` (Unicode
/// Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF), or 0.
constexpr std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
  const auto byte = [&](std::size_t k) {
    return static_cast<unsigned char>(s[k]);
  };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80)
    return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0)
      lo = 0xA0;
    if (b0 == 0xED)
      hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0)
      lo = 0x90;
    if (b0 == 0xF4)
      hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n)
    return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi)
    return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF)
      return 0;
  return n;
}

/// Offset of the first byte that is not well-formed UTF-8, or npos.
constexpr std::size_t first_invalid_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence_length(s, i);
    if (n == 0)
      return i;
    i += n;
  }
  return std::string_view::npos;
}

/// RFC 3986 unreserved: the only bytes a bag carries unescaped (SPEC 9.2).
constexpr bool is_unreserved(unsigned char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

constexpr int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

inline void append_escaped(std::string& out, unsigned char c) {
  static constexpr char hex[] = "0123456789ABCDEF";
  out += '%';
  out += hex[c >> 4];
  out += hex[c & 0xF];
}

}  // namespace detail

/// Appends `s` percent-encoded: RFC 3986 unreserved bytes as they are, every
/// other byte as `%XX` (uppercase hex), so space is `%20` and `$` is `%24`
/// (SPEC 9.2). Bytes that are not well-formed UTF-8 are written as U+FFFD
/// (`%EF%BF%BD`), one per byte: a Node device decodes with
/// `decodeURIComponent`, which throws on them (a poison message).
inline void append_percent_encoded(std::string& out, std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = detail::utf8_sequence_length(s, i);
    if (n == 0) {
      out += "%EF%BF%BD";
      ++i;
      continue;
    }
    for (std::size_t k = 0; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if (detail::is_unreserved(c))
        out += static_cast<char>(c);
      else
        detail::append_escaped(out, c);
    }
    i += n;
  }
}

/// `s` percent-encoded as by `append_percent_encoded`.
inline std::string percent_encode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_percent_encoded(out, s);
  return out;
}

/// Decodes `%XX` (either case) and takes every other byte literally (`+` stays
/// `+`, as `decodeURIComponent` and Python's `unquote` do). The result must be
/// well-formed UTF-8. Errors (`errc::malformed`) name the problem and its byte
/// offset in `s`.
inline result<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    const int hi = i + 1 < s.size() ? detail::hex_value(s[i + 1]) : -1;
    const int lo = i + 2 < s.size() ? detail::hex_value(s[i + 2]) : -1;
    if (hi < 0 || lo < 0)
      return make_error(errc::malformed,
                        "bad percent escape " + detail::quote_for_message(s.substr(i, 3)) +
                            " at byte " + std::to_string(i) + " of " +
                            detail::quote_for_message(s) + " (expected '%' and two hex digits)");
    out += static_cast<char>(hi << 4 | lo);
    i += 2;
  }
  if (const auto bad = detail::first_invalid_utf8(out); bad != std::string::npos)
    return make_error(errc::malformed, detail::quote_for_message(s) +
                                           " is not valid UTF-8 once decoded (byte " +
                                           std::to_string(bad) + " of the decoded text)");
  return out;
}

/// One entry of a property bag. No value is the null form, a bare `key` on
/// the wire (SPEC 5.9); an empty value is `key=`.
struct bag_property {
  std::string key;
  std::optional<std::string> value;

  friend bool operator==(const bag_property&, const bag_property&) = default;
};

/// A property bag in wire order, duplicates kept: what the text says, no more.
using property_bag = std::vector<bag_property>;

/// `k1=v1&k2=v2...` with every key and value percent-encoded (SPEC 5.9, 9.2).
/// A null value is written as the bare key. Keys should be non-empty:
/// `decode_property_bag` refuses an empty key and drops an empty null entry.
inline std::string encode_property_bag(const property_bag& bag) {
  std::string out;
  for (std::size_t i = 0; i < bag.size(); ++i) {
    const bag_property& p = bag[i];
    if (i != 0)
      out += '&';
    append_percent_encoded(out, p.key);
    if (p.value) {
      out += '=';
      append_percent_encoded(out, *p.value);
    }
  }
  return out;
}

/// Parses `k1=v1&k2&k3=...` (SPEC 5.9): entries split at `&`, each at its
/// first `=` (a later `=` belongs to the value); no `=` gives a null value;
/// keys and values percent-decoded by `percent_decode`. Empty entries (`a&&b`,
/// a trailing `&`) are skipped, as URL query parsers do. A leading `?` is not
/// special here; the topic decoders strip it. Rejected (`errc::malformed`): a
/// bad escape, invalid UTF-8 once decoded, an empty key (`=v`).
inline result<property_bag> decode_property_bag(std::string_view bag) {
  property_bag out;
  std::size_t start = 0;
  while (start <= bag.size()) {
    std::size_t end = bag.find('&', start);
    if (end == std::string_view::npos)
      end = bag.size();
    const std::string_view entry = bag.substr(start, end - start);
    if (!entry.empty()) {
      const std::size_t eq = entry.find('=');
      const std::string_view raw_key = entry.substr(0, eq);
      if (raw_key.empty())
        return make_error(errc::malformed, "property bag entry " +
                                               detail::quote_for_message(entry) + " at byte " +
                                               std::to_string(start) + " has an empty key");
      auto key = percent_decode(raw_key);
      if (!key)
        return make_error(errc::malformed, "property bag key at byte " + std::to_string(start) +
                                               ": " + key.error().message);
      bag_property p{std::move(*key), std::nullopt};
      if (eq != std::string_view::npos) {
        auto value = percent_decode(entry.substr(eq + 1));
        if (!value)
          return make_error(errc::malformed, "property bag value of " +
                                                 detail::quote_for_message(p.key) + ": " +
                                                 value.error().message);
        p.value = std::move(*value);
      }
      out.push_back(std::move(p));
    }
    start = end + 1;
  }
  return out;
}

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
};

namespace detail {

inline constexpr std::string_view devicebound_topic_head = "devices/";
inline constexpr std::string_view devicebound_topic_tail = "/messages/devicebound";

// System keys in the order the encoder writes them (SPEC 3.1, 5.9).
inline constexpr std::string_view key_message_id = "$.mid";
inline constexpr std::string_view key_correlation_id = "$.cid";
inline constexpr std::string_view key_user_id = "$.uid";
inline constexpr std::string_view key_to = "$.to";
inline constexpr std::string_view key_expiry = "$.exp";
inline constexpr std::string_view key_content_type = "$.ct";
inline constexpr std::string_view key_content_encoding = "$.ce";
inline constexpr std::string_view key_creation_time = "$.ctime";
inline constexpr std::string_view key_ack = "iothub-ack";

inline constexpr std::array<std::string_view, 9> devicebound_system_keys = {
    key_message_id,   key_correlation_id,   key_user_id,       key_to, key_expiry,
    key_content_type, key_content_encoding, key_creation_time, key_ack};

constexpr bool is_devicebound_system_key(std::string_view key) noexcept {
  for (auto k : devicebound_system_keys)
    if (k == key)
      return true;
  return false;
}

inline void append_bag_pair(std::string& out, std::string_view key, std::string_view value) {
  if (out.back() != '/')
    out += '&';
  append_percent_encoded(out, key);
  out += '=';
  append_percent_encoded(out, value);
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
  std::string out = devicebound_topic_prefix(device_id);
  out += '/';
  const auto put = [&out](std::string_view key, const std::optional<std::string>& value) {
    if (value)
      detail::append_bag_pair(out, key, *value);
  };
  put(detail::key_message_id, m.message_id);
  put(detail::key_correlation_id, m.correlation_id);
  put(detail::key_user_id, m.user_id);
  put(detail::key_to, m.to);
  if (m.expiry_time_utc)
    detail::append_bag_pair(out, detail::key_expiry, format_iso8601(*m.expiry_time_utc));
  put(detail::key_content_type, m.content_type);
  put(detail::key_content_encoding, m.content_encoding);
  if (options.include_creation_time && m.creation_time_utc)
    detail::append_bag_pair(out, detail::key_creation_time, format_iso8601(*m.creation_time_utc));
  // SPEC 9.3: IoT Hub sends iothub-ack only when feedback is requested.
  if (m.ack != ack_mode::none)
    detail::append_bag_pair(out, detail::key_ack, to_string(m.ack));
  for (const auto& [name, value] : m.app_properties)
    if (!detail::is_devicebound_system_key(name))
      detail::append_bag_pair(out, name, value);
  return out;
}

/// Parses a device-bound topic as IoT Hub sends it and the Azure device SDKs
/// read it (SPEC 5.8-5.10):
///
/// - `devices/{id}/messages/devicebound`, optionally followed by `/` and a bag;
///   the bag may start with `?` (the D-MQTT example). `{id}` must pass
///   `validate_device_id`.
/// - The bag is read by `decode_property_bag`. Known keys fill the system
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
  if (rest.find('/') != std::string_view::npos)
    return fail("the property bag holds a '/' (SDKs would cut the bag there)");
  if (rest.starts_with('?'))
    rest.remove_prefix(1);

  auto bag = decode_property_bag(rest);
  if (!bag)
    return fail(bag.error().message);

  std::set<std::string_view> seen;
  message& m = out.message;
  for (const auto& p : *bag) {
    if (!seen.insert(p.key).second)
      return fail("key " + detail::quote_for_message(p.key) + " appears more than once");
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
    if (p.key == detail::key_message_id) {
      m.message_id = v;
    } else if (p.key == detail::key_correlation_id) {
      m.correlation_id = v;
    } else if (p.key == detail::key_user_id) {
      m.user_id = v;
    } else if (p.key == detail::key_to) {
      m.to = v;
    } else if (p.key == detail::key_expiry) {
      if (auto e = time(m.expiry_time_utc))
        return *e;
    } else if (p.key == detail::key_content_type) {
      m.content_type = v;
    } else if (p.key == detail::key_content_encoding) {
      m.content_encoding = v;
    } else if (p.key == detail::key_creation_time) {
      if (auto e = time(m.creation_time_utc))
        return *e;
    } else if (p.key == detail::key_ack) {
      const auto ack = parse_ack_mode(v);
      if (!ack)
        return fail("iothub-ack is " + detail::quote_for_message(v) +
                    "; expected none, positive, negative or full (any case)");
      m.ack = *ack;
    } else {
      m.app_properties.emplace(p.key, v);
    }
  }
  return out;
}

}  // namespace devicebound::codec
