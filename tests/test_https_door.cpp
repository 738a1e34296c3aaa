// End-to-end tests of devicebound-hub's HTTPS front door (SPEC 11, 12): the
// door runs in this process on a free 127.0.0.1 port, next to the daemon's
// engine loop, router and an in-memory hub; a second, in-test door sends C2D
// messages and reads queue depths. The client is Boost.Beast over TLS (a CA
// and server certificate made at test time by tests/support/make_test_certs.sh)
// or plain HTTP, with every wait bounded.
#include <gtest/gtest.h>

#include "support/required.hpp"

#ifdef DEVICEBOUND_WITH_HTTPS_DOOR

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/codec/feedback_json.hpp>
#include <devicebound/hub.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#if __has_include(<devicebound/registry.hpp>)
#include <devicebound/registry.hpp>
#define DEVICEBOUND_TEST_HTTPS_REGISTRY 1  // the identity registry is wired into the router
#endif

#include "engine_loop.hpp"
#include "https_door.hpp"
#include "router.hpp"
#include "support/temp_dir.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;

using reply_value = decltype(reply{}.what);
constexpr auto wait_limit = 10s;
constexpr const char* hub_host = "testhub.example";
const std::string device_key_b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const std::string policy_key_b64 = "ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==";

// --- a door the test drives: sends, queue depths ------------------------------------------------

class test_door final : public front_door {
 public:
  std::string_view name() const noexcept override { return "test"; }
  result<void> start(door_id id, request_sink sink, std::stop_token) override {
    std::lock_guard g(m_);
    id_ = id;
    sink_ = std::move(sink);
    cv_.notify_all();
    return {};
  }
  time_point poll(time_point) override { return time_point::max(); }
  void release(std::span<const outbound> items) override {
    std::lock_guard g(m_);
    for (const auto& o : items)
      if (const auto* r = std::get_if<reply>(&o))
        replies_[r->to.address] = r->what;
    cv_.notify_all();
  }
  void stop() override {}
  std::optional<error> failure() const override { return std::nullopt; }

  /// Sends `what` and waits for its reply.
  reply_value ask(request what) {
    std::unique_lock g(m_);
    EXPECT_TRUE(cv_.wait_for(g, wait_limit, [&] { return static_cast<bool>(sink_); }));
    const std::string address = std::to_string(++next_);
    auto sink = sink_;
    g.unlock();
    sink(inbound{reply_to{id_, address}, std::move(what)});
    g.lock();
    const bool got = cv_.wait_for(g, wait_limit, [&] { return replies_.count(address) > 0; });
    EXPECT_TRUE(got) << "no reply from the engine";
    if (!got)
      return make_error(errc::timeout, "no reply");
    auto r = replies_[address];
    replies_.erase(address);
    return r;
  }

  std::uint64_t send(const std::string& device, message m) {
    auto r = ask(send_request{"test", device, std::move(m)});
    const auto* s = std::get_if<sent_reply>(&r);
    EXPECT_NE(s, nullptr) << (std::holds_alternative<error>(r) ? std::get<error>(r).message : "");
    return s ? s->sequence_number : 0;
  }
  std::uint64_t depth(const std::string& device) {
    auto r = ask(queue_depth_request{device});
    const auto* d = std::get_if<depth_reply>(&r);
    EXPECT_NE(d, nullptr);
    return d ? d->depth : 0;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  door_id id_ = 0;
  request_sink sink_;
  std::uint64_t next_ = 0;
  std::map<std::string, reply_value> replies_;
};

// --- an HTTP client with bounded waits ----------------------------------------------------------

struct response {
  unsigned status = 0;
  std::map<std::string, std::string> headers;                    ///< names lower-cased
  std::vector<std::pair<std::string, std::string>> raw_headers;  ///< as sent
  std::string body;
  bool closed = false;  ///< the connection ended instead (or the wait ran out)

  std::string header(const std::string& n) const {
    auto it = headers.find(n);
    return it == headers.end() ? "<absent>" : it->second;
  }
  std::string error_code() const { return header("iothub-errorcode"); }
};

std::string lower(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

class client {
 public:
  client(std::uint16_t port, ssl::context* tls) : tls_(tls) {
    tcp::socket s(ioc_);
    beast::error_code ec;
    s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port), ec);
    EXPECT_FALSE(ec) << ec.message();
    if (tls_) {
      stream_ssl_ = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(
          beast::tcp_stream(std::move(s)), *tls_);
      SSL_set_tlsext_host_name(stream_ssl_->native_handle(), "localhost");
      stream_ssl_->set_verify_callback(ssl::host_name_verification("localhost"));
      bool done = false;
      stream_ssl_->async_handshake(ssl::stream_base::client, [&](beast::error_code e) {
        ec = e;
        done = true;
      });
      run(done);
      EXPECT_TRUE(done && !ec) << "TLS handshake: " << ec.message();
    } else {
      stream_ = std::make_unique<beast::tcp_stream>(std::move(s));
    }
  }

