// End-to-end tests of devicebound-hub's AMQP front door (SPEC 10): a real
// mosquitto and a real daemon on free loopback ports, driven by a small
// blocking AMQP client written on Qpid Proton's C proactor, so that every
// byte the official SDKs depend on can be checked: SASL variants, the CBS
// reply's types, delivery tags, annotation types, settled and unsettled
// dispositions.
#include <gtest/gtest.h>

#include "support/required.hpp"

#ifdef DEVICEBOUND_WITH_AMQP_DOOR

#include <arpa/inet.h>
#include <netinet/in.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/sasl_plugin.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/codec/amqp.hpp>
#include <devicebound/codec/feedback_json.hpp>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <proton/annotation_key.hpp>
#include <proton/message.hpp>
#include <proton/scalar.hpp>
#include <proton/timestamp.hpp>
#include <proton/uuid.hpp>
#include <proton/value.hpp>
#include <string>

#include "support/amqp_client.hpp"
#include "support/mosquitto.hpp"
#include "support/required.hpp"

namespace {

using namespace std::chrono_literals;
namespace support = devicebound::test_support;
namespace amqp = devicebound::codec::amqp;
using devicebound::auth::shared_access_key;
using support::amqp_client::cbs;
using support::amqp_client::client;
using support::amqp_client::g_offered_mechanisms;
using support::amqp_client::sasl_mode;

const std::string device_key_b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const std::string service_key_b64 = "ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==";
constexpr const char* hub_host = "testhub.example";

shared_access_key key_of(const std::string& b64) {
  return shared_access_key::from_base64(b64).value();
}

std::uint64_t expiry_in(std::chrono::seconds s) {
  return devicebound::auth::sas_expiry(devicebound::system_clock{}.now(), s);
}

std::string service_token(std::uint64_t se = expiry_in(3600s),
                          const std::string& key = service_key_b64) {
  return to_string(devicebound::auth::generate_sas_token(hub_host, key_of(key), se, "service"));
}

std::string device_token(const std::string& device, std::uint64_t se = expiry_in(3600s)) {
  return to_string(devicebound::auth::generate_sas_token(
      std::string(hub_host) + "/devices/" + device, key_of(device_key_b64), se));
}

proton::message c2d(const std::string& device, const std::string& body,
                    const std::string& message_id, const std::string& ack = "full") {
  proton::message m;
  m.to("/devices/" + device + "/messages/devicebound");
  m.id(message_id);
  m.correlation_id(std::string("corr-") + message_id);
  m.content_type("text/plain");
  m.properties().put("iothub-ack", ack);
  m.properties().put("color", "blue");
  m.body(proton::binary(body.begin(), body.end()));
  return m;
}

proton::value annotation(const proton::message& m, const char* key) {
  return m.message_annotations().get(proton::annotation_key(proton::symbol(key)));
}

// --- the fixture ---------------------------------------------------------------------------

class amqp_door_e2e : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!support::mosquitto_broker::available())
      DEVICEBOUND_MISSING_PART("mosquitto not found at " << support::default_mosquitto);
    if (!support::hub_daemon::available())
      DEVICEBOUND_MISSING_PART("devicebound-hub not found at " << support::default_hub);
    broker_ = std::make_unique<support::mosquitto_broker>();
    {
      std::ofstream f(dir_.file("auth.txt"));
      f << "# test keys\n"
        << "dev1 " << device_key_b64 << "\n"
        << "dev2 " << device_key_b64 << "\n"
        << "policy service " << service_key_b64 << "\n"
        << "policy device " << service_key_b64 << "\n";
    }
    port_ = support::free_port();
    support::hub_daemon::options o;
    o.broker_port = broker_->port();
    o.args = {"--in-memory",
              "-d",
              "dev1",
              "-d",
              "dev2",
              "--max-queue-depth",
              "3",
              "--feedback-batch-interval",
              "0s",
              "--hub-name",
              "testhub",
              "--amqp-listen",
              "127.0.0.1:" + std::to_string(port_),
              "--auth-file",
              dir_.file("auth.txt"),
              "--iothub-hostname",
              hub_host};
    options_ = o;
    hub_ = std::make_unique<support::hub_daemon>(o);
  }

  void TearDown() override {
    if (HasFailure() && hub_)
      std::cerr << "--- devicebound-hub log ---\n" << hub_->log();
  }

  /// A connection with a service token on CBS.
  std::unique_ptr<client> service(sasl_mode mode = sasl_mode::none) {
    auto c = std::make_unique<client>(port_, mode);
    EXPECT_TRUE(c->opened());
    cbs k(*c);
    EXPECT_TRUE(k.ok(service_token()));
    return c;
  }
  std::unique_ptr<client> device(const std::string& id) {
    auto c = std::make_unique<client>(port_, sasl_mode::none);
    EXPECT_TRUE(c->opened());
    cbs k(*c);
    EXPECT_TRUE(k.ok(device_token(id)));
    return c;
  }

  support::temp_dir dir_{"devicebound-amqp-"};
  std::unique_ptr<support::mosquitto_broker> broker_;
  std::unique_ptr<support::hub_daemon> hub_;
  support::hub_daemon::options options_;
  std::uint16_t port_ = 0;
};

