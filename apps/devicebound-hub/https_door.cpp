#include "https_door.hpp"

#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>
#include <cstdint>
#include <devicebound/clock.hpp>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "https_routes.hpp"

namespace devicebound::hubd {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;

namespace {

/// Whether `host` is a loopback address or `localhost` (plain HTTP is allowed there only).
bool is_loopback(const net::ip::address& a) {
  return a.is_loopback() || (a.is_v6() && a.to_v6().is_v4_mapped() &&
                             net::ip::make_address_v4(net::ip::v4_mapped, a.to_v6()).is_loopback());
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
  return out;
}

/// Splits `host:port` (`[v6]:port` too).
std::optional<std::pair<std::string, std::uint16_t>> split_host_port(std::string_view s) {
  const std::size_t colon = s.rfind(':');
  if (colon == std::string_view::npos)
    return std::nullopt;
  std::string_view host = s.substr(0, colon);
  const std::string_view port = s.substr(colon + 1);
  if (host.starts_with('[') && host.ends_with(']'))
    host = host.substr(1, host.size() - 2);
  unsigned p = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc{} || end != port.data() + port.size() || p > 65535 || host.empty())
    return std::nullopt;
  return std::pair{std::string(host), static_cast<std::uint16_t>(p)};
}

}  // namespace

/// One connection, whatever its stream; what `release` talks to.
class https_connection {
 public:
  virtual ~https_connection() = default;
  /// Called on the engine thread: the router's reply to request `request_id`.
  virtual void deliver(std::uint64_t request_id, https::reply_value what) = 0;
};

struct https_door::impl {
  https_door_config config;
  door_id id = 0;
  request_sink sink;
  net::io_context ioc{1};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::optional<ssl::context> tls;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::vector<std::string> listening;
  std::vector<std::thread> threads;
  std::atomic<std::uint64_t> next_connection{1};
  /// Sessions alive (each counts itself from construction to destruction).
  std::atomic<std::uint32_t> open_connections{0};
  /// Connections refused over `max_connections` since the last log line.
  std::atomic<std::uint64_t> refused_connections{0};

  /// Connections waiting for the engine's reply, held alive until it comes.
  std::mutex waiting_mutex;
  std::map<std::uint64_t, std::shared_ptr<https_connection>> waiting;

  std::uint64_t tracking_seed = std::random_device{}() * 0x9E3779B97F4A7C15ull;
  std::atomic<std::uint64_t> tracking_counter{0};

  explicit impl(https_door_config c) : config(std::move(c)) {}

  https::response_context context() {
    // Tracking ids are GUID-shaped and unique per response (SPEC 11.6.2).
    lock_token t;
    const std::uint64_t n = tracking_counter.fetch_add(1) + 1;
    for (int i = 0; i < 8; ++i) {
      t.bytes[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(tracking_seed >> (8 * i));
      t.bytes[static_cast<std::size_t>(8 + i)] = static_cast<std::uint8_t>(n >> (8 * i));
    }
    return {t.to_string(), system_clock{}.now()};
  }

  void accept(tcp::acceptor& a);
  result<void> start(door_id door, request_sink s, std::stop_token stop);
};

namespace {

using parser_t = http::request_parser<http::string_body>;

template <class Stream>
class session final : public https_connection,
                      public std::enable_shared_from_this<session<Stream>> {
 public:
  session(https_door::impl& door, std::uint64_t id, Stream stream)
      : door_(door), id_(id), stream_(std::move(stream)), timer_(stream_.get_executor()) {
    door_.open_connections.fetch_add(1);
  }
  ~session() override { door_.open_connections.fetch_sub(1); }
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  void run() {
    if constexpr (std::is_same_v<Stream, beast::ssl_stream<beast::tcp_stream>>) {
      arm_timer();
      stream_.async_handshake(ssl::stream_base::server, [self = this->shared_from_this()](
                                                            beast::error_code ec) {
        self->timer_.cancel();
        if (ec || self->timed_out_) {
          spdlog::debug("https: connection {}: TLS handshake failed: {}", self->id_, ec.message());
          return self->close();
        }
        self->read();
      });
    } else {
      read();
    }
  }

  void deliver(std::uint64_t request_id, https::reply_value what) override {
    net::post(stream_.get_executor(),
              [self = this->shared_from_this(), request_id, what = std::move(what)]() mutable {
                if (!self->pending_ || request_id != self->request_id_)
                  return;  // not the request this connection waits for
                auto r = https::respond(*self->pending_, what, self->door_.context());
                self->pending_.reset();
                self->write(std::move(r), self->keep_alive_);
              });
  }

 private:
  auto& socket() { return beast::get_lowest_layer(stream_).socket(); }

  void arm_timer() {
    timed_out_ = false;
    timer_.expires_after(door_.config.request_timeout);
    timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (ec)
        return;  // cancelled: the operation finished in time
      self->timed_out_ = true;
      beast::error_code ignored;
      self->socket().cancel(ignored);
    });
  }

