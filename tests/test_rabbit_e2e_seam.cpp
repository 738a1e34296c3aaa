// devicebound-hub with RabbitMQ as its MQTT broker (`--broker rabbitmq`; docs/scale-out.md,
// "The broker seam"): one RabbitMQ node (tests/support/rabbitmq.hpp) with the event
// exchange, the firehose on and a user for the hub's event consumer; the hub's MQTT
// door behind it, its auth backend answering the node, its AMQP door for the back end.
// A stock device (Paho C, SAS token) receives a C2D message sent through the AMQP
// door with its bag intact (`%2E`), PUBACKs it, and the back end gets positive
// feedback: the firehose's `deliver` completed it. Its disconnect is seen
// (consumer.deleted). ctest label `rabbitmq`.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/codec/topic.hpp>
#include <devicebound/transport/amqp.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/paho_sync_client.hpp"
#include "support/rabbitmq.hpp"
#include "support/required.hpp"

namespace {

using namespace devicebound;
namespace rmq = devicebound::test_support::rabbitmq;
using client = devicebound::test_support::paho_sync_client;
using namespace std::chrono_literals;

#ifdef DEVICEBOUND_HUB_EXECUTABLE
constexpr const char* hub_executable = DEVICEBOUND_HUB_EXECUTABLE;
#else
constexpr const char* hub_executable = "devicebound-hub";
#endif

/// `localhost`: the back end's connection string names the hub by the host it connects to.
constexpr const char* hub_host = "localhost";
constexpr const char* dev1_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr const char* service_key = "ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==";

std::string device_token(const char* id, const char* key) {
  return auth::to_string(auth::generate_sas_token(
      std::string(hub_host) + "/devices/" + id, *auth::shared_access_key::from_base64(key),
      auth::sas_expiry(system_clock{}.now(), std::chrono::hours(1))));
}

std::string device_username(const char* id) {
  return std::string(hub_host) + "/" + id + "/?api-version=2021-04-12&DeviceClientType=devicebound";
}

std::string tail(const std::string& s) {
  return s.size() > 6000 ? s.substr(s.size() - 6000) : s;
}

/// devicebound-hub --broker rabbitmq, with its auth backend and a plain AMQP door on loopback.
class hub_process {
 public:
  hub_process(const std::filesystem::path& dir, std::vector<std::string> extra) : dir_(dir) {
    auth_port_ = rmq::free_port();
    amqp_port_ = rmq::free_port();
    const std::string auth = (dir / "auth.txt").string();
    std::ofstream(auth) << "dev1 " << dev1_key << "\n"
                        << "policy service " << service_key << "\n";
    std::vector<std::string> argv{hub_executable,
                                  "--in-memory",
                                  "--auth-file",
                                  auth,
                                  "--iothub-hostname",
                                  hub_host,
                                  "--broker",
                                  "rabbitmq",
                                  "--rabbit-auth-listen",
                                  "127.0.0.1:" + std::to_string(auth_port_),
                                  "--amqp-listen",
                                  "127.0.0.1:" + std::to_string(amqp_port_),
                                  "-u",
                                  "service",
                                  "--broker-sas-key",
                                  service_key,
                                  "--feedback-batch-interval",
                                  "0s",
                                  "--reconnect-max",
                                  "1s",
                                  "--log-level",
                                  "debug"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    pid_ = rmq::spawn(argv, {"PATH=/usr/bin:/bin"}, (dir / "hub.log").string());
  }
  ~hub_process() { stop(); }
  void stop() {
    if (pid_ <= 0)
      return;
    ::kill(pid_, SIGTERM);
    if (!rmq::wait_child(pid_, 10s)) {
      ::kill(pid_, SIGKILL);
      rmq::wait_child(pid_, 10s);
    }
    pid_ = -1;
  }
  /// Waits up to `timeout` for the auth backend to listen; false if the hub exited.
  bool listening(std::chrono::milliseconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!rmq::accepts_connections(auth_port_)) {
      if (std::chrono::steady_clock::now() >= deadline || !rmq::alive(pid_))
        return false;
      std::this_thread::sleep_for(20ms);  // polling a deadline
    }
    return true;
  }
  /// The exit code if the hub exits within `timeout`.
  std::optional<int> exit_code(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      if (std::chrono::steady_clock::now() >= deadline)
        return std::nullopt;
      std::this_thread::sleep_for(20ms);  // polling a deadline
    }
  }
  /// Waits up to `timeout` for `line` in the log after offset `from`; its offset.
  std::optional<std::size_t> wait_log(std::string_view line, std::chrono::milliseconds timeout,
                                      std::size_t from = 0) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const std::string l = log();
      if (auto p = l.find(line, from); p != std::string::npos)
        return p;
      if (std::chrono::steady_clock::now() >= deadline)
        return std::nullopt;
      std::this_thread::sleep_for(50ms);  // polling a deadline
    }
  }
  std::uint16_t auth_port() const { return auth_port_; }
  std::uint16_t amqp_port() const { return amqp_port_; }
  std::string log() const { return rmq::read_text((dir_ / "hub.log").string()); }

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
  std::uint16_t auth_port_ = 0;
  std::uint16_t amqp_port_ = 0;
};

