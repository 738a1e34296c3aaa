// RabbitMQ as the broker, end to end (docs/scale-out.md, "RabbitMQ as the broker"):
// one RabbitMQ node (tests/support/rabbitmq.hpp) whose MQTT plugin asks
// devicebound-hub's --rabbit-auth-listen about every login, subscription and
// publish. Devices and a back end speak MQTT 3.1.1 through Paho C (sync API).
// ctest label `rabbitmq` (exclude with `ctest -LE rabbitmq`).
#include <MQTTClient.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/codec/topic.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/rabbitmq.hpp"
#include "support/required.hpp"

namespace {

using namespace devicebound;
namespace rmq = devicebound::test_support::rabbitmq;
using namespace std::chrono_literals;

#ifdef DEVICEBOUND_HUB_EXECUTABLE
constexpr const char* hub_executable = DEVICEBOUND_HUB_EXECUTABLE;
#else
constexpr const char* hub_executable = "devicebound-hub";
#endif

constexpr const char* hub_host = "myhub.example";
constexpr const char* dev1_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr const char* dev2_key = "ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A=";
constexpr const char* service_key = "ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==";

std::string device_token(const char* id, const char* key) {
  return auth::to_string(auth::generate_sas_token(
      std::string(hub_host) + "/devices/" + id, *auth::shared_access_key::from_base64(key),
      auth::sas_expiry(system_clock{}.now(), std::chrono::hours(1))));
}

std::string service_token() {
  return auth::to_string(auth::generate_sas_token(
      hub_host, *auth::shared_access_key::from_base64(service_key),
      auth::sas_expiry(system_clock{}.now(), std::chrono::hours(1)), std::string("service")));
}

std::string device_username(const char* id) {
  return std::string(hub_host) + "/" + id + "/?api-version=2021-04-12&DeviceClientType=devicebound";
}

/// A Paho C synchronous client; destroyed with its connection.
class client {
 public:
  client(std::uint16_t port, const std::string& id) {
    const std::string uri = "tcp://127.0.0.1:" + std::to_string(port);
    if (MQTTClient_create(&c_, uri.c_str(), id.c_str(), MQTTCLIENT_PERSISTENCE_NONE, nullptr) !=
        MQTTCLIENT_SUCCESS)
      throw std::runtime_error("MQTTClient_create failed");
  }
  client(const client&) = delete;
  client& operator=(const client&) = delete;
  ~client() {
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

/// devicebound-hub with --rabbit-auth-listen. Its own MQTT door connects to the
/// node at `broker_port` as a back end (policy `service`, a SAS token it signs),
/// admitted by its own auth backend.
class hub_process {
 public:
  hub_process(const std::filesystem::path& dir, std::uint16_t broker_port) : dir_(dir) {
    auth_port_ = rmq::free_port();
    const std::string auth = (dir / "auth.txt").string();
    std::ofstream(auth) << "dev1 " << dev1_key << "\n"
                        << "dev2 " << dev2_key << "\n"
                        << "policy service " << service_key << "\n";
    pid_ = rmq::spawn({hub_executable, "--in-memory", "--auth-file", auth, "--iothub-hostname",
                       hub_host, "--rabbit-auth-listen", "127.0.0.1:" + std::to_string(auth_port_),
                       "-p", std::to_string(broker_port), "-u", "service", "--broker-sas-key",
                       service_key, "--reconnect-max", "1s", "--log-level", "debug"},
                      {"PATH=/usr/bin:/bin"}, (dir / "hub.log").string());
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!rmq::accepts_connections(auth_port_)) {
      if (std::chrono::steady_clock::now() >= deadline || !rmq::alive(pid_))
        throw std::runtime_error("devicebound-hub did not listen for RabbitMQ: " +
                                 rmq::read_text((dir / "hub.log").string()));
      std::this_thread::sleep_for(20ms);
    }
  }
  ~hub_process() {
    ::kill(pid_, SIGTERM);
    if (!rmq::wait_child(pid_, 10s)) {
      ::kill(pid_, SIGKILL);
      rmq::wait_child(pid_, 10s);
    }
  }
  std::uint16_t auth_port() const { return auth_port_; }
  std::string log() const { return rmq::read_text((dir_ / "hub.log").string()); }

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
  std::uint16_t auth_port_ = 0;
};

class rabbit_e2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!rmq::installed())
      return;
    try {
      start();
    } catch (const std::exception& e) {
      start_error_ = e.what();
      node_.reset();
      hub_.reset();
    }
  }
  static void start() {
    dir_ = std::make_unique<test_support::temp_dir>("devicebound-rabbit-e2e");
    rmq::node_options o;
    o.mqtt_port = rmq::free_port();
    hub_ = std::make_unique<hub_process>(dir_->path(), o.mqtt_port);
    o.auth_http_base = "http://127.0.0.1:" + std::to_string(hub_->auth_port());
    node_ = std::make_unique<rmq::node>(o);
    std::printf("[ rabbitmq ] node started in %.1f s (beam pid %d, epmd pid %d on 127.0.0.1:%u)\n",
                std::chrono::duration<double>(node_->startup_time()).count(), node_->beam_pid(),
                node_->epmd_pid(), node_->epmd_port());
  }
  static void TearDownTestSuite() {
    if (node_) {
      const pid_t beam = node_->beam_pid();
      const pid_t epmd = node_->epmd_pid();
      const auto t0 = std::chrono::steady_clock::now();
      node_->stop();
      std::printf("[ rabbitmq ] node stopped in %.1f s; beam alive after stop: %s, epmd: %s\n",
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                  rmq::alive(beam) ? "yes" : "no", rmq::alive(epmd) ? "yes" : "no");
      EXPECT_FALSE(rmq::alive(beam));
      EXPECT_FALSE(rmq::alive(epmd));
    }
    node_.reset();
    hub_.reset();
    dir_.reset();
  }
  void SetUp() override {
    if (!rmq::installed())
      DEVICEBOUND_MISSING_PART("rabbitmq-server is not installed at "
                               << rmq::server_script << " (scripts/setup.sh installs it)");
    if (!node_)
      GTEST_FAIL() << "the hub or the RabbitMQ node did not start: " << start_error_;
  }
  std::uint16_t port() const { return node_->mqtt_port(); }

  static inline std::unique_ptr<test_support::temp_dir> dir_;
  static inline std::unique_ptr<hub_process> hub_;
  static inline std::unique_ptr<rmq::node> node_;
  static inline std::string start_error_;
};