  /// Writes `raw` bytes as they are.
  void write_raw(const std::string& raw) {
    bool done = false;
    beast::error_code ec;
    with_stream([&](auto& s) {
      net::async_write(s, net::buffer(raw), [&](beast::error_code e, std::size_t) {
        ec = e;
        done = true;
      });
    });
    run(done);
  }

  /// Reads one response (or notes that the connection ended).
  response read() {
    response out;
    http::response_parser<http::string_body> p;
    p.body_limit(16 * 1024 * 1024);
    bool done = false;
    beast::error_code ec;
    with_stream([&](auto& s) {
      http::async_read(s, buffer_, p, [&](beast::error_code e, std::size_t) {
        ec = e;
        done = true;
      });
    });
    run(done);
    if (!done || ec) {
      out.closed = true;
      return out;
    }
    auto res = p.release();
    out.status = res.result_int();
    for (const auto& f : res) {
      out.headers[lower(std::string(f.name_string()))] = std::string(f.value());
      out.raw_headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    }
    out.body = res.body();
    return out;
  }

  response request(const std::string& method, const std::string& target,
                   std::vector<std::pair<std::string, std::string>> headers = {},
                   const std::string& body = {}) {
    http::request<http::string_body> req;
    req.method_string(method);
    req.target(target);
    req.version(11);
    req.set(http::field::host, "localhost");
    for (auto& [n, v] : headers)
      req.set(n, v);
    if (!body.empty() || method == "PUT" || method == "POST")
      req.body() = body;
    req.prepare_payload();
    bool done = false;
    beast::error_code ec;
    with_stream([&](auto& s) {
      http::async_write(s, req, [&](beast::error_code e, std::size_t) {
        ec = e;
        done = true;
      });
    });
    run(done);
    if (!done || ec) {
      response r;
      r.closed = true;
      return r;
    }
    return read();
  }

 private:
  template <class F>
  void with_stream(F f) {
    if (stream_ssl_)
      f(*stream_ssl_);
    else
      f(*stream_);
  }

  /// Runs the client's I/O until `done` or the wait limit.
  void run(bool& done) {
    ioc_.restart();
    const auto deadline = std::chrono::steady_clock::now() + wait_limit;
    while (!done && std::chrono::steady_clock::now() < deadline)
      if (ioc_.run_one_until(deadline) == 0)
        break;
    if (!done) {
      beast::error_code ignored;
      with_stream([&](auto& s) { beast::get_lowest_layer(s).socket().close(ignored); });
      ioc_.restart();
      ioc_.run_for(1s);
    }
  }

  net::io_context ioc_;
  ssl::context* tls_;
  std::unique_ptr<beast::tcp_stream> stream_;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> stream_ssl_;
  beast::flat_buffer buffer_;
};

// --- the fixture ---------------------------------------------------------------------------

struct fixture_options {
  bool tls = true;
  bool auth = false;
  std::chrono::milliseconds request_timeout = 10s;
  bool registry = false;  ///< the router runs the identity registry (when it exists)
  std::chrono::milliseconds idle_timeout{0};  ///< 0: the request timeout
  std::uint32_t max_connections = 1000;
  throttle_config throttle{};
};

