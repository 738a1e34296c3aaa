// The Node addon: marshalling only. The idiomatic API (classes, EventEmitter,
// errors, Promises' shapes) is plain JS in node/; this module exports the
// native objects it is built on:
//
//   NativeHub, NativeDeviceClient, NativeServiceClient   (see *_wrap.hpp)
//   setup(makeError, Message)        the JS error factory and Message class
//   retryProfile(name)               a retry.hpp profile as a policy object
//   retryProfileNames                the names retryProfile accepts
//   withMqtt                         whether the MQTT transport was built in
//   version                          devicebound's version
//
// node/bench.js's C++ loop is another addon, bench/ (a checkout's build only).
#include <napi.h>

#include <devicebound/version.hpp>

#include "convert.hpp"
#include "device_wrap.hpp"
#include "hub_wrap.hpp"
#include "mqtt_options.hpp"
#include "service_wrap.hpp"

namespace devicebound::node {
namespace {

Napi::Value setup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction() || !info[1].IsFunction())
    throw Napi::TypeError::New(env, "setup(makeError, Message) needs two functions");
  auto& d = data_of(env);
  d.make_error = Napi::Persistent(info[0].As<Napi::Function>());
  d.message_class = Napi::Persistent(info[1].As<Napi::Function>());
  return env.Undefined();
}

Napi::Value retry_profile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto p = retry::profiles::profile(to_string_arg(env, info[0], "profile name"));
  if (!p)
    throw_error(env, p.error());
  return from_policy(env, *p);
}

/// Stops every thread of the environment's objects before it goes, so that
/// the process exits cleanly even with clients left open.
void teardown_all(addon_data* d) {
  d->teardown();
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new addon_data();
  env.SetInstanceData<addon_data>(data);
  env.AddCleanupHook(teardown_all, data);

  Napi::Function hub = hub_wrap::define(env);
  data->hub_class = Napi::Persistent(hub);
  exports.Set("NativeHub", hub);
  exports.Set("NativeDeviceClient", device_wrap::define(env));
  exports.Set("NativeServiceClient", service_wrap::define(env));
  exports.Set("setup", Napi::Function::New<setup>(env, "setup"));
  exports.Set("retryProfile", Napi::Function::New<retry_profile>(env, "retryProfile"));
  Napi::Array names = Napi::Array::New(env, retry::profiles::names.size());
  for (std::size_t i = 0; i < retry::profiles::names.size(); ++i)
    names.Set(static_cast<std::uint32_t>(i), std::string(retry::profiles::names[i]));
  exports.Set("retryProfileNames", names);
  exports.Set("withMqtt", Napi::Boolean::New(env, with_mqtt));
  exports.Set("version", Napi::String::New(env, std::string(devicebound::version)));
  return exports;
}

}  // namespace
}  // namespace devicebound::node

namespace {
Napi::Object init_devicebound(Napi::Env env, Napi::Object exports) {
  return devicebound::node::init(env, exports);
}
}  // namespace

NODE_API_MODULE(devicebound, init_devicebound)
