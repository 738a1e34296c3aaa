// End to end over MQTT, across processes: each test starts its own mosquitto on
// a free 127.0.0.1 port and its own devicebound-hub attached to it, and drives
// them with the MQTT transports (include/devicebound/transport/mqtt.hpp) and the
// clients. Service -> hub -> device -> settle -> feedback for every ack mode and
// disposition; expiry and lock timeout with short locks; a broker restart in
// the middle of a stream; a device that drops without settling; malformed
// extension topics; stock (IoT Hub) devices driven by the broker plugin's
// events. Tests wait on events with bounded timeouts, never on sleeps.
#include <gtest/gtest.h>

#include "support/required.hpp"

#if DEVICEBOUND_WITH_MQTT

#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <devicebound/device_client.hpp>
#include <devicebound/retry.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/mosquitto.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
namespace support = devicebound::test_support;
namespace proto = devicebound::codec::protocol;

using extended_device = device_client<mqtt::extended_device_connection>;
using stock_device = device_client<mqtt::iothub_device_connection>;
using service = service_client<mqtt::service_connection>;

// The MQTT IoT Hub mode can only complete (SPEC 1.6): reject/abandon do not compile.
static_assert(!transport_traits<mqtt::iothub_device_connection>::can_reject);
static_assert(!transport_traits<mqtt::iothub_device_connection>::can_abandon);
static_assert(transport_traits<mqtt::extended_device_connection>::can_reject);
static_assert(transport_traits<mqtt::extended_device_connection>::can_abandon);

/// Reconnect fast and give up after 30 s, so a broken test fails instead of hanging.
retry::policy fast_policy() {
  retry::options o;
  o.first = retry::first_retry::immediate;
  o.timeout = 30s;
  return retry::policy(retry::any_backoff(retry::interval{100ms}), o,
                       retry::classifier::of(retry::error_table::consolidated));
}

message make_message(std::string id, std::string body, ack_mode ack = ack_mode::none) {
  message m;
  m.message_id = std::move(id);
  m.body = std::move(body);
  m.ack = ack;
  return m;
}

/// Values pushed by one thread and awaited by another.
template <class T>
class event_log {
 public:
  void push(T v) {
    std::lock_guard<std::mutex> g(m_);
    items_.push_back(std::move(v));
    cv_.notify_all();
  }
  bool wait_for(const std::function<bool(const std::vector<T>&)>& pred,
                std::chrono::milliseconds timeout = 20s) const {
    std::unique_lock<std::mutex> g(m_);
    return cv_.wait_for(g, timeout, [&] { return pred(items_); });
  }
  bool wait_for_size(std::size_t n, std::chrono::milliseconds timeout = 20s) const {
    return wait_for([n](const std::vector<T>& v) { return v.size() >= n; }, timeout);
  }
  std::vector<T> items() const {
    std::lock_guard<std::mutex> g(m_);
    return items_;
  }

 private:
  mutable std::mutex m_;
  mutable std::condition_variable cv_;
  std::vector<T> items_;
};

/// A plain MQTT client on the test's side: publishes raw topics (malformed
/// requests, the broker plugin's events) and records what it receives.
class raw_client {
 public:
  struct received {
    std::string topic;
    std::string payload;
  };

  raw_client(std::uint16_t port, std::string id, std::vector<std::string> filters)
      : session_(
            [port] {
              mqtt::connection_options o;
              o.port = port;
              o.connect_timeout = 5s;
              return o;
            }(),
            std::move(id),
            [this](std::string_view t, std::string_view p) {
              log_.push(received{std::string(t), std::string(p)});
            },
            nullptr) {
    if (auto r = session_.connect(true, filters, std::nullopt); !r)
      throw std::runtime_error("raw client cannot connect: " + r.error().message);
  }

  void publish(const std::string& topic, std::string_view payload = {}) {
    if (auto r = session_.publish(topic, payload); !r)
      throw std::runtime_error("raw publish failed: " + r.error().message);
  }

  /// The first message (in arrival order) whose topic satisfies `pred`.
  std::optional<received> wait_for(const std::function<bool(const received&)>& pred,
                                   std::chrono::milliseconds timeout = 10s) {
    std::optional<received> out;
    log_.wait_for(
        [&](const std::vector<received>& v) {
          for (const auto& r : v)
            if (pred(r)) {
              out = r;
              return true;
            }
          return false;
        },
        timeout);
    return out;
  }

  /// The reply carrying `$.rid=rid`, decoded.
  std::optional<codec::property_bag> wait_reply(const std::string& rid,
                                                std::chrono::milliseconds timeout = 10s) {
    std::optional<codec::property_bag> bag;
    wait_for(
        [&](const received& r) {
          const auto pos = r.topic.find("/reply/");
          if (pos == std::string::npos)
            return false;
          auto b = codec::decode_property_bag(std::string_view(r.topic).substr(pos + 7));
          if (!b)
            return false;
          const std::string* v = proto::find(*b, proto::key_request_id);
          if (!v || *v != rid)
            return false;
          bag = *b;
          return true;
        },
        timeout);
    return bag;
  }

  std::vector<received> messages() const { return log_.items(); }

 private:
  event_log<received> log_;
  mqtt::session session_;
};

/// The `$.code` of a reply bag (0 = success), or -1.
long code_of(const std::optional<codec::property_bag>& bag) {
  if (!bag)
    return -1;
  const std::string* c = proto::find(*bag, proto::key_code);
  return c ? std::stol(*c) : -1;
}

/// This process's TCP sockets connected to 127.0.0.1:`port`.
std::set<int> sockets_to(std::uint16_t port) {
  std::set<int> out;
  for (int fd : mqtt::detail::open_fds()) {
    auto peer = mqtt::detail::tcp_peer(fd);
    if (peer && mqtt::detail::port_of(*peer) == port)
      out.insert(fd);
  }
  return out;
}

