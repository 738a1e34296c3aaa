#include "https_client.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cctype>
#include <optional>

namespace devicebound::cli {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string lower(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

error connect_error(const https_endpoint& ep, const std::string& what) {
  return make_error(errc::not_connected, "cannot reach https://" + ep.host + ":" +
                                             std::to_string(ep.port) + ": " + what);
}

/// Runs the io_context until `done` or the deadline; true if done in time.
bool run_until(asio::io_context& io, const bool& done,
               std::chrono::steady_clock::time_point deadline) {
  io.restart();
  while (!done) {
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero())
      return false;
    if (io.run_one_for(left) == 0 && io.stopped())
      return done;
  }
  return true;
}

template <class Stream>
result<http_response> exchange(asio::io_context& io, Stream& stream, const https_endpoint& ep,
                               const http_request& req,
                               std::chrono::steady_clock::time_point deadline) {
  http::request<http::string_body> r;
  r.method(http::string_to_verb(req.method));
  r.target(req.target);
  r.version(11);
  r.set(http::field::host, ep.host + ":" + std::to_string(ep.port));
  r.set(http::field::user_agent, "devicebound-cli");
  r.set(http::field::connection, "close");
  for (const auto& [k, v] : req.headers)
    r.set(k, v);
  r.body() = req.body;
  r.prepare_payload();

  beast::error_code ec;
  bool done = false;
  http::async_write(stream, r, [&](beast::error_code e, std::size_t) {
    ec = e;
    done = true;
  });
  if (!run_until(io, done, deadline))
    return make_error(errc::timeout, "no response from " + ep.host + " within the time-out");
  if (ec)
    return connect_error(ep, "sending the request: " + ec.message());

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  done = false;
  http::async_read(stream, buffer, parser, [&](beast::error_code e, std::size_t) {
    ec = e;
    done = true;
  });
  if (!run_until(io, done, deadline))
    return make_error(errc::timeout, "no response from " + ep.host + " within the time-out");
  if (ec)
    return connect_error(ep, "reading the response: " + ec.message());
  auto res = parser.release();
  http_response out;
  out.status = res.result_int();
  for (const auto& f : res)
    out.headers[lower(std::string(f.name_string()))] = std::string(f.value());
  out.body = std::move(res.body());
  return out;
}

}  // namespace

result<http_response> send_http(const https_endpoint& ep, const http_request& req) {
  const auto deadline = std::chrono::steady_clock::now() + ep.timeout;
  asio::io_context io;
  tcp::resolver resolver(io);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(ep.host, std::to_string(ep.port), ec);
  if (ec)
    return connect_error(ep, "cannot resolve " + ep.host + ": " + ec.message());

  const auto connect = [&](tcp::socket& socket) -> result<void> {
    bool done = false;
    asio::async_connect(socket, endpoints, [&](beast::error_code e, const tcp::endpoint&) {
      ec = e;
      done = true;
    });
    if (!run_until(io, done, deadline))
      return make_error(errc::timeout,
                        "connecting to " + ep.host + ":" + std::to_string(ep.port) + " timed out");
    if (ec)
      return connect_error(ep, ec.message());
    return {};
  };

  if (!ep.tls) {
    tcp::socket socket(io);
    if (auto c = connect(socket); !c)
      return c.error();
    return exchange(io, socket, ep, req, deadline);
  }

  asio::ssl::context ctx(asio::ssl::context::tls_client);
  ctx.set_verify_mode(asio::ssl::verify_peer);
  if (!ep.ca_file.empty()) {
    ctx.load_verify_file(ep.ca_file, ec);
    if (ec)
      return make_error(errc::argument_invalid,
                        "cannot read the CA file '" + ep.ca_file + "': " + ec.message());
  } else {
    ctx.set_default_verify_paths(ec);
  }
  asio::ssl::stream<tcp::socket> stream(io, ctx);
  SSL* ssl = stream.native_handle();
  boost::system::error_code addr_ec;
  (void)asio::ip::make_address(ep.host, addr_ec);
  if (addr_ec) {
    SSL_set_tlsext_host_name(ssl, ep.host.c_str());
    SSL_set1_host(ssl, ep.host.c_str());
  } else {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ep.host.c_str());
  }
  if (auto c = connect(stream.next_layer()); !c)
    return c.error();
  bool done = false;
  stream.async_handshake(asio::ssl::stream_base::client, [&](beast::error_code e) {
    ec = e;
    done = true;
  });
  if (!run_until(io, done, deadline))
    return make_error(errc::timeout, "TLS handshake with " + ep.host + " timed out");
  if (ec) {
    std::string why = ec.message();
    const long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK)
      why += std::string(" (certificate: ") + X509_verify_cert_error_string(v) +
             "; give the hub's CA with --ca-file or SSL_CERT_FILE)";
    return connect_error(ep, "TLS handshake failed: " + why);
  }
  auto out = exchange(io, stream, ep, req, deadline);
  // The connection is closed after one request: no TLS shutdown round trip to wait for.
  beast::error_code ignored;
  stream.next_layer().close(ignored);
  return out;
}

}  // namespace devicebound::cli
