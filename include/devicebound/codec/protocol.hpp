/// \file protocol.hpp
/// devicebound's MQTT extension protocol (docs/protocol.md, "Extension
/// topics"): the topics, the request/reply convention and the bags of sends,
/// deliveries, feedback and replies. Sans-I/O: text in, values out. Shared by
/// the MQTT transport (transport/mqtt/) and the daemon's MQTT front door.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "../device_id.hpp"
#include "../errors.hpp"
#include "../feedback_batch.hpp"
#include "../message.hpp"
#include "feedback_json.hpp"
#include "iso8601.hpp"
#include "keys.hpp"
#include "property_bag.hpp"
#include "topic.hpp"

namespace devicebound::codec::protocol {

// The one writer, the one reader and the key table are the codec's; a protocol
// user finds them here too (`protocol::bag_writer`, `protocol::key_request_id`).
using codec::bag_writer;
using codec::decode_unique_bag;
using codec::find;
using codec::property_bag;
using namespace codec::keys;

/// Who talks to the hub: the second level of every extension topic.
enum class party : std::uint8_t { service, device, admin };

constexpr std::string_view to_string(party p) noexcept {
  switch (p) {
    case party::service:
      return "service";
    case party::device:
      return "device";
    case party::admin:
      return "admin";
  }
  return "service";
}

constexpr std::optional<party> parse_party(std::string_view s) noexcept {
  for (auto p : {party::service, party::device, party::admin})
    if (s == to_string(p))
      return p;
  return std::nullopt;
}

/// What the hub subscribes to: requests, and the broker plugin's events.
inline constexpr std::string_view hub_requests_filter = "devicebound/hub/#";
inline constexpr std::string_view broker_events_filter = "devicebound/broker/#";
inline constexpr std::string_view hub_requests_prefix = "devicebound/hub/";
inline constexpr std::string_view broker_events_prefix = "devicebound/broker/";
/// Retained `online` / `offline` (the hub's will).
inline constexpr std::string_view hub_status_topic = "devicebound/status/hub";

// Operations (the level after the client id).
inline constexpr std::string_view op_send = "send";
inline constexpr std::string_view op_purge = "purge";
inline constexpr std::string_view op_depth = "depth";
inline constexpr std::string_view op_attach = "attach";
inline constexpr std::string_view op_detach = "detach";
inline constexpr std::string_view op_feedback_complete = "feedback-complete";
inline constexpr std::string_view op_feedback_abandon = "feedback-abandon";
inline constexpr std::string_view op_complete = "complete";
inline constexpr std::string_view op_reject = "reject";
inline constexpr std::string_view op_abandon = "abandon";
inline constexpr std::string_view op_add = "add";
inline constexpr std::string_view op_remove = "remove";
inline constexpr std::string_view op_ping = "ping";

// Levels of what the hub publishes to a client.
inline constexpr std::string_view push_reply = "reply";
inline constexpr std::string_view push_message = "message";
inline constexpr std::string_view push_feedback = "feedback";

/// `devicebound/hub/{party}/{id}/{op}/` or `.../{op}/{target}/`: a request
/// topic without its bag.
inline std::string request_head(party p, std::string_view id, std::string_view op,
                                std::string_view target = {}) {
  std::string s(hub_requests_prefix);
  s += to_string(p);
  s += '/';
  s += id;
  s += '/';
  s += op;
  s += '/';
  if (!target.empty()) {
    s += target;
    s += '/';
  }
  return s;
}

/// `devicebound/{party}/{id}/`: the root of what the hub publishes to one client.
inline std::string client_root(party p, std::string_view id) {
  std::string s = "devicebound/";
  s += to_string(p);
  s += '/';
  s += id;
  s += '/';
  return s;
}

/// `devicebound/{party}/{id}/#`: what a client subscribes to.
inline std::string client_filter(party p, std::string_view id) {
  return client_root(p, id) + "#";
}

/// `devicebound/{party}/{id}/{level}/`: a push topic without its bag.
inline std::string push_head(party p, std::string_view id, std::string_view level) {
  std::string s = client_root(p, id);
  s += level;
  s += '/';
  return s;
}

/// A request as the hub reads it: `devicebound/hub/{party}/{id}/{op}[/{target}]/{bag}`.
struct request_topic {
  party from = party::service;
  std::string_view id;
  std::string_view op;
  std::string_view target;  ///< empty when the operation has none
  std::string_view bag;     ///< still encoded
};

/// Splits a request topic; `errc::malformed` names what is wrong. The views
/// point into `topic`.
inline result<request_topic> parse_request_topic(std::string_view topic) {
  const auto fail = [&](std::string what) -> result<request_topic> {
    return make_error(errc::malformed,
                      "request topic " + detail::quote_for_message(topic) + ": " + what);
  };
  if (!topic.starts_with(hub_requests_prefix))
    return fail("does not start with 'devicebound/hub/'");
  std::string_view rest = topic.substr(hub_requests_prefix.size());
  std::vector<std::string_view> levels;
  for (;;) {
    const auto slash = rest.find('/');
    if (slash == std::string_view::npos) {
      levels.push_back(rest);
      break;
    }
    levels.push_back(rest.substr(0, slash));
    rest.remove_prefix(slash + 1);
  }
  // party, id, op, [target,] bag
  if (levels.size() != 4 && levels.size() != 5)
    return fail("expected {party}/{id}/{op}/[{target}/]{bag} after 'devicebound/hub/'");
  request_topic r;
  const auto p = parse_party(levels[0]);
  if (!p)
    return fail("unknown party " + detail::quote_for_message(levels[0]) +
                " (expected service, device or admin)");
  r.from = *p;
  r.id = levels[1];
  if (auto v = validate_device_id(r.id); !v)
    return fail("client id: " + v.error().message);
  r.op = levels[2];
  if (r.op.empty())
    return fail("empty operation");
  if (levels.size() == 5) {
    r.target = levels[3];
    if (auto v = validate_device_id(r.target); !v)
      return fail("target device id: " + v.error().message);
  }
  r.bag = levels.back();
  return r;
}

/// Removes `key` from application properties and returns its value.
inline std::optional<std::string> take(properties& props, std::string_view key) {
  auto it = props.find(key);
  if (it == props.end())
    return std::nullopt;
  std::string v = std::move(it->second);
  props.erase(it);
  return v;
}

/// Parses a decimal unsigned integer (digits only, no sign, no spaces).
template <class T>
std::optional<T> parse_unsigned(std::string_view s) {
  T v{};
  if (s.empty())
    return std::nullopt;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size())
    return std::nullopt;
  return v;
}

