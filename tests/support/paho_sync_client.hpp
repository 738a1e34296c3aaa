/// \file tests/support/paho_sync_client.hpp
/// A Paho C synchronous MQTT 3.1.1 client for the RabbitMQ end-to-end tests.
#pragma once

#include <MQTTClient.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace devicebound::test_support {

/// A Paho C synchronous client; destroyed with its connection.
class paho_sync_client {
 public:
  paho_sync_client(std::uint16_t port, const std::string& id) {
    const std::string uri = "tcp://127.0.0.1:" + std::to_string(port);
    if (MQTTClient_create(&c_, uri.c_str(), id.c_str(), MQTTCLIENT_PERSISTENCE_NONE, nullptr) !=
        MQTTCLIENT_SUCCESS)
      throw std::runtime_error("MQTTClient_create failed");
  }
  paho_sync_client(const paho_sync_client&) = delete;
  paho_sync_client& operator=(const paho_sync_client&) = delete;
  ~paho_sync_client() {
    if (MQTTClient_isConnected(c_))
      MQTTClient_disconnect(c_, 1000);
    MQTTClient_destroy(&c_);
  }
  /// MQTTClient_connect's return code (0: accepted; 4/5: refused credentials).
  int connect(const std::string& username, const std::string& password, bool clean = true) {
    MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer;
    o.keepAliveInterval = 30;
    o.cleansession = clean ? 1 : 0;
    o.username = username.c_str();
    o.password = password.c_str();
    o.connectTimeout = 10;
    o.MQTTVersion = MQTTVERSION_3_1_1;
    return MQTTClient_connect(c_, &o);
  }
  /// Whether the subscription was granted (RabbitMQ closes the connection on a refusal).
  bool subscribe(const std::string& filter, int qos = 1) {
    const int rc = MQTTClient_subscribe(c_, filter.c_str(), qos);
    return rc >= 0 && rc <= 2 && MQTTClient_isConnected(c_);
  }
  int publish(const std::string& topic, const std::string& payload, int qos = 1) {
    MQTTClient_deliveryToken token = 0;
    int rc = MQTTClient_publish(c_, topic.c_str(), static_cast<int>(payload.size()), payload.data(),
                                qos, 0, &token);
    if (rc == MQTTCLIENT_SUCCESS && qos > 0)
      rc = MQTTClient_waitForCompletion(c_, token, 10000);
    return rc;
  }
  /// The next message's topic and payload, within `timeout`.
  std::optional<std::pair<std::string, std::string>> receive(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      char* topic = nullptr;
      int len = 0;
      MQTTClient_message* m = nullptr;
      const int rc = MQTTClient_receive(c_, &topic, &len, &m, 200);
      if (rc != MQTTCLIENT_SUCCESS && rc != MQTTCLIENT_TOPICNAME_TRUNCATED)
        return std::nullopt;
      if (m == nullptr)
        continue;
      std::pair<std::string, std::string> out{
          len > 0 ? std::string(topic, static_cast<std::size_t>(len)) : std::string(topic),
          std::string(static_cast<const char*>(m->payload),
                      static_cast<std::size_t>(m->payloadlen))};
      MQTTClient_freeMessage(&m);
      MQTTClient_free(topic);
      return out;
    }
    return std::nullopt;
  }
  bool connected() { return MQTTClient_isConnected(c_) != 0; }

 private:
  MQTTClient c_ = nullptr;
};

}  // namespace devicebound::test_support
