// The MQTT front door: devicebound's extension topics (docs/protocol.md) and the
// broker's presence and delivery events, through one MQTT connection to the
// broker. It only translates: topics in -> typed requests, replies and pushes ->
// topics out. It reconnects under a retry policy. What differs between brokers
// (mosquitto + plugin, RabbitMQ) is its `broker_events` and `broker_dialect`
// (broker_seam.hpp; docs/architecture.md, "The broker seam").
#pragma once

#include <atomic>
#include <deque>
#include <devicebound/retry.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "broker_seam.hpp"
#include "front_door.hpp"

namespace devicebound::hubd {

struct reconnect_config {
  duration initial = std::chrono::milliseconds(100);  ///< first wait after an immediate retry
  duration cap = std::chrono::seconds(10);            ///< longest wait
};

class mqtt_door final : public front_door {
 public:
  /// `events` null: mosquitto's plugin events (`plugin_events`), `dialect` mosquitto's.
  mqtt_door(mqtt::connection_options broker, reconnect_config reconnect,
            broker_dialect dialect = broker_dialect::of(broker_kind::mosquitto),
            std::unique_ptr<broker_events> events = nullptr);
  ~mqtt_door() override;

  std::string_view name() const noexcept override { return "mqtt"; }
  result<void> start(door_id id, request_sink sink, std::stop_token stop) override;
  time_point poll(time_point now) override;
  void release(std::span<const outbound> items) override;
  void stop() override;
  std::optional<error> failure() const override { return failure_; }

 private:
  using reconnect_policy = retry::basic_policy<retry::exponential_backoff_with_jitter>;

  void on_message(std::string_view topic, std::string_view payload);
  void on_request(std::string_view topic, std::string_view payload);
  void on_event(broker_event e);
  void emit(reply_to to, request r);
  result<void> connect();

  mqtt::connection_options broker_;
  broker_dialect dialect_;
  std::unique_ptr<broker_events> events_;
  door_id id_ = 0;
  request_sink sink_;
  std::stop_token stop_;
  retry::controller<reconnect_policy> reconnect_;
  std::atomic<bool> lost_{false};  ///< set on Paho's thread, taken by poll
  bool connected_ = false;
  bool started_ = false;
  time_point next_attempt_ = time_point::max();
  std::optional<error> failure_;
  /// One of `release`'s encoded publishes.
  struct publication {
    std::string topic;
    std::string_view payload;
    int qos;
  };
  /// `release`'s encoded publishes and the payloads it encoded.
  std::vector<publication> outgoing_;
  std::deque<std::string> payloads_;
  // Last, so destroyed first: its callbacks (on Paho's thread) use the members
  // above until the session is gone.
  mqtt::session session_;
};

}  // namespace devicebound::hubd