/// The error code a reply's `$.code` names; unknown numbers read as 500001.
inline errc errc_from_number(std::uint32_t n) {
  for (errc e : {errc::argument_invalid, errc::iothub_quota_exceeded,
                 errc::device_maximum_queue_depth_exceeded, errc::device_not_found,
                 errc::device_already_exists, errc::precondition_failed,
                 errc::device_message_lock_lost, errc::message_too_large, errc::throttling,
                 errc::server_error, errc::server_busy, errc::not_connected, errc::timeout,
                 errc::not_supported, errc::invalid_operation, errc::unauthorized, errc::malformed})
    if (static_cast<std::uint32_t>(e) == n)
      return e;
  return errc::server_error;
}

/// A send request: `devicebound/hub/service/{sid}/send/{deviceId}/{bag}`; the
/// bag is the message's property bag (`write_message_properties`, `$.ctime`
/// included); the payload is the body. `$.rid` is added by the requester.
inline bag_writer send_request(std::string_view service_id, std::string_view device_id,
                               const message& m) {
  bag_writer w(request_head(party::service, service_id, op_send, device_id));
  write_message_properties(w, m, {true});
  return w;
}

/// Reads the bag of a send request to `device_id` back into a message (the
/// body is the payload): the device-bound bag rules
/// (`decode_message_properties`), then `$.rid` removed. Returns the request id
/// separately (empty when absent).
inline result<std::pair<message, std::string>> decode_send_bag(std::string_view device_id,
                                                               std::string_view bag) {
  if (auto v = validate_device_id(device_id); !v)
    return make_error(errc::malformed, "send request: " + v.error().message);
  auto m = decode_message_properties(bag);
  if (!m)
    return make_error(errc::malformed, "send request: " + m.error().message);
  auto rid = take(m->app_properties, key_request_id);
  return std::pair<message, std::string>(std::move(*m), rid.value_or(std::string()));
}