bool has_nodelay(int fd) {
  int v = 0;
  socklen_t len = sizeof v;
  return ::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0 && v != 0;
}

class mqtt_e2e : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!support::mosquitto_broker::available())
      DEVICEBOUND_MISSING_PART("mosquitto not found at " << support::default_mosquitto);
    if (!support::hub_daemon::available())
      DEVICEBOUND_MISSING_PART("devicebound-hub not found at " << support::default_hub);
    broker_ = std::make_unique<support::mosquitto_broker>(broker_options());
  }

  void TearDown() override {
    if (HasFailure()) {
      if (hub_)
        std::cerr << "---- devicebound-hub log ----\n" << hub_->log();
      if (broker_)
        std::cerr << "---- mosquitto log ----\n" << broker_->log();
    }
  }

  virtual support::mosquitto_broker::options broker_options() { return {}; }

  void start_hub(std::vector<std::string> args) {
    support::hub_daemon::options o;
    o.broker_port = broker_->port();
    o.args = std::move(args);
    hub_ = std::make_unique<support::hub_daemon>(o);
  }

  mqtt::connection_options opts(std::string client_id = {}) const {
    mqtt::connection_options o;
    o.port = broker_->port();
    o.client_id = std::move(client_id);
    o.connect_timeout = 3s;
    o.request_timeout = 3s;
    o.attach_retry = 500ms;
    return o;
  }

  std::unique_ptr<extended_device> make_device(const std::string& id, mqtt::connection_options o) {
    device_client_options dco;
    dco.receive_timeout = 2s;
    return std::make_unique<extended_device>(mqtt::extended_device_connection(id, std::move(o)),
                                             fast_policy(), dco);
  }
  std::unique_ptr<extended_device> make_device(const std::string& id) {
    return make_device(id, opts());
  }

  std::unique_ptr<service> make_service(std::string id = {}) {
    service_client_options so;
    so.feedback_receive_timeout = 2s;
    return std::make_unique<service>(mqtt::service_connection(opts(std::move(id))), fast_policy(),
                                     std::move(so));
  }

  /// Receives feedback batches (completing each) until `n` records came or 20 s passed.
  std::vector<feedback_record> collect_feedback(service& svc, std::size_t n) {
    std::vector<feedback_record> out;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      auto b = svc.receive_feedback(2s);
      if (!b) {
        ADD_FAILURE() << "receive_feedback: " << b.error().message;
        break;
      }
      if (!*b)
        continue;
      EXPECT_TRUE(svc.complete_feedback(**b));
      for (auto& r : (*b)->records)
        out.push_back(r);
    }
    return out;
  }

  std::unique_ptr<support::mosquitto_broker> broker_;
  std::unique_ptr<support::hub_daemon> hub_;
};

// --- TCP_NODELAY --------------------------------------------------------------------------

