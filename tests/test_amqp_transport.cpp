// The AMQP transport (include/devicebound/transport/amqp.hpp) against a real
// devicebound-hub with its AMQP front door, over TLS with a certificate made
// for the test, SAS keys from an auth file: device and service clients built
// from IoT Hub connection strings; send -> receive -> complete / reject /
// abandon -> feedback; token renewal with a short TTL; typed errors (unknown
// device, wrong key, lost lock, untrusted certificate). Every wait is on an
// event with a bound, never a sleep.
//
// The daemon: the one this build made (it has the AMQP door whenever this test
// is built), or $DEVICEBOUND_AMQP_HUB to try another. No daemon, mosquitto or
// openssl skips the tests (fails under DEVICEBOUND_REQUIRE_ALL=1).
#include <gtest/gtest.h>

#include "support/required.hpp"

#if DEVICEBOUND_WITH_MQTT

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <devicebound/device_client.hpp>
#include <devicebound/retry.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/amqp.hpp>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/mosquitto.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
namespace support = devicebound::test_support;

using amqp_device = device_client<amqp::device_connection>;
using amqp_service = service_client<amqp::service_connection>;

// DESIGN principle 3: over AMQP a device has full settlement; IoT Hub's AMQP
// has no purge and no queue depth (HTTPS only), so the service client refuses
// them at compile time.
static_assert(transport_traits<amqp::device_connection>::can_reject);
static_assert(transport_traits<amqp::device_connection>::can_abandon);
static_assert(!transport_traits<amqp::device_connection>::settles_in_order);
static_assert(!transport_traits<amqp::service_connection>::can_purge);
static_assert(!transport_traits<amqp::service_connection>::can_query_queue_depth);

const std::string device_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const std::string service_key = "ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==";
const std::string other_key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

std::string hub_executable() {
  const char* env = std::getenv("DEVICEBOUND_AMQP_HUB");
  return env && *env ? std::string(env) : std::string(support::default_hub);
}

/// Runs a command to completion; true on exit code 0.
bool run(const std::vector<std::string>& argv, const std::string& log) {
  support::child_process c(argv, log);
  const auto code = c.wait_exit(60s);
  return code && *code == 0;
}

std::string find_openssl() {
  for (const char* p : {"/usr/bin/openssl", "/usr/local/bin/openssl"})
    if (support::is_executable(p))
      return p;
  return {};
}

/// A self-signed certificate for `localhost`: the server's, and the clients' CA file.
bool make_certificate(const support::temp_dir& dir, const std::string& openssl,
                      const std::string& name) {
  return run({openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
              dir.file(name + ".key"), "-out", dir.file(name + ".pem"), "-days", "2", "-subj",
              "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"},
             dir.file("openssl.log"));
}

/// Reconnect fast and give up after 20 s, so a broken test fails instead of hanging.
retry::policy fast_policy() {
  retry::options o;
  o.first = retry::first_retry::immediate;
  o.timeout = 20s;
  return retry::policy(retry::any_backoff(retry::interval{100ms}), o,
                       retry::classifier::of(retry::error_table::consolidated));
}

message make_message(std::string id, std::string body, ack_mode ack = ack_mode::full) {
  message m;
  m.message_id = std::move(id);
  m.body = std::move(body);
  m.ack = ack;
  return m;
}

class amqp_transport : public ::testing::Test {
 protected:
  void SetUp() override {
    hub_path_ = hub_executable();
    if (!support::mosquitto_broker::available())
      DEVICEBOUND_MISSING_PART("mosquitto not found at " << support::default_mosquitto);
    if (!support::hub_daemon::available(hub_path_))
      DEVICEBOUND_MISSING_PART("devicebound-hub not found at " << hub_path_);
    openssl_ = find_openssl();
    if (openssl_.empty())
      DEVICEBOUND_MISSING_PART("openssl (to make the test's TLS certificate) not found");
    ASSERT_TRUE(make_certificate(dir_, openssl_, "server"))
        << support::read_file(dir_.file("openssl.log"));
    {
      std::ofstream f(dir_.file("auth.txt"));
      f << "dev1 " << device_key << "\n"
        << "dev2 " << device_key << "\n"
        << "ghost " << device_key << "\n"
        << "policy service " << service_key << "\n";
    }
    broker_ = std::make_unique<support::mosquitto_broker>();
    port_ = support::free_port();
    support::hub_daemon::options o;
    o.executable = hub_path_;
    o.broker_port = broker_->port();
    o.args = {"--in-memory",
              "-d",
              "dev1",
              "-d",
              "dev2",
              "--feedback-batch-interval",
              "0s",
              "--lock-duration",
              "10s",
              "--max-queue-depth",
              "1000",
              "--hub-name",
              "testhub",
              "--amqp-listen",
              "127.0.0.1:" + std::to_string(port_),
              "--tls-server-cert",
              dir_.file("server.pem"),
              "--tls-server-key",
              dir_.file("server.key"),
              "--auth-file",
              dir_.file("auth.txt"),
              "--iothub-hostname",
              "localhost"};
    hub_ = std::make_unique<support::hub_daemon>(o);
  }