  /// While a request is read: the idle timeout until its first byte, the
  /// request timeout (from when the wait began) once a byte has come.
  void arm_read_timer() {
    timed_out_ = false;
    read_started_ = std::chrono::steady_clock::now();
    timer_.expires_at(read_started_ +
                      std::min(door_.config.idle_timeout, door_.config.request_timeout));
    timer_.async_wait(
        [self = this->shared_from_this()](beast::error_code ec) { self->on_read_timer(ec); });
  }

  void on_read_timer(beast::error_code ec) {
    if (ec)
      return;  // cancelled: the request was read in time
    const bool started = parser_->got_some() || buffer_.size() > 0;
    const auto deadline =
        read_started_ + (started ? door_.config.request_timeout : door_.config.idle_timeout);
    if (std::chrono::steady_clock::now() < deadline) {
      timer_.expires_at(deadline);
      timer_.async_wait(
          [self = this->shared_from_this()](beast::error_code e) { self->on_read_timer(e); });
      return;
    }
    timed_out_ = true;
    beast::error_code ignored;
    socket().cancel(ignored);
  }

  void read() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(door_.config.max_header_bytes));
    parser_->body_limit(door_.config.max_body_bytes);
    arm_read_timer();
    http::async_read(stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                       self->timer_.cancel();
                       self->on_read(ec);
                     });
  }

  void on_read(beast::error_code ec) {
    if (timed_out_) {
      if (!parser_->got_some() && buffer_.size() == 0) {
        spdlog::debug("https: connection {}: idle for {} ms: closed", id_,
                      door_.config.idle_timeout.count());
        return close();  // an idle keep-alive connection
      }
      spdlog::info("https: connection {}: request not read within {} ms (408)", id_,
                   door_.config.request_timeout.count());
      return write(
          https::error_response(408, "RequestTimeout",
                                "the request was not received within " +
                                    std::to_string(door_.config.request_timeout.count()) + " ms",
                                door_.context()),
          false);
    }
    if (ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == ssl::error::stream_truncated)
      return close();
    if (ec == http::error::header_limit)
      return write(
          https::error_response(431, "RequestHeaderFieldsTooLarge",
                                "the request header is larger than " +
                                    std::to_string(door_.config.max_header_bytes) + " bytes",
                                door_.context()),
          false);
    if (ec == http::error::body_limit)
      return write(https::error_response(413, "MessageTooLarge",
                                         "the request body is larger than " +
                                             std::to_string(door_.config.max_body_bytes) + " bytes",
                                         door_.context()),
                   false);
    if (ec) {
      if (ec.category() == http::make_error_code(http::error::bad_target).category())
        return write(
            https::error_response(400, "ArgumentInvalid",
                                  "the request is not HTTP/1.1: " + ec.message(), door_.context()),
            false);
      spdlog::debug("https: connection {}: read failed: {}", id_, ec.message());
      return close();
    }
    handle(parser_->release());
  }

  void handle(http::request<http::string_body> req) {
    keep_alive_ = req.keep_alive();
    https::header_fields headers;
    headers.reserve(16);
    for (const auto& f : req)
      headers.emplace_back(lower(f.name_string()), std::string(f.value()));
    const std::string method(req.method_string());
    const std::string target(req.target());
    https::http_request r{method, target, &headers, req.body()};
    auto ctx = door_.context();
    auto routed = https::route(r, ctx);
    if (auto* now = std::get_if<https::http_response>(&routed))
      return write(std::move(*now), keep_alive_);
    auto& op = std::get<https::routed>(routed);
    static const identity_view test_mode(false);
    const identity_view& ids = door_.config.identities ? *door_.config.identities : test_mode;
    auto who = https::authorize(op, r, ids, door_.config.iothub_hostname, ctx);
    if (auto* refused = std::get_if<https::http_response>(&who)) {
      spdlog::info("https: connection {}: {} {}: refused ({})", id_, method,
                   target.substr(0, target.find('?')),
                   refused->header("iothub-errorcode") ? *refused->header("iothub-errorcode") : "");
      return write(std::move(*refused), keep_alive_);
    }
    https::stamp_caller(op.what, std::get<std::string>(who));
    request what = op.what;
    request_id_ = ++last_request_;
    pending_ = std::move(op);
    {
      std::lock_guard g(door_.waiting_mutex);
      door_.waiting[id_] = this->shared_from_this();
    }
    door_.sink(inbound{reply_to{door_.id, std::to_string(id_) + ":" + std::to_string(request_id_)},
                       std::move(what)});
  }

  void write(https::http_response r, bool keep_alive) {
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(11);
    res->result(r.status);
    res->set(http::field::server, "devicebound-hub");
    for (auto& [name, value] : r.headers)
      res->insert(name, value);
    res->body() = std::move(r.body);
    res->keep_alive(keep_alive);
    res->prepare_payload();
    arm_timer();
    http::async_write(
        stream_, *res,
        [self = this->shared_from_this(), res, keep_alive](beast::error_code ec, std::size_t) {
          self->timer_.cancel();
          if (ec || self->timed_out_)
            return self->close();
          if (keep_alive)
            return self->read();
          self->linger();
        });
  }

  /// After a final response: stop sending, and read (and drop) what the client
  /// still sends for a while, so the response is not lost to a TCP reset.
  void linger() {
    beast::error_code ignored;
    if constexpr (!std::is_same_v<Stream, beast::ssl_stream<beast::tcp_stream>>)
      socket().shutdown(tcp::socket::shutdown_send, ignored);
    arm_timer();
    drain();
  }

  void drain() {
    if (drained_ > 4 * door_.config.max_body_bytes)
      return close();
    stream_.async_read_some(net::buffer(scratch_),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->drained_ += n;
                              if (ec || self->timed_out_) {
                                self->timer_.cancel();
                                return self->close();
                              }
                              self->drain();
                            });
  }

  void close() {
    beast::error_code ignored;
    timer_.cancel();
    socket().shutdown(tcp::socket::shutdown_both, ignored);
    socket().close(ignored);
  }

  https_door::impl& door_;
  std::uint64_t id_;
  Stream stream_;
  net::steady_timer timer_;
  beast::flat_buffer buffer_;
  std::optional<parser_t> parser_;
  bool timed_out_ = false;
  std::chrono::steady_clock::time_point read_started_{};
  bool keep_alive_ = true;
  std::optional<https::routed> pending_;
  std::uint64_t request_id_ = 0;
  std::uint64_t last_request_ = 0;
  std::size_t drained_ = 0;
  std::array<char, 4096> scratch_{};
};

}  // namespace

