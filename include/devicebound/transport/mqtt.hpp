/// \file transport/mqtt.hpp
/// Device and service transports over MQTT 3.1.1 (Eclipse Paho MQTT C, async
/// API; link `paho-mqtt3as`), talking to `devicebound-hub` through a broker.
///
/// - `device_connection<device_mode::extended>`: devicebound's own device side
///   over the extension topics: complete, reject and abandon with lock tokens.
/// - `device_connection<device_mode::iothub>`: what a stock Azure IoT device
///   SDK does: subscribe to `devices/{id}/messages/devicebound/#` and take every
///   PUBLISH; a PUBACK goes out on receipt, so the device can only complete
///   (SPEC 1.6, 5.11) and `reject`/`abandon` do not compile.
/// - `service_connection`: send, purge, queue depth and delivery feedback.
///
/// The wire protocol (topics, property-bag keys, request/reply) is written down
/// in docs/protocol.md; `protocol::` below is its single implementation, shared
/// with the daemon (apps/devicebound-hub.cpp).
///
/// Every operation is thread-safe. A lost connection makes `is_open()` false and
/// fails the operations waiting on it with `not_connected`; the clients' retry
/// machine then calls `open()` again, which reconnects and resubscribes.
///
/// Extended devices and back ends also follow the hub's retained status
/// (`devicebound/status/hub`): each `online` (the daemon started again, or
/// reconnected to the broker) makes the next receive attach again, because a
/// restarted daemon does not know who was attached.
///
/// Latency: Paho never sets TCP_NODELAY, and with Nagle's algorithm a QoS 1
/// round trip on loopback takes ~88 ms instead of ~0.2 ms. After every CONNACK
/// the session sets TCP_NODELAY on this process's TCP sockets connected to the
/// broker's address (`detail::set_tcp_nodelay_to`), so no interposition or
/// extra library is needed. The broker side needs `set_tcp_nodelay true`
/// (mosquitto).
///
/// Paho 1.3.11-1.3.12 (Debian 12): in a process that already has a connected
/// client, a new connection takes one to two seconds to complete, because
/// Paho's receive thread polls the old sockets for up to a second before it
/// looks at the new one (eclipse-paho/paho.mqtt.c#1430, fixed in 1.3.14).
/// Reconnects after a broker restart pay it too; steady traffic does not.
#pragma once

#include <MQTTAsync.h>
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../clock.hpp"
#include "../codec/feedback_json.hpp"
#include "../codec/iso8601.hpp"
#include "../codec/topic.hpp"
#include "../errors.hpp"
#include "../feedback.hpp"
#include "../hub.hpp"
#include "../message.hpp"
#include "../token_source.hpp"
#include "../transport.hpp"
#include "../validate.hpp"

namespace devicebound::mqtt {

using namespace std::chrono_literals;

/// TLS settings (Paho's `MQTTAsync_SSLOptions`). Setting them switches to `ssl://`.
struct tls_options {
  std::string ca_file;        ///< PEM file of trusted CA certificates
  std::string ca_path;        ///< directory of trusted CA certificates
  std::string cert_file;      ///< PEM client certificate chain (mutual TLS)
  std::string key_file;       ///< PEM private key, if not in `cert_file`
  std::string key_password;   ///< password of an encrypted key
  bool verify_server = true;  ///< check the server certificate and host name
};

/// How to reach the broker, and the transport's own knobs.
struct connection_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 1883;
  std::optional<tls_options> tls;
  /// MQTT client id. Devices: empty means the device id (SPEC 5.5). Services:
  /// empty means `devicebound-service-` and 16 random hex digits. It names the
  /// client in the extension topics, so it must be a valid device id (no `/ + #`).
  std::string client_id;
  std::optional<std::string> username;
  std::optional<std::string> password;
  duration keep_alive = std::chrono::seconds(60);
  duration connect_timeout = std::chrono::seconds(10);
  /// How long a request (send, settle, purge, ...) waits for the hub's reply
  /// before it fails with 408001 `timeout`.
  duration request_timeout = std::chrono::seconds(30);
  /// How long one attach (a receive's "I am here") waits for its answer before
  /// it is sent again: the hub may be reconnecting to the broker.
  duration attach_retry = std::chrono::seconds(2);
  /// Extended devices and feedback: how many locked messages (batches) the hub
  /// may push before this side settles one (the hub caps it).
  std::uint32_t prefetch = 4;
  /// CleanSession. Unset: false for devices (as the SDKs, SPEC 5.5), true for services.
  std::optional<bool> clean_session;
  /// Paho's command queue bound (`maxBufferedMessages`): its default, 100,
  /// fails quick bursts with -12 even while connected.
  int max_buffered_messages = 1 << 20;
};

// =============================================================================================
// The wire protocol (docs/protocol.md, "Extension topics")
// =============================================================================================

namespace protocol {

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

// Property-bag keys of the extension topics. `$.` keys never clash with
// application properties (SPEC 3.3 forbids names starting with `$.`).
inline constexpr std::string_view key_request_id = "$.rid";
inline constexpr std::string_view key_code = "$.code";
inline constexpr std::string_view key_error = "$.error";
inline constexpr std::string_view key_lock_token = "$.lock";
inline constexpr std::string_view key_sequence_number = "$.seq";
inline constexpr std::string_view key_enqueued_time = "$.enq";
inline constexpr std::string_view key_delivery_count = "$.dc";
inline constexpr std::string_view key_expiry = "$.exp";
inline constexpr std::string_view key_user_id = "$.uid";
inline constexpr std::string_view key_content_type = "$.ct";
inline constexpr std::string_view key_connection = "$.conn";
inline constexpr std::string_view key_window = "$.max";
inline constexpr std::string_view key_count = "$.count";
inline constexpr std::string_view key_depth = "$.depth";
inline constexpr std::string_view key_generation_id = "$.gen";

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

/// Appends `key=value` pairs, percent-encoded (SPEC 9.2), to a topic whose bag
/// starts at the current end.
class bag_writer {
 public:
  explicit bag_writer(std::string head) : out_(std::move(head)), start_(out_.size()) {}

  bag_writer& add(std::string_view key, std::string_view value) {
    if (out_.size() != start_)
      out_ += '&';
    codec::append_percent_encoded(out_, key);
    out_ += '=';
    codec::append_percent_encoded(out_, value);
    return *this;
  }
  bag_writer& add(std::string_view key, std::uint64_t value) {
    return add(key, std::string_view(std::to_string(value)));
  }
  /// Appends an already encoded bag (`k=v&...`).
  bag_writer& add_encoded(std::string_view bag) {
    if (bag.empty())
      return *this;
    if (out_.size() != start_)
      out_ += '&';
    out_ += bag;
    return *this;
  }
  const std::string& str() const noexcept { return out_; }
  std::string take() && { return std::move(out_); }