class hub_under_test {
 public:
  explicit hub_under_test(fixture_options o) : ids_(o.auth) {
    hub_config hc;
    hc.name = "testhub";
    hc.feedback_batch_interval = 0s;
    hc.max_queue_depth = 5;
    hub_ = hub(hc);
    router_options ro;
    ro.throttle = o.throttle;
#ifdef DEVICEBOUND_TEST_HTTPS_REGISTRY
    if (o.registry) {
      ro.identities = &registry_;
      ro.view = &ids_;
      ro.new_key = [n = 0]() mutable {
        std::string bytes(32, '\0');
        bytes[0] = static_cast<char>(++n);
        return auth::shared_access_key::from_bytes(bytes);
      };
    }
#endif
    router_.emplace(hub_, std::move(ro));
#ifdef DEVICEBOUND_TEST_HTTPS_REGISTRY
    if (o.registry && o.auth) {
      // The registry is the source of truth: seed it with the keys set above.
      identity_seed seed;
      seed.policies = ids_.policies();
      for (const char* id : {"dev1", "dev2"})
        seed.devices.push_back(
            {id, auth::shared_access_key::from_base64(device_key_b64).value(), {}});
      EXPECT_TRUE(router_->begin_batch());
      router_->seed_identities(seed, system_clock{}.now());
      EXPECT_TRUE(router_->end_batch());
    }
#endif
    if (o.auth) {
      const auto pk = auth::shared_access_key::from_base64(policy_key_b64).value();
      ids_.set_policies({{"service", pk, {}, auth::access_rights::service_connect},
                         {"iothubowner", pk, {}, auth::access_rights::all}});
      device_identity d;
      d.primary_key = auth::shared_access_key::from_base64(device_key_b64).value();
      for (const char* id : {"dev1", "dev2"}) {
        d.device_id = id;
        ids_.put_device(d);
      }
    }
    https_door_config c;
    c.listen = {"127.0.0.1:0"};
    c.insecure = !o.tls;
    if (o.tls) {
      const std::string cmd = std::string("bash '") + DEVICEBOUND_TEST_CERTS_SCRIPT + "' '" +
                              dir_.path().string() + "' >/dev/null 2>&1";
      if (std::system(cmd.c_str()) != 0)
        throw std::runtime_error("make_test_certs.sh failed");
      c.tls_server_cert = dir_.path().string() + "/server.crt";
      c.tls_server_key = dir_.path().string() + "/server.key";
      client_tls_.emplace(ssl::context::tls_client);
      client_tls_->load_verify_file(dir_.path().string() + "/ca.crt");
      client_tls_->set_verify_mode(ssl::verify_peer);
    }
    c.iothub_hostname = hub_host;
    c.identities = &ids_;
    c.request_timeout = o.request_timeout;
    c.idle_timeout = o.idle_timeout.count() ? o.idle_timeout : o.request_timeout;
    c.max_connections = o.max_connections;
    c.max_header_bytes = 8 * 1024;
    c.max_body_bytes = 256 * 1024;
    door_ = std::make_unique<https_door>(std::move(c));
    loop_.emplace(*router_, std::vector<front_door*>{door_.get(), &test_});
    thread_ = std::thread([this] { end_ = loop_->run({"dev1", "dev2"}); });
    // Bounded: the loop starts the doors, then serves the test door's ping.
    EXPECT_TRUE(std::holds_alternative<done_reply>(test_.ask(ping_request{})));
    const auto l = door_->listening();
    EXPECT_EQ(l.size(), 1u);
    port_ = static_cast<std::uint16_t>(std::stoi(l.at(0).substr(l.at(0).rfind(':') + 1)));
  }
  ~hub_under_test() {
    loop_->stop();
    thread_.join();
    door_->stop();
  }

  client connect() {
    return client(port_, client_tls_ ? &*client_tls_ : nullptr);
  }
  test_door& service() {
    return test_;
  }
  std::uint16_t port() const {
    return port_;
  }
  const https_door& door() const {
    return *door_;
  }

 private:
  test_support::temp_dir dir_{"devicebound-https"};
  identity_view ids_;
#ifdef DEVICEBOUND_TEST_HTTPS_REGISTRY
  registry registry_;
#endif
  hub hub_;
  std::optional<router> router_;
  std::unique_ptr<https_door> door_;
  test_door test_;
  std::optional<engine_loop> loop_;
  std::thread thread_;
  loop_end end_;
  std::uint16_t port_ = 0;
  std::optional<ssl::context> client_tls_;
};

message c2d(const std::string& id, ack_mode ack = ack_mode::full) {
  message m;
  m.body = "payload of " + id;
  m.message_id = id;
  m.correlation_id = "corr-" + id;
  m.user_id = "backend";
  m.ack = ack;
  m.content_type = "application/json";
  m.content_encoding = "utf-8";
  m.app_properties = {{"color", "blue"}, {"size", "42"}};
  return m;
}

std::string etag_token(const response& r) {
  std::string e = r.header("etag");
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"')
    return e.substr(1, e.size() - 2);
  ADD_FAILURE() << "ETag not quoted: " << e;
  return e;
}

const std::string recv_path = "/devices/dev1/messages/deviceBound?api-version=2020-09-30";
std::string settle_path(const std::string& token, const std::string& tail = "") {
  return "/devices/dev1/messages/devicebound/" + token + tail;
}

// --- device C2D round trips (SPEC 11.2, 11.3) ----------------------------------------------------

