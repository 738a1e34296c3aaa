// The AMQP 1.0 front door (SPEC 10): IoT Hub's own AMQP surface, so the
// official Azure service and device SDKs talk to devicebound-hub unchanged.
//
// It listens on one Qpid Proton proactor, served by one thread of its own.
// That thread decodes the wire (SASL, CBS put-token, the C2D sender link, the
// feedback receiver link, device C2D receiver links) into typed requests for
// the engine thread; `release`, on the engine thread, hands the replies and
// pushes back to the proactor thread through a per-connection mailbox and
// `pn_connection_wake`. Dispositions that acknowledge a request are sent only
// when the router releases its reply, i.e. after the store committed it.
// docs/amqp-door.md describes the links, the authentication and the choices.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "front_door.hpp"
#include "identity_view.hpp"

namespace devicebound::hubd {

struct amqp_door_config {
  /// `host:port` addresses to listen on (IoT Hub's port is 5671; 0 picks a free one).
  std::vector<std::string> listen;
  /// PEM server certificate and key; empty: plain AMQP (allowed on loopback only,
  /// or anywhere with `insecure`). With them, every connection must use TLS.
  std::string tls_server_cert;
  std::string tls_server_key;
  std::string tls_key_password;
  bool insecure = false;
  /// The host SAS tokens must name in `sr` (compared without case and port).
  std::string iothub_hostname = "localhost";
  /// The hub's identities and policies (the router writes them after each
  /// commit), shared with the other doors; must outlive the door. Null, or a
  /// view that is not `enabled()`: test mode (any well-formed token is accepted
  /// and speaks for whom it names; links need no token at all).
  const identity_view* identities = nullptr;
  /// Credit granted on links the door receives on (C2D send, CBS, telemetry).
  std::uint32_t link_credit = 64;

  // Limits (docs/security.md, "Limits"): each costs the offending connection only.
  /// Open connections; one more is closed with `amqp:resource-limit-exceeded`
  /// once its open arrives (or at the TCP level if it never sends one).
  std::uint32_t max_connections = 1000;
  /// Sessions per connection; one more is begun, then ended with
  /// `amqp:resource-limit-exceeded`.
  std::uint32_t max_sessions = 16;
  /// Links per connection; one more is refused: detached with `amqp:resource-limit-exceeded`.
  std::uint32_t max_links = 64;
  /// max-frame-size advertised in open; a bigger frame closes the connection
  /// with `amqp:connection:framing-error` (Proton).
  std::uint32_t max_frame_size = 65536;
  /// Largest transfer, advertised as the receiving links' max-message-size; a
  /// bigger one is rejected with `amqp:link:message-size-exceeded`.
  std::uint64_t max_message_size = 262144;
  /// From the TCP connect to the peer's open frame (TLS and SASL included); a
  /// connection still without an open then is closed at the TCP level.
  std::chrono::seconds open_timeout{30};
};

class amqp_door final : public front_door {
 public:
  explicit amqp_door(amqp_door_config config);
  ~amqp_door() override;
  amqp_door(const amqp_door&) = delete;
  amqp_door& operator=(const amqp_door&) = delete;

  std::string_view name() const noexcept override { return "amqp"; }
  /// Listens on every address; returns once all listen (or the first fails).
  result<void> start(door_id id, request_sink sink, std::stop_token stop) override;
  time_point poll(time_point now) override;
  void release(std::span<const outbound> items) override;
  void stop() override;
  std::optional<error> failure() const override;

  /// The addresses actually listened on (`host:port`, the port resolved), after `start`.
  std::vector<std::string> listening() const;
  /// Connections admitted and open now (tests, logs).
  std::uint32_t connections() const;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace devicebound::hubd
