// devicebound-hub's --rabbit-auth-listen (apps/devicebound-hub/rabbit_auth_listener.cpp)
// in-process on a loopback port: RabbitMQ's POST and GET forms answered from the
// identity view, unknown paths and methods, the size bounds, and the addresses
// it refuses to serve plain HTTP on.
#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/codec/property_bag.hpp>
#include <string>

#include "identity_view.hpp"
#include "rabbit_auth_listener.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;

auth::shared_access_key key_of(char fill) {
  return auth::shared_access_key::from_bytes(std::string(32, fill));
}

struct rabbit_listener : ::testing::Test {
  identity_view view{true};
  std::unique_ptr<rabbit_auth_listener> listener;

  void SetUp() override {
    view.set_policies(
        {{"service", key_of('s'), key_of('t'), auth::access_rights::service_connect}});
    device_identity d;
    d.device_id = "dev1";
    d.primary_key = key_of('1');
    d.secondary_key = key_of('2');
    d.status = device_status::enabled;
    d.auth = auth_type::sas;
    view.put_device(d);
    rabbit_auth_listener_config c;
    c.listen = "127.0.0.1:0";
    c.settings.hub_host = "myhub";
    c.identities = &view;
    c.max_body_bytes = 4096;
    auto started = rabbit_auth_listener::start(std::move(c));
    ASSERT_TRUE(started) << started.error().message;
    listener = std::move(*started);
  }

  /// One request on a fresh connection; the status and body.
  std::pair<unsigned, std::string> request(http::verb verb, const std::string& target,
                                           const std::string& body = {}) {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(net::ip::tcp::endpoint(net::ip::make_address("127.0.0.1"), listener->port()));
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (verb == http::verb::post) {
      req.set(http::field::content_type, "application/x-www-form-urlencoded");
      req.body() = body;
      req.prepare_payload();
    }
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    beast::error_code ec;
    http::read(stream, buf, res, ec);
    if (ec)
      return {0, ec.message()};
    return {res.result_int(), res.body()};
  }

  static std::string device_user_form(const std::string& token) {
    return "username=" + codec::percent_encode("myhub/dev1/?api-version=2021-04-12") +
           "&password=" + codec::percent_encode(token) + "&vhost=%2F&client_id=dev1";
  }
  static std::string dev1_token(char key) {
    return auth::to_string(
        auth::generate_sas_token("myhub/devices/dev1", key_of(key),
                                 auth::sas_expiry(system_clock{}.now(), std::chrono::hours(1))));
  }
};

TEST_F(rabbit_listener, post_user_allows_a_good_token_and_denies_a_bad_one) {
  EXPECT_EQ(request(http::verb::post, "/auth/user", device_user_form(dev1_token('1'))),
            (std::pair<unsigned, std::string>{200, "allow"}));
  EXPECT_EQ(request(http::verb::post, "/auth/user", device_user_form(dev1_token('9'))),
            (std::pair<unsigned, std::string>{200, "deny"}));
}

TEST_F(rabbit_listener, reads_the_identity_view_at_each_request) {
  const std::string form = device_user_form(dev1_token('1'));
  ASSERT_EQ(request(http::verb::post, "/auth/user", form).second, "allow");
  view.erase_device("dev1");
  EXPECT_EQ(request(http::verb::post, "/auth/user", form).second, "deny");
}

TEST_F(rabbit_listener, get_reads_the_query) {
  EXPECT_EQ(request(http::verb::get, "/auth/vhost?username=service&vhost=%2F&client_id=hub"),
            (std::pair<unsigned, std::string>{200, "allow"}));
  EXPECT_EQ(request(http::verb::get, "/auth/vhost?username=service&vhost=other&client_id=hub"),
            (std::pair<unsigned, std::string>{200, "deny"}));
  EXPECT_EQ(request(http::verb::get,
                    "/auth/topic?username=service&vhost=%2F&resource=topic&name=amq.topic&"
                    "permission=write&routing_key=devices.dev1.messages.devicebound.x&"
                    "variable_map.client_id=hub")
                .second,
            "allow");
}

TEST_F(rabbit_listener, unknown_paths_methods_and_oversized_bodies_are_refused) {
  EXPECT_EQ(request(http::verb::get, "/auth/other").first, 404u);
  EXPECT_EQ(request(http::verb::put, "/auth/user").first, 405u);
  EXPECT_EQ(request(http::verb::post, "/auth/user", std::string(5000, 'a')).first, 413u);
}

TEST(rabbit_listener_config, refuses_non_loopback_addresses_and_no_identities) {
  identity_view view{true};
  identity_view test_mode{false};
  const auto start = [](std::string listen, const identity_view* v) {
    rabbit_auth_listener_config c;
    c.listen = std::move(listen);
    c.identities = v;
    return rabbit_auth_listener::start(std::move(c));
  };
  EXPECT_FALSE(start("0.0.0.0:0", &view));
  EXPECT_FALSE(start("192.0.2.1:0", &view));
  EXPECT_FALSE(start("127.0.0.1", &view));
  EXPECT_FALSE(start("127.0.0.1:0", nullptr));
  EXPECT_FALSE(start("127.0.0.1:0", &test_mode));
  auto ok = start("localhost:0", &view);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_NE((*ok)->port(), 0);
  (*ok)->stop();
  (*ok)->stop();  // idempotent
}

}  // namespace
