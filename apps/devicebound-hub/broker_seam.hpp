// The broker seam of the MQTT front door (docs/architecture.md, "The broker
// seam"): what differs between the brokers devicebound-hub can sit behind.
// The door speaks MQTT to either; only two things change with the broker:
//
//   - where presence and delivery events come from (`broker_events`): the
//     mosquitto plugin publishes them on `devicebound/broker/...` to the hub's own
//     MQTT connection; RabbitMQ publishes them to its event exchange and
//     firehose, read by an AMQP 0-9-1 consumer (rabbit_events.hpp);
//   - how outbound topics are written and which device ids can exist
//     (`broker_dialect`): RabbitMQ turns `.` into `/`, so bags write `.` as
//     `%2E` and ids holding `.` are refused.
//
// Both reduce to one vocabulary, `broker_event`, which the door turns into the
// router's presence requests in one place (mqtt_door::on_event). Sans-I/O.
#pragma once

#include <devicebound/codec/protocol.hpp>
#include <devicebound/codec/topic.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/message.hpp>
#include <devicebound/validate.hpp>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace devicebound::hubd {

enum class broker_kind : std::uint8_t {
  mosquitto,  ///< mosquitto with devicebound's plugin (the default)
  rabbitmq,   ///< RabbitMQ's MQTT plugin, auth backend served by the hub
};

inline constexpr std::string_view to_string(broker_kind k) noexcept {
  return k == broker_kind::rabbitmq ? "rabbitmq" : "mosquitto";
}

/// `--broker NAME`. Errors: argument_invalid naming the choices.
inline result<broker_kind> parse_broker_kind(std::string_view s) {
  if (s == "mosquitto")
    return broker_kind::mosquitto;
  if (s == "rabbitmq")
    return broker_kind::rabbitmq;
  return make_error(errc::argument_invalid,
                    "--broker '" + std::string(s) + "': expected mosquitto or rabbitmq");
}

/// What a broker tells the hub about a stock device, whatever its source.
struct broker_event {
  enum class kind : std::uint8_t {
    subscribed,    ///< can take C2D now (mosquitto: subscribed to its device-bound
                   ///< filter; RabbitMQ: consumes its QoS 1 session queue)
    delivered,     ///< a device-bound message was handed to its connection
    disconnected,  ///< its connection is gone
  };
  kind what = kind::subscribed;
  std::string device;
  /// `delivered`: the device-bound topic the message was published on (the
  /// delivery tag of `broker_dialect::delivery_tag`).
  std::string tag;
};

using delivery_tag_fn = std::string (*)(std::string_view device, const message& m);

/// A stock device's delivery tag on mosquitto: its device-bound topic, which the
/// plugin reports back when it hands the message over.
inline std::string plain_delivery_tag(std::string_view device, const message& m) {
  return codec::encode_devicebound_topic(device, m);
}

/// The same on RabbitMQ: the topic with its bag's dots written `%2E`, which the
/// firehose reports back (as a routing key, mapped back to the topic).
inline std::string escaped_delivery_tag(std::string_view device, const message& m) {
  codec::devicebound_topic_options o;
  o.escape_dots = true;
  return codec::encode_devicebound_topic(device, m, o);
}

/// How the door writes to one broker, and which ids that broker can carry.
struct broker_dialect {
  broker_kind kind = broker_kind::mosquitto;
  /// The topic a stock device's message is published on, also its delivery tag.
  delivery_tag_fn delivery_tag = &plain_delivery_tag;
  /// MQTT filters the door subscribes to for this broker's events (none when
  /// they come another way).
  std::vector<std::string> event_filters;

  static broker_dialect of(broker_kind k) {
    broker_dialect d;
    d.kind = k;
    if (k == broker_kind::rabbitmq) {
      d.delivery_tag = &escaped_delivery_tag;
    } else {
      d.event_filters.emplace_back(codec::protocol::broker_events_filter);
    }
    return d;
  }
};

/// Whether this broker can carry a device with id `id`; argument_invalid (400)
/// naming the character and the mode when it cannot. RabbitMQ's MQTT plugin
/// reads `.` as a topic level separator, and a routing-key word `*` as a
/// wildcard, so such a device's topics would change on the way.
inline result<void> check_device_id_for(broker_kind k, std::string_view id) {
  if (k != broker_kind::rabbitmq)
    return {};
  if (id.find('.') != std::string_view::npos)
    return make_error(errc::argument_invalid,
                      "device id '" + std::string(id) +
                          "' contains '.', which devicebound-hub --broker rabbitmq cannot carry "
                          "(RabbitMQ's MQTT plugin turns '.' into a topic level)");
  if (id == "*")
    return make_error(errc::argument_invalid,
                      "device id '*' is a wildcard word in RabbitMQ's routing; devicebound-hub "
                      "--broker rabbitmq cannot carry it");
  return {};
}

/// Where a broker's presence and delivery events come from.
class broker_events {
 public:
  using sink = std::function<void(broker_event)>;
  virtual ~broker_events() = default;
  virtual std::string_view name() const noexcept = 0;
  /// Reads a message the door received on one of `dialect().event_filters`;
  /// its event, or nullopt (logged by the caller as ignored).
  virtual std::optional<broker_event> on_mqtt(std::string_view topic, std::string_view payload) = 0;
  /// Starts whatever runs beside the door's MQTT connection (RabbitMQ: the
  /// event consumer's thread), calling `s` from that thread. Errors: fatal for
  /// the daemon (a bad configuration).
  virtual result<void> start(sink s) = 0;
  /// Stops it; idempotent.
  virtual void stop() = 0;
};

/// mosquitto's plugin events: `devicebound/broker/{subscribed|delivered|disconnected}/{id}`
/// (broker/plugin/devicebound_plugin.cpp), through the door's own connection.
class plugin_events final : public broker_events {
 public:
  std::string_view name() const noexcept override { return "mosquitto plugin"; }
  std::optional<broker_event> on_mqtt(std::string_view topic, std::string_view payload) override {
    return parse(topic, payload);
  }
  result<void> start(sink) override { return {}; }
  void stop() override {}

  /// The event of one plugin message; nullopt for anything else (a malformed
  /// topic, an invalid device id, an unknown kind).
  static std::optional<broker_event> parse(std::string_view topic, std::string_view payload) {
    namespace proto = codec::protocol;
    if (!topic.starts_with(proto::broker_events_prefix))
      return std::nullopt;
    const std::string_view rest = topic.substr(proto::broker_events_prefix.size());
    const auto slash = rest.find('/');
    if (slash == std::string_view::npos)
      return std::nullopt;
    const std::string_view kind = rest.substr(0, slash);
    broker_event e;
    e.device = std::string(rest.substr(slash + 1));
    if (!validate_device_id(e.device))
      return std::nullopt;
    if (kind == "subscribed") {
      e.what = broker_event::kind::subscribed;
    } else if (kind == "delivered") {
      e.what = broker_event::kind::delivered;
      e.tag = std::string(payload);
    } else if (kind == "disconnected") {
      e.what = broker_event::kind::disconnected;
    } else {
      return std::nullopt;
    }
    return e;
  }
};

}  // namespace devicebound::hubd