TEST(https_door, ReceiveCompleteOverTlsWithEveryPropertyAndFeedback) {
  hub_under_test h({});
  const auto seq = h.service().send("dev1", c2d("m1"));
  auto c = h.connect();
  auto r = c.request("GET", recv_path);
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.body, "payload of m1");
  EXPECT_EQ(r.header("iothub-messageid"), "m1");
  EXPECT_EQ(r.header("iothub-correlationid"), "corr-m1");
  EXPECT_EQ(r.header("iothub-userid"), "backend");
  EXPECT_EQ(r.header("iothub-to"), "/devices/dev1/messages/devicebound");
  EXPECT_EQ(r.header("iothub-ack"), "full");
  EXPECT_EQ(r.header("iothub-sequencenumber"), std::to_string(seq));
  EXPECT_EQ(r.header("iothub-deliverycount"), "0");
  EXPECT_EQ(r.header("iothub-app-color"), "blue");
  EXPECT_EQ(r.header("iothub-app-size"), "42");
  EXPECT_NE(r.header("iothub-expiry"), "<absent>");
  EXPECT_NE(r.header("iothub-enqueuedtime"), "<absent>");
  bool exact_case = false;
  for (const auto& [n, v] : r.raw_headers)
    exact_case |= n == "ContentType" && v == "application/json";
  EXPECT_TRUE(exact_case) << "ContentType must be sent in exactly this case (C SDK)";
  const std::string token = etag_token(r);

  // The same keep-alive connection: complete, then the queue is empty.
  auto done = c.request("DELETE", settle_path(token, "?api-version=2021-04-12"),
                        {{"If-Match", "\"" + token + "\""}});
  EXPECT_EQ(done.status, 204u) << done.body;
  EXPECT_EQ(c.request("GET", recv_path).status, 204u);
  EXPECT_EQ(h.service().depth("dev1"), 0u);

  // Feedback over HTTPS (SPEC 11.4): Success, then complete it.
  auto fb = c.request("GET", "/messages/serviceBound/feedback?api-version=2021-04-12");
  ASSERT_EQ(fb.status, 200u) << fb.body;
  auto records = codec::decode_feedback_json(fb.body);
  ASSERT_TRUE(records) << records.error().message;
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].status_code, feedback_status::success);
  EXPECT_EQ((*records)[0].original_message_id, "m1");
  EXPECT_EQ((*records)[0].device_id, "dev1");
  const std::string fb_token = etag_token(fb);
  EXPECT_EQ(c.request("DELETE", "/messages/serviceBound/feedback/" + fb_token).status, 204u);
  EXPECT_EQ(c.request("GET", "/messages/serviceBound/feedback").status, 204u);
}

TEST(https_door, RejectDeadLettersAndAbandonRedeliversWithPropertiesIntact) {
  hub_under_test h({false});
  h.service().send("dev1", c2d("m1"));
  h.service().send("dev1", c2d("m2"));
  auto c = h.connect();

  auto first = c.request("GET", recv_path);
  ASSERT_EQ(first.status, 200u);
  EXPECT_EQ(first.header("iothub-messageid"), "m1");
  // Reject as the C and Node SDKs write it (`&reject`).
  EXPECT_EQ(
      c.request("DELETE", settle_path(etag_token(first), "?api-version=2016-11-14&reject")).status,
      204u);

  auto second = c.request("GET", recv_path);
  ASSERT_EQ(second.status, 200u);
  EXPECT_EQ(second.header("iothub-messageid"), "m2");
  // Abandon as C# writes it: `IfMatch`, not If-Match.
  EXPECT_EQ(c.request("POST", settle_path(etag_token(second), "/abandon?api-version=2020-09-30"),
                      {{"IfMatch", "\"" + etag_token(second) + "\""}})
                .status,
            204u);
  auto again = c.request("GET", recv_path);
  ASSERT_EQ(again.status, 200u);
  EXPECT_EQ(again.header("iothub-messageid"), "m2");
  EXPECT_EQ(again.body, "payload of m2");
  EXPECT_EQ(again.header("iothub-correlationid"), "corr-m2");
  EXPECT_EQ(again.header("iothub-app-color"), "blue");
  EXPECT_EQ(again.header("iothub-deliverycount"), "1");
  EXPECT_NE(etag_token(again), etag_token(second));

  auto fb = c.request("GET", "/messages/serviceBound/feedback");
  ASSERT_EQ(fb.status, 200u);
  auto records = codec::decode_feedback_json(fb.body);
  ASSERT_TRUE(records);
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].status_code, feedback_status::rejected);
  // Feedback abandon: the batch comes again.
  EXPECT_EQ(
      c.request("POST", "/messages/serviceBound/feedback/" + etag_token(fb) + "/abandon").status,
      204u);
  auto fb2 = c.request("GET", "/messages/serviceBound/feedback");
  EXPECT_EQ(fb2.status, 200u);
  EXPECT_EQ(fb2.body, fb.body);
}

TEST(https_door, AStaleEtagIs412AndChangesNothing) {
  hub_under_test h({false});
  h.service().send("dev1", c2d("m1"));
  auto c = h.connect();
  auto r = c.request("GET", recv_path);
  const std::string token = etag_token(r);
  ASSERT_EQ(c.request("DELETE", settle_path(token)).status, 204u);
  h.service().send("dev1", c2d("m2"));
  for (const auto& [method, tail] : {std::pair<std::string, std::string>{"DELETE", ""},
                                     {"DELETE", "?reject"},
                                     {"POST", "/abandon"}}) {
    auto stale = c.request(method, settle_path(token, tail));
    EXPECT_EQ(stale.status, 412u) << method << tail;
    EXPECT_EQ(stale.error_code(), "DeviceMessageLockLost");
  }
  // Another device's path with a live token: that device holds no such lock.
  auto live = c.request("GET", recv_path);
  ASSERT_EQ(live.status, 200u);
  EXPECT_EQ(c.request("DELETE", "/devices/dev2/messages/devicebound/" + etag_token(live)).status,
            412u);
  EXPECT_EQ(c.request("GET", "/devices/nobody/messages/devicebound").status, 404u);
  EXPECT_EQ(h.service().depth("dev1"), 1u);
  EXPECT_EQ(c.request("DELETE", settle_path(etag_token(live))).status, 204u);
}