 private:
  std::string out_;
  std::size_t start_;
};

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
                      "request topic " + codec::detail::quote_for_message(topic) + ": " + what);
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
    return fail("unknown party " + codec::detail::quote_for_message(levels[0]) +
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

/// A decoded bag with unique keys; `errc::malformed` on a duplicate key.
inline result<codec::property_bag> decode_unique_bag(std::string_view bag) {
  auto b = codec::decode_property_bag(bag);
  if (!b)
    return b.error();
  std::set<std::string_view> seen;
  for (const auto& p : *b)
    if (!seen.insert(p.key).second)
      return make_error(errc::malformed,
                        "key " + codec::detail::quote_for_message(p.key) + " appears twice");
  return b;
}

/// The value of `key`, or nullptr when it is absent or null.
inline const std::string* find(const codec::property_bag& bag, std::string_view key) {
  for (const auto& p : bag)
    if (p.key == key)
      return p.value ? &*p.value : nullptr;
  return nullptr;
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

/// The device-bound bag of `m` (SPEC 5.9), `$.ctime` included: what a send
/// request and an extended delivery carry before their own keys.
inline std::string_view bag_of(const std::string& devicebound_topic, std::string_view device_id) {
  return std::string_view(devicebound_topic)
      .substr(codec::devicebound_topic_prefix(device_id).size() + 1);
}

/// A send request: `devicebound/hub/service/{sid}/send/{deviceId}/{bag}`; the
/// bag is the message's device-bound bag (`$.ctime` included); the payload is
/// the body. `$.rid` is appended by the requester.
inline std::string send_request_topic(std::string_view service_id, std::string_view device_id,
                                      const message& m) {
  const std::string t = codec::encode_devicebound_topic(device_id, m, {true});
  return bag_writer(request_head(party::service, service_id, op_send, device_id))
      .add_encoded(bag_of(t, device_id))
      .str();
}

/// Reads a send request's bag back into a message (the body is the payload):
/// the device-bound topic rules, then `$.rid` removed. Returns the request id
/// separately (empty when absent).
inline result<std::pair<message, std::string>> decode_send_bag(std::string_view device_id,
                                                               std::string_view bag) {
  std::string topic = codec::devicebound_topic_prefix(device_id);
  topic += '/';
  topic += bag;
  auto d = codec::decode_devicebound_topic(topic);
  if (!d)
    return d.error();
  auto rid = take(d->message.app_properties, key_request_id);
  return std::pair<message, std::string>(std::move(d->message), rid.value_or(std::string()));
}

/// An extended delivery: `devicebound/device/{id}/message/{bag}`, the bag being
/// the device-bound bag (`$.ctime` included) and then `$.seq`, `$.enq`, `$.dc`,
/// `$.lock` and `$.conn` (the connection id of the attach it answers). The
/// payload is the body.
inline std::string device_message_topic(std::string_view device_id, const message& m,
                                        std::string_view connection) {
  const std::string t = codec::encode_devicebound_topic(device_id, m, {true});
  bag_writer w(push_head(party::device, device_id, push_message));
  w.add_encoded(bag_of(t, device_id));
  w.add(key_sequence_number, m.sequence_number);
  if (m.enqueued_time_utc)
    w.add(key_enqueued_time, codec::format_iso8601(*m.enqueued_time_utc));
  w.add(key_delivery_count, std::uint64_t{m.delivery_count});
  if (m.lock_token)
    w.add(key_lock_token, m.lock_token->to_string());
  w.add(key_connection, connection);
  return std::move(w).take();
}

/// Reads an extended delivery's bag (see `device_message_topic`); `connection`
/// receives `$.conn` ("" when absent).
inline result<message> decode_device_message(std::string_view device_id, std::string_view bag,
                                             std::string body, std::string* connection = nullptr) {
  std::string topic = codec::devicebound_topic_prefix(device_id);
  topic += '/';
  topic += bag;
  auto d = codec::decode_devicebound_topic(topic);
  if (!d)
    return d.error();
  message m = std::move(d->message);
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
    auto e = codec::parse_iso8601(*enq);
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
      .add(key_enqueued_time, codec::format_iso8601(b.enqueued_time_utc))
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
    auto e = codec::parse_iso8601(*enq);
    if (!e)
      return e.error();
    out.enqueued_time_utc = *e;
  }
  if (uid)
    out.user_id = *uid;
  auto records = codec::decode_feedback_json(body);
  if (!records)
    return records.error();
  out.records = std::move(*records);
  return out;
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
inline result<codec::property_bag> reply_result(codec::property_bag bag) {
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

}  // namespace protocol

// =============================================================================================
// Paho session, TCP_NODELAY
// =============================================================================================

namespace detail {

/// `n` random bytes as lowercase hex.
inline std::string random_hex(std::size_t n) {
  static const token_source tokens = system_token_source();
  static std::mutex m;
  std::string s;
  while (s.size() < 2 * n) {
    lock_token t;
    {
      std::lock_guard<std::mutex> g(m);
      t = tokens();
    }
    for (auto b : t.bytes) {
      static constexpr char hex[] = "0123456789abcdef";
      s += hex[b >> 4];
      s += hex[b & 0xF];
    }
  }
  s.resize(2 * n);
  return s;
}

/// The addresses `host:port` resolves to; empty when it does not resolve.
inline std::vector<sockaddr_storage> resolve_peers(const std::string& host, std::uint16_t port) {
  std::vector<sockaddr_storage> out;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &res) != 0)
    return out;
  for (addrinfo* a = res; a; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage))
      continue;
    sockaddr_storage s{};
    std::memcpy(&s, a->ai_addr, a->ai_addrlen);
    out.push_back(s);
  }
  ::freeaddrinfo(res);
  return out;
}

/// Whether two socket addresses name the same IP address and port.
inline bool same_endpoint(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family)
    return false;
  if (a.ss_family == AF_INET) {
    sockaddr_in x{}, y{};
    std::memcpy(&x, &a, sizeof x);
    std::memcpy(&y, &b, sizeof y);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    sockaddr_in6 x{}, y{};
    std::memcpy(&x, &a, sizeof x);
    std::memcpy(&y, &b, sizeof y);
    return x.sin6_port == y.sin6_port &&
           std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
  }
  return false;
}

/// The port of an IPv4/IPv6 socket address (host order), or 0.
inline std::uint16_t port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) {
    sockaddr_in x{};
    std::memcpy(&x, &a, sizeof x);
    return ntohs(x.sin_port);
  }
  if (a.ss_family == AF_INET6) {
    sockaddr_in6 x{};
    std::memcpy(&x, &a, sizeof x);
    return ntohs(x.sin6_port);
  }
  return 0;
}

/// This process's open file descriptors (from /proc/self/fd; else 0..1023).
inline std::vector<int> open_fds() {
  std::vector<int> fds;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    const int own = ::dirfd(d);
    while (const dirent* e = ::readdir(d)) {
      int fd = -1;
      const std::string_view name(e->d_name);
      const auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), fd);
      if (ec == std::errc{} && p == name.data() + name.size() && fd != own)
        fds.push_back(fd);
    }
    ::closedir(d);
    return fds;
  }
  for (int fd = 0; fd < 1024; ++fd)
    fds.push_back(fd);
  return fds;
}

/// The peer of a connected TCP socket, or nullopt for anything else.
inline std::optional<sockaddr_storage> tcp_peer(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
    return std::nullopt;
  sockaddr_storage peer{};
  socklen_t plen = sizeof peer;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0)
    return std::nullopt;
  if (peer.ss_family != AF_INET && peer.ss_family != AF_INET6)
    return std::nullopt;
  return peer;
}