// --- SASL (SPEC 10.2) ------------------------------------------------------------------------

TEST_F(amqp_door_e2e, AcceptsNoSaslAnonymousAndMssbcbs) {
  for (auto mode : {sasl_mode::none, sasl_mode::anonymous, sasl_mode::mssbcbs}) {
    g_offered_mechanisms.clear();
    client c(port_, mode);
    ASSERT_TRUE(c.opened()) << "mode " << static_cast<int>(mode) << ": " << c.close_condition();
    cbs k(c);
    EXPECT_TRUE(k.ok(service_token()));
    if (mode == sasl_mode::mssbcbs) {
      EXPECT_NE((" " + g_offered_mechanisms + " ").find(" MSSBCBS "), std::string::npos)
          << g_offered_mechanisms;
    }
  }
}

TEST_F(amqp_door_e2e, SaslPlainWithASasTokenAuthorisesTheConnection) {
  client c(port_, sasl_mode::plain, "service@sas.root.testhub", service_token());
  ASSERT_TRUE(c.opened()) << c.close_condition();
  pn_link_t* l = c.attach(true, "/messages/devicebound");
  EXPECT_TRUE(c.attached(l));
  auto [state, cond] = c.outcome(c.send(l, c2d("dev1", "x", "plain-1")));
  EXPECT_EQ(state, PN_ACCEPTED) << cond;

  client bad(port_, sasl_mode::plain, "service@sas.root.testhub",
             service_token(expiry_in(3600s), device_key_b64));
  EXPECT_FALSE(bad.opened());
}

// --- CBS (SPEC 10.4-10.7) -------------------------------------------------------------------

TEST_F(amqp_door_e2e, PutTokenRepliesWithIntStatusAndTheRequestIdsType) {
  client c(port_, sasl_mode::none);
  ASSERT_TRUE(c.opened());
  cbs k(c);
  for (const proton::message_id& id :
       {proton::message_id(std::string("request7")), proton::message_id(std::uint64_t{42}),
        proton::message_id(proton::uuid::random())}) {
    auto r = k.put(service_token(), id);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status.type(), proton::INT);
    EXPECT_EQ(proton::get<std::int32_t>(r->status), 200);
    EXPECT_EQ(r->correlation_id.type(), id.type());
    EXPECT_EQ(r->correlation_id, id);
  }
  // C#'s token type (SPEC 10.5.2).
  auto cs = k.put(service_token(), std::string("cs"), "azure-devices.net:sastoken");
  ASSERT_TRUE(cs);
  EXPECT_EQ(proton::get<std::int32_t>(cs->status), 200);

  auto bad = k.put(service_token(expiry_in(3600s), device_key_b64));
  ASSERT_TRUE(bad);
  EXPECT_EQ(proton::get<std::int32_t>(bad->status), 401);
  EXPECT_NE(bad->description.find("BadSignature"), std::string::npos) << bad->description;

  auto expired = k.put(service_token(expiry_in(-3600s)));
  ASSERT_TRUE(expired);
  EXPECT_EQ(proton::get<std::int32_t>(expired->status), 401);

  auto wrong_type = k.put(service_token(), std::string("t"), "jwt");
  ASSERT_TRUE(wrong_type);
  EXPECT_EQ(proton::get<std::int32_t>(wrong_type->status), 400);
}

TEST_F(amqp_door_e2e, LinksNeedTheRightToken) {
  client c(port_, sasl_mode::none);
  ASSERT_TRUE(c.opened());
  // No token yet: refused.
  EXPECT_EQ(c.link_error(c.attach(true, "/messages/devicebound")), "amqp:unauthorized-access");
  // A device token opens only that device's link.
  cbs k(c);
  ASSERT_TRUE(k.ok(device_token("dev1")));
  EXPECT_EQ(c.link_error(c.attach(true, "/messages/devicebound")), "amqp:unauthorized-access");
  EXPECT_EQ(c.link_error(c.attach(false, "/devices/dev2/messages/devicebound", 5)),
            "amqp:unauthorized-access");
  EXPECT_TRUE(c.attached(c.attach(false, "/devices/dev1/messages/devicebound", 5)));
  // Telemetry is accepted and ignored (C# opens it on every connect: SPEC 10.16).
  pn_link_t* events = c.attach(true, "/devices/dev1/messages/events");
  EXPECT_TRUE(c.attached(events));
  proton::message t;
  t.body(proton::binary(std::string("temp")));
  EXPECT_EQ(c.outcome(c.send(events, t)).first, PN_ACCEPTED);
  EXPECT_EQ(c.link_error(c.attach(false, "/no/such/node", 1)), "amqp:not-found");
}

TEST_F(amqp_door_e2e, AnExpiringTokenClosesTheLinksItAuthorised) {
  client c(port_, sasl_mode::none);
  ASSERT_TRUE(c.opened());
  cbs k(c);
  // Valid for now only through the 5 min clock skew: expires 2 s from now.
  const auto se = expiry_in(-300s + 2s);
  ASSERT_TRUE(k.ok(device_token("dev1", se)));
  pn_link_t* l = c.attach(false, "/devices/dev1/messages/devicebound", 5);
  ASSERT_TRUE(c.attached(l));
  EXPECT_TRUE(c.wait([&] { return c.link_closed_by_peer(l); }, 10s));
  EXPECT_EQ(c.link_error(l), "amqp:unauthorized-access");
}