// --- purge (SPEC 11.5) ------------------------------------------------------------------------

TEST(https_door, PurgeCountsAndGivesPurgedFeedbackWhenAsked) {
  hub_under_test h({});
  h.service().send("dev1", c2d("a", ack_mode::negative));
  h.service().send("dev1", c2d("b", ack_mode::none));
  h.service().send("dev1", c2d("c", ack_mode::full));
  auto c = h.connect();
  auto r = c.request("DELETE", "/devices/dev1/commands?api-version=2021-04-12");
  ASSERT_EQ(r.status, 200u) << r.body;
  const auto j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["totalMessagesPurged"], 3);
  EXPECT_EQ(j["deviceId"], "dev1");
  EXPECT_EQ(h.service().depth("dev1"), 0u);
  EXPECT_EQ(c.request("GET", recv_path).status, 204u);
  auto fb = c.request("GET", "/messages/serviceBound/feedback");
  ASSERT_EQ(fb.status, 200u);
  auto records = codec::decode_feedback_json(fb.body);
  ASSERT_TRUE(records);
  std::vector<std::string> purged;
  for (const auto& rec : *records) {
    EXPECT_EQ(rec.status_code, feedback_status::purged);
    purged.push_back(rec.original_message_id);
  }
  EXPECT_EQ(purged, (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(c.request("DELETE", "/devices/nobody/commands").status, 404u);
}

// --- bad input: each with its status, and no state change
// ------------------------------------------

TEST(https_door, BadRequestsGetTheirStatusAndChangeNothing) {
  hub_under_test h({false});
  h.service().send("dev1", c2d("m1"));
  auto c = h.connect();
  auto bad_json =
      c.request("PUT", "/devices/dev1", {{"Content-Type", "application/json"}}, "{\"deviceId\":");
  EXPECT_EQ(bad_json.status, 400u);
  EXPECT_EQ(bad_json.error_code(), "ArgumentInvalid");
  EXPECT_NE(bad_json.body.find("is not valid JSON"), std::string::npos) << bad_json.body;
  EXPECT_EQ(c.request("GET", "/nowhere").status, 400u);
  auto wrong = c.request("PATCH", "/devices/dev1/messages/devicebound");
  EXPECT_EQ(wrong.status, 405u);
  EXPECT_EQ(wrong.header("allow"), "GET");
  // The registry is the router's (501 in a fixture without it).
  EXPECT_NE(c.request("GET", "/devices/dev1").status, 0u);
  // The connection survived all of that (keep-alive), and nothing moved.
  EXPECT_EQ(h.service().depth("dev1"), 1u);
  auto r = c.request("GET", recv_path);
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.header("iothub-deliverycount"), "0");
}

TEST(https_door, OversizeHeaderIs431AndOversizeBodyIs413) {
  hub_under_test h({false});
  {
    auto c = h.connect();
    auto r = c.request("GET", recv_path, {{"X-Big", std::string(9000, 'x')}});
    EXPECT_EQ(r.status, 431u);
    EXPECT_EQ(r.error_code(), "RequestHeaderFieldsTooLarge");
    EXPECT_EQ(r.header("connection"), "close");
  }
  {
    auto c = h.connect();
    const std::string body =
        "{\"deviceId\":\"dev1\",\"x\":\"" + std::string(300 * 1024, 'y') + "\"}";
    auto r = c.request("PUT", "/devices/dev1", {{"Content-Type", "application/json"}}, body);
    EXPECT_EQ(r.status, 413u);
    EXPECT_EQ(r.error_code(), "MessageTooLarge");
  }
  EXPECT_EQ(h.service().depth("dev1"), 0u);
  // The door still serves.
  EXPECT_EQ(h.connect().request("GET", recv_path).status, 204u);
}

TEST(https_door, ASlowClientGets408) {
  hub_under_test h({false, false, 300ms});
  h.service().send("dev1", c2d("m1"));
  auto c = h.connect();
  // Half a request: the header never ends.
  c.write_raw("GET " + recv_path + " HTTP/1.1\r\nHost: localhost\r\n");
  auto r = c.read();
  EXPECT_EQ(r.status, 408u);
  EXPECT_EQ(r.error_code(), "RequestTimeout");
  // The request was never routed: the message is not locked.
  EXPECT_EQ(h.connect().request("GET", recv_path).header("iothub-deliverycount"), "0");
  // An idle keep-alive connection is closed without a word.
  auto idle = h.connect();
  EXPECT_TRUE(idle.read().closed);
}