TEST_F(rabbit_e2e, device_with_its_sas_token_is_accepted_and_a_wrong_token_refused) {
  client good(port(), "dev1");
  EXPECT_EQ(good.connect(device_username("dev1"), device_token("dev1", dev1_key)), 0);
  client wrong(port(), "dev2");
  EXPECT_NE(wrong.connect(device_username("dev2"), device_token("dev2", dev1_key)), 0);
  client raw_key(port(), "dev2");
  EXPECT_NE(raw_key.connect(device_username("dev2"), dev2_key), 0);
  client other_id(port(), "dev2");  // dev1's username and token, dev2's client id
  EXPECT_NE(other_id.connect(device_username("dev1"), device_token("dev1", dev1_key)), 0);
  client back_end(port(), "svc-a");
  EXPECT_EQ(back_end.connect("service", service_token()), 0);
  client back_end_raw(port(), "svc-b");
  EXPECT_NE(back_end_raw.connect("service", service_key), 0);
}

TEST_F(rabbit_e2e, device_subscribes_only_to_its_own_devicebound_topic) {
  client own(port(), "dev1");
  ASSERT_EQ(own.connect(device_username("dev1"), device_token("dev1", dev1_key)), 0);
  EXPECT_TRUE(own.subscribe("devices/dev1/messages/devicebound/#"));
  EXPECT_TRUE(own.connected());

  client thief(port(), "dev2");
  ASSERT_EQ(thief.connect(device_username("dev2"), device_token("dev2", dev2_key)), 0);
  EXPECT_FALSE(thief.subscribe("devices/dev1/messages/devicebound/#"));

  client wildcard(port(), "dev2");
  ASSERT_EQ(wildcard.connect(device_username("dev2"), device_token("dev2", dev2_key)), 0);
  EXPECT_FALSE(wildcard.subscribe("devices/+/messages/devicebound/#"));
}

