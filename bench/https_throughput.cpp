/// \file https_throughput.cpp
/// The device C2D loop over devicebound-hub's HTTPS door, against a raw
/// Boost.Beast server that answers the same request shape with a fixed reply.
///
/// Both servers run in this process on free 127.0.0.1 ports: the HTTPS door
/// (apps/devicebound-hub/https_door.cpp) over the daemon's engine loop, router
/// and an in-memory hub (test mode: no token checks), and a raw Beast server
/// on a thread of its own that reads a request and answers `GET` with a fixed
/// 200 (a 64 B body, a quoted ETag, the iothub-* headers of a message) and
/// `DELETE` with 204, and nothing else. One client, one keep-alive
/// connection, does the device loop as the HTTP SDKs do: `GET
/// /devices/{id}/messages/deviceBound` -> 200, `DELETE .../{etag}` -> 204.
/// The hub's queue is filled first (through an in-process door), so every
/// GET finds a message.
///
/// Rows, over TLS (test certificates made by tests/support/make_test_certs.sh)
/// and over plain HTTP: messages/s and p50/p99 of one receive+complete loop;
/// then the ratio devicebound / raw. DEVICEBOUND_BENCH_SMOKE=1 runs tiny sizes
/// (ctest); DEVICEBOUND_BENCH_MESSAGES overrides the count (default 5000).
#include <cstdio>
#include <cstdlib>

#if DEVICEBOUND_WITH_HTTPS_DOOR

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <condition_variable>
#include <devicebound/hub.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../tests/support/temp_dir.hpp"
#include "engine_loop.hpp"
#include "https_door.hpp"
#include "router.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;
using steady = std::chrono::steady_clock;