// --- authentication (SPEC 12.7-12.9) -----------------------------------------------------------

std::string service_token(std::uint64_t se = 4'000'000'000, const std::string& policy = "service") {
  return to_string(auth::generate_sas_token(
      hub_host, auth::shared_access_key::from_base64(policy_key_b64).value(), se, policy));
}
std::string device_token(const std::string& device, std::uint64_t se = 4'000'000'000) {
  return to_string(
      auth::generate_sas_token(std::string(hub_host) + "/devices/" + device,
                               auth::shared_access_key::from_base64(device_key_b64).value(), se));
}

TEST(https_door, TokensAreCheckedAndRefusalsChangeNothing) {
  hub_under_test h({true, true});
  h.service().send("dev1", c2d("m1"));
  auto c = h.connect();
  const auto expect_401 = [](const response& r) {
    EXPECT_EQ(r.status, 401u) << r.body;
    EXPECT_EQ(r.error_code(), "IotHubUnauthorizedAccess");
    const auto j = nlohmann::json::parse(r.body);
    EXPECT_TRUE(j["Message"].get<std::string>().starts_with("ErrorCode:IotHubUnauthorizedAccess;"));
  };
  expect_401(c.request("GET", recv_path));  // missing
  expect_401(
      c.request("GET", recv_path, {{"Authorization", device_token("dev1", 1000)}}));   // expired
  expect_401(c.request("GET", recv_path, {{"Authorization", device_token("dev2")}}));  // not dev1
  expect_401(c.request("DELETE", "/devices/dev1/commands",
                       {{"Authorization", device_token("dev1")}}));  // device token, service call
  expect_401(c.request("GET", "/messages/serviceBound/feedback",
                       {{"Authorization", device_token("dev1")}}));
  expect_401(
      c.request("GET", recv_path, {{"Authorization", service_token()}}));  // no DeviceConnect
  EXPECT_EQ(h.service().depth("dev1"), 1u);

  auto r = c.request("GET", recv_path, {{"Authorization", device_token("dev1")}});
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(r.header("iothub-deliverycount"), "0");
  EXPECT_EQ(
      c.request("DELETE", settle_path(etag_token(r)), {{"Authorization", device_token("dev1")}})
          .status,
      204u);
  EXPECT_EQ(
      c.request("GET", "/messages/serviceBound/feedback", {{"Authorization", service_token()}})
          .status,
      200u);
}

// --- the registry (SPEC 12.1-12.4) ---------------------------------------------------------------

#ifdef DEVICEBOUND_TEST_HTTPS_REGISTRY