// --- C2D: send, deliver, settle, feedback (SPEC 10.8-10.15) ------------------------------------

TEST_F(amqp_door_e2e, SendDeliverCompleteAndFeedback) {
  auto svc = service();
  pn_link_t* fb =
      svc->attach(false, "amqps://testhub.example:5671/messages/serviceBound/feedback", 5);
  ASSERT_TRUE(svc->attached(fb));
  pn_link_t* s = svc->attach(true, "amqps://testhub.example:5671/messages/deviceBound");
  ASSERT_TRUE(svc->attached(s));
  auto [state, cond] = svc->outcome(svc->send(s, c2d("dev1", "hello", "m-1")));
  ASSERT_EQ(state, PN_ACCEPTED) << cond;

  auto dev = device("dev1");
  pn_link_t* r = dev->attach(false, "/devices/dev1/messages/devicebound", 10);
  auto got = dev->next(r);
  ASSERT_TRUE(got);
  const proton::message& m = got->msg;
  EXPECT_FALSE(got->settled);
  EXPECT_EQ(proton::get<std::string>(m.id()), "m-1");
  EXPECT_EQ(proton::get<std::string>(m.correlation_id()), "corr-m-1");
  EXPECT_EQ(m.content_type(), "text/plain");
  EXPECT_EQ(proton::get<std::string>(m.properties().get("color")), "blue");
  EXPECT_EQ(proton::get<std::string>(m.properties().get("iothub-ack")), "full");
  ASSERT_EQ(m.body().type(), proton::BINARY);
  EXPECT_EQ(std::string(proton::get<proton::binary>(m.body())), "hello");
  // Annotations with the exact AMQP types C# reads (SPEC 10.14.3).
  EXPECT_EQ(annotation(m, "x-opt-lock-token").type(), proton::STRING);
  EXPECT_EQ(annotation(m, "x-opt-sequence-number").type(), proton::ULONG);
  EXPECT_EQ(annotation(m, "iothub-enqueuedtime").type(), proton::TIMESTAMP);
  EXPECT_EQ(annotation(m, "iothub-deliverycount").type(), proton::UBYTE);
  // The 16-byte tag is the lock token as a .NET Guid (SPEC 10.14.4).
  ASSERT_EQ(got->tag.size(), 16u);
  const auto lock =
      devicebound::lock_token::parse(proton::get<std::string>(annotation(m, "x-opt-lock-token")));
  ASSERT_TRUE(lock);
  const auto tag = amqp::delivery_tag(*lock);
  EXPECT_EQ(got->tag, std::string(tag.begin(), tag.end()));

  pn_delivery_update(got->delivery, PN_ACCEPTED);
  pn_delivery_settle(got->delivery);
  dev->flush();

  auto batch = svc->next(fb);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->msg.content_type(), "application/vnd.microsoft.iothub.feedback.json");
  EXPECT_EQ(batch->tag.size(), 16u);
  EXPECT_EQ(batch->msg.user(), "testhub");
  EXPECT_EQ(annotation(batch->msg, "iothub-enqueuedtime").type(), proton::TIMESTAMP);
  ASSERT_EQ(batch->msg.body().type(), proton::BINARY);
  auto records = devicebound::codec::decode_feedback_json(
      std::string(proton::get<proton::binary>(batch->msg.body())));
  ASSERT_TRUE(records);
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].original_message_id, "m-1");
  EXPECT_EQ((*records)[0].status_code, devicebound::feedback_status::success);
  pn_delivery_update(batch->delivery, PN_ACCEPTED);
  pn_delivery_settle(batch->delivery);
  svc->flush();
}

TEST_F(amqp_door_e2e, RejectAndReleaseAndModeSecond) {
  auto svc = service();
  pn_link_t* fb = svc->attach(false, "/messages/servicebound/feedback", 5);
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  ASSERT_EQ(svc->outcome(svc->send(s, c2d("dev1", "a", "rej"))).first, PN_ACCEPTED);

  auto dev = device("dev1");
  // rcv-settle-mode second, as C# (SPEC 10.15.1): our outcomes go unsettled.
  pn_link_t* r = dev->attach(false, "/devices/dev1/messages/devicebound", 1, PN_RCV_SECOND);
  auto got = dev->next(r);
  ASSERT_TRUE(got);
  // Release: the hub answers with a settled accepted, and delivers it again.
  pn_delivery_update(got->delivery, PN_RELEASED);
  ASSERT_TRUE(dev->wait([&] { return pn_delivery_settled(got->delivery); }));
  EXPECT_EQ(pn_delivery_remote_state(got->delivery), PN_ACCEPTED);
  pn_delivery_settle(got->delivery);
  pn_link_flow(r, 1);
  auto again = dev->next(r);
  ASSERT_TRUE(again);
  EXPECT_EQ(proton::get<std::string>(again->msg.id()), "rej");
  EXPECT_EQ(proton::get<std::uint8_t>(annotation(again->msg, "iothub-deliverycount")), 1);
  // Reject: dead-lettered, negative feedback.
  pn_delivery_update(again->delivery, PN_REJECTED);
  ASSERT_TRUE(dev->wait([&] { return pn_delivery_settled(again->delivery); }));
  EXPECT_EQ(pn_delivery_remote_state(again->delivery), PN_ACCEPTED);
  pn_delivery_settle(again->delivery);

  auto batch = svc->next(fb);
  ASSERT_TRUE(batch);
  auto records = devicebound::codec::decode_feedback_json(
      std::string(proton::get<proton::binary>(batch->msg.body())));
  ASSERT_TRUE(records);
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].status_code, devicebound::feedback_status::rejected);
}