/// Sets TCP_NODELAY on every TCP socket of this process connected to one of
/// `peers` (when `peers` is empty: to port `port` on any address). Paho has no
/// option for it and never sets it; Nagle's algorithm with delayed ACKs turns a
/// sub-millisecond QoS 1 round trip into ~88 ms. Returns how many sockets it set.
inline int set_tcp_nodelay_to(const std::vector<sockaddr_storage>& peers, std::uint16_t port) {
  int n = 0;
  for (const int fd : open_fds()) {
    const auto peer = tcp_peer(fd);
    if (!peer)
      continue;
    bool match = false;
    if (peers.empty()) {
      match = port_of(*peer) == port;
    } else {
      for (const auto& p : peers)
        match = match || same_endpoint(*peer, p);
    }
    if (!match)
      continue;
    int one = 1;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
      ++n;
  }
  return n;
}

/// One MQTT 3.1.1 connection through Paho's async API: connect (with
/// subscriptions and a will), publish at QoS 1, disconnect. Incoming messages
/// and connection loss go to the handlers, on Paho's threads, with no lock of
/// ours held. Thread-safe. Used by the transports and by the daemon.
class session {
 public:
  using message_handler = std::function<void(std::string_view topic, std::string_view payload)>;
  using lost_handler = std::function<void(std::string_view cause)>;

  struct will_message {
    std::string topic;
    std::string payload;
    bool retained = false;
  };

  session(connection_options options, std::string client_id, message_handler on_message,
          lost_handler on_lost)
      : options_(std::move(options)),
        client_id_(std::move(client_id)),
        on_message_(std::move(on_message)),
        on_lost_(std::move(on_lost)) {}

  session(const session&) = delete;
  session& operator=(const session&) = delete;

  ~session() {
    disconnect(500ms);
    std::unique_lock<std::mutex> g(op_mutex_);
    destroy_handle();
  }

  const std::string& client_id() const noexcept { return client_id_; }
  const connection_options& options() const noexcept { return options_; }

  /// Connects, then subscribes to `filters` at QoS 1. Returns whether the broker
  /// still had a session for this client (CONNACK session present). Errors:
  /// `not_connected` (no broker), `unauthorized` (CONNACK 4/5), `server_busy`
  /// (CONNACK 3), `timeout`, `argument_invalid` (bad options).
  result<bool> connect(bool clean_session, const std::vector<std::string>& filters,
                       const std::optional<will_message>& will, const std::stop_token& stop = {}) {
    std::unique_lock<std::mutex> op(op_mutex_);
    if (connected_.load())
      return session_present_;
    if (auto r = ensure_handle(); !r)
      return r.error();
    peers_ = resolve_peers(options_.host, options_.port);

    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
    co.MQTTVersion = MQTTVERSION_3_1_1;
    co.keepAliveInterval = seconds_of(options_.keep_alive, 1);
    co.cleansession = clean_session ? 1 : 0;
    co.connectTimeout = seconds_of(options_.connect_timeout, 1);
    co.retryInterval = 0;
    co.automaticReconnect = 0;
    co.onSuccess = &on_connect_success;
    co.onFailure = &on_connect_failure;
    if (options_.username)
      co.username = options_.username->c_str();
    if (options_.password)
      co.password = options_.password->c_str();
    MQTTAsync_willOptions wo = MQTTAsync_willOptions_initializer;
    if (will) {
      wo.topicName = will->topic.c_str();
      wo.message = nullptr;
      wo.payload.data = will->payload.data();
      wo.payload.len = static_cast<int>(will->payload.size());
      wo.qos = 1;
      wo.retained = will->retained ? 1 : 0;
      co.will = &wo;
    }
    MQTTAsync_SSLOptions so = MQTTAsync_SSLOptions_initializer;
    if (options_.tls) {
      const auto& t = *options_.tls;
      const auto cstr = [](const std::string& s) {
        return s.empty() ? nullptr : s.c_str();
      };
      so.trustStore = cstr(t.ca_file);
      so.CApath = cstr(t.ca_path);
      so.keyStore = cstr(t.cert_file);
      so.privateKey = cstr(t.key_file);
      so.privateKeyPassword = cstr(t.key_password);
      so.enableServerCertAuth = t.verify_server ? 1 : 0;
      so.verify = t.verify_server ? 1 : 0;
      co.ssl = &so;
    }

    const auto deadline = std::chrono::steady_clock::now() + options_.connect_timeout + 5s;
    co.context = begin_op();
    if (const int rc = MQTTAsync_connect(handle_, &co); rc != MQTTASYNC_SUCCESS)
      return paho_error(rc, "connect");
    auto done = wait_op(deadline, stop);
    if (!done)
      return done.error();
    if (done->code != MQTTASYNC_SUCCESS)
      return connect_error(done->code, done->text);
    session_present_ = done->session_present;

    if (!filters.empty()) {
      std::vector<char*> topics;
      std::vector<int> qos(filters.size(), 1);
      for (const auto& f : filters)
        topics.push_back(const_cast<char*>(f.c_str()));
      MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
      ro.onSuccess = &on_op_success;
      ro.onFailure = &on_op_failure;
      ro.context = begin_op();
      const int rc = MQTTAsync_subscribeMany(handle_, static_cast<int>(filters.size()),
                                             topics.data(), qos.data(), &ro);
      if (rc != MQTTASYNC_SUCCESS) {
        abort_connection();
        return paho_error(rc, "subscribe");
      }
      auto sub = wait_op(std::chrono::steady_clock::now() + options_.connect_timeout + 5s, stop);
      if (!sub || sub->code != MQTTASYNC_SUCCESS) {
        abort_connection();
        if (!sub)
          return sub.error();
        return make_error(errc::not_connected,
                          "the broker refused the subscription to " + filters.front() +
                              (sub->text.empty() ? std::string() : ": " + sub->text));
      }
    }
    return session_present_;
  }

  /// Publishes at QoS 1 (retain as given). Paho copies topic and payload and
  /// retransmits unacknowledged publishes on reconnect. Does not wait for PUBACK.
  result<void> publish(const std::string& topic, std::string_view payload, bool retained = false) {
    std::lock_guard<std::mutex> g(handle_mutex_);
    if (!handle_ || !connected_.load())
      return make_error(errc::not_connected, "not connected to the broker");
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = const_cast<char*>(payload.data());
    m.payloadlen = static_cast<int>(payload.size());
    m.qos = 1;
    m.retained = retained ? 1 : 0;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    const int rc = MQTTAsync_sendMessage(handle_, topic.c_str(), &m, &ro);
    if (rc != MQTTASYNC_SUCCESS)
      return paho_error(rc, "publish to " + topic);
    return {};
  }

  /// Sends DISCONNECT after what was published before, and waits at most
  /// `timeout` for Paho to confirm (Paho 1.3.11-12 may take up to a second or two
  /// when the process has other MQTT clients: eclipse-paho/paho.mqtt.c#1430).
  void disconnect(duration timeout) {
    std::unique_lock<std::mutex> op(op_mutex_);
    if (!handle_)
      return;
    const bool was = connected_.exchange(false);
    if (!was && !MQTTAsync_isConnected(handle_))
      return;
    MQTTAsync_disconnectOptions dop = MQTTAsync_disconnectOptions_initializer;
    // 0: do not hold the DISCONNECT back for PUBACKs; earlier publishes go out first
    // anyway (Paho's commands are sent in order).
    dop.timeout = 0;
    dop.onSuccess = &on_op_success;
    dop.onFailure = &on_op_failure;
    dop.context = begin_op();
    if (MQTTAsync_disconnect(handle_, &dop) != MQTTASYNC_SUCCESS)
      return;
    (void)wait_op(std::chrono::steady_clock::now() + timeout, {}, false);
  }

