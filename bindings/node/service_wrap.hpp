/// \file service_wrap.hpp
/// `NativeServiceClient`: a `service_client` over the in-process or the MQTT
/// transport. Sends, purges and depth reads settle Promises from the object's
/// call queue; the receive thread hands each feedback batch to JS.
#pragma once

#include <napi.h>

#include <array>
#include <memory>
#include <string>
#include <utility>

#include "client_api.hpp"
#include "client_wrap.hpp"
#include "convert.hpp"
#include "hub_wrap.hpp"
#include "mqtt_options.hpp"

namespace devicebound::node {

class service_wrap final : public client_wrap<service_wrap, service_api> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeServiceClient",
                       methods("startFeedback",
                               {InstanceMethod<&service_wrap::send>("send"),
                                InstanceMethod<&service_wrap::purge>("purge"),
                                InstanceMethod<&service_wrap::queue_depth>("queueDepth"),
                                InstanceMethod<&service_wrap::settle_feedback>("settleFeedback")}));
  }

  /// `new NativeServiceClient(onEvent, spec)`; spec is
  /// `{ transport: 'inproc', hub, retryPolicy, assignMessageId, randomSeed }` or
  /// `{ transport: 'mqtt', mqtt, retryPolicy, assignMessageId, randomSeed }`.
  explicit service_wrap(const Napi::CallbackInfo& info)
      : client_wrap(info, "NativeServiceClient", "service client") {
    Napi::Env env = info.Env();
    auto spec = info[1].As<Napi::Object>();
    const std::string transport = to_string_arg(env, spec.Get("transport"), "transport");
    retry::policy policy = to_client_policy(env, spec.Get("retryPolicy"));
    service_client_options options;
    if (auto seed = spec.Get("randomSeed"); !is_missing(seed))
      options.random_seed = to_uint(env, seed, "randomSeed", std::uint64_t{1} << 53);
    if (auto a = spec.Get("assignMessageId"); !is_missing(a)) {
      const std::string s = to_string_arg(env, a, "assignMessageId");
      const auto assignment = parse_message_id_assignment(s);
      if (!assignment)
        throw_invalid(env, "assignMessageId must be 'never' or 'when_unset', not '" + s + "'");
      options.assign_message_id = *assignment;
    }

    if (transport == "inproc") {
      auto host = host_of(env, spec.Get("hub"));
      api_ = std::make_unique<service_impl<host_type::service_connection_type>>(
          host, host->service(), std::move(policy), std::move(options));
    } else if (transport == "mqtt") {
      api_ = make_mqtt_service(env, spec.Get("mqtt"), std::move(policy), std::move(options));
    } else {
      throw_invalid(env, "transport must be 'inproc' or 'mqtt', not '" + transport + "'");
    }
    report_status();
  }

  /// One feedback batch, emitted as a 'feedback' event (the receive thread).
  result<bool> receive_one() {
    return receive_and_post(
        "feedback", [api = api_.get()](duration wait) { return api->receive_feedback(wait); },
        from_feedback_batch);
  }

 private:
  /// `send(deviceId, message): Promise<{ sequenceNumber, expiryTimeUtc }>`.
  Napi::Value send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string id = to_string_arg(env, info[0], "deviceId");
    message m = to_message(env, info[1]);
    return async_call(
        env,
        [api = api_.get(), id = std::move(id), m = std::move(m)]() mutable {
          return api->send(id, std::move(m));
        },
        [](Napi::Env e, enqueue_receipt& r) { return from_receipt(e, r); });
  }

  /// `purge(deviceId): Promise<number>`: how many messages were removed.
  Napi::Value purge(const Napi::CallbackInfo& info) {
    std::string id = to_string_arg(info.Env(), info[0], "deviceId");
    return async_call(
        info.Env(), [api = api_.get(), id = std::move(id)] { return api->purge(id); },
        [](Napi::Env e, std::size_t& n) { return Napi::Number::New(e, static_cast<double>(n)); });
  }

  /// `queueDepth(deviceId): Promise<number>`: Enqueued plus Invisible.
  Napi::Value queue_depth(const Napi::CallbackInfo& info) {
    std::string id = to_string_arg(info.Env(), info[0], "deviceId");
    return async_call(
        info.Env(), [api = api_.get(), id = std::move(id)] { return api->queue_depth(id); },
        [](Napi::Env e, std::size_t& n) { return Napi::Number::New(e, static_cast<double>(n)); });
  }

  /// `settleFeedback(lockToken, 'complete' | 'abandon'): Promise<void>`.
  Napi::Value settle_feedback(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const lock_token token = to_lock_token(env, info[0]);
    const std::string how = to_string_arg(env, info[1], "disposition");
    const auto parsed = parse_feedback_disposition(how);
    if (!parsed)
      throw_invalid(env, "feedback disposition must be 'complete' or 'abandon', not '" + how + "'");
    const feedback_disposition d = *parsed;
    return async_call(
        env, [api = api_.get(), token, d] { return api->settle_feedback(token, d); },
        to_undefined{});
  }
};

}  // namespace devicebound::node