TEST_F(mqtt_e2e, TransportSetsTcpNoDelayOnItsBrokerSockets) {
  // Control: a bare Paho client leaves Nagle on (that is the problem being solved).
  {
    MQTTAsync raw = nullptr;
    const std::string uri = "tcp://127.0.0.1:" + std::to_string(broker_->port());
    ASSERT_EQ(
        MQTTAsync_create(&raw, uri.c_str(), "nagle-control", MQTTCLIENT_PERSISTENCE_NONE, nullptr),
        MQTTASYNC_SUCCESS);
    std::mutex m;
    std::condition_variable cv;
    int state = 0;  // 1 connected, 2 failed
    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
    struct ctx_t {
      std::mutex* m;
      std::condition_variable* cv;
      int* state;
    } ctx{&m, &cv, &state};
    co.context = &ctx;
    co.onSuccess = [](void* c, MQTTAsync_successData*) {
      auto* x = static_cast<ctx_t*>(c);
      std::lock_guard<std::mutex> g(*x->m);
      *x->state = 1;
      x->cv->notify_all();
    };
    co.onFailure = [](void* c, MQTTAsync_failureData*) {
      auto* x = static_cast<ctx_t*>(c);
      std::lock_guard<std::mutex> g(*x->m);
      *x->state = 2;
      x->cv->notify_all();
    };
    const auto before = sockets_to(broker_->port());
    ASSERT_EQ(MQTTAsync_connect(raw, &co), MQTTASYNC_SUCCESS);
    {
      std::unique_lock<std::mutex> g(m);
      ASSERT_TRUE(cv.wait_for(g, 10s, [&] { return state != 0; }));
      ASSERT_EQ(state, 1);
    }
    const auto after = sockets_to(broker_->port());
    std::vector<int> fresh;
    for (int fd : after)
      if (!before.count(fd))
        fresh.push_back(fd);
    ASSERT_EQ(fresh.size(), 1u);
    EXPECT_FALSE(has_nodelay(fresh.front())) << "Paho now sets TCP_NODELAY by itself";
    MQTTAsync_disconnectOptions dop = MQTTAsync_disconnectOptions_initializer;
    MQTTAsync_disconnect(raw, &dop);
    MQTTAsync_destroy(&raw);
  }

  start_hub({"--device", "dev1"});
  mqtt::extended_device_connection dev("dev1", opts());
  mqtt::service_connection svc(opts());
  ASSERT_TRUE(dev.open());
  ASSERT_TRUE(svc.open());
  EXPECT_GE(dev.nodelay_sockets(), 1);
  EXPECT_GE(svc.nodelay_sockets(), 1);
  const auto fds = sockets_to(broker_->port());
  ASSERT_GE(fds.size(), 2u);
  for (int fd : fds)
    EXPECT_TRUE(has_nodelay(fd)) << "socket " << fd << " to the broker still has Nagle on";

  // And it shows: a request/reply round trip is far below Nagle's ~40-90 ms.
  ASSERT_TRUE(svc.queue_depth("dev1"));
  std::vector<double> ms;
  for (int i = 0; i < 21; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(svc.queue_depth("dev1"));
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  EXPECT_LT(ms[ms.size() / 2], 30.0) << "median request round trip, ms";
  // The daemon logs how many of its sockets it set.
  EXPECT_NE(hub_->log().find("TCP_NODELAY on 1 socket"), std::string::npos);
}

// --- the lifecycle --------------------------------------------------------------------------

TEST_F(mqtt_e2e, EveryAckModeAndDispositionEndsInTheRightFeedback) {
  start_hub({"--device", "dev1", "--max-delivery-count", "2", "--feedback-batch-interval", "0s",
             "--hub-name", "e2e-hub"});
  auto svc = make_service();
  auto dev = make_device("dev1");

  const std::vector<std::pair<ack_mode, std::string>> acks = {{ack_mode::none, "none"},
                                                              {ack_mode::positive, "positive"},
                                                              {ack_mode::negative, "negative"},
                                                              {ack_mode::full, "full"}};
  const std::vector<std::string> dispositions = {"complete", "reject", "abandon"};
  const auto t_send = std::chrono::time_point_cast<duration>(std::chrono::system_clock::now());
  std::uint64_t last_seq = 0;
  for (const auto& [ack, ack_name] : acks)
    for (const auto& d : dispositions) {
      message m = make_message(ack_name + "-" + d, "body of " + ack_name + "-" + d, ack);
      if (ack == ack_mode::full && d == "complete") {
        m.correlation_id = "corr-1";
        m.content_type = "application/json";
        m.content_encoding = "utf-8";
        m.expiry_time_utc = t_send + 10min;
        m.creation_time_utc = t_send - 1s;
        m.app_properties = {{"unit", "C"}, {"x-empty", ""}, {"odd", "a&b%e+#|~"}};
        m.body = std::string("{\"t\":21.5}\0\xff", 13);
      }
      auto r = svc->send("dev1", m);
      ASSERT_TRUE(r) << r.error().message;
      EXPECT_GT(r->sequence_number, last_seq);
      last_seq = r->sequence_number;
    }
  auto depth = svc->queue_depth("dev1");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 12u);

  std::map<std::string, int> deliveries;
  std::size_t settled_terminally = 0;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (settled_terminally < 12 && std::chrono::steady_clock::now() < deadline) {
    auto r = dev->receive(2s);
    ASSERT_TRUE(r) << r.error().message;
    if (!*r)
      continue;
    const message& m = **r;
    ASSERT_TRUE(m.message_id && m.lock_token);
    const std::string mid = *m.message_id;
    const int n = deliveries[mid]++;
    EXPECT_EQ(m.delivery_count, static_cast<std::uint32_t>(n)) << mid;
    EXPECT_TRUE(m.enqueued_time_utc.has_value());
    EXPECT_EQ(m.to, "/devices/dev1/messages/devicebound");
    if (mid == "full-complete") {
      EXPECT_EQ(m.correlation_id, "corr-1");
      EXPECT_EQ(m.content_type, "application/json");
      EXPECT_EQ(m.content_encoding, "utf-8");
      EXPECT_EQ(m.expiry_time_utc, t_send + 10min);
      EXPECT_EQ(m.creation_time_utc, t_send - 1s);
      EXPECT_EQ(m.ack, ack_mode::full);
      EXPECT_EQ(m.app_properties.at("unit"), "C");
      EXPECT_EQ(m.app_properties.at("x-empty"), "");
      EXPECT_EQ(m.app_properties.at("odd"), "a&b%e+#|~");
      EXPECT_EQ(m.app_properties.size(), 3u);
      EXPECT_EQ(m.body, std::string("{\"t\":21.5}\0\xff", 13));
    } else {
      EXPECT_EQ(m.body, "body of " + mid);
    }
    if (mid.ends_with("-complete")) {
      ASSERT_TRUE(dev->complete(m));
      ++settled_terminally;
    } else if (mid.ends_with("-reject")) {
      ASSERT_TRUE(dev->reject(m));
      ++settled_terminally;
    } else {
      ASSERT_TRUE(dev->abandon(m));
      if (n == 1)
        ++settled_terminally;  // the second abandon reaches max delivery count 2
    }
  }
  ASSERT_EQ(settled_terminally, 12u);
  for (const auto& [mid, n] : deliveries)
    EXPECT_EQ(n, mid.ends_with("-abandon") ? 2 : 1) << mid;

  depth = svc->queue_depth("dev1");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 0u);

  const std::set<std::pair<std::string, feedback_status>> expected = {
      {"positive-complete", feedback_status::success},
      {"negative-reject", feedback_status::rejected},
      {"negative-abandon", feedback_status::delivery_count_exceeded},
      {"full-complete", feedback_status::success},
      {"full-reject", feedback_status::rejected},
      {"full-abandon", feedback_status::delivery_count_exceeded}};
  const auto records = collect_feedback(*svc, expected.size());
  std::set<std::pair<std::string, feedback_status>> got;
  for (const auto& r : records) {
    got.emplace(r.original_message_id, r.status_code);
    EXPECT_EQ(r.device_id, "dev1");
    EXPECT_FALSE(r.device_generation_id.empty());
    EXPECT_EQ(r.description, std::string(to_string(r.status_code)));
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(records.size(), expected.size());
}