/// An extended delivery: `devicebound/device/{id}/message/{bag}`, the bag being
/// the message's property bag (`$.ctime` included) and then `$.seq`, `$.enq`,
/// `$.dc`, `$.lock` and `$.conn` (the connection id of the attach it answers).
/// The payload is the body.
inline std::string device_message_topic(std::string_view device_id, const message& m,
                                        std::string_view connection) {
  bag_writer w(push_head(party::device, device_id, push_message));
  write_message_properties(w, m, {true});
  w.add(key_sequence_number, m.sequence_number);
  if (m.enqueued_time_utc)
    w.add(key_enqueued_time, format_iso8601(*m.enqueued_time_utc));
  w.add(key_delivery_count, std::uint64_t{m.delivery_count});
  if (m.lock_token)
    w.add(key_lock_token, m.lock_token->to_string());
  w.add(key_connection, connection);
  return std::move(w).take();
}

/// Reads an extended delivery's bag (see `device_message_topic`); `connection`
/// receives `$.conn` ("" when absent).
inline result<message> decode_device_message(std::string_view bag, std::string body,
                                             std::string* connection = nullptr) {
  auto d = decode_message_properties(bag);
  if (!d)
    return make_error(errc::malformed, "delivery: " + d.error().message);
  message m = std::move(*d);
  auto& props = m.app_properties;
  const auto seq = take(props, key_sequence_number);
  const auto enq = take(props, key_enqueued_time);
  const auto dc = take(props, key_delivery_count);
  const auto lock = take(props, key_lock_token);
  auto conn = take(props, key_connection);
  if (connection)
    *connection = conn.value_or(std::string());
  if (!seq || !dc || !lock)
    return make_error(errc::malformed, "delivery without $.seq, $.dc or $.lock");
  const auto s = parse_unsigned<std::uint64_t>(*seq);
  const auto c = parse_unsigned<std::uint32_t>(*dc);
  const auto t = lock_token::parse(*lock);
  if (!s || !c || !t)
    return make_error(errc::malformed, "delivery with a bad $.seq, $.dc or $.lock");
  m.sequence_number = *s;
  m.delivery_count = *c;
  m.lock_token = *t;
  if (enq) {
    auto e = parse_iso8601(*enq);
    if (!e)
      return e.error();
    m.enqueued_time_utc = *e;
  }
  m.body = std::move(body);
  return m;
}

/// A feedback push: `devicebound/service/{sid}/feedback/{bag}` with `$.lock`,
/// `$.dc`, `$.enq`, `$.uid`, `$.ct`, `$.conn`; the payload is the feedback JSON
/// (SPEC 4.5).
inline std::string feedback_topic(std::string_view service_id, const feedback_batch& b,
                                  std::string_view connection) {
  return bag_writer(push_head(party::service, service_id, push_feedback))
      .add(key_lock_token, b.lock_token.to_string())
      .add(key_delivery_count, std::uint64_t{b.delivery_count})
      .add(key_enqueued_time, format_iso8601(b.enqueued_time_utc))
      .add(key_user_id, b.user_id)
      .add(key_content_type, feedback_content_type)
      .add(key_connection, connection)
      .str();
}