  bool connected() const noexcept { return connected_.load(); }
  /// Sockets the last connect set TCP_NODELAY on.
  int nodelay_sockets() const noexcept { return nodelay_sockets_.load(); }

 private:
  struct op_result {
    int code = 0;
    std::string text;
    bool session_present = false;
  };

  static int seconds_of(duration d, int at_least) {
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(d + 999ms).count();
    return static_cast<int>(std::max<long long>(s, at_least));
  }

  std::string server_uri() const {
    std::string host = options_.host;
    if (host.find(':') != std::string::npos && !host.starts_with('['))
      host = "[" + host + "]";
    return std::string(options_.tls ? "ssl://" : "tcp://") + host + ":" +
           std::to_string(options_.port);
  }

  /// Creates the Paho handle (once; again after a wedged operation).
  result<void> ensure_handle() {
    if (handle_ && !wedged_)
      return {};
    destroy_handle();
    MQTTAsync_createOptions cr = MQTTAsync_createOptions_initializer;
    cr.MQTTVersion = MQTTVERSION_3_1_1;
    cr.sendWhileDisconnected = 0;
    cr.maxBufferedMessages = options_.max_buffered_messages;
    MQTTAsync h = nullptr;
    const std::string uri = server_uri();
    int rc = MQTTAsync_createWithOptions(&h, uri.c_str(), client_id_.c_str(),
                                         MQTTCLIENT_PERSISTENCE_NONE, nullptr, &cr);
    if (rc != MQTTASYNC_SUCCESS)
      return make_error(errc::argument_invalid, "cannot create an MQTT client for " + uri +
                                                    " (Paho error " + std::to_string(rc) + ")");
    rc = MQTTAsync_setCallbacks(h, this, &on_connection_lost, &on_message_arrived, nullptr);
    if (rc != MQTTASYNC_SUCCESS) {
      MQTTAsync_destroy(&h);
      return make_error(errc::server_error, "cannot set the MQTT callbacks");
    }
    std::lock_guard<std::mutex> g(handle_mutex_);
    handle_ = h;
    wedged_ = false;
    return {};
  }

  void destroy_handle() {
    MQTTAsync h = nullptr;
    {
      std::lock_guard<std::mutex> g(handle_mutex_);
      h = std::exchange(handle_, nullptr);
    }
    if (h)
      MQTTAsync_destroy(&h);
  }

  /// After a failed subscribe: drop the connection so that `connected()` is false.
  void abort_connection() {
    connected_.store(false);
    MQTTAsync_disconnectOptions dop = MQTTAsync_disconnectOptions_initializer;
    dop.timeout = 0;
    (void)MQTTAsync_disconnect(handle_, &dop);
  }

  /// Paho's context for one operation's completion callbacks: a late answer to
  /// an operation we stopped waiting for is recognised by its id and ignored.
  struct op_context {
    session* self = nullptr;
    std::uint64_t id = 0;
    bool answered = false;  ///< Paho called back: it no longer holds this context
  };

  /// Starts the next operation; returns the context to hand to Paho.
  op_context* begin_op() {
    std::lock_guard<std::mutex> g(m_);
    std::erase_if(contexts_, [](const auto& c) { return c->answered; });
    op_done_ = false;
    op_ = {};
    contexts_.push_back(std::make_unique<op_context>(op_context{this, ++op_id_, false}));
    return contexts_.back().get();
  }

  result<op_result> wait_op(std::chrono::steady_clock::time_point deadline,
                            const std::stop_token& stop, bool wedge_on_timeout = true) {
    std::stop_callback wake(stop, [this] {
      { std::lock_guard<std::mutex> g(m_); }
      cv_.notify_all();
    });
    std::unique_lock<std::mutex> g(m_);
    while (!op_done_) {
      if (stop.stop_requested())
        return make_error(errc::not_connected, "stopped while connecting to the broker");
      if (cv_.wait_until(g, deadline) == std::cv_status::timeout && !op_done_) {
        if (wedge_on_timeout)
          wedged_ = true;  // a connect may still be pending: use a fresh handle next time
        return make_error(errc::timeout, "no answer from the MQTT broker at " + server_uri());
      }
    }
    return op_;
  }

  /// Records the answer to operation `c`, unless it is a late one.
  void finish_op(op_context* c, op_result r, bool now_connected = false) {
    {
      std::lock_guard<std::mutex> g(m_);
      c->answered = true;
      if (c->id != op_id_)
        return;
      if (now_connected)
        connected_.store(true);
      op_ = std::move(r);
      op_done_ = true;
    }
    cv_.notify_all();
  }

  static error paho_error(int rc, const std::string& what) {
    switch (rc) {
      case MQTTASYNC_DISCONNECTED:
        return make_error(errc::not_connected, what + ": not connected to the broker");
      case MQTTASYNC_MAX_BUFFERED_MESSAGES:
      case MQTTASYNC_MAX_MESSAGES_INFLIGHT:
      case MQTTASYNC_NO_MORE_MSGIDS:
        return make_error(errc::server_busy, what + ": too many MQTT messages in flight (Paho " +
                                                 std::to_string(rc) + ")");
      case MQTTASYNC_BAD_UTF8_STRING:
        return make_error(errc::malformed, what + ": the topic is not valid UTF-8");
      default:
        return make_error(errc::not_connected,
                          what + " failed (Paho error " + std::to_string(rc) + ")");
    }
  }

  error connect_error(int code, const std::string& text) const {
    const std::string where = "connecting to " + server_uri();
    const std::string detail = text.empty() ? std::string() : " (" + text + ")";
    switch (code) {
      case 1:
        return make_error(errc::not_supported, where + ": the broker refused MQTT 3.1.1" + detail);
      case 2:
        return make_error(errc::unauthorized,
                          where + ": client id '" + client_id_ + "' rejected" + detail);
      case 3:
        return make_error(errc::server_busy, where + ": server unavailable" + detail);
      case 4:
        return make_error(errc::unauthorized, where + ": bad user name or password" + detail);
      case 5:
        return make_error(errc::unauthorized, where + ": not authorized" + detail);
      default:
        return make_error(errc::not_connected,
                          where + " failed (Paho " + std::to_string(code) + ")" + detail);
    }
  }

  // --- Paho callbacks (Paho's threads) ---

  static void on_connect_success(void* ctx, MQTTAsync_successData* d) {
    auto* c = static_cast<op_context*>(ctx);
    session* s = c->self;
    op_result r;
    r.session_present = d && d->alt.connect.sessionPresent;
    // Before anything else goes out: the subscription and every later publish.
    s->nodelay_sockets_.store(set_tcp_nodelay_to(s->peers_, s->options_.port));
    s->finish_op(c, std::move(r), true);
  }

