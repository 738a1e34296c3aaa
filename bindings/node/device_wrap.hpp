/// \file device_wrap.hpp
/// `NativeDeviceClient`: a `device_client` over the in-process or the MQTT
/// transport. Calls settle Promises from the object's call queue; the receive thread
/// hands each C2D message to JS, which emits it and settles it when it likes.
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

class device_wrap final : public client_wrap<device_wrap, device_api> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(
        env, "NativeDeviceClient",
        methods("startReceiving", {InstanceMethod<&device_wrap::settle>("settle"),
                                   InstanceMethod<&device_wrap::device_id>("deviceId"),
                                   InstanceMethod<&device_wrap::can_reject>("canReject"),
                                   InstanceMethod<&device_wrap::can_abandon>("canAbandon")}));
  }

  /// `new NativeDeviceClient(onEvent, spec)`; spec is
  /// `{ transport: 'inproc', hub, deviceId, settlement, retryPolicy, randomSeed }` or
  /// `{ transport: 'mqtt', deviceId, mqtt, retryPolicy, randomSeed }`.
  explicit device_wrap(const Napi::CallbackInfo& info)
      : client_wrap(info, "NativeDeviceClient", "device client") {
    Napi::Env env = info.Env();
    auto spec = info[1].As<Napi::Object>();
    const std::string transport = to_string_arg(env, spec.Get("transport"), "transport");
    std::string id = to_string_arg(env, spec.Get("deviceId"), "deviceId");
    retry::policy policy = to_client_policy(env, spec.Get("retryPolicy"));
    device_client_options options;
    if (auto seed = spec.Get("randomSeed"); !is_missing(seed))
      options.random_seed = to_uint(env, seed, "randomSeed", std::uint64_t{1} << 53);

    if (transport == "inproc") {
      auto host = host_of(env, spec.Get("hub"));
      std::string name(inproc::to_string(inproc::settlement::full));
      if (auto s = spec.Get("settlement"); !is_missing(s))
        name = to_string_arg(env, s, "settlement");
      const auto settlement = inproc::parse_settlement(name);
      if (settlement == inproc::settlement::full)
        api_ = std::make_unique<device_impl<host_type::device_connection_type>>(
            host, host->device(id), std::move(policy), options);
      else if (settlement == inproc::settlement::complete_only)
        api_ = std::make_unique<device_impl<host_type::complete_only_device_connection_type>>(
            host, host->complete_only_device(id), std::move(policy), options);
      else
        throw_invalid(env, "settlement must be 'full' or 'complete_only', not '" + name + "'");
    } else if (transport == "mqtt") {
      api_ = make_mqtt_device(env, std::move(id), spec.Get("mqtt"), std::move(policy), options);
    } else {
      throw_invalid(env, "transport must be 'inproc' or 'mqtt', not '" + transport + "'");
    }
    report_status();
  }

  /// One C2D message, emitted as a 'message' event (the receive thread).
  result<bool> receive_one() {
    return receive_and_post(
        "message", [api = api_.get()](duration wait) { return api->receive(wait); }, from_message);
  }

 private:
  /// `settle(lockToken, 'complete' | 'reject' | 'abandon'): Promise<void>`.
  Napi::Value settle(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const lock_token token = to_lock_token(env, info[0]);
    const auto d = to_enum(
        env, info[1], std::array{disposition::complete, disposition::reject, disposition::abandon},
        "disposition");
    return async_call(
        env, [api = api_.get(), token, d] { return api->settle(token, d); }, to_undefined{});
  }

  Napi::Value device_id(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), api_->device_id());
  }
  Napi::Value can_reject(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), api_->can_reject());
  }
  Napi::Value can_abandon(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), api_->can_abandon());
  }
};

}  // namespace devicebound::node