  void TearDown() override {
    if (HasFailure() && hub_)
      std::cerr << "--- devicebound-hub log ---\n" << hub_->log();
  }

  std::string host() const { return "localhost:" + std::to_string(port_); }
  std::string service_cs(const std::string& key = service_key) const {
    return "HostName=" + host() + ";SharedAccessKeyName=service;SharedAccessKey=" + key;
  }
  std::string device_cs(const std::string& id, const std::string& key = device_key) const {
    return "HostName=" + host() + ";DeviceId=" + id + ";SharedAccessKey=" + key;
  }
  amqp::connection_options options() const {
    amqp::connection_options o;
    o.tls = amqp::tls_options{dir_.file("server.pem"), true};
    o.connect_timeout = 10s;
    o.request_timeout = 10s;
    return o;
  }

  std::unique_ptr<amqp_service> service(amqp::connection_options o) {
    auto s = amqp_service::from_connection_string(service_cs(), std::move(o), fast_policy());
    EXPECT_TRUE(s) << s.error().message;
    return s ? std::move(*s) : nullptr;
  }
  std::unique_ptr<amqp_device> device(const std::string& id) {
    auto d = amqp_device::from_connection_string(device_cs(id), options(), fast_policy());
    EXPECT_TRUE(d) << d.error().message;
    return d ? std::move(*d) : nullptr;
  }

  /// Feedback records, by original message id, until `n` arrived (completing each batch).
  std::map<std::string, feedback_status> feedback(amqp_service& s, std::size_t n) {
    std::map<std::string, feedback_status> out;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      auto b = s.receive_feedback(2s);
      if (!b || !*b)
        continue;
      for (const auto& r : (*b)->records)
        out[r.original_message_id] = r.status_code;
      EXPECT_TRUE(s.complete_feedback(**b));
    }
    return out;
  }

  support::temp_dir dir_{"devicebound-amqpt-"};
  std::string hub_path_;
  std::string openssl_;
  std::unique_ptr<support::mosquitto_broker> broker_;
  std::unique_ptr<support::hub_daemon> hub_;
  std::uint16_t port_ = 0;
};

TEST_F(amqp_transport, RoundTripCompleteRejectAbandonAndFeedback) {
  auto s = service(options());
  auto d = device("dev1");
  ASSERT_TRUE(s && d);
  ASSERT_TRUE(s->open()) << "service open";
  ASSERT_TRUE(d->connect()) << "device connect";

  message first = make_message("m-complete", "one");
  first.app_properties["colour"] = "blue";
  first.content_type = "text/plain";
  ASSERT_TRUE(s->send("dev1", first));
  ASSERT_TRUE(s->send("dev1", make_message("m-reject", "two")));
  ASSERT_TRUE(s->send("dev1", make_message("m-abandon", "three")));

  auto m1 = d->receive(10s);
  ASSERT_TRUE(m1 && *m1) << (m1 ? "none" : m1.error().message);
  EXPECT_EQ((*m1)->message_id, "m-complete");
  EXPECT_EQ((*m1)->body, "one");
  EXPECT_EQ((*m1)->app_properties.at("colour"), "blue");
  EXPECT_EQ((*m1)->content_type, "text/plain");
  EXPECT_EQ((*m1)->ack, ack_mode::full);
  EXPECT_GT((*m1)->sequence_number, 0u);
  ASSERT_TRUE((*m1)->lock_token);
  ASSERT_TRUE(d->complete(**m1));
  // Settled once: the lock is gone (SPEC 1.5).
  auto again = d->complete(**m1);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.code(), errc::device_message_lock_lost);

  auto m2 = d->receive(10s);
  ASSERT_TRUE(m2 && *m2);
  EXPECT_EQ((*m2)->message_id, "m-reject");
  ASSERT_TRUE(d->reject(**m2));

  auto m3 = d->receive(10s);
  ASSERT_TRUE(m3 && *m3);
  EXPECT_EQ((*m3)->message_id, "m-abandon");
  EXPECT_EQ((*m3)->delivery_count, 0u);
  ASSERT_TRUE(d->abandon(**m3));
  auto m3b = d->receive(10s);
  ASSERT_TRUE(m3b && *m3b);
  EXPECT_EQ((*m3b)->message_id, "m-abandon");
  EXPECT_EQ((*m3b)->delivery_count, 1u);
  ASSERT_TRUE(d->complete(**m3b));

  const auto fb = feedback(*s, 3);
  ASSERT_EQ(fb.size(), 3u);
  EXPECT_EQ(fb.at("m-complete"), feedback_status::success);
  EXPECT_EQ(fb.at("m-reject"), feedback_status::rejected);
  EXPECT_EQ(fb.at("m-abandon"), feedback_status::success);
}

