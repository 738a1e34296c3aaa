/// \file hub_wrap.hpp
/// `NativeHub`: the embedded hub (`inproc::hub_host<system_clock>`) with its
/// driver thread running, so lock expiries and feedback batches happen on time.
/// In-process clients share ownership of the host: it outlives them.
#pragma once

#include <napi.h>

#include <devicebound/transport/inproc.hpp>
#include <memory>
#include <string>

#include "async_object.hpp"
#include "convert.hpp"

namespace devicebound::node {

using host_type = inproc::hub_host<system_clock>;

class hub_wrap final : public async_object<hub_wrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(
        env, "NativeHub",
        {InstanceMethod<&hub_wrap::add_device>("addDevice"),
         InstanceMethod<&hub_wrap::remove_device>("removeDevice"),
         InstanceMethod<&hub_wrap::stats>("stats"), InstanceMethod<&hub_wrap::config>("config"),
         InstanceMethod<&hub_wrap::close>("close")});
  }

  /// `new NativeHub(options)`.
  explicit hub_wrap(const Napi::CallbackInfo& info) : async_object(info, "devicebound:hub") {
    config_ = to_hub_config(info.Env(), info[0]);
    host_ = std::make_shared<host_type>(config_);
    host_->start_driver();
  }

  ~hub_wrap() override { teardown(); }

  void teardown() override {
    if (host_)
      host_->stop_driver();
    calls_.drain();
  }

  bool extra_liveness() const { return false; }

  const std::shared_ptr<host_type>& host() const { return host_; }

 private:
  Napi::Value add_device(const Napi::CallbackInfo& info) {
    auto id = to_string_arg(info.Env(), info[0], "deviceId");
    return async_call(
        info.Env(), [host = host_, id] { return host->add_device(id); },
        [](Napi::Env env, std::string& generation) { return Napi::String::New(env, generation); });
  }

  Napi::Value remove_device(const Napi::CallbackInfo& info) {
    auto id = to_string_arg(info.Env(), info[0], "deviceId");
    return async_call(
        info.Env(), [host = host_, id] { return host->remove_device(id); }, to_undefined{});
  }

  Napi::Value stats(const Napi::CallbackInfo& info) {
    return from_hub_stats(info.Env(), host_->stats());
  }

  Napi::Value config(const Napi::CallbackInfo& info) {
    return from_hub_config(info.Env(), config_);
  }

  /// Stops the driver thread: timers then fire only when an operation comes.
  Napi::Value close(const Napi::CallbackInfo& info) {
    host_->stop_driver();
    return info.Env().Undefined();
  }

  hub_config config_;
  std::shared_ptr<host_type> host_;
};

/// The host of a `NativeHub` argument (400004 if it is not one).
inline std::shared_ptr<host_type> host_of(Napi::Env env, const Napi::Value& v) {
  auto& d = data_of(env);
  if (!v.IsObject() || d.hub_class.IsEmpty() ||
      !v.As<Napi::Object>().InstanceOf(d.hub_class.Value()))
    throw_invalid(env, "hub must be a Hub");
  return hub_wrap::Unwrap(v.As<Napi::Object>())->host();
}

}  // namespace devicebound::node