TEST(https_door, RegistryCreateGetListUpdateDeleteEndToEnd) {
  fixture_options o;
  o.tls = false;
  o.registry = true;
  hub_under_test h(o);
  auto c = h.connect();
  const std::vector<std::pair<std::string, std::string>> json = {
      {"Content-Type", "application/json; charset=utf-8"}};
  // Node's Registry.create: empty keys, no If-Match -> generated keys.
  auto created = c.request(
      "PUT", "/devices/newdev?api-version=2021-04-12", json,
      R"({"deviceId":"newdev","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}})");
  ASSERT_EQ(created.status, 200u) << created.body;
  auto d = nlohmann::json::parse(created.body);
  EXPECT_EQ(d["deviceId"], "newdev");
  EXPECT_EQ(d["status"], "enabled");
  EXPECT_EQ(d["connectionState"], "Disconnected");
  const std::string etag = d["etag"].get<std::string>();
  EXPECT_EQ(created.header("etag"), "\"" + etag + "\"");
  ASSERT_TRUE(d["authentication"]["symmetricKey"]["primaryKey"].is_string());
  EXPECT_EQ(
      auth::base64_decode(d["authentication"]["symmetricKey"]["primaryKey"].get<std::string>())
          ->size(),
      32u);

  // No If-Match on an existing device: 409; a stale etag: 412; bad JSON: 400. Nothing changes.
  auto again = c.request("PUT", "/devices/newdev", json, R"({"deviceId":"newdev"})");
  EXPECT_EQ(again.status, 409u);
  EXPECT_EQ(again.error_code(), "DeviceAlreadyExists");
  auto stale = c.request("PUT", "/devices/newdev", {{"If-Match", "\"999\""}},
                         R"({"deviceId":"newdev","status":"disabled"})");
  EXPECT_EQ(stale.status, 412u);
  EXPECT_EQ(stale.error_code(), "PreconditionFailed");
  EXPECT_EQ(c.request("PUT", "/devices/newdev", json, "{\"deviceId\":").status, 400u);
  auto got = c.request("GET", "/devices/newdev?api-version=2021-04-12");
  ASSERT_EQ(got.status, 200u);
  EXPECT_EQ(nlohmann::json::parse(got.body)["etag"], etag);
  EXPECT_EQ(nlohmann::json::parse(got.body)["status"], "enabled");

  // A C2D message to the new device, received over HTTPS; the count shows in the JSON.
  h.service().send("newdev", c2d("n1"));
  EXPECT_EQ(
      nlohmann::json::parse(c.request("GET", "/devices/newdev").body)["cloudToDeviceMessageCount"],
      1);
  auto m = c.request("GET", "/devices/newdev/messages/devicebound");
  ASSERT_EQ(m.status, 200u);
  EXPECT_EQ(m.header("iothub-messageid"), "n1");

  // Update with If-Match "*" (Node's Registry.update).
  auto updated = c.request("PUT", "/devices/newdev", {{"If-Match", "\"*\""}},
                           R"({"deviceId":"newdev","status":"disabled","statusReason":"lab"})");
  ASSERT_EQ(updated.status, 200u) << updated.body;
  const auto u = nlohmann::json::parse(updated.body);
  EXPECT_EQ(u["status"], "disabled");
  EXPECT_NE(u["etag"], etag);

  // List: all, and top.
  auto all = c.request("GET", "/devices/?api-version=2021-04-12");
  ASSERT_EQ(all.status, 200u);
  bool listed = false;
  for (const auto& x : nlohmann::json::parse(all.body))
    listed |= x["deviceId"] == "newdev";
  EXPECT_TRUE(listed);
  EXPECT_EQ(nlohmann::json::parse(c.request("GET", "/devices?top=1").body).size(), 1u);

  // Delete: a stale etag is 412; "*" is 204; then 404 everywhere.
  EXPECT_EQ(c.request("DELETE", "/devices/newdev", {{"If-Match", "\"" + etag + "\""}}).status,
            412u);
  EXPECT_EQ(c.request("DELETE", "/devices/newdev", {{"If-Match", "\"*\""}}).status, 204u);
  auto gone = c.request("GET", "/devices/newdev");
  EXPECT_EQ(gone.status, 404u);
  EXPECT_EQ(gone.error_code(), "DeviceNotFound");
  EXPECT_EQ(c.request("GET", "/devices/newdev/messages/devicebound").status, 404u);
  EXPECT_EQ(c.request("DELETE", "/devices/newdev").status, 404u);
}

