// RabbitMQ's presence and delivery events (docs/scale-out.md, "Events"): the
// `broker_events` of `--broker rabbitmq`. An AMQP 0-9-1 connection
// (rabbitmq-c) binds one exclusive, auto-deleted queue to
//
//   amq.rabbitmq.event  consumer.*, binding.created, queue.deleted  (rabbitmq_event_exchange)
//   amq.rabbitmq.trace  deliver.#                             (the firehose, trace_vhosts)
//
// and reads, for a device's MQTT session queue `mqtt-subscription-{id}qos1`:
// consumer.created (+ binding.created of its device-bound filter) = subscribed,
// consumer.deleted = disconnected, and deliver.mqtt-subscription-{id}qos1 = the
// message (its routing key, which is the device-bound topic with `/` written
// `.`) handed to the device's connection.
//
// `rabbit::note_of` and `rabbit::presence_tracker` are the sans-I/O part
// (tests/test_rabbit_events.cpp);
// `rabbit_events` the I/O, built only with librabbitmq (DEVICEBOUND_WITH_RABBIT_EVENTS).
#pragma once

#include <devicebound/clock.hpp>
#include <map>
#include <memory>
#include <optional>
#include <set>
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
  std::string routing_key;                      ///< the message's own routing key
  std::optional<std::string> queue;             ///< consumer.*: header `queue`
  std::optional<std::string> name;              ///< queue.deleted: header `name`
  std::optional<std::string> source_name;       ///< binding.created: `source_name`
  std::optional<std::string> destination_name;  ///< binding.created: `destination_name`
  std::optional<std::string> binding_key;       ///< binding.created: header `routing_key`
  std::vector<std::string> routing_keys;        ///< firehose: header `routing_keys`
};

/// One fact about a device's QoS 1 session queue.
struct note {
  enum class kind : std::uint8_t {
    consumer_created,  ///< its connection consumes it (connect, or first QoS 1 subscribe)
    consumer_deleted,  ///< that connection is gone
    bound,             ///< bound to `amq.topic` with its device-bound filter
    queue_deleted,     ///< the session is gone (and its bindings)
    delivered,         ///< the firehose: a message handed to the connection
  };
  kind what = kind::consumer_created;
  std::string device;
  std::string tag;  ///< delivered: the MQTT topic it was published on
};

/// The note of one message; nullopt when it is about anything but a device's
/// QoS 1 session queue, or lacks what it needs. `ignore` is the hub's own MQTT
/// client id (its session queue is not a device's).
inline std::optional<note> note_of(const incoming& in, std::string_view ignore = {}) {
  note n;
  std::optional<std::string> device;
  if (in.routing_key == "consumer.created" || in.routing_key == "consumer.deleted") {
    if (!in.queue)
      return std::nullopt;
    device = device_of_session_queue(*in.queue);
    n.what = in.routing_key == "consumer.created" ? note::kind::consumer_created
                                                  : note::kind::consumer_deleted;
  } else if (in.routing_key == "queue.deleted") {
    if (!in.name)
      return std::nullopt;
    device = device_of_session_queue(*in.name);
    n.what = note::kind::queue_deleted;
  } else if (in.routing_key == "binding.created") {
    if (!in.destination_name || !in.source_name || !in.binding_key ||
        *in.source_name != "amq.topic")
      return std::nullopt;
    device = device_of_session_queue(*in.destination_name);
    // RabbitMQ's form of the device's filter `devices/{id}/messages/devicebound/#`.
    if (!device || *in.binding_key != "devices." + *device + ".messages.devicebound.#")
      return std::nullopt;
    n.what = note::kind::bound;
  } else if (in.routing_key.starts_with("deliver.")) {
    device = device_of_session_queue(std::string_view(in.routing_key).substr(8));
    if (in.routing_keys.size() != 1)
      return std::nullopt;
    n.what = note::kind::delivered;
    n.tag = mqtt_topic_of(in.routing_keys.front());
  } else {
    return std::nullopt;
  }
  if (!device || (!ignore.empty() && *device == ignore))
    return std::nullopt;
  n.device = std::move(*device);
  return n;
}

/// Turns notes into broker events. A device is `subscribed` when its
/// connection consumes its session queue *and* that queue is bound to its
/// device-bound filter: at a first subscribe RabbitMQ creates the consumer
/// before the binding, and a message published in between is routed nowhere.
/// A binding made before this tracker started (a persistent session, the hub
/// restarted) is not known: a consumer whose binding does not show within
/// `grace` is taken as bound.
class presence_tracker {
 public:
  explicit presence_tracker(duration grace) : grace_(grace) {}

  std::vector<broker_event> on(const note& n, time_point now) {
    std::vector<broker_event> out;
    switch (n.what) {
      case note::kind::consumer_created:
        if (bound_.contains(n.device))
          out.push_back({broker_event::kind::subscribed, n.device, {}});
        else
          pending_[n.device] = now + grace_;
        break;
      case note::kind::bound:
        bound_.insert(n.device);
        if (pending_.erase(n.device) > 0)
          out.push_back({broker_event::kind::subscribed, n.device, {}});
        break;
      case note::kind::consumer_deleted:
        pending_.erase(n.device);
        out.push_back({broker_event::kind::disconnected, n.device, {}});
        break;
      case note::kind::queue_deleted:
        pending_.erase(n.device);
        bound_.erase(n.device);
        break;
      case note::kind::delivered:
        out.push_back({broker_event::kind::delivered, n.device, n.tag});
        break;
    }
    return out;
  }

  /// Consumers whose binding did not show in time: subscribed.
  std::vector<broker_event> tick(time_point now) {
    std::vector<broker_event> out;
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second <= now) {
        out.push_back({broker_event::kind::subscribed, it->first, {}});
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }

  /// Forgets everything (the consumer reconnected: events were lost meanwhile).
  void reset() {
    bound_.clear();
    pending_.clear();
  }

 private:
  duration grace_;
  std::set<std::string> bound_;
  std::map<std::string, time_point> pending_;
};

/// The devices whose QoS 1 session queues the consumer has seen, across its
/// reconnects, and what a re-check makes of them after a reconnect: the events
/// sent while it was away are lost (a device that came back on another node
/// meanwhile would stay unseen, one that left would stay subscribed), so each
/// known session queue is looked at with a passive `queue.declare`, which
/// answers its consumer count (or 404: no such queue).
class known_sessions {
 public:
  void on(const note& n) {
    if (n.what == note::kind::consumer_created || n.what == note::kind::bound)
      devices_.insert(n.device);
    else if (n.what == note::kind::queue_deleted)
      devices_.erase(n.device);
  }
  const std::set<std::string>& devices() const noexcept { return devices_; }

  /// `consumers`: the queue's consumer count, nullopt when it does not exist
  /// (forgotten then). Consumed: subscribed (a session that exists is bound
  /// already); else disconnected.
  broker_event recheck(const std::string& device, std::optional<std::uint32_t> consumers) {
    if (!consumers)
      devices_.erase(device);
    if (consumers && *consumers > 0)
      return {broker_event::kind::subscribed, device, {}};
    return {broker_event::kind::disconnected, device, {}};
  }

 private:
  std::set<std::string> devices_;
};

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
  /// `presence_tracker`'s wait for a consumer's binding.
  duration binding_grace = std::chrono::seconds(1);
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