TEST_F(rabbit_e2e, back_end_publish_with_escaped_bag_arrives_intact) {
  client device(port(), "dev1");
  ASSERT_EQ(device.connect(device_username("dev1"), device_token("dev1", dev1_key), false), 0);
  ASSERT_TRUE(device.subscribe("devices/dev1/messages/devicebound/#"));

  client back_end(port(), "svc-send");
  ASSERT_EQ(back_end.connect("service", service_token()), 0);

  message m;
  m.message_id = "mid.1";
  m.correlation_id = "corr.2";
  m.to = "/devices/dev1/messages/devicebound";
  m.ack = ack_mode::full;
  m.app_properties = {{"a.b", "c.d"}, {"plain", "x"}};
  codec::devicebound_topic_options escaped;
  escaped.escape_dots = true;
  const std::string topic = codec::encode_devicebound_topic("dev1", m, escaped);
  ASSERT_EQ(back_end.publish(topic, "hello"), MQTTCLIENT_SUCCESS);

  const auto got = device.receive(15s);
  ASSERT_TRUE(got) << "nothing arrived";
  EXPECT_EQ(got->first, topic);
  EXPECT_EQ(got->second, "hello");
  const auto decoded = codec::decode_devicebound_topic(got->first);
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->device_id, "dev1");
  EXPECT_EQ(decoded->message.message_id, "mid.1");
  EXPECT_EQ(decoded->message.correlation_id, "corr.2");
  EXPECT_EQ(decoded->message.to, m.to);
  EXPECT_EQ(decoded->message.ack, ack_mode::full);
  EXPECT_EQ(decoded->message.app_properties, m.app_properties);

  // Why the escaping: the same bag written plainly reaches the device with its
  // dots turned into '/', and the properties are lost.
  const std::string plain = codec::encode_devicebound_topic("dev1", m);
  ASSERT_EQ(back_end.publish(plain, "plain"), MQTTCLIENT_SUCCESS);
  const auto mangled = device.receive(15s);
  ASSERT_TRUE(mangled);
  EXPECT_NE(mangled->first, plain);
  EXPECT_EQ(mangled->first.find("%24.mid"), std::string::npos) << mangled->first;
  EXPECT_NE(mangled->first.find("%24/mid"), std::string::npos) << mangled->first;
}

TEST_F(rabbit_e2e, device_may_publish_telemetry_but_not_to_a_devicebound_topic) {
  client device(port(), "dev2");
  ASSERT_EQ(device.connect(device_username("dev2"), device_token("dev2", dev2_key)), 0);
  EXPECT_EQ(device.publish("devices/dev2/messages/events/k=v", "t"), MQTTCLIENT_SUCCESS);
  EXPECT_TRUE(device.connected());
  // A forged C2D to dev1: RabbitMQ closes the connection.
  (void)device.publish("devices/dev1/messages/devicebound/x=1", "forged");
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (device.connected() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(device.connected());
}

TEST_F(rabbit_e2e, the_hubs_own_mqtt_connection_is_admitted_as_a_back_end) {
  // The hub retries every second at most; its SAS token goes through its own backend.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (hub_->log().find("connected to the broker") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(50ms);
  const std::string log = hub_->log();
  const std::size_t connected = log.find("connected to the broker");
  ASSERT_NE(connected, std::string::npos) << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
  // Its subscriptions were not refused (RabbitMQ would have closed the connection).
  EXPECT_EQ(log.find("lost the broker connection", connected), std::string::npos);
}

}  // namespace
