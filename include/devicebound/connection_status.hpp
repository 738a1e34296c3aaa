/// \file connection_status.hpp
/// Vocabulary of a client's connection: whether it is up and why it changed
/// (the C SDK's connection status callback, SPEC 8.1).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "errors.hpp"

namespace devicebound {

/// Whether a client's connection is up (the C SDK's AUTHENTICATED / UNAUTHENTICATED).
enum class connection_status : std::uint8_t { connected, disconnected };

constexpr std::string_view to_string(connection_status s) noexcept {
  return s == connection_status::connected ? "connected" : "disconnected";
}

/// Parses `connected` or `disconnected` (exact spelling); nullopt otherwise.
constexpr std::optional<connection_status> parse_connection_status(std::string_view s) noexcept {
  for (auto v : {connection_status::connected, connection_status::disconnected})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// Why the status changed (the C SDK's IOTHUB_CLIENT_CONNECTION_STATUS_REASON, SPEC 8.1).
enum class connection_status_reason : std::uint8_t {
  ok,                   ///< connected
  client_closed,        ///< the application called disconnect()
  no_network,           ///< the connection could not be opened (not_connected)
  communication_error,  ///< the connection was lost, or a transient error while opening
  bad_credential,       ///< credentials refused (401000): not retried
  device_disabled,      ///< the device is unknown to the hub (404001): not retried
  retry_expired,        ///< the retry policy gave up (timeout, max retries, no retry)
};

constexpr std::string_view to_string(connection_status_reason r) noexcept {
  switch (r) {
    case connection_status_reason::ok:
      return "ok";
    case connection_status_reason::client_closed:
      return "client_closed";
    case connection_status_reason::no_network:
      return "no_network";
    case connection_status_reason::communication_error:
      return "communication_error";
    case connection_status_reason::bad_credential:
      return "bad_credential";
    case connection_status_reason::device_disabled:
      return "device_disabled";
    case connection_status_reason::retry_expired:
      return "retry_expired";
  }
  return "ok";
}

/// Parses a reason's `to_string` spelling exactly (`retry_expired`); nullopt otherwise.
constexpr std::optional<connection_status_reason> parse_connection_status_reason(
    std::string_view s) noexcept {
  for (auto v :
       {connection_status_reason::ok, connection_status_reason::client_closed,
        connection_status_reason::no_network, connection_status_reason::communication_error,
        connection_status_reason::bad_credential, connection_status_reason::device_disabled,
        connection_status_reason::retry_expired})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// The reason reported when opening a connection fails with `e`.
constexpr connection_status_reason status_reason_for(errc e) noexcept {
  switch (e) {
    case errc::not_connected:
      return connection_status_reason::no_network;
    case errc::unauthorized:
      return connection_status_reason::bad_credential;
    case errc::device_not_found:
      return connection_status_reason::device_disabled;
    default:
      return connection_status_reason::communication_error;
  }
}

/// Called on every change of (status, reason), on the thread that saw it. It runs
/// under the client's connection lock: it must not call connect(), disconnect() or
/// operations of the same client.
using connection_status_callback = std::function<void(connection_status, connection_status_reason)>;

/// Errors the client cannot return to a caller (the handler thread's settlements,
/// a receive that gave up) go here.
using client_error_handler = std::function<void(const error&)>;

}  // namespace devicebound