/// Reads a feedback push (see `feedback_topic`); `connection` receives `$.conn`.
inline result<feedback_batch> decode_feedback(std::string_view bag, std::string_view body,
                                              std::string* connection = nullptr) {
  auto b = decode_unique_bag(bag);
  if (!b)
    return b.error();
  const std::string* lock = find(*b, key_lock_token);
  const std::string* dc = find(*b, key_delivery_count);
  const std::string* enq = find(*b, key_enqueued_time);
  const std::string* uid = find(*b, key_user_id);
  if (connection) {
    const std::string* conn = find(*b, key_connection);
    *connection = conn ? *conn : std::string();
  }
  feedback_batch out;
  const auto t = lock ? lock_token::parse(*lock) : std::nullopt;
  if (!t)
    return make_error(errc::malformed, "feedback without a valid $.lock");
  out.lock_token = *t;
  if (dc) {
    const auto c = parse_unsigned<std::uint32_t>(*dc);
    if (!c)
      return make_error(errc::malformed, "feedback with a bad $.dc");
    out.delivery_count = *c;
  }
  if (enq) {
    auto e = parse_iso8601(*enq);
    if (!e)
      return e.error();
    out.enqueued_time_utc = *e;
  }
  if (uid)
    out.user_id = *uid;
  auto records = decode_feedback_json(body);
  if (!records)
    return records.error();
  out.records = std::move(*records);
  return out;
}

/// An attach: `devicebound/hub/{party}/{id}/attach/` with `$.conn` (the
/// connection id) and `$.max` (how many locked messages or batches the hub may
/// push before one is settled). `$.rid` is added by the requester.
inline bag_writer attach_request(party p, std::string_view id, std::string_view connection,
                                 std::uint32_t window) {
  bag_writer w(request_head(p, id, op_attach));
  w.add(key_connection, connection).add(key_window, std::uint64_t{window});
  return w;
}

/// A detach, `devicebound/hub/{party}/{id}/detach/$.conn={connection}`: a
/// client's goodbye, and its will.
inline std::string detach_topic(party p, std::string_view id, std::string_view connection) {
  bag_writer w(request_head(p, id, op_detach));
  w.add(key_connection, connection);
  return std::move(w).take();
}

/// A settlement, `devicebound/hub/{party}/{id}/{op}/` with `$.lock`: a device's
/// complete, reject or abandon, a back end's feedback-complete or -abandon.
inline bag_writer settle_request(party p, std::string_view id, std::string_view op,
                                 const lock_token& token) {
  bag_writer w(request_head(p, id, op));
  w.add(key_lock_token, token.to_string());
  return w;
}

/// A reply: `devicebound/{party}/{id}/reply/{bag}` with `$.rid`, `$.code` (0 or
/// a six-digit code), `$.error` on failure, then the operation's results.
inline bag_writer reply_writer(party p, std::string_view id, std::string_view request_id,
                               const error* e = nullptr) {
  bag_writer w(push_head(p, id, push_reply));
  if (!request_id.empty())
    w.add(key_request_id, request_id);
  if (e) {
    w.add(key_code, std::uint64_t{e->numeric()});
    w.add(key_error, e->message);
  } else {
    w.add(key_code, std::string_view("0"));
  }
  return w;
}

/// The outcome a reply bag carries: the bag itself on `$.code=0`, else the error.
inline result<property_bag> reply_result(property_bag bag) {
  const std::string* code = find(bag, key_code);
  if (!code)
    return make_error(errc::malformed, "reply without $.code");
  const auto n = parse_unsigned<std::uint32_t>(*code);
  if (!n)
    return make_error(errc::malformed, "reply with a bad $.code");
  if (*n == 0)
    return bag;
  const std::string* text = find(bag, key_error);
  return make_error(errc_from_number(*n),
                    text ? *text : std::string("the hub refused the request"));
}

}  // namespace devicebound::codec::protocol