TEST_F(mqtt_e2e, HandlerDeviceAndFeedbackHandlerService) {
  start_hub({"--device", "dev1", "--feedback-batch-interval", "0s"});
  auto svc = make_service();
  auto dev = make_device("dev1");
  event_log<std::string> handled;
  dev->set_message_handler([&](const message& m) {
    handled.push(*m.message_id);
    return disposition::complete;
  });
  event_log<feedback_record> feedback;
  svc->set_feedback_handler([&](const feedback_batch& b) {
    for (const auto& r : b.records)
      feedback.push(r);
    return feedback_disposition::complete;
  });
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(svc->send("dev1", make_message("h" + std::to_string(i), "x", ack_mode::positive)));
  ASSERT_TRUE(handled.wait_for_size(20));
  ASSERT_TRUE(feedback.wait_for_size(20));
  std::set<std::string> ids;
  for (const auto& r : feedback.items()) {
    EXPECT_EQ(r.status_code, feedback_status::success);
    ids.insert(r.original_message_id);
  }
  EXPECT_EQ(ids.size(), 20u);
}

TEST_F(mqtt_e2e, AbandonedFeedbackBatchIsDeliveredAgain) {
  start_hub({"--device", "dev1", "--feedback-batch-interval", "0s"});
  auto svc = make_service();
  auto dev = make_device("dev1");
  ASSERT_TRUE(svc->send("dev1", make_message("fb", "x", ack_mode::full)));
  auto m = dev->receive(10s);
  ASSERT_TRUE(m && *m);
  ASSERT_TRUE(dev->reject(**m));
  auto b1 = svc->receive_feedback(10s);
  ASSERT_TRUE(b1 && *b1);
  EXPECT_EQ((*b1)->delivery_count, 1u);
  ASSERT_TRUE(svc->abandon_feedback(**b1));
  auto b2 = svc->receive_feedback(10s);
  ASSERT_TRUE(b2 && *b2);
  EXPECT_EQ((*b2)->records, (*b1)->records);
  EXPECT_NE((*b2)->lock_token, (*b1)->lock_token);
  EXPECT_EQ((*b2)->delivery_count, 2u);
  auto stale = svc->complete_feedback(**b1);
  EXPECT_FALSE(stale);
  ASSERT_TRUE(svc->complete_feedback(**b2));
  ASSERT_EQ((*b2)->records.size(), 1u);
  EXPECT_EQ((*b2)->records[0].status_code, feedback_status::rejected);
}

// --- timers ---------------------------------------------------------------------------------

TEST_F(mqtt_e2e, ExpiredMessageIsDeadLetteredWithFeedback) {
  start_hub({"--device", "dev1", "--feedback-batch-interval", "0s"});
  auto svc = make_service();
  message m = make_message("short-lived", "x", ack_mode::negative);
  m.expiry_time_utc =
      std::chrono::time_point_cast<duration>(std::chrono::system_clock::now()) + 2500ms;
  auto r = svc->send("dev1", m);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->expiry_time_utc, *m.expiry_time_utc);
  // Nobody receives it: the daemon's timer dead-letters it at its expiry.
  const auto records = collect_feedback(*svc, 1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].original_message_id, "short-lived");
  EXPECT_EQ(records[0].status_code, feedback_status::expired);
  EXPECT_GE(records[0].enqueued_time_utc, *m.expiry_time_utc);
  auto depth = svc->queue_depth("dev1");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 0u);
}

TEST_F(mqtt_e2e, LockTimeoutRedeliversAndTheOldTokenIsLost) {
  start_hub({"--device", "dev1", "--lock-duration", "1s", "--feedback-batch-interval", "0s"});
  auto svc = make_service();
  auto dev = make_device("dev1");
  ASSERT_TRUE(svc->send("dev1", make_message("slow", "x", ack_mode::positive)));
  auto first = dev->receive(10s);
  ASSERT_TRUE(first && *first);
  auto again = dev->receive(10s);  // not settled: comes back when the 1 s lock expires
  ASSERT_TRUE(again && *again);
  EXPECT_EQ((*again)->message_id, "slow");
  EXPECT_EQ((*again)->sequence_number, (*first)->sequence_number);
  EXPECT_EQ((*again)->delivery_count, 0u);  // lock expiry does not count (SPEC 1.4)
  EXPECT_NE((*again)->lock_token, (*first)->lock_token);
  auto stale = dev->complete(**first);
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.code(), errc::device_message_lock_lost);
  ASSERT_TRUE(dev->complete(**again));
  const auto records = collect_feedback(*svc, 1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].status_code, feedback_status::success);
  EXPECT_NE(hub_->log().find("expired: it will be delivered again"), std::string::npos);
}

// --- faults ---------------------------------------------------------------------------------

TEST_F(mqtt_e2e, DeviceThatDropsWithoutSettlingGetsTheMessageAgain) {
  start_hub({"--device", "dev1", "--lock-duration", "1s", "--feedback-batch-interval", "0s"});
  auto svc = make_service();
  ASSERT_TRUE(svc->send("dev1", make_message("m1", "x", ack_mode::positive)));
  std::uint64_t seq = 0;
  {
    mqtt::extended_device_connection dev("dev1", opts());
    const auto before = sockets_to(broker_->port());
    ASSERT_TRUE(dev.open());
    auto m = dev.receive(10s);
    ASSERT_TRUE(m && *m);
    seq = (*m)->sequence_number;
    // Pull the network from under it: no goodbye, the broker publishes its will.
    for (int fd : sockets_to(broker_->port()))
      if (!before.count(fd))
        ::shutdown(fd, SHUT_RDWR);
    auto lost = dev.receive(5s);
    ASSERT_FALSE(lost);
    EXPECT_EQ(lost.code(), errc::not_connected);
  }
  auto dev = make_device("dev1");
  auto m = dev->receive(10s);
  ASSERT_TRUE(m && *m) << (m ? "no message" : m.error().message);
  EXPECT_EQ((*m)->message_id, "m1");
  EXPECT_EQ((*m)->sequence_number, seq);
  ASSERT_TRUE(dev->complete(**m));
  const auto records = collect_feedback(*svc, 1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].status_code, feedback_status::success);
  EXPECT_NE(hub_->log().find("device 'dev1' detached"), std::string::npos);
}

