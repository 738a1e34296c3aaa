// The HTTPS front door (SPEC 5d, 11, 12): IoT Hub's REST API for device C2D
// polling, feedback, purge and the identity registry, so the official SDKs'
// HTTP clients talk to devicebound-hub unchanged.
//
// Boost.Beast over Boost.Asio and OpenSSL, on I/O threads of its own. Each
// connection reads one request at a time (so replies leave in request order),
// routes it with the pure functions of https_routes.hpp, checks its token
// against the identity view, and hands the typed request to the engine thread
// with the address `<connection>:<request>`. `release`, on the engine thread,
// posts each reply back to its connection, which writes it and reads the next
// request. A connection that closed before its reply simply drops it: a
// received message stays locked and comes again when its lock expires.
// docs/https.md describes the endpoints and the limits.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "front_door.hpp"
#include "identity_view.hpp"

namespace devicebound::hubd {

struct https_door_config {
  /// `host:port` addresses to listen on (IoT Hub's port is 443; 0 picks a free one).
  std::vector<std::string> listen;
  /// PEM server certificate (chain) and key. Required unless `insecure`.
  std::string tls_server_cert;
  std::string tls_server_key;
  std::string tls_key_password;
  /// Plain HTTP, on loopback addresses only (tests, benchmarks).
  bool insecure = false;
  /// The host SAS tokens must name in `sr` (compared without case and port).
  std::string iothub_hostname = "localhost";
  /// Keys and policies the `Authorization` header is checked against; null or
  /// `enabled() == false`: test mode, every request is accepted. Must outlive the door.
  const identity_view* identities = nullptr;
  /// Deadline to read one request's header and body, counted from when the
  /// connection starts waiting for it (and to write a response, and for the TLS
  /// handshake): a slower client gets 408 and is disconnected (slowloris).
  std::chrono::milliseconds request_timeout{std::chrono::seconds{30}};
  /// A connection that sends no byte of its next request for this long (idle
  /// keep-alive, or a new connection that never speaks) is closed silently.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds{60}};
  /// Open connections; a connection over it is closed at once (before TLS).
  std::uint32_t max_connections = 1000;
  /// Largest request line and header block: more is 431.
  std::size_t max_header_bytes = 16 * 1024;
  /// Largest request body: more is 413.
  std::size_t max_body_bytes = 256 * 1024;
  /// I/O threads.
  unsigned threads = 1;
};

class https_door final : public front_door {
 public:
  explicit https_door(https_door_config config);
  ~https_door() override;
  https_door(const https_door&) = delete;
  https_door& operator=(const https_door&) = delete;

  std::string_view name() const noexcept override { return "https"; }
  /// Listens on every address; returns once all listen (or the first fails).
  result<void> start(door_id id, request_sink sink, std::stop_token stop) override;
  time_point poll(time_point now) override;
  void release(std::span<const outbound> items) override;
  void stop() override;
  std::optional<error> failure() const override;

  /// The addresses actually listened on (`host:port`, the port resolved), after `start`.
  std::vector<std::string> listening() const;
  /// Connections open now (tests, logs).
  std::uint32_t connections() const;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace devicebound::hubd