TEST_F(amqp_transport, HandlerSettlesAndAbandonedFeedbackComesAgain) {
  auto s = service(options());
  auto d = device("dev2");
  ASSERT_TRUE(s && d);
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::string> seen;
  d->set_message_handler([&](const message& msg) {
    std::lock_guard<std::mutex> g(m);
    seen.push_back(*msg.message_id);
    cv.notify_all();
    return disposition::complete;
  });
  ASSERT_TRUE(d->connect());
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(s->send("dev2", make_message("h" + std::to_string(i), "x", ack_mode::positive)));
  {
    std::unique_lock<std::mutex> g(m);
    ASSERT_TRUE(cv.wait_for(g, 20s, [&] { return seen.size() == 5; }));
  }
  // Abandon the first feedback batch: it is delivered again (SPEC 4.8).
  std::optional<feedback_batch> first;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!first && std::chrono::steady_clock::now() < deadline) {
    auto b = s->receive_feedback(2s);
    ASSERT_TRUE(b) << b.error().message;
    if (*b)
      first = **b;
  }
  ASSERT_TRUE(first);
  ASSERT_TRUE(s->abandon_feedback(*first));
  std::optional<feedback_batch> again;
  while (!again && std::chrono::steady_clock::now() < deadline) {
    auto b = s->receive_feedback(2s);
    ASSERT_TRUE(b) << b.error().message;
    if (*b && (*b)->records == first->records) {
      again = **b;
    } else if (*b) {
      ASSERT_TRUE(s->complete_feedback(**b));
    }
  }
  ASSERT_TRUE(again);
  EXPECT_EQ(again->delivery_count, first->delivery_count + 1);
  EXPECT_TRUE(s->complete_feedback(*again));
}

TEST_F(amqp_transport, TokenIsRenewedBeforeItExpires) {
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::uint64_t> expiries;
  auto o = options();
  o.token_ttl = 3s;
  o.token_renew_at = 0.5;
  o.on_token_accepted = [&](std::uint64_t se) {
    std::lock_guard<std::mutex> g(m);
    expiries.push_back(se);
    cv.notify_all();
  };
  auto s = service(o);
  ASSERT_TRUE(s);
  ASSERT_TRUE(s->open());
  {
    std::unique_lock<std::mutex> g(m);
    ASSERT_TRUE(cv.wait_for(g, 20s, [&] { return expiries.size() >= 3; }))
        << expiries.size() << " token(s) accepted";
    EXPECT_LT(expiries[0], expiries[2]);
  }
  EXPECT_GE(s->transport().tokens_accepted(), 3u);
  // The connection it renewed is still the one in use, and still works.
  EXPECT_TRUE(s->transport().is_open());
  EXPECT_TRUE(s->send("dev1", make_message("after-renewal", "x", ack_mode::none)));
}