/// Sends C2D messages into the engine, as a back end would.
class filler final : public front_door {
 public:
  std::string_view name() const noexcept override { return "bench"; }
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
      if (std::holds_alternative<reply>(o))
        ++replies_;
    cv_.notify_all();
  }
  void stop() override {}
  std::optional<error> failure() const override { return std::nullopt; }

  /// Sends `n` messages to `device` and waits until all are answered.
  bool fill(const std::string& device, std::size_t n) {
    std::unique_lock g(m_);
    if (!cv_.wait_for(g, 10s, [&] { return static_cast<bool>(sink_); }))
      return false;
    const std::size_t target = replies_ + n;
    auto sink = sink_;
    g.unlock();
    for (std::size_t i = 0; i < n; ++i) {
      message m;
      m.body = std::string(64, 'x');
      m.message_id = "m" + std::to_string(i);
      m.app_properties = {{"k", "v"}};
      sink(inbound{reply_to{id_, "f" + std::to_string(i)}, send_request{"bench", device, m}});
    }
    g.lock();
    return cv_.wait_for(g, 60s, [&] { return replies_ >= target; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  door_id id_ = 0;
  request_sink sink_;
  std::size_t replies_ = 0;
};

/// The baseline: reads a request, answers GET with a fixed 200 and DELETE with 204.
class raw_server {
 public:
  explicit raw_server(ssl::context* tls) : tls_(tls), acceptor_(ioc_) {
    const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(ep.protocol());
    acceptor_.bind(ep);
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { serve(); });
  }
  ~raw_server() {
    beast::error_code ignored;
    acceptor_.close(ignored);
    thread_.join();
  }
  std::uint16_t port() const { return port_; }

 private:
  template <class Stream>
  void loop(Stream& s) {
    beast::flat_buffer buf;
    for (;;) {
      http::request<http::string_body> req;
      beast::error_code ec;
      http::read(s, buf, req, ec);
      if (ec)
        return;
      http::response<http::string_body> res;
      res.version(11);
      res.keep_alive(true);
      if (req.method() == http::verb::get) {
        res.result(200);
        res.set(http::field::etag, "\"0f8fad5b-d9cb-469f-a165-70867728950e\"");
        res.set("iothub-messageid", "m1");
        res.set("iothub-to", "/devices/dev1/messages/devicebound");
        res.set("iothub-sequencenumber", "1");
        res.set("iothub-deliverycount", "0");
        res.set("iothub-ack", "none");
        res.set("iothub-app-k", "v");
        res.body() = std::string(64, 'x');
      } else {
        res.result(204);
      }
      res.prepare_payload();
      http::write(s, res, ec);
      if (ec)
        return;
    }
  }

  void serve() {
    beast::error_code ec;
    tcp::socket sock = acceptor_.accept(ec);  // one client connection per row
    if (ec)
      return;
    sock.set_option(tcp::no_delay(true), ec);
    if (tls_) {
      ssl::stream<tcp::socket> s(std::move(sock), *tls_);
      s.handshake(ssl::stream_base::server, ec);
      if (!ec)
        loop(s);
    } else {
      loop(sock);
    }
  }

  ssl::context* tls_;
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

struct row {
  double rate = 0;
  double p50 = 0;
  double p99 = 0;
  std::size_t done = 0;
};

/// One client connection doing `n` receive+complete loops.
row device_loop(std::uint16_t port, ssl::context* tls, std::size_t n) {
  net::io_context ioc;
  tcp::socket sock(ioc);
  sock.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  sock.set_option(tcp::no_delay(true));
  std::optional<ssl::stream<tcp::socket>> secure;
  if (tls) {
    secure.emplace(std::move(sock), *tls);
    SSL_set_tlsext_host_name(secure->native_handle(), "localhost");
    secure->handshake(ssl::stream_base::client);
  }
  beast::flat_buffer buf;
  std::vector<double> lat;
  lat.reserve(n);
  row out;
  const auto exchange = [&](http::request<http::empty_body>& req,
                            http::response<http::string_body>& res) {
    beast::error_code ec;
    if (secure) {
      http::write(*secure, req, ec);
      if (!ec)
        http::read(*secure, buf, res, ec);
    } else {
      http::write(sock, req, ec);
      if (!ec)
        http::read(sock, buf, res, ec);
    }
    return !ec;
  };
  const auto t0 = steady::now();
  for (std::size_t i = 0; i < n; ++i) {
    const auto t = steady::now();
    http::request<http::empty_body> get{
        http::verb::get, "/devices/dev1/messages/deviceBound?api-version=2021-04-12", 11};
    get.set(http::field::host, "localhost");
    http::response<http::string_body> got;
    if (!exchange(get, got) || got.result_int() != 200)
      break;
    std::string etag(got[http::field::etag]);
    if (etag.size() >= 2)
      etag = etag.substr(1, etag.size() - 2);
    http::request<http::empty_body> del{
        http::verb::delete_,
        "/devices/dev1/messages/deviceBound/" + etag + "?api-version=2021-04-12", 11};
    del.set(http::field::host, "localhost");
    http::response<http::string_body> done;
    if (!exchange(del, done) || done.result_int() != 204)
      break;
    lat.push_back(std::chrono::duration<double, std::micro>(steady::now() - t).count());
  }
  const double secs = std::chrono::duration<double>(steady::now() - t0).count();
  out.done = lat.size();
  if (lat.empty())
    return out;
  out.rate = static_cast<double>(lat.size()) / secs;
  std::sort(lat.begin(), lat.end());
  out.p50 = lat[lat.size() / 2];
  out.p99 = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  return out;
}

/// The hub and its HTTPS door, in this process.
class hub_process {
 public:
  hub_process(bool tls, const std::string& certs) {
    hub_config hc;
    hc.max_queue_depth = 10000;
    hub_ = hub(hc);
    router_.emplace(hub_, router_options{});
    https_door_config c;
    c.listen = {"127.0.0.1:0"};
    c.insecure = !tls;
    if (tls) {
      c.tls_server_cert = certs + "/server.crt";
      c.tls_server_key = certs + "/server.key";
    }
    door_ = std::make_unique<https_door>(std::move(c));
    loop_.emplace(*router_, std::vector<front_door*>{door_.get(), &filler_});
    thread_ = std::thread([this] { (void)loop_->run({"dev1"}); });
  }
  ~hub_process() {
    loop_->stop();
    thread_.join();
    door_->stop();
  }
  bool fill(std::size_t n) { return filler_.fill("dev1", n); }
  std::uint16_t port() const {
    const auto l = door_->listening();
    return static_cast<std::uint16_t>(std::stoi(l.at(0).substr(l.at(0).rfind(':') + 1)));
  }

 private:
  hub hub_;
  std::optional<router> router_;
  std::unique_ptr<https_door> door_;
  filler filler_;
  std::optional<engine_loop> loop_;
  std::thread thread_;
};

}  // namespace

int main() {
  const bool smoke = std::getenv("DEVICEBOUND_BENCH_SMOKE") != nullptr;
  std::size_t n = smoke ? 50 : 5000;
  if (const char* m = std::getenv("DEVICEBOUND_BENCH_MESSAGES"))
    n = static_cast<std::size_t>(std::strtoull(m, nullptr, 10));
  spdlog::set_level(spdlog::level::warn);

  test_support::temp_dir dir("devicebound-https-bench");
  const std::string certs = dir.path().string();
  const std::string cmd =
      std::string("bash '") + DEVICEBOUND_TEST_CERTS_SCRIPT + "' '" + certs + "' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "https_throughput: make_test_certs.sh failed\n");
    return 1;
  }
  ssl::context server_tls(ssl::context::tls_server);
  server_tls.use_certificate_chain_file(certs + "/server.crt");
  server_tls.use_private_key_file(certs + "/server.key", ssl::context::pem);
  ssl::context client_tls(ssl::context::tls_client);
  client_tls.load_verify_file(certs + "/ca.crt");
  client_tls.set_verify_mode(ssl::verify_peer);

  std::printf(
      "https_throughput: %zu receive+complete loops, one keep-alive connection, 64 B bodies\n", n);
  std::printf("  %-34s %10s %10s %10s\n", "", "msgs/s", "p50 us", "p99 us");
  int rc = 0;
  for (const bool tls : {true, false}) {
    row raw, ours;
    {
      raw_server s(tls ? &server_tls : nullptr);
      raw = device_loop(s.port(), tls ? &client_tls : nullptr, n);
    }
    {
      hub_process h(tls, certs);
      if (!h.fill(n)) {
        std::fprintf(stderr, "https_throughput: the hub did not take %zu messages\n", n);
        return 1;
      }
      ours = device_loop(h.port(), tls ? &client_tls : nullptr, n);
    }
    const char* mode = tls ? "TLS" : "plain HTTP";
    std::printf("  raw Beast, fixed 200/204 (%-10s) %10.0f %10.1f %10.1f\n", mode, raw.rate,
                raw.p50, raw.p99);
    std::printf("  devicebound HTTPS door (%-10s)   %10.0f %10.1f %10.1f\n", mode, ours.rate,
                ours.p50, ours.p99);
    std::printf("  ratio devicebound / raw (%s): %.2f\n", mode,
                raw.rate > 0 ? ours.rate / raw.rate : 0);
    if (raw.done != n || ours.done != n) {
      std::fprintf(stderr,
                   "https_throughput: only %zu (raw) and %zu (devicebound) of %zu loops done\n",
                   raw.done, ours.done, n);
      rc = 1;
    }
  }
  return rc;
}

#else

int main() {
  std::printf("https_throughput: skipped (built without the HTTPS door)\n");
  return 0;
}

#endif