  static void on_connect_failure(void* ctx, MQTTAsync_failureData* d) {
    auto* c = static_cast<op_context*>(ctx);
    op_result r;
    r.code = d ? d->code : MQTTASYNC_FAILURE;
    if (r.code == MQTTASYNC_SUCCESS)
      r.code = MQTTASYNC_FAILURE;
    if (d && d->message)
      r.text = d->message;
    c->self->finish_op(c, std::move(r));
  }

  static void on_op_success(void* ctx, MQTTAsync_successData*) {
    auto* c = static_cast<op_context*>(ctx);
    c->self->finish_op(c, {});
  }

  static void on_op_failure(void* ctx, MQTTAsync_failureData* d) {
    op_result r;
    r.code = d && d->code != MQTTASYNC_SUCCESS ? d->code : MQTTASYNC_FAILURE;
    if (d && d->message)
      r.text = d->message;
    auto* c = static_cast<op_context*>(ctx);
    c->self->finish_op(c, std::move(r));
  }

  static void on_connection_lost(void* ctx, char* cause) {
    auto* s = static_cast<session*>(ctx);
    s->connected_.store(false);
    if (s->on_lost_)
      s->on_lost_(cause ? std::string_view(cause) : std::string_view("connection lost"));
    if (cause)
      MQTTAsync_free(cause);
  }

  static int on_message_arrived(void* ctx, char* topic, int topic_len, MQTTAsync_message* m) {
    auto* s = static_cast<session*>(ctx);
    const std::size_t tl = topic_len > 0 ? static_cast<std::size_t>(topic_len) : std::strlen(topic);
    const std::string_view payload(static_cast<const char*>(m->payload),
                                   static_cast<std::size_t>(m->payloadlen));
    if (s->on_message_)
      s->on_message_(std::string_view(topic, tl), payload);
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
  }

  const connection_options options_;
  const std::string client_id_;
  const message_handler on_message_;
  const lost_handler on_lost_;

  std::mutex op_mutex_;      ///< one connect/disconnect at a time
  std::mutex handle_mutex_;  ///< guards handle_ against publish during (re)creation
  MQTTAsync handle_ = nullptr;
  bool wedged_ = false;
  bool session_present_ = false;
  std::vector<sockaddr_storage> peers_;
  std::atomic<bool> connected_{false};
  std::atomic<int> nodelay_sockets_{0};

  std::mutex m_;
  std::condition_variable cv_;
  bool op_done_ = false;
  op_result op_;
  std::uint64_t op_id_ = 0;
  std::vector<std::unique_ptr<op_context>> contexts_;
};

// =============================================================================================
// A client's connection: request/reply and pushes
// =============================================================================================

/// What a client (device or service) needs around a session: open/close with a
/// will, requests with `$.rid` answered on `.../reply/`, and an inbox of pushes.
///
/// Wakeups are targeted: a reply wakes only the thread waiting for it, a push
/// wakes one receiver (many threads may share a connection: a thundering herd
/// on every reply costs more CPU than the MQTT traffic itself).
class endpoint {
 public:
  struct push {
    std::string topic;
    std::string payload;
  };
  /// The will (and goodbye) topic for a connection id; empty: no will.
  using will_for = std::function<std::string(std::string_view connection_id)>;

  /// With `follow_hub_status`, also subscribes to the hub's retained status and
  /// counts its `online`s (`hub_online()`).
  endpoint(connection_options options, std::string client_id, protocol::party p, bool clean,
           std::vector<std::string> filters, will_for will, bool follow_hub_status = false)
      : clean_(clean),
        filters_(with_status(std::move(filters), follow_hub_status)),
        will_(std::move(will)),
        reply_head_(protocol::push_head(p, client_id, protocol::push_reply)),
        rid_prefix_(random_hex(4) + "-"),
        session_(
            std::move(options), std::move(client_id),
            [this](std::string_view t, std::string_view pl) { on_message(t, pl); },
            [this](std::string_view) { on_lost(); }) {}

  endpoint(const endpoint&) = delete;
  endpoint& operator=(const endpoint&) = delete;

  const connection_options& options() const noexcept { return session_.options(); }
  const std::string& client_id() const noexcept { return session_.client_id(); }
  int nodelay_sockets() const noexcept { return session_.nodelay_sockets(); }

  result<void> open() {
    std::lock_guard<std::mutex> op(open_mutex_);
    {
      std::lock_guard<std::mutex> g(m_);
      if (open_)
        return {};
    }
    std::string conn = random_hex(8);
    std::optional<session::will_message> will;
    if (will_)
      will = session::will_message{will_(conn), {}, false};
    auto r = session_.connect(clean_, filters_, will);
    if (!r)
      return r.error();
    {
      std::lock_guard<std::mutex> g(m_);
      if (!session_.connected())  // lost again already
        return make_error(errc::not_connected, "the connection to the broker dropped at once");
      open_ = true;
      connection_id_ = std::move(conn);
      ++epoch_;
    }
    return {};
  }

  /// Publishes the goodbye (the will topic, if any) when asked, and disconnects.
  void close(bool say_goodbye) {
    std::lock_guard<std::mutex> op(open_mutex_);
    std::string conn;
    {
      std::lock_guard<std::mutex> g(m_);
      conn = connection_id_;
    }
    if (say_goodbye && will_ && session_.connected())
      (void)session_.publish(will_(conn), {});
    session_.disconnect(1s);
    mark_down();
  }

  bool is_open() const {
    std::lock_guard<std::mutex> g(m_);
    return open_;
  }

  /// Changes on every open and every loss: an attach is valid for one epoch.
  std::uint64_t epoch() const {
    std::lock_guard<std::mutex> g(m_);
    return epoch_;
  }

  /// Counts the hub's `online` statuses seen (with `follow_hub_status`): an attach
  /// is valid only until the hub comes online again (a restarted hub forgot it).
  std::uint64_t hub_online() const {
    std::lock_guard<std::mutex> g(m_);
    return hub_online_;
  }

  std::string connection_id() const {
    std::lock_guard<std::mutex> g(m_);
    return connection_id_;
  }

  /// Publishes `topic` + `$.rid` with `payload` and waits for the reply. The
  /// result is the reply bag when `$.code` is 0, else the hub's error;
  /// `not_connected` if the connection drops first; `timeout` after `wait`.
  result<codec::property_bag> request(std::string topic, std::string_view payload, duration wait,
                                      const std::stop_token& stop = {}) {
    auto slot = std::make_shared<pending>();
    std::string rid;
    {
      std::lock_guard<std::mutex> g(m_);
      if (!open_)
        return not_connected();
      rid = rid_prefix_ + std::to_string(++next_rid_);
      pending_.emplace(rid, slot);
      slot->epoch = epoch_;
    }
    if (!topic.ends_with('/'))
      topic += '&';
    codec::append_percent_encoded(topic, protocol::key_request_id);
    topic += '=';
    codec::append_percent_encoded(topic, rid);
    if (auto p = session_.publish(topic, payload); !p) {
      std::lock_guard<std::mutex> g(m_);
      pending_.erase(rid);
      return p.error();
    }
    std::stop_callback wake(stop, [this, slot] {
      { std::lock_guard<std::mutex> g(m_); }
      slot->cv.notify_all();
    });
    std::unique_lock<std::mutex> g(m_);
    const auto deadline = std::chrono::steady_clock::now() + wait;
    slot->cv.wait_until(g, deadline, [&] {
      return slot->reply.has_value() || epoch_ != slot->epoch || stop.stop_requested();
    });
    pending_.erase(rid);
    if (slot->reply)
      return protocol::reply_result(std::move(*slot->reply));
    if (epoch_ != slot->epoch || !open_)
      return make_error(errc::not_connected,
                        "the connection to the broker dropped before the hub answered");
    if (stop.stop_requested())
      return make_error(errc::timeout, "stopped before the hub answered");
    return make_error(errc::timeout, "no answer from devicebound-hub within " +
                                         std::to_string(wait.count()) +
                                         " ms (is the daemon running and connected?)");
  }