TEST_F(mqtt_e2e, BrokerRestartMidStreamLosesNothingAccepted) {
  // A queue deep enough for every send: while the device re-attaches after the
  // outage its queue fills, and past 50 the hub would rightly answer 403004
  // (not retried) -- this test is about the broker restart, not the limit.
  start_hub({"--device", "dev1", "--lock-duration", "2s", "--reconnect-initial", "50ms",
             "--reconnect-max", "500ms", "--max-queue-depth", "1000"});
  auto svc = make_service();
  auto dev = make_device("dev1");
  std::mutex m;
  std::condition_variable cv;
  std::set<std::string> received;
  std::size_t deliveries = 0;
  bool broker_down = false;
  bool service_saw_loss = false;
  svc->set_connection_status_callback([&](connection_status st, connection_status_reason) {
    std::lock_guard<std::mutex> g(m);
    if (st == connection_status::disconnected)
      service_saw_loss = true;
    cv.notify_all();
  });
  dev->set_message_handler([&](const message& msg) {
    {
      std::lock_guard<std::mutex> g(m);
      received.insert(*msg.message_id);
      ++deliveries;
    }
    cv.notify_all();
    return disposition::complete;
  });
  dev->set_error_handler([](const error&) {});  // 412002 after the outage: redelivered

  constexpr int n = 300;
  constexpr int before_outage = 150;
  std::set<std::string> accepted;
  std::atomic<int> failed{0};
  std::string first_failure;
  std::thread sender([&] {
    for (int i = 0; i < n; ++i) {
      if (i == before_outage) {  // the rest is sent into the outage
        std::unique_lock<std::mutex> g(m);
        cv.wait_for(g, 30s, [&] { return broker_down; });
      }
      const std::string id = "s" + std::to_string(i);
      auto r = svc->send("dev1", make_message(id, "payload " + id));
      std::lock_guard<std::mutex> g(m);
      if (r) {
        accepted.insert(id);
      } else {
        if (failed++ == 0)
          first_failure = std::to_string(r.error().numeric()) + " " + r.error().message;
      }
      cv.notify_all();
    }
  });
  {
    std::unique_lock<std::mutex> g(m);
    ASSERT_TRUE(cv.wait_for(g, 30s, [&] { return accepted.size() >= before_outage; }));
  }
  broker_->stop();  // SIGTERM by PID; no persistence: every session and queue is gone
  {
    std::unique_lock<std::mutex> g(m);
    broker_down = true;
    cv.notify_all();
    // The sender is now failing (and retrying) against the dead broker.
    EXPECT_TRUE(cv.wait_for(g, 10s, [&] { return service_saw_loss; }));
  }
  broker_->restart();  // the same port again
  sender.join();
  EXPECT_EQ(failed.load(), 0) << "sends that gave up (the retry policy allows 30 s); first: "
                              << first_failure;
  {
    std::unique_lock<std::mutex> g(m);
    EXPECT_EQ(accepted.size(), static_cast<std::size_t>(n));
    const bool all = cv.wait_for(g, 60s, [&] {
      return std::includes(received.begin(), received.end(), accepted.begin(), accepted.end());
    });
    std::vector<std::string> missing;
    std::set_difference(accepted.begin(), accepted.end(), received.begin(), received.end(),
                        std::back_inserter(missing));
    EXPECT_TRUE(all) << missing.size() << " accepted message(s) never delivered, e.g. "
                     << (missing.empty() ? "" : missing.front());
    EXPECT_GE(deliveries, accepted.size());  // at least once; duplicates allowed
  }
  const std::string log = hub_->log();
  EXPECT_NE(log.find("lost the broker connection"), std::string::npos);
  EXPECT_NE(log.find("connected to the broker", log.find("lost the broker connection")),
            std::string::npos);
  // Everything accepted ends completed: the queue drains.
  bool drained = false;
  for (int i = 0; i < 100 && !drained; ++i) {
    auto d = svc->queue_depth("dev1");
    drained = d && *d == 0;
    if (!drained) {
      std::unique_lock<std::mutex> g(m);
      cv.wait_for(g, 200ms);  // bounded: deliveries wake it early
    }
  }
  EXPECT_TRUE(drained);
}