TEST_F(amqp_door_e2e, RefusedSendsCarryTheSdkConditions) {
  auto svc = service();
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  EXPECT_EQ(svc->outcome(svc->send(s, c2d("nobody", "x", "u"))).second, "amqp:not-found");
  EXPECT_EQ(svc->outcome(svc->send(s, c2d("dev2", std::string(70000, 'x'), "big"))).second,
            "amqp:link:message-size-exceeded");
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(svc->outcome(svc->send(s, c2d("dev2", "q", "q" + std::to_string(i)))).first,
              PN_ACCEPTED);
  auto full = svc->outcome(svc->send(s, c2d("dev2", "q", "q3")));
  EXPECT_EQ(full.first, PN_REJECTED);
  EXPECT_EQ(full.second, "amqp:resource-limit-exceeded");
  proton::message no_to = c2d("dev2", "x", "nt");
  no_to.to("/somewhere/else");
  EXPECT_EQ(svc->outcome(svc->send(s, no_to)).second, "com.microsoft:argument-error");
}

// --- the identity registry (docs/registry.md) -------------------------------------------------

/// A device-scoped token signed by the `device` policy (DeviceConnect): valid
/// only while the registry has the device, enabled (SPEC 12.7.4).
std::string device_policy_token(const std::string& device) {
  return to_string(
      devicebound::auth::generate_sas_token(std::string(hub_host) + "/devices/" + device,
                                            key_of(service_key_b64), expiry_in(3600s), "device"));
}

/// Asks the daemon over MQTT (admin extension topics, docs/protocol.md) and
/// waits for its answer; returns the reply topic ("" on timeout).
std::string admin(std::uint16_t broker_port, std::string_view op, const std::string& device) {
  namespace mqtt = devicebound::mqtt;
  const std::string id = "admin-" + mqtt::detail::random_hex(6);
  std::mutex m;
  std::condition_variable cv;
  std::string answer;
  mqtt::connection_options o;
  o.port = broker_port;
  o.connect_timeout = 2s;
  mqtt::session s(
      o, id,
      [&](std::string_view topic, std::string_view) {
        std::lock_guard<std::mutex> g(m);
        answer = std::string(topic);
        cv.notify_all();
      },
      nullptr);
  if (!s.connect(true, {mqtt::protocol::client_filter(mqtt::protocol::party::admin, id)},
                 std::nullopt))
    return {};
  (void)s.publish(
      mqtt::protocol::request_head(mqtt::protocol::party::admin, id, op) + device + "/%24.rid=1",
      {});
  std::unique_lock<std::mutex> g(m);
  cv.wait_for(g, 10s, [&] { return !answer.empty(); });
  return answer;
}

TEST_F(amqp_door_e2e, ADeviceAddedAtRuntimeConnectsAndIsClosedWhenRemoved) {
  {  // not registered yet: refused
    client early(port_, sasl_mode::none);
    ASSERT_TRUE(early.opened());
    cbs k(early);
    EXPECT_FALSE(k.ok(device_policy_token("dev9")));
  }
  ASSERT_NE(admin(broker_->port(), devicebound::mqtt::protocol::op_add, "dev9"), "");

  auto svc = service();
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  ASSERT_EQ(svc->outcome(svc->send(s, c2d("dev9", "hi", "m-9"))).first, PN_ACCEPTED);
  auto dev = std::make_unique<client>(port_, sasl_mode::none);
  ASSERT_TRUE(dev->opened());
  {
    cbs k(*dev);
    ASSERT_TRUE(k.ok(device_policy_token("dev9")));
  }
  pn_link_t* r = dev->attach(false, "/devices/dev9/messages/devicebound", 10);
  auto got = dev->next(r);
  ASSERT_TRUE(got);
  EXPECT_EQ(proton::get<std::string>(got->msg.id()), "m-9");

  // removed: the registry revokes it, the door closes its connection
  ASSERT_NE(admin(broker_->port(), devicebound::mqtt::protocol::op_remove, "dev9"), "");
  EXPECT_TRUE(dev->wait([&] { return dev->closed(); }));
  client late(port_, sasl_mode::none);
  ASSERT_TRUE(late.opened());
  cbs k(late);
  EXPECT_FALSE(k.ok(device_policy_token("dev9")));
  // a device of the auth file is unaffected
  EXPECT_TRUE(k.ok(device_token("dev1")));
}

