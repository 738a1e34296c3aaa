/// \file amqp_options.hpp
/// The AMQP transport's clients from an IoT Hub connection string and JS options
/// (`{ caFile, verifyServer, tls, tokenTtlMs, tokenRenewAt, ...Ms, prefetch }`).
/// Without Qpid Proton C++ at build time (DEVICEBOUND_NODE_WITH_AMQP unset),
/// making one fails with 405001 NotSupported, and the rest of the addon works.
#pragma once

#include <napi.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "client_api.hpp"
#include "convert.hpp"

#if DEVICEBOUND_NODE_WITH_AMQP
#include <devicebound/transport/amqp.hpp>
#endif

namespace devicebound::node {

/// Whether the addon was built with the AMQP transport.
#if DEVICEBOUND_NODE_WITH_AMQP
inline constexpr bool with_amqp = true;
#else
inline constexpr bool with_amqp = false;
#endif

#if DEVICEBOUND_NODE_WITH_AMQP

inline amqp::connection_options to_amqp_options(Napi::Env env, const Napi::Value& v) {
  amqp::connection_options c;
  if (is_missing(v))
    return c;
  if (!v.IsObject())
    throw_invalid(env, "amqp options must be an object");
  auto o = v.As<Napi::Object>();
  auto has = [&](const char* k) {
    return !is_missing(o.Get(k));
  };
  auto ms = [&](const char* k) {
    return to_duration(env, o.Get(k), std::string("amqp.") + k);
  };
  amqp::tls_options tls;
  if (has("caFile"))
    tls.ca_file = to_string_arg(env, o.Get("caFile"), "amqp.caFile");
  if (has("verifyServer"))
    tls.verify_server = o.Get("verifyServer").ToBoolean().Value();
  const bool use_tls = !has("tls") || o.Get("tls").ToBoolean().Value();
  c.tls = use_tls ? std::optional<amqp::tls_options>(std::move(tls)) : std::nullopt;
  if (has("tokenTtlMs")) {
    const auto ttl = std::chrono::duration_cast<std::chrono::seconds>(ms("tokenTtlMs"));
    if (ttl.count() < 1)
      throw_invalid(env, "amqp.tokenTtlMs must be at least 1000");
    c.token_ttl = ttl;
  }
  if (has("tokenRenewAt")) {
    if (!o.Get("tokenRenewAt").IsNumber())
      throw_invalid(env, "amqp.tokenRenewAt must be a number");
    c.token_renew_at = o.Get("tokenRenewAt").As<Napi::Number>().DoubleValue();
  }
  if (has("connectTimeoutMs"))
    c.connect_timeout = ms("connectTimeoutMs");
  if (has("requestTimeoutMs"))
    c.request_timeout = ms("requestTimeoutMs");
  if (has("idleTimeoutMs"))
    c.idle_timeout = ms("idleTimeoutMs");
  if (has("prefetch"))
    c.prefetch =
        static_cast<std::uint32_t>(to_uint(env, o.Get("prefetch"), "amqp.prefetch", 0xFFFFFFFFu));
  return c;
}

/// A device client over AMQP from `HostName=…;DeviceId=…;SharedAccessKey=…`.
inline std::unique_ptr<device_api> make_amqp_device(Napi::Env env,
                                                    const std::string& connection_string,
                                                    const Napi::Value& options,
                                                    retry::policy policy,
                                                    device_client_options client_options) {
  auto t = amqp::device_connection::from_connection_string(connection_string,
                                                           to_amqp_options(env, options));
  if (!t)
    throw_error(env, t.error());
  return std::make_unique<device_impl<amqp::device_connection>>(nullptr, std::move(*t),
                                                                std::move(policy), client_options);
}

/// A service client over AMQP from `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`.
inline std::unique_ptr<service_api> make_amqp_service(Napi::Env env,
                                                      const std::string& connection_string,
                                                      const Napi::Value& options,
                                                      retry::policy policy,
                                                      service_client_options client_options) {
  auto t = amqp::service_connection::from_connection_string(connection_string,
                                                            to_amqp_options(env, options));
  if (!t)
    throw_error(env, t.error());
  return std::make_unique<service_impl<amqp::service_connection>>(
      nullptr, std::move(*t), std::move(policy), std::move(client_options));
}

#else

[[noreturn]] inline void no_amqp(Napi::Env env) {
  throw_error(env, make_error(errc::not_supported,
                              "this build of devicebound has no AMQP transport: Qpid Proton C++ "
                              "(libqpid-proton-cpp12-dev) was not found when the addon was built"));
}

inline std::unique_ptr<device_api> make_amqp_device(Napi::Env env, const std::string&,
                                                    const Napi::Value&, retry::policy,
                                                    device_client_options) {
  no_amqp(env);
}

inline std::unique_ptr<service_api> make_amqp_service(Napi::Env env, const std::string&,
                                                      const Napi::Value&, retry::policy,
                                                      service_client_options) {
  no_amqp(env);
}

#endif

}  // namespace devicebound::node