void https_door::impl::accept(tcp::acceptor& a) {
  a.async_accept(net::make_strand(ioc), [this, &a](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !a.is_open())
      return;
    if (!ec && open_connections.load() >= config.max_connections) {
      // Over the limit: this connection only is closed, before TLS costs anything.
      beast::error_code ignored;
      socket.close(ignored);
      if (refused_connections.fetch_add(1) % 1000 == 0)
        spdlog::warn("https: {} connections open (--https-max-connections): new ones are closed",
                     config.max_connections);
    } else if (!ec) {
      const std::uint64_t cid = next_connection.fetch_add(1);
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      if (tls) {
        auto s = std::make_shared<session<beast::ssl_stream<beast::tcp_stream>>>(
            *this, cid,
            beast::ssl_stream<beast::tcp_stream>(beast::tcp_stream(std::move(socket)), *tls));
        s->run();
      } else {
        auto s = std::make_shared<session<beast::tcp_stream>>(*this, cid,
                                                              beast::tcp_stream(std::move(socket)));
        s->run();
      }
    } else {
      spdlog::warn("https: accept failed: {}", ec.message());
    }
    accept(a);
  });
}

https_door::https_door(https_door_config config)
    : impl_(std::make_unique<impl>(std::move(config))) {}

https_door::~https_door() {
  stop();
}

result<void> https_door::start(door_id id, request_sink sink, std::stop_token stop) {
  auto r = impl_->start(id, std::move(sink), std::move(stop));
  if (!r)
    spdlog::critical("{}", r.error().message);
  return r;
}