TEST_F(mqtt_e2e, MalformedExtensionTopicsAreAnsweredOrIgnored) {
  start_hub({"--device", "dev1"});
  raw_client raw(broker_->port(), "raw",
                 {proto::client_filter(proto::party::service, "raw"),
                  proto::client_filter(proto::party::device, "dev1"),
                  proto::client_filter(proto::party::admin, "raw")});
  const std::string svc_head = "devicebound/hub/service/raw/";
  const std::string dev_head = "devicebound/hub/device/dev1/";
  struct case_t {
    std::string topic;
    std::string payload;
    std::string rid;
    long code;  ///< expected $.code; -1: no reply expected
  };
  const std::vector<case_t> cases = {
      {svc_head + "send/dev1/%ZZ&%24.rid=r1", "", "r1", 400005},           // bad escape
      {svc_head + "frobnicate/%24.rid=r2", "", "r2", 400005},              // unknown operation
      {dev_head + "complete/%24.rid=r3", "", "r3", 400005},                // no lock token
      {dev_head + "complete/%24.rid=r4&%24.lock=nope", "", "r4", 400005},  // bad lock token
      {dev_head + "complete/%24.rid=r5&%24.lock=00000000-0000-0000-0000-000000000001", "", "r5",
       412002},                                                                 // unknown token
      {svc_head + "send/dev1/%24.rid=r6&%24.exp=yesterday", "", "r6", 400005},  // bad time
      {svc_head + "send/dev1/%24.rid=r7&iothub-ack=sometimes", "", "r7", 400005},
      {svc_head + "send/dev1/%24.rid=r8&bad%20name=1", "", "r8", 400004},  // property name
      {svc_head + "send/dev1/%24.rid=r9", std::string(70 * 1024, 'x'), "r9", 413001},
      {svc_head + "send/nobody/%24.rid=r10", "", "r10", 404001},
      {svc_head + "send/dev1/%24.rid=r11&a=1&a=2", "", "r11", 400005},  // duplicate key
      {svc_head + "purge/%24.rid=r12", "", "r12", 400005},              // no device id
      {svc_head + "feedback-complete/%24.rid=r13&%24.lock=00000000-0000-0000-0000-000000000002", "",
       "r13", 412002},
      {svc_head + "depth/dev1/%24.rid=r14&%24.rid=r14", "", "", -1},  // duplicate rid: no rid
      {dev_head + "send/dev1/%24.rid=r15", "", "r15", 400005},        // devices take no target
      {"devicebound/hub/admin/raw/frob/%24.rid=r16", "", "r16", 400005},
      {"devicebound/hub/nobody/x/y/z", "", "", -1},
      {"devicebound/hub", "", "", -1},
      {"devicebound/hub/service/bad%2Fid/send/dev1/%24.rid=r17", "", "", -1},
      {"devicebound/hub/service/raw/send/dev1/extra/level/%24.rid=r18", "", "", -1},
      {"devicebound/broker/subscribed", "", "", -1},
      {"devicebound/broker/subscribed/", "", "", -1},
      {"devicebound/broker/delivered/dev1", "devices/dev1/messages/devicebound/garbage", "", -1},
      {"devicebound/broker/unheard-of/dev1", "\x01\x02", "", -1},
      {"devicebound/broker/disconnected/unknown-device", "", "", -1},
      {dev_head + "detach/%24.conn=someone-else", "", "", -1},
      {dev_head + "attach/%24.rid=r19&%24.max=lots", "", "r19", 0},  // window falls back to 1
      {dev_head + "detach/", "", "", -1},
  };
  for (const auto& c : cases)
    raw.publish(c.topic, c.payload);
  for (const auto& c : cases) {
    if (c.rid.empty())
      continue;
    auto reply = raw.wait_reply(c.rid);
    ASSERT_TRUE(reply) << "no reply to " << c.topic;
    EXPECT_EQ(code_of(reply), c.code) << c.topic;
    if (c.code != 0) {
      EXPECT_NE(proto::find(*reply, proto::key_error), nullptr) << c.topic;
    }
  }
  // Still alive and correct after all that.
  EXPECT_TRUE(hub_->running());
  auto svc = make_service();
  auto dev = make_device("dev1");
  ASSERT_TRUE(svc->send("dev1", make_message("after", "ok")));
  auto m = dev->receive(10s);
  ASSERT_TRUE(m && *m);
  EXPECT_EQ((*m)->message_id, "after");
  ASSERT_TRUE(dev->complete(**m));
  EXPECT_NE(hub_->log().find("ignored a malformed request"), std::string::npos);
}

// --- service operations ---------------------------------------------------------------------

TEST_F(mqtt_e2e, PurgeQueueDepthUnknownDeviceAndQueueFull) {
  start_hub({"--device", "dev1", "--max-queue-depth", "3", "--feedback-batch-interval", "0s"});
  auto svc = make_service();
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(svc->send("dev1", make_message("p" + std::to_string(i), "x",
                                               i == 0 ? ack_mode::negative : ack_mode::none)));
  auto full = svc->send("dev1", make_message("p3", "x"));
  ASSERT_FALSE(full);
  EXPECT_EQ(full.code(), errc::device_maximum_queue_depth_exceeded);
  auto unknown = svc->send("nobody", make_message("u", "x"));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.code(), errc::device_not_found);
  auto bad_id = svc->send("bad/id", make_message("u", "x"));
  ASSERT_FALSE(bad_id);
  EXPECT_EQ(bad_id.code(), errc::argument_invalid);
  auto depth = svc->queue_depth("dev1");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 3u);
  auto purged = svc->purge("dev1");
  ASSERT_TRUE(purged);
  EXPECT_EQ(*purged, 3u);
  depth = svc->queue_depth("dev1");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 0u);
  auto no_depth = svc->queue_depth("nobody");
  ASSERT_FALSE(no_depth);
  EXPECT_EQ(no_depth.code(), errc::device_not_found);
  const auto records = collect_feedback(*svc, 1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].original_message_id, "p0");
  EXPECT_EQ(records[0].status_code, feedback_status::purged);
}

TEST_F(mqtt_e2e, AdminRegistrationAndAutoRegister) {
  start_hub({});
  raw_client admin(broker_->port(), "ops", {proto::client_filter(proto::party::admin, "ops")});
  auto svc = make_service();
  auto before = svc->send("new1", make_message("a", "x"));
  ASSERT_FALSE(before);
  EXPECT_EQ(before.code(), errc::device_not_found);
  admin.publish(proto::request_head(proto::party::admin, "ops", proto::op_add, "new1") +
                "%24.rid=add1");
  auto added = admin.wait_reply("add1");
  ASSERT_EQ(code_of(added), 0);
  EXPECT_NE(proto::find(*added, proto::key_generation_id), nullptr);
  admin.publish(proto::request_head(proto::party::admin, "ops", proto::op_add, "new1") +
                "%24.rid=add2");
  EXPECT_EQ(code_of(admin.wait_reply("add2")), 409001);
  ASSERT_TRUE(svc->send("new1", make_message("a", "x")));
  // An unregistered extended device is refused when it attaches (404001 is fatal).
  auto stranger = make_device("stranger");
  auto r = stranger->receive(5s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::device_not_found);
  admin.publish(proto::request_head(proto::party::admin, "ops", proto::op_remove, "new1") +
                "%24.rid=rm1");
  EXPECT_EQ(code_of(admin.wait_reply("rm1")), 0);
  auto after = svc->send("new1", make_message("b", "x"));
  ASSERT_FALSE(after);
  EXPECT_EQ(after.code(), errc::device_not_found);

  // With --auto-register, a send or an attach registers the device.
  ASSERT_EQ(hub_->stop(), 0);
  start_hub({"--auto-register"});
  auto svc2 = make_service();
  ASSERT_TRUE(svc2->send("fresh", make_message("c", "x")));
  auto dev = make_device("fresh");
  auto m = dev->receive(10s);
  ASSERT_TRUE(m && *m);
  EXPECT_EQ((*m)->message_id, "c");
  ASSERT_TRUE(dev->complete(**m));
}