TEST_F(amqp_door_e2e, TheRegistrySurvivesARestart) {
  // the same daemon with a store file instead of --in-memory
  hub_->stop();
  auto o = options_;
  auto mem = std::find(o.args.begin(), o.args.end(), "--in-memory");
  ASSERT_NE(mem, o.args.end());
  *mem = "--store";
  o.args.insert(mem + 1, dir_.file("hub.db"));
  hub_ = std::make_unique<support::hub_daemon>(o);
  ASSERT_NE(admin(broker_->port(), devicebound::mqtt::protocol::op_add, "dev9"), "");
  hub_->stop();
  // restarted with an auth file of other keys: the registry keeps what it has
  // (the file is only a seed), so the first start's keys still sign
  const std::string other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
  {
    std::ofstream f(dir_.file("auth2.txt"));
    f << "dev1 " << other << "\npolicy service " << other << "\npolicy device " << other << "\n";
  }
  auto file = std::find(o.args.begin(), o.args.end(), dir_.file("auth.txt"));
  ASSERT_NE(file, o.args.end());
  *file = dir_.file("auth2.txt");
  hub_ = std::make_unique<support::hub_daemon>(o);
  client c(port_, sasl_mode::none);
  ASSERT_TRUE(c.opened());
  cbs k(c);
  EXPECT_TRUE(k.ok(device_policy_token("dev9")));  // added at runtime, loaded from the store
  EXPECT_TRUE(k.ok(device_token("dev1")));         // the key of the first start
  EXPECT_TRUE(k.ok(service_token()));
  EXPECT_FALSE(k.ok(service_token(expiry_in(3600s), other)));
}

// --- limits and throttles (docs/security.md) --------------------------------------------------

