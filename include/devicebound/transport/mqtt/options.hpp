/// \file transport/mqtt/options.hpp
/// How an MQTT transport reaches the broker (host, TLS, credentials) and its
/// own knobs (timeouts, prefetch, Paho's buffer).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "../../message.hpp"

namespace devicebound::mqtt {

/// TLS settings (Paho's `MQTTAsync_SSLOptions`). Setting them switches to `ssl://`.
struct tls_options {
  std::string ca_file;        ///< PEM file of trusted CA certificates
  std::string ca_path;        ///< directory of trusted CA certificates
  std::string cert_file;      ///< PEM client certificate chain (mutual TLS)
  std::string key_file;       ///< PEM private key, if not in `cert_file`
  std::string key_password;   ///< password of an encrypted key
  bool verify_server = true;  ///< check the server certificate and host name
};

/// How to reach the broker, and the transport's own knobs.
struct connection_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 1883;
  std::optional<tls_options> tls;
  /// MQTT client id. Devices: empty means the device id (SPEC 5.5). Services:
  /// empty means `devicebound-service-` and 16 random hex digits. It names the
  /// client in the extension topics, so it must be a valid device id (no `/ + #`).
  std::string client_id;
  std::optional<std::string> username;
  std::optional<std::string> password;
  /// When set, called at each connect: its result is the password for that connect (a SAS
  /// token made fresh each time, so a reconnect never sends an expired one). Takes
  /// precedence over `password`.
  std::function<std::string()> password_source;
  duration keep_alive = std::chrono::seconds(60);
  duration connect_timeout = std::chrono::seconds(10);
  /// How long a request (send, settle, purge, ...) waits for the hub's reply
  /// before it fails with 408001 `timeout`.
  duration request_timeout = std::chrono::seconds(30);
  /// How long one attach (a receive's "I am here") waits for its answer before
  /// it is sent again: the hub may be reconnecting to the broker.
  duration attach_retry = std::chrono::seconds(2);
  /// Extended devices and feedback: how many locked messages (batches) the hub
  /// may push before this side settles one (the hub caps it).
  std::uint32_t prefetch = 4;
  /// CleanSession. Unset: false for devices (as the SDKs, SPEC 5.5), true for services.
  std::optional<bool> clean_session;
  /// Paho's command queue bound (`maxBufferedMessages`): its default, 100,
  /// fails quick bursts with -12 even while connected.
  int max_buffered_messages = 1 << 20;
};

}  // namespace devicebound::mqtt