TEST_F(mqtt_e2e, DaemonStopsCleanlyOnSigtermAndSigint) {
  start_hub({"--device", "dev1"});
  EXPECT_EQ(hub_->stop(SIGTERM), 0);
  EXPECT_NE(hub_->log().find("stopping"), std::string::npos);
  start_hub({"--device", "dev1"});
  EXPECT_EQ(hub_->stop(SIGINT), 0);
  // While the broker is away the daemon keeps retrying, and still stops on request.
  start_hub({"--device", "dev1", "--reconnect-initial", "50ms", "--reconnect-max", "200ms"});
  broker_->stop();
  EXPECT_EQ(hub_->stop(SIGTERM), 0);
}

TEST_F(mqtt_e2e, TomlConfigurationAndRefusedConfigurations) {
  support::hub_daemon::options o;
  o.broker_port = broker_->port();
  o.config_toml = R"(devices = ["cfg1"]
[hub]
name = "toml-hub"
lock_duration = "1s"
feedback_batch_interval = "0s"
[delivery]
max_in_flight = 2
[log]
level = "info"
)";
  hub_ = std::make_unique<support::hub_daemon>(o);
  auto svc = make_service();
  auto dev = make_device("cfg1");
  ASSERT_TRUE(svc->send("cfg1", make_message("t1", "x", ack_mode::full)));
  auto first = dev->receive(10s);
  ASSERT_TRUE(first && *first);
  auto again = dev->receive(10s);  // the 1 s lock of the file expired
  ASSERT_TRUE(again && *again);
  EXPECT_EQ((*again)->message_id, "t1");
  ASSERT_TRUE(dev->reject(**again));
  auto batch = svc->receive_feedback(10s);
  ASSERT_TRUE(batch && *batch);
  EXPECT_EQ((*batch)->user_id, "toml-hub");
  ASSERT_EQ((*batch)->records.size(), 1u);
  EXPECT_EQ((*batch)->records[0].status_code, feedback_status::rejected);
  ASSERT_TRUE(svc->complete_feedback(**batch));
  EXPECT_NE(hub_->log().find("lock 1000 ms"), std::string::npos);

  // Refused at start, exit code 2, with a line naming the problem.
  support::temp_dir dir;
  const auto refused = [&](std::vector<std::string> args, const std::string& toml) {
    std::vector<std::string> argv{support::default_hub, "--port", std::to_string(broker_->port())};
    if (!toml.empty()) {
      std::ofstream(dir.file("bad.toml")) << toml;
      argv.push_back("--config");
      argv.push_back(dir.file("bad.toml"));
    }
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string log = dir.file("refused.log");
    std::ofstream(log, std::ios::trunc).close();
    support::child_process p(argv, log);
    const auto code = p.wait_exit(10s);
    return std::make_pair(code, support::read_file(log));
  };
  auto [c1, l1] = refused({}, "[hub]\nlock_duration = \"forever\"\n");
  EXPECT_EQ(c1, 2);
  EXPECT_NE(l1.find("hub.lock_duration"), std::string::npos) << l1;
  auto [c2, l2] = refused({"--lock-duration", "0s"}, "");
  EXPECT_EQ(c2, 2);
  EXPECT_NE(l2.find("lock_duration must be between"), std::string::npos) << l2;
  auto [c3, l3] = refused({}, "this is not toml = = =\n");
  EXPECT_EQ(c3, 2);
  auto [c4, l4] = refused({"--log-level", "chatty"}, "");
  EXPECT_EQ(c4, 2);
  EXPECT_NE(l4.find("chatty"), std::string::npos) << l4;
  // Usage errors CLI11 itself finds exit 2 too, not with CLI11's codes (105, 109, ...).
  auto [c5, l5] = refused({"--in-memory", "--store", dir.file("hub.db")}, "");
  EXPECT_EQ(c5, 2) << l5;  // conflicting flags (CLI11: 105)
  EXPECT_NE(l5.find("excludes --store"), std::string::npos) << l5;
  auto [c6, l6] = refused({"--no-such-flag"}, "");
  EXPECT_EQ(c6, 2) << l6;  // unknown flag (CLI11: 109)
  EXPECT_NE(l6.find("--no-such-flag"), std::string::npos) << l6;
  auto [c7, l7] = refused({"--max-in-flight", "many"}, "");
  EXPECT_EQ(c7, 2) << l7;  // not a number (CLI11: 105)
  auto [c8, l8] = refused({"--help"}, "");
  EXPECT_EQ(c8, 0) << l8;
  EXPECT_NE(l8.find("--in-memory"), std::string::npos) << l8;
}

// --- stock (IoT Hub) devices -------------------------------------------------------------------