TEST(rabbit_seam_config, refused_before_anything_starts) {
  if (!rmq::installed())
    DEVICEBOUND_MISSING_PART("rabbitmq-server is not installed (scripts/setup.sh installs it)");
  test_support::temp_dir dir("devicebound-rabbit-seam-cfg");
  {
    // An id RabbitMQ cannot carry: exit 2 naming the '.' and the mode.
    hub_process h(dir.path(),
                  {"--rabbit-amqp-url", "amqp://u:p@127.0.0.1:1/", "-p", "1", "--device", "dev.1"});
    const auto code = h.exit_code(20s);
    ASSERT_TRUE(code) << h.log();
    EXPECT_EQ(*code, 2) << h.log();
    EXPECT_NE(h.log().find("device id 'dev.1' contains '.'"), std::string::npos) << h.log();
    EXPECT_NE(h.log().find("--broker rabbitmq"), std::string::npos) << h.log();
  }
  {
    // No event source: exit 2 naming the missing option.
    hub_process h(dir.path(), {"-p", "1"});
    const auto code = h.exit_code(20s);
    ASSERT_TRUE(code) << h.log();
    EXPECT_EQ(*code, 2) << h.log();
    EXPECT_NE(h.log().find("--rabbit-amqp-url"), std::string::npos) << h.log();
  }
}

class rabbit_seam : public ::testing::Test {
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
    dir_ = std::make_unique<test_support::temp_dir>("devicebound-rabbit-seam");
    rmq::node_options o;
    o.name = "rabbitseam";
    o.mqtt_port = rmq::free_port();
    o.broker_events = true;
    o.amqp_port = rmq::free_port();
    const std::string url = "amqp://" + o.events_user + ":" + o.events_password +
                            "@127.0.0.1:" + std::to_string(o.amqp_port) + "/";
    hub_ = std::make_unique<hub_process>(
        dir_->path(),
        std::vector<std::string>{"-p", std::to_string(o.mqtt_port), "--rabbit-amqp-url", url});
    if (!hub_->listening(20s))
      throw std::runtime_error("devicebound-hub did not listen for RabbitMQ: " + tail(hub_->log()));
    o.auth_http_base = "http://127.0.0.1:" + std::to_string(hub_->auth_port());
    node_ = std::make_unique<rmq::node>(o);
    std::printf("[ rabbitmq ] node with the event exchange and firehose started in %.1f s\n",
                std::chrono::duration<double>(node_->startup_time()).count());
    // The hub retries both of its connections every second at most.
    if (!hub_->wait_log("RabbitMQ events: consuming", 30s) ||
        !hub_->wait_log("connected to the broker", 30s))
      throw std::runtime_error("the hub did not connect to RabbitMQ: " + tail(hub_->log()));
  }
  static void TearDownTestSuite() {
    if (node_) {
      const pid_t beam = node_->beam_pid();
      node_->stop();
      EXPECT_FALSE(rmq::alive(beam));
    }
    node_.reset();
    if (hub_)
      hub_->stop();
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
  void TearDown() override {
    if (HasFailure() && hub_)
      std::fprintf(stderr, "--- devicebound-hub log (end) ---\n%s\n", tail(hub_->log()).c_str());
  }

  /// The back end, on the hub's plain AMQP door.
  static amqp::service_connection back_end() {
    amqp::connection_options o;
    o.tls = std::nullopt;
    o.connect_timeout = 10s;
    o.request_timeout = 10s;
    const std::string cs = std::string("HostName=") + hub_host + ":" +
                           std::to_string(hub_->amqp_port()) +
                           ";SharedAccessKeyName=service;SharedAccessKey=" + service_key;
    return amqp::service_connection::from_connection_string(cs, o).value();
  }

  static inline std::unique_ptr<test_support::temp_dir> dir_;
  static inline std::unique_ptr<hub_process> hub_;
  static inline std::unique_ptr<rmq::node> node_;
  static inline std::string start_error_;
};