TEST(https_door, ADeviceCreatedOverRestUsesItsKeysAndIsRefusedOnceDeletedOrDisabled) {
  fixture_options o;
  o.tls = false;
  o.auth = true;
  o.registry = true;
  hub_under_test h(o);
  auto c = h.connect();
  const std::string owner = service_token(4'000'000'000, "iothubowner");
  // The service policy cannot write the registry.
  EXPECT_EQ(c.request("PUT", "/devices/restdev", {{"Authorization", service_token()}},
                      R"({"deviceId":"restdev"})")
                .status,
            401u);
  auto created = c.request("PUT", "/devices/restdev?api-version=2021-04-12",
                           {{"Authorization", owner}}, R"({"deviceId":"restdev"})");
  ASSERT_EQ(created.status, 200u) << created.body;
  const std::string key =
      nlohmann::json::parse(created.body)["authentication"]["symmetricKey"]["primaryKey"]
          .get<std::string>();
  const auto token = [&](std::uint64_t se = 4'000'000'000) {
    return to_string(auth::generate_sas_token(std::string(hub_host) + "/devices/restdev",
                                              auth::shared_access_key::from_base64(key).value(),
                                              se));
  };
  const std::string recv = "/devices/restdev/messages/devicebound";
  EXPECT_EQ(c.request("GET", recv, {{"Authorization", token()}}).status, 204u);
  h.service().send("restdev", c2d("r1"));
  auto m = c.request("GET", recv, {{"Authorization", token()}});
  ASSERT_EQ(m.status, 200u);
  EXPECT_EQ(c.request("DELETE", "/devices/restdev/messages/devicebound/" + etag_token(m),
                      {{"Authorization", token()}})
                .status,
            204u);

  // Disabled: refused from then on.
  ASSERT_EQ(c.request("PUT", "/devices/restdev", {{"Authorization", owner}, {"If-Match", "*"}},
                      R"({"deviceId":"restdev","status":"disabled"})")
                .status,
            200u);
  EXPECT_EQ(c.request("GET", recv, {{"Authorization", token()}}).status, 401u);
  // Deleted: refused too, and gone from the registry.
  EXPECT_EQ(
      c.request("DELETE", "/devices/restdev", {{"Authorization", owner}, {"If-Match", "*"}}).status,
      204u);
  EXPECT_EQ(c.request("GET", recv, {{"Authorization", token()}}).status, 401u);
  EXPECT_EQ(c.request("GET", "/devices/restdev", {{"Authorization", owner}}).status, 404u);
}

#endif

// --- limits (docs/security.md) -------------------------------------------------------------------

TEST(https_door, ConnectionsOverTheLimitAreClosedAndCostOnlyTheirOwner) {
  fixture_options o{false};
  o.max_connections = 3;
  hub_under_test h(o);
  std::deque<client> held;  // clients do not move
  for (int i = 0; i < 3; ++i) {
    held.emplace_back(h.port(), nullptr);
    ASSERT_EQ(held.back().request("GET", recv_path).status, 204u);  // admitted and served
  }
  EXPECT_EQ(h.door().connections(), 3u);
  // The fourth is closed at once; the three admitted are still served.
  EXPECT_TRUE(h.connect().request("GET", recv_path).closed);
  for (auto& c : held)
    EXPECT_EQ(c.request("GET", recv_path).status, 204u);
  // One closes: its slot is free again (bounded: the door counts it once the session ends).
  held.pop_back();
  bool served = false;
  for (int attempt = 0; attempt < 2000 && !served; ++attempt)
    served = h.connect().request("GET", recv_path).status == 204u;
  EXPECT_TRUE(served);
}

TEST(https_door, AnIdleConnectionIsClosedAfterTheIdleTimeoutAndASlowOneGets408) {
  fixture_options o{false, false, 5s};
  o.idle_timeout = 200ms;
  hub_under_test h(o);
  // Idle (keep-alive after a request, and new and silent): closed without a word.
  auto kept = h.connect();
  ASSERT_EQ(kept.request("GET", recv_path).status, 204u);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(kept.read().closed);
  EXPECT_TRUE(h.connect().read().closed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);  // the idle timeout, not the 5 s
  // A request begun in time but never finished: 408 at the request timeout.
  fixture_options slow{false, false, 300ms};
  slow.idle_timeout = 10s;
  hub_under_test h2(slow);
  auto c = h2.connect();
  c.write_raw("GET " + recv_path + " HTTP/1.1\r\nHost: localhost\r\n");
  const auto r = c.read();
  EXPECT_EQ(r.status, 408u);
  EXPECT_EQ(r.error_code(), "RequestTimeout");
}

TEST(https_door, AThrottledReceiveIs429WithIotHubsErrorBody) {
  fixture_options o{false};
  o.throttle = {throttle_tier::s1, 1};  // 1000 receives a minute, a minute's burst
  hub_under_test h(o);
  auto c = h.connect();
  // The burst, then 429 (the bucket refills one every 60 ms of the real clock
  // meanwhile, so a few more may pass: bounded).
  int served = 0;
  response r;
  for (int i = 0; i < 3000; ++i) {
    r = c.request("GET", recv_path);
    if (r.status != 204u)
      break;
    ++served;
  }
  EXPECT_GE(served, 1000);
  EXPECT_EQ(r.status, 429u);
  EXPECT_EQ(r.error_code(), "ThrottlingException");
  EXPECT_EQ(r.header("content-type"), "application/json; charset=utf-8");
  const auto body = nlohmann::json::parse(r.body, nullptr, false);
  ASSERT_TRUE(body.is_object()) << r.body;
  EXPECT_EQ(body["Message"].get<std::string>().rfind("ErrorCode:ThrottlingException;", 0), 0u)
      << r.body;
  EXPECT_EQ(body["ExceptionMessage"].get<std::string>().rfind("Tracking ID:", 0), 0u) << r.body;
  // The connection stays usable (a 429 is an answer, not a close).
  EXPECT_NE(c.request("GET", recv_path).status, 0u);
}

TEST(https_door, Tls12IsTheMinimumAndPlainHttpIsForLoopbackOnly) {
  hub_under_test h({});
  test_support::temp_dir dir{"devicebound-https-tls"};
  const auto handshake = [&](int max_version) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_security_level(ctx, 0);  // the client would offer TLS 1.0/1.1
    SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(ctx, max_version);
    net::io_context ioc;
    tcp::socket sock(ioc);
    beast::error_code ec;
    sock.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), h.port()), ec);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, static_cast<int>(sock.native_handle()));
    const bool ok = !ec && SSL_connect(ssl) == 1;  // blocking; the door answers at once
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return ok;
  };
  EXPECT_FALSE(handshake(TLS1_VERSION));
  EXPECT_FALSE(handshake(TLS1_1_VERSION));
  EXPECT_TRUE(handshake(TLS1_2_VERSION));
  EXPECT_TRUE(handshake(TLS1_3_VERSION));
  // --https-insecure on an address that is not loopback: refused, naming the rule
  https_door_config c;
  c.listen = {"0.0.0.0:0"};
  c.insecure = true;
  https_door plain(std::move(c));
  const auto r = plain.start(0, [](inbound) {}, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("loopback"), std::string::npos) << r.error().message;
}

}  // namespace

#else

TEST(https_door, Skipped) {
  DEVICEBOUND_MISSING_PART("built without the HTTPS door (OpenSSL, devicebound-hub)");
}

#endif
