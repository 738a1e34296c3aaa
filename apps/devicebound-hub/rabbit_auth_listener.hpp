// A plain-HTTP listener on a loopback address that answers RabbitMQ's HTTP auth
// backend (rabbitmq_auth_backend_http) with rabbit_auth.hpp's decisions, reading
// the identities the doors use (identity_view). `--rabbit-auth-listen HOST:PORT`;
// docs/scale-out.md, "RabbitMQ as the broker".
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <devicebound/errors.hpp>
#include <memory>
#include <string>

#include "identity_view.hpp"
#include "rabbit_auth.hpp"

namespace devicebound::hubd {

struct rabbit_auth_listener_config {
  std::string listen;  ///< HOST:PORT, a loopback address (plain HTTP); port 0: any free one
  rabbit::auth_settings settings;
  const identity_view* identities = nullptr;  ///< must be enabled (an --auth-file)
  std::chrono::seconds request_timeout{10};   ///< to read one request, header and body
  std::size_t max_header_bytes = 8192;
  std::size_t max_body_bytes = 16384;
  std::uint32_t max_connections = 256;
};

class rabbit_auth_listener {
 public:
  /// Binds and starts serving on its own thread. Errors (`errc::argument_invalid`):
  /// a bad or non-loopback address, no identities, an address it cannot listen on.
  static result<std::unique_ptr<rabbit_auth_listener>> start(rabbit_auth_listener_config config);
  ~rabbit_auth_listener();
  rabbit_auth_listener(const rabbit_auth_listener&) = delete;
  rabbit_auth_listener& operator=(const rabbit_auth_listener&) = delete;

  /// The port it listens on (the chosen one when asked for port 0).
  std::uint16_t port() const noexcept;
  /// Stops accepting, closes every connection and joins the thread. Idempotent.
  void stop();

 private:
  struct impl;
  explicit rabbit_auth_listener(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace devicebound::hubd
