/// \file mqtt_options.hpp
/// The MQTT transport's clients from JS options
/// (`{ host, port, mode, clientId, username, password, tls, ...Ms }`).
/// Without Paho MQTT C at build time (DEVICEBOUND_NODE_WITH_MQTT unset), making
/// one fails with 405001 NotSupported, and the rest of the addon works.
#pragma once

#include <napi.h>

#include <memory>
#include <string>
#include <utility>

#include "client_api.hpp"
#include "convert.hpp"

#if DEVICEBOUND_NODE_WITH_MQTT
#include <devicebound/transport/mqtt.hpp>
#endif

namespace devicebound::node {

/// Whether the addon was built with the MQTT transport.
#if DEVICEBOUND_NODE_WITH_MQTT
inline constexpr bool with_mqtt = true;
#else
inline constexpr bool with_mqtt = false;
#endif

#if DEVICEBOUND_NODE_WITH_MQTT

inline mqtt::connection_options to_mqtt_options(Napi::Env env, const Napi::Value& v) {
  mqtt::connection_options c;
  if (is_missing(v))
    return c;
  if (!v.IsObject())
    throw_invalid(env, "mqtt options must be an object");
  auto o = v.As<Napi::Object>();
  auto has = [&](const char* k) {
    return !is_missing(o.Get(k));
  };
  auto str = [&](const char* k) {
    return to_string_arg(env, o.Get(k), std::string("mqtt.") + k);
  };
  auto ms = [&](const char* k) {
    return to_duration(env, o.Get(k), std::string("mqtt.") + k);
  };
  if (has("host"))
    c.host = str("host");
  if (has("port"))
    c.port = static_cast<std::uint16_t>(to_uint(env, o.Get("port"), "mqtt.port", 65535));
  if (has("clientId"))
    c.client_id = str("clientId");
  if (has("username"))
    c.username = str("username");
  if (has("password"))
    c.password = str("password");
  if (has("keepAliveMs"))
    c.keep_alive = ms("keepAliveMs");
  if (has("connectTimeoutMs"))
    c.connect_timeout = ms("connectTimeoutMs");
  if (has("requestTimeoutMs"))
    c.request_timeout = ms("requestTimeoutMs");
  if (has("attachRetryMs"))
    c.attach_retry = ms("attachRetryMs");
  if (has("prefetch"))
    c.prefetch =
        static_cast<std::uint32_t>(to_uint(env, o.Get("prefetch"), "mqtt.prefetch", 0xFFFFFFFFu));
  if (has("cleanSession"))
    c.clean_session = o.Get("cleanSession").ToBoolean().Value();
  if (has("tls")) {
    Napi::Value tv = o.Get("tls");
    if (!tv.IsObject())
      throw_invalid(env, "mqtt.tls must be an object");
    auto t = tv.As<Napi::Object>();
    mqtt::tls_options tls;
    auto tstr = [&](const char* k, std::string& out) {
      if (!is_missing(t.Get(k)))
        out = to_string_arg(env, t.Get(k), std::string("mqtt.tls.") + k);
    };
    tstr("caFile", tls.ca_file);
    tstr("caPath", tls.ca_path);
    tstr("certFile", tls.cert_file);
    tstr("keyFile", tls.key_file);
    tstr("keyPassword", tls.key_password);
    if (!is_missing(t.Get("verifyServer")))
      tls.verify_server = t.Get("verifyServer").ToBoolean().Value();
    c.tls = std::move(tls);
  }
  return c;
}

/// A device client over MQTT; `mqtt.mode` is 'extended' (default: complete,
/// reject, abandon) or 'iothub' (a stock Azure IoT device: complete only).
inline std::unique_ptr<device_api> make_mqtt_device(Napi::Env env, std::string id,
                                                    const Napi::Value& options,
                                                    retry::policy policy,
                                                    device_client_options client_options) {
  std::string mode = "extended";
  if (options.IsObject() && !is_missing(options.As<Napi::Object>().Get("mode")))
    mode = to_string_arg(env, options.As<Napi::Object>().Get("mode"), "mqtt.mode");
  auto c = to_mqtt_options(env, options);
  if (mode == "extended")
    return std::make_unique<device_impl<mqtt::extended_device_connection>>(
        nullptr, mqtt::extended_device_connection(std::move(id), std::move(c)), std::move(policy),
        client_options);
  if (mode == "iothub")
    return std::make_unique<device_impl<mqtt::iothub_device_connection>>(
        nullptr, mqtt::iothub_device_connection(std::move(id), std::move(c)), std::move(policy),
        client_options);
  throw_invalid(env, "mqtt.mode must be 'extended' or 'iothub', not '" + mode + "'");
}

inline std::unique_ptr<service_api> make_mqtt_service(Napi::Env env, const Napi::Value& options,
                                                      retry::policy policy,
                                                      service_client_options client_options) {
  return std::make_unique<service_impl<mqtt::service_connection>>(
      nullptr, mqtt::service_connection(to_mqtt_options(env, options)), std::move(policy),
      std::move(client_options));
}

#else

[[noreturn]] inline void no_mqtt(Napi::Env env) {
  throw_error(env, make_error(errc::not_supported,
                              "this build of devicebound has no MQTT transport: Paho MQTT C "
                              "(libpaho-mqtt-dev) was not found when the addon was built"));
}

inline std::unique_ptr<device_api> make_mqtt_device(Napi::Env env, std::string, const Napi::Value&,
                                                    retry::policy, device_client_options) {
  no_mqtt(env);
}

inline std::unique_ptr<service_api> make_mqtt_service(Napi::Env env, const Napi::Value&,
                                                      retry::policy, service_client_options) {
  no_mqtt(env);
}

#endif

}  // namespace devicebound::node