/// Sends before the device exists, then plays the broker plugin's part: the
/// `subscribed` event makes the hub publish on the IoT Hub topic, and the
/// `delivered` event (the broker handing it to the device) completes it.
TEST_F(mqtt_e2e, StockDeviceDrivenByBrokerEvents) {
  start_hub({"--device", "stock1", "--feedback-batch-interval", "0s", "--lock-duration", "2s"});
  auto svc = make_service();
  message m = make_message("iot-1", "hello", ack_mode::full);
  m.app_properties = {{"k", "v&w"}};
  ASSERT_TRUE(svc->send("stock1", m));

  // The test is the plugin: it watches what the broker hands to the device.
  raw_client plugin(broker_->port(), "fake-plugin",
                    {codec::devicebound_topic_filter("stock1"),
                     proto::client_filter(proto::party::admin, "fake-plugin")});
  // The broker keeps one client's publishes in order: a ping after an event is
  // answered after the daemon has handled the event.
  int pings = 0;
  const auto ping = [&] {
    const std::string rid = "ping" + std::to_string(++pings);
    plugin.publish(proto::request_head(proto::party::admin, "fake-plugin", proto::op_ping) +
                   "%24.rid=" + rid);
    ASSERT_EQ(code_of(plugin.wait_reply(rid)), 0);
  };
  auto dev = std::make_unique<stock_device>(mqtt::iothub_device_connection("stock1", opts()),
                                            fast_policy());
  ASSERT_TRUE(dev->connect());
  // Not announced yet: nothing is pushed, the message waits in the hub's queue.
  auto depth = svc->queue_depth("stock1");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 1u);
  plugin.publish("devicebound/broker/subscribed/stock1", codec::devicebound_topic_filter("stock1"));

  auto got = dev->receive(10s);
  ASSERT_TRUE(got && *got) << (got ? "no message" : got.error().message);
  EXPECT_EQ((*got)->message_id, "iot-1");
  EXPECT_EQ((*got)->body, "hello");
  EXPECT_EQ((*got)->app_properties.at("k"), "v&w");
  EXPECT_EQ((*got)->ack, ack_mode::full);
  ASSERT_TRUE(dev->complete(**got));  // local: the PUBACK went out on receipt

  // IoT Hub's own topic, as a stock SDK reads it.
  auto seen = plugin.wait_for([](const raw_client::received& r) {
    return r.topic.starts_with("devices/stock1/messages/devicebound/");
  });
  ASSERT_TRUE(seen);
  EXPECT_NE(seen->topic.find("%24.mid=iot-1"), std::string::npos) << seen->topic;
  EXPECT_NE(seen->topic.find("iothub-ack=full"), std::string::npos) << seen->topic;
  EXPECT_EQ(seen->topic.find("%24.lock"), std::string::npos) << "no extension keys for stock";
  plugin.publish("devicebound/broker/delivered/stock1", seen->topic);
  const auto records = collect_feedback(*svc, 1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].original_message_id, "iot-1");
  EXPECT_EQ(records[0].status_code, feedback_status::success);

  // After `disconnected` nothing is pushed; the next `subscribed` delivers.
  plugin.publish("devicebound/broker/disconnected/stock1");
  ping();
  ASSERT_TRUE(svc->send("stock1", make_message("iot-2", "again")));
  depth = svc->queue_depth("stock1");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 1u);
  plugin.publish("devicebound/broker/subscribed/stock1", codec::devicebound_topic_filter("stock1"));
  auto second = dev->receive(10s);
  ASSERT_TRUE(second && *second);
  EXPECT_EQ((*second)->message_id, "iot-2");
  // Not delivered by the (fake) broker plugin: the lock expires, it comes again.
  auto third = dev->receive(10s);
  ASSERT_TRUE(third && *third);
  EXPECT_EQ((*third)->message_id, "iot-2");
}

#ifdef DEVICEBOUND_BROKER_PLUGIN
class mqtt_e2e_plugin : public mqtt_e2e {
 protected:
  support::mosquitto_broker::options broker_options() override {
    support::mosquitto_broker::options o;
    o.extra_config = {std::string("plugin ") + DEVICEBOUND_BROKER_PLUGIN};
    return o;
  }
};

/// The same with the real mosquitto plugin (broker/): its events drive the hub.
TEST_F(mqtt_e2e_plugin, StockDeviceWithTheRealBrokerPlugin) {
  start_hub({"--device", "stock2", "--feedback-batch-interval", "0s"});
  auto svc = make_service();
  ASSERT_TRUE(svc->send("stock2", make_message("before-connect", "1", ack_mode::positive)));
  auto dev = std::make_unique<stock_device>(mqtt::iothub_device_connection("stock2", opts()),
                                            fast_policy());
  ASSERT_TRUE(dev->connect());
  std::set<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    if (i == 1) {
      ASSERT_TRUE(svc->send("stock2", make_message("while-connected", "2", ack_mode::positive)));
    }
    auto m = dev->receive(10s);
    ASSERT_TRUE(m && *m) << (m ? "no message" : m.error().message);
    ids.insert(*(*m)->message_id);
    ASSERT_TRUE(dev->complete(**m));
  }
  EXPECT_EQ(ids, (std::set<std::string>{"before-connect", "while-connected"}));
  const auto records = collect_feedback(*svc, 2);
  ASSERT_EQ(records.size(), 2u);
  for (const auto& r : records)
    EXPECT_EQ(r.status_code, feedback_status::success);
  auto depth = svc->queue_depth("stock2");
  ASSERT_TRUE(depth);
  EXPECT_EQ(*depth, 0u);
}
#endif

}  // namespace

#else  // built without the MQTT transport

TEST(mqtt_e2e, Skipped) {
  DEVICEBOUND_MISSING_PART(
      "built without DEVICEBOUND_BUILD_APPS (no Paho MQTT C / devicebound-hub)");
}

#endif
