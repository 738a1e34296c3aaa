// RabbitMQ's presence and delivery events (docs/scale-out.md, "Events"): the
// `broker_events` of `--broker rabbitmq`. An AMQP 0-9-1 connection
// (rabbitmq-c) binds one exclusive, auto-deleted queue to
//
//   amq.rabbitmq.event  consumer.created / consumer.deleted   (rabbitmq_event_exchange)
//   amq.rabbitmq.trace  deliver.#                             (the firehose, trace_vhosts)
//
// and reads, for a device's MQTT session queue `mqtt-subscription-{id}qos1`:
// consumer.created = subscribed, consumer.deleted = disconnected, and
// deliver.mqtt-subscription-{id}qos1 = the message (its routing key, which is
// the device-bound topic with `/` written `.`) handed to the device's connection.
//
// `rabbit::event_of` is the sans-I/O mapping (tests/test_rabbit_events.cpp);
// `rabbit_events` the I/O, built only with librabbitmq (DEVICEBOUND_WITH_RABBIT_EVENTS).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "broker_seam.hpp"
#include "rabbit_auth.hpp"

namespace devicebound::hubd::rabbit {

inline constexpr std::string_view event_exchange = "amq.rabbitmq.event";
inline constexpr std::string_view trace_exchange = "amq.rabbitmq.trace";
inline constexpr std::string_view session_queue_prefix = "mqtt-subscription-";
inline constexpr std::string_view session_queue_qos1 = "qos1";

/// The device id of an MQTT session queue of QoS 1 (`mqtt-subscription-{id}qos1`);
/// nullopt for any other queue or an id that is not a valid device id.
inline std::optional<std::string> device_of_session_queue(std::string_view queue) {
  if (!queue.starts_with(session_queue_prefix) || !queue.ends_with(session_queue_qos1))
    return std::nullopt;
  const std::size_t n = queue.size() - session_queue_prefix.size() - session_queue_qos1.size();
  if (queue.size() < session_queue_prefix.size() + session_queue_qos1.size() || n == 0)
    return std::nullopt;
  std::string id(queue.substr(session_queue_prefix.size(), n));
  if (!validate_device_id(id))
    return std::nullopt;
  return id;
}

/// What the consumer read from one message of either exchange.
struct incoming {
  std::string routing_key;                ///< the message's own routing key
  std::optional<std::string> queue;       ///< event exchange: header `queue`
  std::vector<std::string> routing_keys;  ///< firehose: header `routing_keys`
};

/// The broker event of one message; nullopt when it is about anything but a
/// device's QoS 1 session queue, or lacks what it needs. `ignore` is the hub's
/// own MQTT client id (its session queue is not a device's).
inline std::optional<broker_event> event_of(const incoming& in, std::string_view ignore = {}) {
  broker_event e;
  std::optional<std::string> device;
  if (in.routing_key == "consumer.created" || in.routing_key == "consumer.deleted") {
    if (!in.queue)
      return std::nullopt;
    device = device_of_session_queue(*in.queue);
    e.what = in.routing_key == "consumer.created" ? broker_event::kind::subscribed
                                                  : broker_event::kind::disconnected;
  } else if (in.routing_key.starts_with("deliver.")) {
    device = device_of_session_queue(std::string_view(in.routing_key).substr(8));
    if (in.routing_keys.size() != 1)
      return std::nullopt;
    e.what = broker_event::kind::delivered;
    e.tag = mqtt_topic_of(in.routing_keys.front());
  } else {
    return std::nullopt;
  }
  if (!device || (!ignore.empty() && *device == ignore))
    return std::nullopt;
  e.device = std::move(*device);
  return e;
}

/// `amqp://user:pass@host:port/` (vhost `/` only; user and password
/// percent-decoded). Errors: argument_invalid naming the part.
struct amqp_url {
  std::string user;
  std::string password;
  std::string host;
  std::uint16_t port = 5672;
};

inline result<amqp_url> parse_amqp_url(std::string_view s) {
  const auto bad = [&](std::string_view why) -> error {
    return make_error(errc::argument_invalid, "--rabbit-amqp-url: " + std::string(why) +
                                                  " (expected amqp://USER:PASSWORD@HOST:PORT/)");
  };
  constexpr std::string_view scheme = "amqp://";
  if (!s.starts_with(scheme))
    return bad("not an amqp:// URL (amqps is not supported)");
  s.remove_prefix(scheme.size());
  if (s.ends_with('/'))
    s.remove_suffix(1);
  if (s.find('/') != std::string_view::npos)
    return bad("only the default virtual host '/' is supported");
  const auto at = s.rfind('@');
  if (at == std::string_view::npos)
    return bad("no USER:PASSWORD@");
  const std::string_view creds = s.substr(0, at);
  const std::string_view hostport = s.substr(at + 1);
  const auto colon = creds.find(':');
  if (colon == std::string_view::npos || colon == 0)
    return bad("no USER:PASSWORD");
  amqp_url u;
  auto user = codec::percent_decode(creds.substr(0, colon));
  auto pass = codec::percent_decode(creds.substr(colon + 1));
  if (!user || !pass)
    return bad("bad percent-encoding in USER:PASSWORD");
  u.user = std::move(*user);
  u.password = std::move(*pass);
  const auto pc = hostport.rfind(':');
  if (pc == std::string_view::npos || pc == 0)
    return bad("no HOST:PORT");
  u.host = std::string(hostport.substr(0, pc));
  const std::string_view port = hostport.substr(pc + 1);
  unsigned v = 0;
  if (port.empty() || port.size() > 5)
    return bad("bad port");
  for (char c : port) {
    if (c < '0' || c > '9')
      return bad("bad port");
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v == 0 || v > 65535)
    return bad("bad port");
  u.port = static_cast<std::uint16_t>(v);
  return u;
}

}  // namespace devicebound::hubd::rabbit

namespace devicebound::hubd {

struct rabbit_events_config {
  rabbit::amqp_url url;
  std::string hub_client_id;  ///< the hub's own MQTT session queue is not a device's
  duration reconnect = std::chrono::seconds(1);
};

/// The RabbitMQ event consumer (rabbitmq-c), on its own thread. It reconnects
/// every `reconnect` while the node is away; events sent meanwhile are lost
/// (docs/scale-out.md, "What is not built").
class rabbit_events final : public broker_events {
 public:
  explicit rabbit_events(rabbit_events_config c);
  ~rabbit_events() override;
  std::string_view name() const noexcept override { return "RabbitMQ event exchange + firehose"; }
  std::optional<broker_event> on_mqtt(std::string_view, std::string_view) override {
    return std::nullopt;
  }
  result<void> start(sink s) override;
  void stop() override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace devicebound::hubd