/// A raw TCP connection to the door: what a hostile client writes.
class raw_socket {
 public:
  explicit raw_socket(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    timeval tv{10, 0};  // every read below is bounded
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~raw_socket() { ::close(fd_); }
  raw_socket(const raw_socket&) = delete;
  raw_socket& operator=(const raw_socket&) = delete;
  void write(const std::string& bytes) {
    EXPECT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  /// Everything the peer sends until it closes (or the 10 s read timeout); `closed` says which.
  std::string read_to_end(bool& closed) {
    std::string out;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        closed = n == 0 || errno == ECONNRESET;
        return out;
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_;
};

class amqp_door_limits : public amqp_door_e2e {
 protected:
  /// Restarts the daemon with these flags added (and a queue depth of 1000).
  void restart_with(std::vector<std::string> flags) {
    hub_->stop();
    auto o = options_;
    auto depth = std::find(o.args.begin(), o.args.end(), "--max-queue-depth");
    *(depth + 1) = "1000";
    o.args.insert(o.args.end(), flags.begin(), flags.end());
    hub_ = std::make_unique<support::hub_daemon>(o);
  }
};

TEST_F(amqp_door_limits, ConnectionsSessionsLinksAndSizesCostOnlyTheOffender) {
  restart_with({"--amqp-max-connections", "2", "--amqp-max-sessions", "2", "--amqp-max-links", "4",
                "--amqp-max-message-size", "4096", "--amqp-max-frame-size", "2048"});
  auto svc = service();  // one session, two $cbs links
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  pn_link_t* fb = svc->attach(false, "/messages/serviceBound/feedback", 10);
  EXPECT_TRUE(svc->attached(fb));
  // links: the fifth is refused, the four work on
  pn_link_t* fifth = svc->attach(true, "/messages/devicebound");
  EXPECT_EQ(svc->link_error(fifth), "amqp:resource-limit-exceeded");
  EXPECT_EQ(svc->outcome(svc->send(s, c2d("dev1", "ok", "m1"))).first, PN_ACCEPTED);
  // message size: a transfer over 4096 bytes (sent in frames of at most 2048) is rejected
  auto big = svc->outcome(svc->send(s, c2d("dev1", std::string(5000, 'x'), "big")));
  EXPECT_EQ(big.first, PN_REJECTED);
  EXPECT_EQ(big.second, "amqp:link:message-size-exceeded");
  // sessions: the third is begun and ended; the connection goes on
  EXPECT_EQ(svc->session_error(svc->begin_session()), "");
  EXPECT_EQ(svc->session_error(svc->begin_session()), "amqp:resource-limit-exceeded");
  EXPECT_FALSE(svc->closed());
  EXPECT_EQ(svc->outcome(svc->send(s, c2d("dev1", "ok", "m2"))).first, PN_ACCEPTED);
  // links that come and go do not count (nor stay in the hub's memory)
  pn_link_close(fb);
  ASSERT_TRUE(svc->wait([&] { return svc->closed() || svc->link_closed_by_peer(fb); }));
  for (int i = 0; i < 100; ++i) {
    pn_link_t* l = svc->attach(true, "/messages/devicebound");
    ASSERT_TRUE(svc->attached(l)) << i;
    pn_link_close(l);
    ASSERT_TRUE(svc->wait([&] { return svc->closed() || svc->link_closed_by_peer(l); })) << i;
  }
  // connections: the third is closed with the condition, the two admitted work on
  {
    auto second = std::make_unique<client>(port_, sasl_mode::none);
    ASSERT_TRUE(second->opened());
    client third(port_, sasl_mode::none);
    EXPECT_FALSE(third.opened());
    EXPECT_EQ(third.close_condition(), "amqp:resource-limit-exceeded");
    {  // one over the limit that never sends its header: closed at the TCP level (bounded)
      raw_socket silent(port_);
      bool closed = false;
      EXPECT_EQ(silent.read_to_end(closed), "");
      EXPECT_TRUE(closed);
    }
    EXPECT_EQ(svc->outcome(svc->send(s, c2d("dev1", "ok", "m3"))).first, PN_ACCEPTED);
    second.reset();
    // its slot is free again once the hub saw it close (bounded)
    bool admitted = false;
    for (int attempt = 0; attempt < 200 && !admitted; ++attempt) {
      client again(port_, sasl_mode::none);
      admitted = again.opened();
    }
    EXPECT_TRUE(admitted);
  }
  // frames: one over the advertised max-frame-size closes that connection only
  {
    raw_socket raw(port_);
    std::string frame("AMQP\x00\x01\x00\x00", 8);
    frame += std::string("\x00\x01\x00\x00\x02\x00\x00\x00", 8);  // 65536 bytes, type 0
    frame += std::string(200, '\0');
    raw.write(frame);
    bool closed = false;
    const std::string answer = raw.read_to_end(closed);
    EXPECT_TRUE(closed);
    EXPECT_NE(answer.find("amqp:connection:framing-error"), std::string::npos);
  }
  EXPECT_EQ(svc->outcome(svc->send(s, c2d("dev1", "ok", "m4"))).first, PN_ACCEPTED);
  EXPECT_FALSE(svc->closed());
}

TEST_F(amqp_door_limits, AConnectionThatNeverOpensIsClosedAfterTheOpenTimeout) {
  restart_with({"--amqp-open-timeout", "1"});
  {  // silent after the TCP connect: closed by the hub (the read is bounded at 10 s)
    raw_socket silent(port_);
    bool closed = false;
    EXPECT_EQ(silent.read_to_end(closed), "");
    EXPECT_TRUE(closed);
  }
  {  // the protocol header, then nothing: the header is answered, then the hub closes
    raw_socket slow(port_);
    slow.write(std::string("AMQP\x00\x01\x00\x00", 8));
    bool closed = false;
    EXPECT_EQ(slow.read_to_end(closed).substr(0, 4), "AMQP");
    EXPECT_TRUE(closed);
  }
  auto svc = service();  // a client that opens in time is served
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  EXPECT_EQ(svc->outcome(svc->send(s, c2d("dev1", "ok", "m1"))).first, PN_ACCEPTED);
}

TEST_F(amqp_door_limits, ThrottledSendsAreRejectedAsTheSdksExpectAndQueueNothing) {
  restart_with({"--throttle", "S1"});  // 100 sends a minute, a minute's burst
  auto svc = service();
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  // The burst, then the refusal (the bucket refills one every 600 ms of the real
  // clock meanwhile, so a few more may pass: bounded).
  int accepted = 0;
  std::pair<std::uint64_t, std::string> over;
  for (int i = 0; i < 400; ++i) {
    over = svc->outcome(svc->send(s, c2d("dev1", "m", "m" + std::to_string(i))));
    if (over.first != PN_ACCEPTED)
      break;
    ++accepted;
  }
  EXPECT_GE(accepted, 100);
  EXPECT_EQ(over.first, PN_REJECTED);
  // SPEC 2.5: 429001 ThrottlingException is com.microsoft:device-container-throttled
  EXPECT_EQ(over.second, "com.microsoft:device-container-throttled");
  // Nothing of the refused send was queued: dev1 gets the accepted ones, then
  // the next send the bucket admits (bounded retries, each refused one
  // changing nothing), not the refused one.
  auto dev = device("dev1");
  pn_link_t* r = dev->attach(false, "/devices/dev1/messages/devicebound", 1000);
  for (int got = 0; got < accepted; ++got) {
    auto m = dev->next(r);
    ASSERT_TRUE(m) << got;
    EXPECT_EQ(proton::get<std::string>(m->msg.id()), "m" + std::to_string(got));
    pn_delivery_update(m->delivery, PN_ACCEPTED);
    pn_delivery_settle(m->delivery);
    dev->flush();
  }
  bool sent = false;
  for (int attempt = 0; attempt < 20000 && !sent; ++attempt) {
    const auto o = svc->outcome(svc->send(s, c2d("dev1", "marker", "marker")));
    ASSERT_TRUE(o.first == PN_ACCEPTED || o.second == "com.microsoft:device-container-throttled")
        << o.second;
    sent = o.first == PN_ACCEPTED;
  }
  ASSERT_TRUE(sent);
  auto next = dev->next(r);
  ASSERT_TRUE(next);
  EXPECT_EQ(proton::get<std::string>(next->msg.id()), "marker");
}

// --- live revocation: policies and keys changed at runtime (docs/security.md) -----------------

const std::string owner_key_b64 = "b3duZXIta2V5LW9mLXRoZS1hbXFwLWRvb3ItdGVzdCE=";
const std::string primary_b64 = "cHJpbWFyeS1rZXktb2YtdGhlLXNlcnZpY2UtcG9sLiE=";
const std::string secondary_b64 = "c2Vjb25kYXJ5LWtleS1vZi10aGUtc2VydmljZS1wISE=";

/// The daemon with an `iothubowner` policy and a plain HTTP door on loopback,
/// through which the test changes policies and keys (the admin API, docs/https.md).
class amqp_door_revocation : public amqp_door_e2e {
 protected:
  void SetUp() override {
    amqp_door_e2e::SetUp();
    if (IsSkipped() || HasFatalFailure())
      return;
    hub_->stop();
    {
      std::ofstream f(dir_.file("auth.txt"), std::ios::app);
      f << "policy iothubowner " << owner_key_b64 << "\n";
    }
    https_port_ = support::free_port();
    auto o = options_;
    o.args.insert(o.args.end(), {"--https-listen", "127.0.0.1:" + std::to_string(https_port_),
                                 "--https-insecure"});
    hub_ = std::make_unique<support::hub_daemon>(o);
  }

  /// One HTTP request as `iothubowner`; returns the status (0: no answer).
  unsigned http(const std::string& method, const std::string& target, const std::string& body = {},
                const std::string& extra_header = {}) {
    const std::string token = to_string(devicebound::auth::generate_sas_token(
        hub_host, key_of(owner_key_b64), expiry_in(3600s), "iothubowner"));
    raw_socket s(https_port_);
    s.write(method + " " + target + "?api-version=2021-04-12 HTTP/1.1\r\nHost: " + hub_host +
            "\r\nAuthorization: " + token +
            "\r\nContent-Type: application/json\r\nConnection: close\r\n" + extra_header +
            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    bool closed = false;
    const std::string reply = s.read_to_end(closed);
    const auto sp = reply.find(' ');
    if (sp == std::string::npos)
      return 0;
    last_reply_ = reply;
    return static_cast<unsigned>(std::atoi(reply.c_str() + sp + 1));
  }

  std::unique_ptr<client> service_with(const std::string& key) {
    auto c = std::make_unique<client>(port_, sasl_mode::none);
    EXPECT_TRUE(c->opened());
    cbs k(*c);
    EXPECT_TRUE(k.ok(service_token(expiry_in(3600s), key)));
    return c;
  }

  std::uint16_t https_port_ = 0;
  std::string last_reply_;
};

TEST_F(amqp_door_revocation, RenewingThePrimaryKeyClosesWhatItSignedAndSparesTheSecondary) {
  ASSERT_EQ(http("PUT", "/devicebound/policies/service",
                 R"({"rights":"ServiceConnect","primaryKey":")" + primary_b64 +
                     R"(","secondaryKey":")" + secondary_b64 + R"("})"),
            200u)
      << last_reply_;
  auto a = service_with(primary_b64);
  auto b = service_with(secondary_b64);
  pn_link_t* la = a->attach(true, "/messages/devicebound");
  pn_link_t* lb = b->attach(true, "/messages/devicebound");
  ASSERT_EQ(a->outcome(a->send(la, c2d("dev1", "a", "a-1"))).first, PN_ACCEPTED);
  ASSERT_EQ(b->outcome(b->send(lb, c2d("dev2", "b", "b-1"))).first, PN_ACCEPTED);

  ASSERT_EQ(http("POST", "/devicebound/policies/service/renew-key", R"({"renewKey":"primary"})"),
            200u)
      << last_reply_;
  // the primary's connection: its link detached, then the connection closed
  EXPECT_TRUE(a->wait([&] { return a->link_closed_by_peer(la); }));
  EXPECT_EQ(a->link_error(la), "amqp:unauthorized-access");
  EXPECT_TRUE(a->wait([&] { return a->closed(); }));
  EXPECT_EQ(a->close_condition(), "amqp:unauthorized-access");
  // the secondary's keeps working
  EXPECT_TRUE(b->attached(lb));
  EXPECT_EQ(b->outcome(b->send(lb, c2d("dev2", "b", "b-2"))).first, PN_ACCEPTED);
  EXPECT_FALSE(b->closed());
  // and the old primary no longer opens anything
  client late(port_, sasl_mode::none);
  ASSERT_TRUE(late.opened());
  cbs k(late);
  EXPECT_FALSE(k.ok(service_token(expiry_in(3600s), primary_b64)));
  EXPECT_TRUE(k.ok(service_token(expiry_in(3600s), secondary_b64)));
}

TEST_F(amqp_door_revocation, DeletingAPolicyClosesItsConnectionsOnly) {
  auto svc = service();
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  ASSERT_TRUE(svc->attached(s));
  auto dev = device("dev1");
  pn_link_t* r = dev->attach(false, "/devices/dev1/messages/devicebound", 5);
  ASSERT_TRUE(dev->attached(r));

  ASSERT_EQ(http("DELETE", "/devicebound/policies/service"), 204u) << last_reply_;
  EXPECT_TRUE(svc->wait([&] { return svc->link_closed_by_peer(s); }));
  EXPECT_EQ(svc->link_error(s), "amqp:unauthorized-access");
  EXPECT_TRUE(svc->wait([&] { return svc->closed(); }));
  EXPECT_EQ(svc->close_condition(), "amqp:unauthorized-access");
  // a device's own key is not touched by a policy change
  EXPECT_TRUE(dev->attached(r));
  EXPECT_FALSE(dev->closed());
}

TEST_F(amqp_door_revocation, FewerRightsCloseTheLinksThatNeedThemAndKeepTheConnection) {
  auto svc = service();
  pn_link_t* s = svc->attach(true, "/messages/devicebound");
  ASSERT_TRUE(svc->attached(s));
  // the same keys, RegistryRead instead of ServiceConnect: the token still verifies
  ASSERT_EQ(http("PUT", "/devicebound/policies/service", R"({"rights":"RegistryRead"})"), 200u)
      << last_reply_;
  EXPECT_TRUE(svc->wait([&] { return svc->link_closed_by_peer(s); }));
  EXPECT_EQ(svc->link_error(s), "amqp:unauthorized-access");
  EXPECT_EQ(svc->link_error(svc->attach(true, "/messages/devicebound")),
            "amqp:unauthorized-access");
  EXPECT_FALSE(svc->closed());
}

TEST_F(amqp_door_revocation, APolicyChangeIsDurable) {
  // the same daemon with a store file instead of --in-memory
  hub_->stop();
  auto o = options_;
  auto mem = std::find(o.args.begin(), o.args.end(), "--in-memory");
  ASSERT_NE(mem, o.args.end());
  *mem = "--store";
  o.args.insert(mem + 1, dir_.file("hub.db"));
  o.args.insert(o.args.end(),
                {"--https-listen", "127.0.0.1:" + std::to_string(https_port_), "--https-insecure"});
  hub_ = std::make_unique<support::hub_daemon>(o);
  ASSERT_EQ(http("PUT", "/devicebound/policies/service",
                 R"({"rights":"ServiceConnect","primaryKey":")" + primary_b64 +
                     R"(","secondaryKey":")" + secondary_b64 + R"("})"),
            200u)
      << last_reply_;
  ASSERT_EQ(http("PUT", "/devicebound/policies/backend", R"({"rights":"ServiceConnect"})"), 201u)
      << last_reply_;
  ASSERT_EQ(http("DELETE", "/devicebound/policies/backend"), 204u) << last_reply_;
  hub_->stop();
  hub_ = std::make_unique<support::hub_daemon>(o);
  client c(port_, sasl_mode::none);
  ASSERT_TRUE(c.opened());
  cbs k(c);
  EXPECT_FALSE(k.ok(service_token()));  // the auth file's key was replaced
  EXPECT_TRUE(k.ok(service_token(expiry_in(3600s), primary_b64)));
  EXPECT_TRUE(k.ok(service_token(expiry_in(3600s), secondary_b64)));
  EXPECT_EQ(http("GET", "/devicebound/policies/backend"), 404u) << last_reply_;
}