  /// The next push: nullopt at `deadline`, on `stop`, or early when the hub comes
  /// online again (the caller attaches again); `not_connected` when the connection
  /// is closed or lost (pushes already received are handed out first).
  result<std::optional<push>> next_push(time_point deadline, const std::stop_token& stop) {
    std::stop_callback wake(stop, [this] {
      { std::lock_guard<std::mutex> g(m_); }
      inbox_cv_.notify_all();
    });
    std::unique_lock<std::mutex> g(m_);
    const std::uint64_t online = hub_online_;
    inbox_cv_.wait_until(g, deadline, [&] {
      return !inbox_.empty() || !open_ || stop.stop_requested() || hub_online_ != online;
    });
    if (!inbox_.empty()) {
      push p = std::move(inbox_.front());
      inbox_.pop_front();
      if (!inbox_.empty())
        inbox_cv_.notify_one();  // more for the next receiver
      return std::optional<push>(std::move(p));
    }
    if (!open_)
      return not_connected();
    return std::optional<push>{};
  }

  result<void> publish(const std::string& topic, std::string_view payload) {
    return session_.publish(topic, payload);
  }

  static error not_connected() {
    return make_error(errc::not_connected, "not connected to the MQTT broker");
  }

 private:
  /// One request waiting for its reply.
  struct pending {
    std::optional<codec::property_bag> reply;
    std::uint64_t epoch = 0;
    std::condition_variable cv;
  };

  static std::vector<std::string> with_status(std::vector<std::string> filters, bool follow) {
    if (follow)
      filters.emplace_back(protocol::hub_status_topic);
    return filters;
  }

  void on_message(std::string_view topic, std::string_view payload) {
    if (topic == protocol::hub_status_topic) {
      if (payload != "online")
        return;
      {
        std::lock_guard<std::mutex> g(m_);
        ++hub_online_;
      }
      inbox_cv_.notify_all();  // receivers attach again
      return;
    }
    if (topic.starts_with(reply_head_)) {
      auto bag = protocol::decode_unique_bag(topic.substr(reply_head_.size()));
      if (!bag)
        return;  // not ours to answer: a malformed reply is dropped
      const std::string* rid = protocol::find(*bag, protocol::key_request_id);
      if (!rid)
        return;
      std::lock_guard<std::mutex> g(m_);
      auto it = pending_.find(*rid);
      if (it == pending_.end())
        return;  // a late answer to a request that gave up
      it->second->reply = std::move(*bag);
      it->second->cv.notify_all();  // under the lock: the waiter owns the slot with us
      return;
    }
    {
      std::lock_guard<std::mutex> g(m_);
      inbox_.push_back(push{std::string(topic), std::string(payload)});
    }
    inbox_cv_.notify_one();
  }

  void on_lost() { mark_down(); }

  /// Closed or lost: every waiter learns it.
  void mark_down() {
    std::lock_guard<std::mutex> g(m_);
    open_ = false;
    ++epoch_;
    for (auto& [rid, slot] : pending_)
      slot->cv.notify_all();
    inbox_cv_.notify_all();
  }

  const bool clean_;
  const std::vector<std::string> filters_;
  const will_for will_;
  const std::string reply_head_;
  const std::string rid_prefix_;

  std::mutex open_mutex_;
  mutable std::mutex m_;
  std::condition_variable inbox_cv_;
  bool open_ = false;
  std::uint64_t epoch_ = 0;
  std::uint64_t hub_online_ = 0;
  std::string connection_id_;
  std::uint64_t next_rid_ = 0;
  std::unordered_map<std::string, std::shared_ptr<pending>> pending_;
  std::deque<push> inbox_;

  session session_;  ///< last: destroyed (its callbacks stopped) before the state above
};

}  // namespace detail

// =============================================================================================
// Transports
// =============================================================================================

/// How a device talks to the hub.
enum class device_mode : std::uint8_t {
  /// As a stock Azure IoT device SDK: `devices/{id}/messages/devicebound/#`,
  /// completion by PUBACK on receipt; no reject, no abandon (SPEC 1.6).
  iothub,
  /// devicebound's extension topics: complete, reject, abandon with lock tokens.
  extended,
};

/// A device's MQTT connection to `devicebound-hub`. Closed until `open()`.
template <device_mode Mode = device_mode::extended>
class device_connection {
 public:
  using clock_type = system_clock;
  static constexpr bool can_reject = Mode == device_mode::extended;
  static constexpr bool can_abandon = Mode == device_mode::extended;

  explicit device_connection(std::string device_id, connection_options options = {}) {
    auto s = std::make_unique<state>();
    s->device_id = std::move(device_id);
    s->id_error = validate_device_id(s->device_id);
    if (options.client_id.empty())
      options.client_id = s->device_id;
    const bool clean = options.clean_session.value_or(false);
    std::vector<std::string> filters;
    typename detail::endpoint::will_for will;
    const std::string id = s->device_id;
    if constexpr (Mode == device_mode::extended) {
      filters.push_back(protocol::client_filter(protocol::party::device, id));
      will = [id](std::string_view conn) {
        return protocol::bag_writer(
                   protocol::request_head(protocol::party::device, id, protocol::op_detach))
            .add(protocol::key_connection, conn)
            .str();
      };
    } else {
      filters.push_back(codec::devicebound_topic_filter(id));
    }
    const std::string client = options.client_id;
    s->endpoint = std::make_unique<detail::endpoint>(
        std::move(options), client, protocol::party::device, clean, std::move(filters),
        std::move(will), Mode == device_mode::extended);
    state_ = std::move(s);
  }

  device_connection(device_connection&&) noexcept = default;
  device_connection& operator=(device_connection&&) = delete;
  device_connection(const device_connection&) = delete;

  ~device_connection() {
    if (state_)
      close();
  }

  std::string_view device_id() const noexcept { return state_->device_id; }
  clock_type clock() const { return {}; }
  const connection_options& options() const noexcept { return state_->endpoint->options(); }
  /// TCP sockets the last connect set TCP_NODELAY on (for tests and logs).
  int nodelay_sockets() const noexcept { return state_->endpoint->nodelay_sockets(); }

  /// Connects and subscribes. An invalid device id is 400004.
  result<void> open() {
    if (!state_->id_error)
      return state_->id_error.error();
    return state_->endpoint->open();
  }

  /// Says goodbye to the hub (extended: its locks stay until they expire) and disconnects.
  void close() { state_->endpoint->close(Mode == device_mode::extended); }

