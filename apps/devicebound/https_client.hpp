// A small blocking HTTPS (or, on loopback, plain HTTP) client for the CLI's
// calls to IoT Hub's REST API (SPEC 11, 12): one request per connection, every
// step bounded by a deadline. Boost.Beast over OpenSSL.
#pragma once

#include <chrono>
#include <cstdint>
#include <devicebound/errors.hpp>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace devicebound::cli {

/// Where to send requests and how to trust the server.
struct https_endpoint {
  std::string host;  ///< name or IP; the certificate must name it
  std::uint16_t port = 443;
  std::string ca_file;  ///< PEM of trusted CAs; empty: the system's (and SSL_CERT_FILE)
  bool tls = true;      ///< false: plain HTTP (only for a hub on loopback with --https-insecure)
  std::chrono::milliseconds timeout{30000};  ///< connect + TLS + request + response
};

struct http_request {
  std::string method;  ///< GET, PUT, DELETE, POST
  std::string target;  ///< path and query
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct http_response {
  unsigned status = 0;
  /// Header names lowercased; the last value wins.
  std::map<std::string, std::string> headers;
  std::string body;

  const std::string* header(const std::string& lowercase_name) const {
    auto it = headers.find(lowercase_name);
    return it == headers.end() ? nullptr : &it->second;
  }
};

/// Sends `req` and reads the response. Errors: `not_connected` (resolve,
/// connect, TLS handshake or certificate check failed; the message says
/// which), `timeout` (no complete response within `ep.timeout`), `malformed`.
result<http_response> send_http(const https_endpoint& ep, const http_request& req);

}  // namespace devicebound::cli