result<void> https_door::impl::start(door_id door, request_sink s, std::stop_token) {
  auto& d = *this;
  const door_id id = door;
  request_sink sink = std::move(s);
  d.id = id;
  d.sink = std::move(sink);
  const auto& c = d.config;
  if (c.listen.empty())
    return make_error(errc::argument_invalid, "https: no address to listen on");
  if (!c.insecure && (c.tls_server_cert.empty() || c.tls_server_key.empty()))
    return make_error(errc::argument_invalid,
                      "https: --https-listen needs --tls-server-cert and --tls-server-key "
                      "(or --https-insecure, for plain HTTP on a loopback address)");
  if (!c.insecure) {
    try {
      d.tls.emplace(ssl::context::tls_server);
      d.tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                         ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                         ssl::context::no_tlsv1_1);
      if (!c.tls_key_password.empty())
        d.tls->set_password_callback(
            [pw = c.tls_key_password](std::size_t, ssl::context::password_purpose) { return pw; });
      d.tls->use_certificate_chain_file(c.tls_server_cert);
      d.tls->use_private_key_file(c.tls_server_key, ssl::context::pem);
    } catch (const boost::system::system_error& e) {
      d.tls.reset();
      return make_error(
          errc::argument_invalid,
          "https: cannot load --tls-server-cert/--tls-server-key: " + std::string(e.what()));
    }
  }
  for (const auto& address : c.listen) {
    const auto hp = split_host_port(address);
    if (!hp)
      return make_error(errc::argument_invalid,
                        "https: listen address '" + address + "' is not HOST:PORT");
    beast::error_code ec;
    tcp::resolver resolver(d.ioc);
    const auto results =
        resolver.resolve(hp->first, std::to_string(hp->second), tcp::resolver::passive, ec);
    if (ec || results.empty())
      return make_error(errc::argument_invalid,
                        "https: cannot resolve '" + address + "': " + ec.message());
    const tcp::endpoint ep = results.begin()->endpoint();
    if (c.insecure && !is_loopback(ep.address()))
      return make_error(
          errc::argument_invalid,
          "https: plain HTTP (--https-insecure) only on a loopback address, not '" + address + "'");
    auto a = std::make_unique<tcp::acceptor>(d.ioc);
    a->open(ep.protocol(), ec);
    if (!ec)
      a->set_option(net::socket_base::reuse_address(true), ec);
    if (!ec)
      a->bind(ep, ec);
    if (!ec)
      a->listen(net::socket_base::max_listen_connections, ec);
    if (ec)
      return make_error(errc::argument_invalid,
                        "https: cannot listen on '" + address + "': " + ec.message());
    const auto local = a->local_endpoint();
    d.listening.push_back((local.address().is_v6() ? "[" + local.address().to_string() + "]"
                                                   : local.address().to_string()) +
                          ":" + std::to_string(local.port()));
    spdlog::info("https: listening on {} ({})", d.listening.back(),
                 d.tls ? "TLS" : "plain HTTP, --https-insecure");
    d.acceptors.push_back(std::move(a));
  }
  for (auto& a : d.acceptors)
    d.accept(*a);
  d.work.emplace(d.ioc.get_executor());
  const unsigned n = std::max(1u, c.threads);
  for (unsigned i = 0; i < n; ++i)
    d.threads.emplace_back([&d] { d.ioc.run(); });
  d.sink(inbound{reply_to{id, {}}, door_status{true, false}});
  return {};
}

time_point https_door::poll(time_point) {
  return time_point::max();
}

void https_door::release(std::span<const outbound> items) {
  auto& d = *impl_;
  for (const auto& item : items) {
    const auto* r = std::get_if<reply>(&item);
    if (!r)
      continue;  // pushes never go to HTTPS (nothing is present); revocations: stateless
    const std::string_view a = r->to.address;
    const std::size_t colon = a.find(':');
    std::uint64_t cid = 0, rid = 0;
    if (colon == std::string_view::npos ||
        std::from_chars(a.data(), a.data() + colon, cid).ec != std::errc{} ||
        std::from_chars(a.data() + colon + 1, a.data() + a.size(), rid).ec != std::errc{})
      continue;
    std::shared_ptr<https_connection> c;
    {
      std::lock_guard g(d.waiting_mutex);
      auto it = d.waiting.find(cid);
      if (it == d.waiting.end())
        continue;
      c = std::move(it->second);
      d.waiting.erase(it);
    }
    c->deliver(rid, r->what);
  }
}

void https_door::stop() {
  auto& d = *impl_;
  if (d.threads.empty())
    return;
  net::post(d.ioc, [&d] {
    for (auto& a : d.acceptors) {
      beast::error_code ignored;
      a->close(ignored);
    }
  });
  d.work.reset();
  d.ioc.stop();
  for (auto& t : d.threads)
    t.join();
  d.threads.clear();
  std::lock_guard g(d.waiting_mutex);
  d.waiting.clear();
}

std::optional<error> https_door::failure() const {
  return std::nullopt;
}

std::vector<std::string> https_door::listening() const {
  return impl_->listening;
}

std::uint32_t https_door::connections() const {
  return impl_->open_connections.load();
}

}  // namespace devicebound::hubd
