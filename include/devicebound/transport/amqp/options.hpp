/// \file transport/amqp/options.hpp
/// How an AMQP transport reaches IoT Hub or `devicebound-hub`: the connection
/// string (host, identity, key), TLS, the SAS token's lifetime and renewal,
/// and the transport's own knobs (timeouts, prefetch).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "../../auth/connection_string.hpp"
#include "../../errors.hpp"
#include "../../message.hpp"

namespace devicebound::amqp {

/// IoT Hub's AMQP port over TLS (SPEC 10.1.1).
inline constexpr std::uint16_t default_port = 5671;

/// TLS settings. All IoT Hub SDKs use TLS (SPEC 10.1.1); the server's
/// certificate must be valid for the host name connected to (SPEC 10.1.4).
struct tls_options {
  /// PEM file of trusted CA certificates; empty: the system's trust store.
  std::string ca_file;
  /// Check the server certificate and that it names the host (on by default).
  bool verify_server = true;
};

/// How to reach the hub, and the transport's own knobs.
struct connection_options {
  /// The identity and its key: `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`
  /// (a back end) or `HostName=…;DeviceId=…;SharedAccessKey=…[;GatewayHostName=…]`
  /// (a device). `SharedAccessSignature=…` instead of a key is used as it is
  /// and cannot be renewed.
  auth::connection_string credentials;
  /// TLS (the default). nullopt: plain AMQP, which only a local
  /// `devicebound-hub` on a loopback address accepts; IoT Hub never does.
  std::optional<tls_options> tls = tls_options{};
  /// Lifetime of each SAS token put on `$cbs` (the SDKs use 1 h, SPEC 10.7.1).
  std::chrono::seconds token_ttl = std::chrono::hours(1);
  /// When to put a fresh token, as a fraction of the token's lifetime (0.8:
  /// after 48 min of an hour). Clamped to [0.1, 0.95].
  double token_renew_at = 0.8;
  /// Called on the transport's I/O thread after each token the hub accepted,
  /// with its `se` (seconds since the epoch). Must not block (tests, logs).
  std::function<void(std::uint64_t expiry)> on_token_accepted;
  /// AMQP `open.container-id`; empty: `devicebound-` and 16 random hex digits.
  std::string container_id;
  /// TCP + TLS + AMQP open + CBS put-token + first link, at most this long.
  duration connect_timeout = std::chrono::seconds(30);
  /// How long a send or settlement waits for the hub's disposition (408001 after).
  duration request_timeout = std::chrono::seconds(30);
  /// The idle time-out this side announces (C# devices: 120 s, SPEC 10.3.3).
  duration idle_timeout = std::chrono::minutes(2);
  /// Credit on the receiving link: how many locked messages (or feedback
  /// batches) the hub may push before one is settled (C#: 50, SPEC 10.13).
  std::uint32_t prefetch = 50;
};

/// Where a connection string says to connect: `GatewayHostName` if set, else
/// `HostName`; a `:port` in it overrides 5671 (as Node does, SPEC 10.1.2).
struct endpoint_address {
  std::string host;  ///< no port: AMQP `open.hostname`, TLS SNI and name check
  std::uint16_t port = default_port;
};

/// The host and port to connect to for `cs` (`argument_invalid` for a bad port).
inline result<endpoint_address> connect_address(const auth::connection_string& cs) {
  const std::string& h = cs.gateway_host_name ? *cs.gateway_host_name : cs.host_name;
  endpoint_address out;
  const auto colon = h.rfind(':');
  if (colon == std::string::npos) {
    out.host = h;
    return out;
  }
  out.host = h.substr(0, colon);
  const std::string_view digits = std::string_view(h).substr(colon + 1);
  std::uint32_t port = 0;
  if (digits.empty() || digits.size() > 5)
    return make_error(errc::argument_invalid, "host name '" + h + "' has a bad port");
  for (char c : digits) {
    if (c < '0' || c > '9')
      return make_error(errc::argument_invalid, "host name '" + h + "' has a bad port");
    port = port * 10 + static_cast<std::uint32_t>(c - '0');
  }
  if (port == 0 || port > 65535 || out.host.empty())
    return make_error(errc::argument_invalid, "host name '" + h + "' has a bad port");
  out.port = static_cast<std::uint16_t>(port);
  return out;
}

}  // namespace devicebound::amqp