  bool is_open() const { return state_->endpoint->is_open(); }

  /// The next message, locked for this device; nullopt if none within `timeout`.
  /// Extended: the first receive on a connection attaches (tells the hub this
  /// device takes messages, up to `prefetch` at a time); 404001 if the hub does
  /// not know the device.
  result<std::optional<message>> receive(duration timeout, std::stop_token stop = {}) {
    auto& ep = *state_->endpoint;
    const system_clock c;
    const time_point deadline = devicebound::saturating_add(c.now(), timeout);
    for (;;) {
      if constexpr (Mode == device_mode::extended) {
        if (auto a = ensure_attached(deadline, stop); !a) {
          if (a.code() == errc::timeout) {  // the hub did not answer yet: try again
            if (c.now() >= deadline || stop.stop_requested())
              return std::optional<message>{};
            continue;
          }
          return a.error();
        }
      }
      auto p = ep.next_push(deadline, stop);
      if (!p)
        return p.error();
      if (!*p) {
        if constexpr (Mode == device_mode::extended) {
          // Attach again if the connection changed while we waited.
          if (!stop.stop_requested() && c.now() < deadline)
            continue;
        }
        return std::optional<message>{};
      }
      auto m = decode(**p);
      if (m)
        return std::optional<message>(std::move(*m));
      // Not a message of ours (or malformed): skip it.
    }
  }

  /// Extended: settles at the hub (412002 if the lock expired). IoT Hub mode:
  /// the PUBACK already went out on receipt; this only forgets the token.
  result<void> complete(const lock_token& token) {
    if constexpr (Mode == device_mode::extended) {
      return settle(protocol::op_complete, token);
    } else {
      std::lock_guard<std::mutex> g(state_->mutex);
      if (state_->received.erase(token) == 0)
        return make_error(errc::device_message_lock_lost,
                          "lock token " + token.to_string() + " is unknown or already completed");
      return {};
    }
  }

  /// Dead-letters a locked message (extended mode only).
  result<void> reject(const lock_token& token) requires(Mode == device_mode::extended) {
    return settle(protocol::op_reject, token);
  }

  /// Returns a locked message to the queue, delivery count + 1 (extended mode only).
  result<void> abandon(const lock_token& token) requires(Mode == device_mode::extended) {
    return settle(protocol::op_abandon, token);
  }

 private:
  struct state {
    std::string device_id;
    result<void> id_error;
    std::unique_ptr<detail::endpoint> endpoint;
    std::mutex mutex;
    std::uint64_t attached_epoch = 0;   ///< guarded by mutex (extended)
    std::uint64_t attached_online = 0;  ///< hub `online`s seen at that attach (extended)
    std::set<lock_token> received;      ///< guarded by mutex (IoT Hub mode)
    std::uint64_t local_sequence = 0;   ///< guarded by mutex (IoT Hub mode)
    token_source tokens = system_token_source();
  };

  result<void> ensure_attached(time_point deadline, const std::stop_token& stop) {
    auto& ep = *state_->endpoint;
    const std::uint64_t epoch = ep.epoch();
    const std::uint64_t online = ep.hub_online();
    {
      std::lock_guard<std::mutex> g(state_->mutex);
      if (state_->attached_epoch == epoch && epoch != 0 && state_->attached_online == online)
        return {};
    }
    if (!ep.is_open())
      return detail::endpoint::not_connected();
    const auto& o = ep.options();
    const auto topic =
        protocol::bag_writer(
            protocol::request_head(protocol::party::device, state_->device_id, protocol::op_attach))
            .add(protocol::key_connection, ep.connection_id())
            .add(protocol::key_window, std::uint64_t{std::max<std::uint32_t>(o.prefetch, 1)})
            .str();
    const system_clock c;
    const duration left = deadline > c.now() ? deadline - c.now() : duration::zero();
    // At least a round trip's worth even for a poll (timeout 0), at most attach_retry.
    const duration wait = std::min(o.attach_retry, std::max(left, duration{500}));
    auto r = ep.request(topic, {}, wait, stop);
    if (!r)
      return r.error();
    std::lock_guard<std::mutex> g(state_->mutex);
    state_->attached_epoch = epoch;
    state_->attached_online = online;
    return {};
  }

  result<message> decode(const detail::endpoint::push& p) {
    const std::string& id = state_->device_id;
    if constexpr (Mode == device_mode::extended) {
      const std::string head =
          protocol::push_head(protocol::party::device, id, protocol::push_message);
      if (!p.topic.starts_with(head))
        return make_error(errc::malformed, "not a delivery");
      std::string conn;
      auto m = protocol::decode_device_message(id, std::string_view(p.topic).substr(head.size()),
                                               p.payload, &conn);
      // A push for an earlier connection (kept by the broker's session) has a lock
      // that expired or will: the hub delivers that message again on this one.
      if (m && conn != state_->endpoint->connection_id())
        return make_error(errc::device_message_lock_lost, "a delivery for an earlier connection");
      return m;
    } else {
      auto d = codec::decode_devicebound_topic(p.topic);
      if (!d)
        return d.error();
      message m = std::move(d->message);
      m.body = p.payload;
      std::lock_guard<std::mutex> g(state_->mutex);
      lock_token t;
      do {
        t = state_->tokens();
      } while (t.is_nil() || state_->received.count(t) != 0);
      state_->received.insert(t);
      m.lock_token = t;
      m.sequence_number = ++state_->local_sequence;  // local order: IoT Hub sends none
      return m;
    }
  }

  result<void> settle(std::string_view op, const lock_token& token) {
    auto& ep = *state_->endpoint;
    const auto topic =
        protocol::bag_writer(protocol::request_head(protocol::party::device, state_->device_id, op))
            .add(protocol::key_lock_token, token.to_string())
            .str();
    auto r = ep.request(topic, {}, ep.options().request_timeout);
    if (!r)
      return r.error();
    return {};
  }

  std::unique_ptr<state> state_;
};

/// A device connection as a stock Azure IoT device SDK has it (complete only).
using iothub_device_connection = device_connection<device_mode::iothub>;
/// A device connection over devicebound's extension topics.
using extended_device_connection = device_connection<device_mode::extended>;

/// The back end's MQTT connection to `devicebound-hub`. Closed until `open()`.
class service_connection {
 public:
  using clock_type = system_clock;
  static constexpr bool can_purge = true;
  static constexpr bool can_query_queue_depth = true;

  explicit service_connection(connection_options options = {}) {
    auto s = std::make_unique<state>();
    if (options.client_id.empty())
      options.client_id = "devicebound-service-" + detail::random_hex(8);
    s->id = options.client_id;
    s->id_error = validate_device_id(s->id);
    const bool clean = options.clean_session.value_or(true);
    const std::string id = s->id;
    auto will = [id](std::string_view conn) {
      return protocol::bag_writer(
                 protocol::request_head(protocol::party::service, id, protocol::op_detach))
          .add(protocol::key_connection, conn)
          .str();
    };
    s->endpoint = std::make_unique<detail::endpoint>(
        std::move(options), id, protocol::party::service, clean,
        std::vector<std::string>{protocol::client_filter(protocol::party::service, id)},
        std::move(will), true);
    state_ = std::move(s);
  }