TEST_F(amqp_door_revocation, ARotatedDeviceKeyClosesTheDevicesConnection) {
  auto dev = device("dev1");
  pn_link_t* r = dev->attach(false, "/devices/dev1/messages/devicebound", 5);
  ASSERT_TRUE(dev->attached(r));
  auto other = device("dev2");
  pn_link_t* r2 = other->attach(false, "/devices/dev2/messages/devicebound", 5);
  ASSERT_TRUE(other->attached(r2));
  ASSERT_EQ(http("PUT", "/devices/dev1",
                 R"({"deviceId":"dev1","status":"enabled","authentication":{"type":"sas",)"
                 R"("symmetricKey":{"primaryKey":"YS1uZXctZGV2aWNlLWtleS1mb3ItZGV2MS10ZXN0ISE=",)"
                 R"("secondaryKey":"YS1uZXctZGV2aWNlLWtleS1mb3ItZGV2MS10ZXN0ISE="}}})",
                 "If-Match: \"*\"\r\n"),
            200u)
      << last_reply_;
  EXPECT_TRUE(dev->wait([&] { return dev->closed(); }));
  EXPECT_EQ(dev->close_condition(), "amqp:unauthorized-access");
  EXPECT_TRUE(other->attached(r2));
  EXPECT_FALSE(other->closed());
}