TEST_F(rabbit_seam, stock_device_receives_completes_and_the_back_end_gets_feedback) {
  auto svc = back_end();
  auto opened = svc.open();
  ASSERT_TRUE(opened) << opened.error().message;

  // Queued while the device is away: pushed when it subscribes (consumer.created).
  message m;
  m.message_id = "mid.1";
  m.correlation_id = "corr.2";
  m.ack = ack_mode::full;
  m.app_properties = {{"a.b", "c.d"}, {"plain", "x"}};
  m.body = "hello";
  auto sent = svc.send("dev1", m);
  ASSERT_TRUE(sent) << sent.error().message;

  const std::size_t before = hub_->log().size();
  client device(node_->mqtt_port(), "dev1");
  ASSERT_EQ(device.connect(device_username("dev1"), device_token("dev1", dev1_key), false), 0);
  ASSERT_TRUE(device.subscribe("devices/dev1/messages/devicebound/#"));
  EXPECT_TRUE(hub_->wait_log("device 'dev1' subscribed", 20s, before));

  const auto got = device.receive(20s);
  ASSERT_TRUE(got) << "nothing arrived";
  EXPECT_EQ(got->second, "hello");
  EXPECT_EQ(got->first.find('.'), std::string::npos) << got->first;
  EXPECT_NE(got->first.find("%24%2Emid=mid%2E1"), std::string::npos) << got->first;
  const auto decoded = codec::decode_devicebound_topic(got->first);
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->device_id, "dev1");
  EXPECT_EQ(decoded->message.message_id, "mid.1");
  EXPECT_EQ(decoded->message.correlation_id, "corr.2");
  EXPECT_EQ(decoded->message.ack, ack_mode::full);
  EXPECT_EQ(decoded->message.app_properties, m.app_properties);

  // Paho PUBACKed it on receipt; the firehose's deliver completed it: feedback.
  std::optional<feedback_status> status;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!status && std::chrono::steady_clock::now() < deadline) {
    auto b = svc.receive_feedback(2s);
    ASSERT_TRUE(b) << b.error().message;
    if (!*b)
      continue;
    for (const auto& r : (*b)->records)
      if (r.original_message_id == "mid.1")
        status = r.status_code;
    EXPECT_TRUE(svc.complete_feedback((*b)->lock_token));
  }
  ASSERT_TRUE(status) << "no feedback for mid.1";
  EXPECT_EQ(*status, feedback_status::success);
  // ... because the firehose reported the delivery to dev1's connection.
  EXPECT_TRUE(hub_->wait_log("RabbitMQ event deliver.mqtt-subscription-dev1qos1", 1s, before));

  // A second message while connected: pushed at once, completed the same way.
  message m2;
  m2.message_id = "mid.2";
  m2.body = "again";
  ASSERT_TRUE(svc.send("dev1", m2));
  const auto got2 = device.receive(20s);
  ASSERT_TRUE(got2);
  EXPECT_EQ(got2->second, "again");
  svc.close();
}

TEST_F(rabbit_seam, a_device_that_disconnects_is_absent) {
  const std::size_t before = hub_->log().size();
  {
    client device(node_->mqtt_port(), "dev1");
    ASSERT_EQ(device.connect(device_username("dev1"), device_token("dev1", dev1_key), false), 0);
    ASSERT_TRUE(device.subscribe("devices/dev1/messages/devicebound/#"));
    ASSERT_TRUE(hub_->wait_log("device 'dev1' subscribed", 20s, before));
  }  // disconnects
  EXPECT_TRUE(hub_->wait_log("device 'dev1' disconnected", 20s, before));
}

}  // namespace