  service_connection(service_connection&&) noexcept = default;
  service_connection& operator=(service_connection&&) = delete;
  service_connection(const service_connection&) = delete;

  ~service_connection() {
    if (state_)
      close();
  }

  /// The MQTT client id, which names this back end in the extension topics.
  std::string_view client_id() const noexcept { return state_->id; }
  clock_type clock() const { return {}; }
  const connection_options& options() const noexcept { return state_->endpoint->options(); }
  int nodelay_sockets() const noexcept { return state_->endpoint->nodelay_sockets(); }

  result<void> open() {
    if (!state_->id_error)
      return make_error(errc::argument_invalid,
                        "service client id: " + state_->id_error.error().message);
    return state_->endpoint->open();
  }

  void close() { state_->endpoint->close(true); }
  bool is_open() const { return state_->endpoint->is_open(); }

  /// Enqueues a copy of `msg` for `device_id` (SPEC 7.2).
  result<enqueue_receipt> send(std::string_view device_id, const message& msg) {
    if (auto v = validate_device_id(device_id); !v)
      return v.error();
    auto& ep = *state_->endpoint;
    auto r = ep.request(protocol::send_request_topic(state_->id, device_id, msg), msg.body,
                        ep.options().request_timeout);
    if (!r)
      return r.error();
    enqueue_receipt out;
    const std::string* seq = protocol::find(*r, protocol::key_sequence_number);
    const std::string* exp = protocol::find(*r, protocol::key_expiry);
    const auto s = seq ? protocol::parse_unsigned<std::uint64_t>(*seq) : std::nullopt;
    if (!s)
      return make_error(errc::malformed, "the hub's answer to a send has no $.seq");
    out.sequence_number = *s;
    if (exp) {
      auto t = codec::parse_iso8601(*exp);
      if (!t)
        return t.error();
      out.expiry_time_utc = *t;
    }
    return out;
  }

  /// Removes every pending message of a device; returns how many (SPEC 5.19).
  result<std::size_t> purge(std::string_view device_id) {
    return count_request(protocol::op_purge, device_id, protocol::key_count);
  }

  /// Pending messages of a device, Enqueued plus Invisible (SPEC 2.10).
  result<std::size_t> queue_depth(std::string_view device_id) {
    return count_request(protocol::op_depth, device_id, protocol::key_depth);
  }

  /// The next feedback batch, locked. The first call on a connection attaches
  /// (the hub then pushes up to `prefetch` batches before one is settled).
  result<std::optional<feedback_batch>> receive_feedback(duration timeout,
                                                         std::stop_token stop = {}) {
    auto& ep = *state_->endpoint;
    const system_clock c;
    const time_point deadline = devicebound::saturating_add(c.now(), timeout);
    const std::string head =
        protocol::push_head(protocol::party::service, state_->id, protocol::push_feedback);
    for (;;) {
      if (auto a = ensure_attached(deadline, stop); !a) {
        if (a.code() == errc::timeout) {
          if (c.now() >= deadline || stop.stop_requested())
            return std::optional<feedback_batch>{};
          continue;
        }
        return a.error();
      }
      auto p = ep.next_push(deadline, stop);
      if (!p)
        return p.error();
      if (!*p) {
        if (!stop.stop_requested() && c.now() < deadline)
          continue;
        return std::optional<feedback_batch>{};
      }
      if (!(*p)->topic.starts_with(head))
        continue;
      std::string conn;
      auto b = protocol::decode_feedback(std::string_view((*p)->topic).substr(head.size()),
                                         (*p)->payload, &conn);
      if (b && conn == ep.connection_id())  // else: for an earlier connection, comes again
        return std::optional<feedback_batch>(std::move(*b));
    }
  }

  result<void> complete_feedback(const lock_token& token) {
    return settle_feedback(protocol::op_feedback_complete, token);
  }
  result<void> abandon_feedback(const lock_token& token) {
    return settle_feedback(protocol::op_feedback_abandon, token);
  }

 private:
  struct state {
    std::string id;
    result<void> id_error;
    std::unique_ptr<detail::endpoint> endpoint;
    std::mutex mutex;
    std::uint64_t attached_epoch = 0;   ///< guarded by mutex
    std::uint64_t attached_online = 0;  ///< hub `online`s seen at that attach
  };

  result<std::size_t> count_request(std::string_view op, std::string_view device_id,
                                    std::string_view key) {
    if (auto v = validate_device_id(device_id); !v)
      return v.error();
    auto& ep = *state_->endpoint;
    auto r = ep.request(protocol::request_head(protocol::party::service, state_->id, op, device_id),
                        {}, ep.options().request_timeout);
    if (!r)
      return r.error();
    const std::string* v = protocol::find(*r, key);
    const auto n = v ? protocol::parse_unsigned<std::size_t>(*v) : std::nullopt;
    if (!n)
      return make_error(errc::malformed, "the hub's answer has no " + std::string(key));
    return *n;
  }

  result<void> ensure_attached(time_point deadline, const std::stop_token& stop) {
    auto& ep = *state_->endpoint;
    const std::uint64_t epoch = ep.epoch();
    const std::uint64_t online = ep.hub_online();
    {
      std::lock_guard<std::mutex> g(state_->mutex);
      if (state_->attached_epoch == epoch && epoch != 0 && state_->attached_online == online)
        return {};
    }
    if (!ep.is_open())
      return detail::endpoint::not_connected();
    const auto& o = ep.options();
    const auto topic =
        protocol::bag_writer(
            protocol::request_head(protocol::party::service, state_->id, protocol::op_attach))
            .add(protocol::key_connection, ep.connection_id())
            .add(protocol::key_window, std::uint64_t{std::max<std::uint32_t>(o.prefetch, 1)})
            .str();
    const system_clock c;
    const duration left = deadline > c.now() ? deadline - c.now() : duration::zero();
    // At least a round trip's worth even for a poll (timeout 0), at most attach_retry.
    const duration wait = std::min(o.attach_retry, std::max(left, duration{500}));
    auto r = ep.request(topic, {}, wait, stop);
    if (!r)
      return r.error();
    std::lock_guard<std::mutex> g(state_->mutex);
    state_->attached_epoch = epoch;
    state_->attached_online = online;
    return {};
  }

  result<void> settle_feedback(std::string_view op, const lock_token& token) {
    auto& ep = *state_->endpoint;
    const auto topic =
        protocol::bag_writer(protocol::request_head(protocol::party::service, state_->id, op))
            .add(protocol::key_lock_token, token.to_string())
            .str();
    auto r = ep.request(topic, {}, ep.options().request_timeout);
    if (!r)
      return r.error();
    return {};
  }

  std::unique_ptr<state> state_;
};

static_assert(device_transport<extended_device_connection>);
static_assert(device_transport<iothub_device_connection>);
static_assert(service_transport<service_connection>);
static_assert(transport_traits<extended_device_connection>::can_reject);
static_assert(transport_traits<extended_device_connection>::can_abandon);
static_assert(!transport_traits<iothub_device_connection>::can_reject);
static_assert(!transport_traits<iothub_device_connection>::can_abandon);
static_assert(transport_traits<service_connection>::can_purge);

}  // namespace devicebound::mqtt