TEST(amqp_door_config, BadLimitsAndPlainNonLoopbackListenersExit2) {
  if (!support::hub_daemon::available())
    DEVICEBOUND_MISSING_PART("devicebound-hub not found at " << support::default_hub);
  support::temp_dir dir{"devicebound-limits-config-"};
  {
    std::ofstream f(dir.file("bad.toml"));
    f << "[limits]\nthrottle = \"S4\"\n";
  }
  const std::string hub = support::default_hub;
  for (const std::string& args : std::vector<std::string>{
           "--amqp-listen 0.0.0.0:0", "--https-insecure --https-listen 0.0.0.0:0", "--throttle S9",
           "--throttle S1 --throttle-units 0", "--amqp-max-frame-size 100",
           "--amqp-max-connections 0", "--amqp-open-timeout 0", "--https-max-header-bytes 10",
           "--https-idle-timeout 0", "--amqp-max-message-size 99999999999",
           "-c " + dir.file("bad.toml")}) {
    const std::string cmd = "'" + hub + "' --in-memory " + args + " >/dev/null 2>&1";
    const int status = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(status)) << args;
    EXPECT_EQ(WEXITSTATUS(status), 2) << args;
  }
}

}  // namespace

#else

TEST(amqp_door_e2e, Skipped) {
  DEVICEBOUND_MISSING_PART("built without the AMQP door (Qpid Proton, OpenSSL, devicebound-hub)");
}

#endif