TEST_F(amqp_transport, TypedErrors) {
  // A send to a device the hub does not know: amqp:not-found -> 404001.
  amqp::service_connection svc =
      amqp::service_connection::from_connection_string(service_cs(), options()).value();
  ASSERT_TRUE(svc.open());
  auto r = svc.send("nobody", make_message("x", "x"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::device_not_found) << r.error().message;
  // The connection survives a rejected send.
  EXPECT_TRUE(svc.send("dev1", make_message("y", "y", ack_mode::none)));

  // A service key the hub does not have: CBS 401 -> unauthorized.
  auto bad =
      amqp::service_connection::from_connection_string(service_cs(other_key), options()).value();
  auto o = bad.open();
  ASSERT_FALSE(o);
  EXPECT_EQ(o.code(), errc::unauthorized) << o.error().message;

  // A device key that is wrong.
  auto wrong =
      amqp::device_connection::from_connection_string(device_cs("dev1", other_key), options())
          .value();
  auto w = wrong.open();
  ASSERT_FALSE(w);
  EXPECT_EQ(w.code(), errc::unauthorized) << w.error().message;

  // The auth file seeds the identity registry (docs/registry.md): a device listed
  // there is registered, with its key, even without --device.
  auto ghost =
      amqp::device_connection::from_connection_string(device_cs("ghost"), options()).value();
  EXPECT_TRUE(ghost.open());
  // A device the registry does not have: its token is refused (CBS 401).
  auto nobody =
      amqp::device_connection::from_connection_string(device_cs("nobody"), options()).value();
  auto n = nobody.open();
  ASSERT_FALSE(n);
  EXPECT_EQ(n.code(), errc::unauthorized) << n.error().message;

  // Connection strings of the wrong kind are refused before any I/O.
  EXPECT_EQ(amqp::device_connection::from_connection_string(service_cs()).code(),
            errc::argument_invalid);
  EXPECT_EQ(amqp::service_connection::from_connection_string(device_cs("dev1")).code(),
            errc::argument_invalid);
  EXPECT_EQ(amqp_device::from_connection_string("HostName=h;DeviceId=d").code(),
            errc::argument_invalid);
}

TEST_F(amqp_transport, UntrustedCertificateIsRefused) {
  ASSERT_TRUE(make_certificate(dir_, openssl_, "other"));
  auto o = options();
  o.tls = amqp::tls_options{dir_.file("other.pem"), true};
  auto svc = amqp::service_connection::from_connection_string(service_cs(), o).value();
  auto r = svc.open();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::not_connected) << r.error().message;
}

TEST_F(amqp_transport, ReconnectsAfterCloseAndLocksOfTheOldConnectionAreLost) {
  auto s = service(options());
  ASSERT_TRUE(s && s->open());
  auto dc = amqp::device_connection::from_connection_string(device_cs("dev1"), options()).value();
  ASSERT_TRUE(dc.open());
  ASSERT_TRUE(s->send("dev1", make_message("r1", "x", ack_mode::none)));
  auto m = dc.receive(10s);
  ASSERT_TRUE(m && *m);
  dc.close();
  EXPECT_FALSE(dc.is_open());
  ASSERT_TRUE(dc.open());
  auto lost = dc.complete(*(*m)->lock_token);
  ASSERT_FALSE(lost);
  EXPECT_EQ(lost.code(), errc::device_message_lock_lost);
  // The hub delivers it again on the new connection once its lock is released or expires.
  auto again = dc.receive(30s);
  ASSERT_TRUE(again && *again);
  EXPECT_EQ((*again)->message_id, "r1");
  EXPECT_TRUE(dc.complete(*(*again)->lock_token));
}

// Not a benchmark with a baseline: a figure for docs/amqp.md's thread design
// (one proactor thread per connection, callers handing work over by interrupt).
TEST_F(amqp_transport, SendAndSettleRates) {
  auto svc = amqp::service_connection::from_connection_string(service_cs(), options()).value();
  auto dev = amqp::device_connection::from_connection_string(device_cs("dev2"), options()).value();
  ASSERT_TRUE(svc.open());
  ASSERT_TRUE(dev.open());
  constexpr int n = 200;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  for (int i = 0; i < n; ++i)
    ASSERT_TRUE(svc.send("dev2", make_message("s" + std::to_string(i), "x", ack_mode::none)));
  const auto t1 = clock::now();
  // Four threads on one connection: the hand-off lets their sends overlap.
  std::vector<std::thread> senders;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t)
    senders.emplace_back([&, t] {
      for (int i = 0; i < n / 4; ++i)
        if (!svc.send("dev2", make_message("p" + std::to_string(t * n + i), "x", ack_mode::none)))
          ++failures;
    });
  for (auto& th : senders)
    th.join();
  const auto t2 = clock::now();
  ASSERT_EQ(failures.load(), 0);
  int settled = 0;
  while (settled < 2 * n) {
    auto m = dev.receive(10s);
    ASSERT_TRUE(m && *m) << settled << " settled";
    ASSERT_TRUE(dev.complete(*(*m)->lock_token));
    ++settled;
  }
  const auto t3 = clock::now();
  auto rate = [](int count, clock::duration d) {
    return static_cast<long>(count / std::chrono::duration<double>(d).count());
  };
  std::cout << "AMQP over TLS to the door (--in-memory): " << rate(n, t1 - t0)
            << " sends/s one at a time, " << rate(n, t2 - t1) << " sends/s from 4 threads, "
            << rate(2 * n, t3 - t2) << " receive+complete/s\n";
}

}  // namespace

#else

TEST(amqp_transport, NeedsTheApps) {
  DEVICEBOUND_MISSING_PART("test_amqp_transport needs the daemon's build (DEVICEBOUND_BUILD_APPS)");
}

#endif
