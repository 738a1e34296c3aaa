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

class device_wrap final : public client_wrap<device_wrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(
        env, "NativeDeviceClient",
        {InstanceMethod<&device_wrap::open>("open"), InstanceMethod<&device_wrap::close>("close"),
         InstanceMethod<&device_wrap::start>("startReceiving"),
         InstanceMethod<&device_wrap::settle>("settle"),
         InstanceMethod<&device_wrap::status>("status"),
         InstanceMethod<&device_wrap::device_id>("deviceId"),
         InstanceMethod<&device_wrap::can_reject>("canReject"),
         InstanceMethod<&device_wrap::can_abandon>("canAbandon")});
  }

  /// `new NativeDeviceClient(onEvent, spec)`; spec is
  /// `{ transport: 'inproc', hub, deviceId, settlement, retryPolicy, randomSeed }` or
  /// `{ transport: 'mqtt', deviceId, mqtt, retryPolicy, randomSeed }`.
  explicit device_wrap(const Napi::CallbackInfo& info) : client_wrap(info, "NativeDeviceClient") {
    Napi::Env env = info.Env();
    if (!info[1].IsObject())
      throw_invalid(env, "device client options must be an object");
    auto spec = info[1].As<Napi::Object>();
    const std::string transport = to_string_arg(env, spec.Get("transport"), "transport");
    std::string id = to_string_arg(env, spec.Get("deviceId"), "deviceId");
    retry::policy policy = to_client_policy(env, spec.Get("retryPolicy"));
    device_client_options options;
    if (auto seed = spec.Get("randomSeed"); !is_missing(seed))
      options.random_seed = to_uint(env, seed, "randomSeed", std::uint64_t{1} << 53);

    if (transport == "inproc") {
      auto host = host_of(env, spec.Get("hub"));
      std::string settlement = "full";
      if (auto s = spec.Get("settlement"); !is_missing(s))
        settlement = to_string_arg(env, s, "settlement");
      if (settlement == "full")
        api_ = std::make_unique<device_impl<host_type::device_connection_type>>(
            host, host->device(id), std::move(policy), options);
      else if (settlement == "complete_only")
        api_ = std::make_unique<device_impl<host_type::complete_only_device_connection_type>>(
            host, host->complete_only_device(id), std::move(policy), options);
      else
        throw_invalid(env,
                      "settlement must be 'full' or 'complete_only', not '" + settlement + "'");
    } else if (transport == "mqtt") {
      api_ = make_mqtt_device(env, std::move(id), spec.Get("mqtt"), std::move(policy), options);
    } else {
      throw_invalid(env, "transport must be 'inproc' or 'mqtt', not '" + transport + "'");
    }
    report_status();
  }

  /// Collected: closing the connection may wait for a broker, so a thread does it.
  ~device_wrap() override {
    if (!api_)
      return;
    stop_threads(false);
    data_of(env_).reap([api = std::shared_ptr<device_api>(std::move(api_))] { api->disconnect(); });
  }

  void teardown() override {
    if (!api_)
      return;
    stop_threads(true);
    api_.reset();
  }

  // --- what client_wrap needs ---------------------------------------------------------
  result<void> open_connection() { return api_->connect(); }
  void close_connection() { api_->disconnect(); }
  void set_status_callback(connection_status_callback cb) {
    api_->set_status_callback(std::move(cb));
  }
  result<bool> receive_one() {
    auto r = api_->receive(receive_thread_wait);
    if (!r)
      return r.error();
    if (!*r)
      return false;
    post_item("message", std::move(**r), from_message);
    return true;
  }

 private:
  Napi::Value open(const Napi::CallbackInfo& info) { return open_call(info.Env()); }
  Napi::Value close(const Napi::CallbackInfo& info) { return close_call(info.Env()); }
  Napi::Value start(const Napi::CallbackInfo& info) {
    start_receiving(info.Env());
    return info.Env().Undefined();
  }

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

  Napi::Value status(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), std::string(to_string(api_->status())));
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

  std::unique_ptr<device_api> api_;
};

}  // namespace devicebound::node
