#include "rabbit_auth_listener.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <devicebound/clock.hpp>
#include <optional>
#include <thread>
#include <utility>

namespace devicebound::hubd {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;

struct rabbit_auth_listener::impl {
  rabbit_auth_listener_config config;
  std::atomic<std::uint32_t> open{0};  // before ioc: sessions die with its handlers
  std::atomic<bool> stopped{false};
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  std::thread thread;

  explicit impl(rabbit_auth_listener_config c) : config(std::move(c)) {}

  /// The decision for one request (GET: the query; POST: the form body).
  std::pair<http::status, std::string> answer(const http::request<http::string_body>& req) const {
    const std::string_view target = req.target();
    const std::size_t q = target.find('?');
    const std::string_view path = target.substr(0, q);
    const auto e = rabbit::endpoint_of(path);
    if (!e)
      return {http::status::not_found, "not found\n"};
    std::string_view form;
    if (req.method() == http::verb::get)
      form = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
    else if (req.method() == http::verb::post)
      form = req.body();
    else
      return {http::status::method_not_allowed, "GET or POST\n"};
    const auto pol = config.identities->policies();
    const rabbit::identities ids{pol, config.identities->lookup()};
    const rabbit::decision d = rabbit::decide(*e, form, config.settings, ids, system_clock{}.now());
    if (!d.allow)
      spdlog::log(*e == rabbit::endpoint::user ? spdlog::level::info : spdlog::level::debug,
                  "rabbit auth: {} denied: {}", path, d.reason);
    return {http::status::ok, std::string(d.body())};
  }

  void accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || stopped)
        return;
      if (!ec) {
        if (open.load() >= config.max_connections) {
          beast::error_code ignored;
          socket.close(ignored);
        } else {
          serve(std::move(socket));
        }
      }
      accept();
    });
  }

  struct session : std::enable_shared_from_this<session> {
    impl& owner;
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    std::optional<http::request_parser<http::string_body>> parser;
    http::response<http::string_body> response;

    session(impl& o, tcp::socket s) : owner(o), stream(std::move(s)) { ++owner.open; }
    ~session() { --owner.open; }

    void read() {
      parser.emplace();
      parser->header_limit(static_cast<std::uint32_t>(owner.config.max_header_bytes));
      parser->body_limit(owner.config.max_body_bytes);
      stream.expires_after(owner.config.request_timeout);
      http::async_read(
          stream, buffer, *parser,
          [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
    }

    void on_read(beast::error_code ec) {
      if (ec) {
        if (ec == http::error::header_limit || ec == http::error::body_limit)
          reply(http::status::payload_too_large, "too large\n", false);
        else
          close();
        return;
      }
      const auto& req = parser->get();
      auto [status, body] = owner.answer(req);
      reply(status, std::move(body), req.keep_alive());
    }

    void reply(http::status status, std::string body, bool keep_alive) {
      response = {};
      response.result(status);
      response.version(11);
      response.set(http::field::content_type, "text/plain");
      response.body() = std::move(body);
      response.keep_alive(keep_alive);
      response.prepare_payload();
      stream.expires_after(owner.config.request_timeout);
      http::async_write(stream, response,
                        [self = shared_from_this(), keep_alive](beast::error_code ec, std::size_t) {
                          if (ec || !keep_alive || self->owner.stopped)
                            self->close();
                          else
                            self->read();
                        });
    }

    void close() {
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream.close();
    }
  };

  void serve(tcp::socket socket) { std::make_shared<session>(*this, std::move(socket))->read(); }
};

namespace {

/// Splits `host:port` (`[v6]:port` too).
std::optional<std::pair<std::string, std::uint16_t>> split_listen(std::string_view s) {
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

result<std::unique_ptr<rabbit_auth_listener>> rabbit_auth_listener::start(
    rabbit_auth_listener_config config) {
  if (config.identities == nullptr || !config.identities->enabled())
    return make_error(errc::argument_invalid,
                      "--rabbit-auth-listen needs the identities of an --auth-file (it verifies "
                      "SAS tokens)");
  const auto hp = split_listen(config.listen);
  if (!hp)
    return make_error(errc::argument_invalid,
                      "--rabbit-auth-listen '" + config.listen + "': expected HOST:PORT");
  beast::error_code ec;
  const auto address =
      net::ip::make_address(hp->first == "localhost" ? "127.0.0.1" : hp->first, ec);
  if (ec)
    return make_error(errc::argument_invalid, "--rabbit-auth-listen '" + config.listen +
                                                  "': not an IP address: " + ec.message());
  if (!address.is_loopback())
    return make_error(errc::argument_invalid,
                      "--rabbit-auth-listen '" + config.listen +
                          "': plain HTTP only on a loopback address (RabbitMQ sends passwords)");
  auto p = std::make_unique<impl>(std::move(config));
  const tcp::endpoint ep(address, hp->second);
  p->acceptor.open(ep.protocol(), ec);
  if (!ec)
    p->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec)
    p->acceptor.bind(ep, ec);
  if (!ec)
    p->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    return make_error(errc::argument_invalid, "--rabbit-auth-listen '" + p->config.listen +
                                                  "': cannot listen: " + ec.message());
  p->accept();
  impl* raw = p.get();
  p->thread = std::thread([raw] { raw->ioc.run(); });
  spdlog::info("rabbit auth backend on http://{}:{}/auth/{{user,vhost,resource,topic}}",
               address.to_string(), p->acceptor.local_endpoint().port());
  return std::unique_ptr<rabbit_auth_listener>(new rabbit_auth_listener(std::move(p)));
}

rabbit_auth_listener::rabbit_auth_listener(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

rabbit_auth_listener::~rabbit_auth_listener() {
  stop();
}

std::uint16_t rabbit_auth_listener::port() const noexcept {
  beast::error_code ec;
  const auto ep = impl_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void rabbit_auth_listener::stop() {
  if (impl_->stopped.exchange(true))
    return;
  net::post(impl_->ioc, [p = impl_.get()] {
    beast::error_code ignored;
    p->acceptor.close(ignored);
  });
  impl_->ioc.stop();
  if (impl_->thread.joinable())
    impl_->thread.join();
}

}  // namespace devicebound::hubd
