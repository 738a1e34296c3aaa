/// \file bench_inproc.cpp
/// The C++ side of node/bench.js: the same in-process work as the Node loop
/// (send with at most `window` messages outstanding, a device thread that
/// receives and completes each one), timed in C++ alone, so the benchmark can
/// print what the binding costs.
///
/// An addon of its own, devicebound_bench.node, built in a checkout only: the
/// npm package does not carry bindings/node/bench/ (scripts/prepack.js copies
/// the top of bindings/node/), so the addon users install has no benchmark code.

#include <napi.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/inproc.hpp>
#include <mutex>
#include <string>
#include <thread>

#include "../convert.hpp"

namespace devicebound::node {
namespace {

struct bench_result {
  std::uint64_t messages = 0;
  double seconds = 0;
  std::string error;  ///< empty on success
};

/// Sends `n` messages of `body_size` bytes to one device, at most `window`
/// of them not yet completed; the device completes each. Blocking.
bench_result bench_inproc_loop(std::uint64_t n, std::uint64_t window, std::size_t body_size) {
  hub_config config;
  config.max_queue_depth = static_cast<std::uint32_t>(window);
  inproc::hub_host<system_clock> host(config);
  host.start_driver();
  host.add_device("bench-device").value();
  device_client device(host.device("bench-device"), retry::policy(retry::profiles::c_sdk()));
  service_client service(host.service(), retry::policy(retry::profiles::c_sdk()));

  std::mutex m;
  std::condition_variable cv;
  std::uint64_t completed = 0;
  std::string failure;

  const auto start = std::chrono::steady_clock::now();
  std::thread device_app([&] {
    for (std::uint64_t i = 0; i < n; ++i) {
      auto r = device.receive(std::chrono::minutes(1));
      if (!r || !*r || !device.complete(**r)) {
        std::lock_guard<std::mutex> g(m);
        failure = r ? "receive or complete failed" : r.error().message;
        completed = n;
        cv.notify_all();
        return;
      }
      std::lock_guard<std::mutex> g(m);
      ++completed;
      cv.notify_all();
    }
  });

  const std::string body(body_size, 'x');
  for (std::uint64_t i = 0; i < n; ++i) {
    {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return i - completed < window || !failure.empty(); });
      if (!failure.empty())
        break;
    }
    message msg;
    msg.message_id = "m-" + std::to_string(i);
    msg.body = body;
    if (auto r = service.send("bench-device", std::move(msg)); !r) {
      std::lock_guard<std::mutex> g(m);
      failure = r.error().message;
      break;
    }
  }
  if (!failure.empty())
    device.disconnect();
  device_app.join();
  const auto stop = std::chrono::steady_clock::now();
  return {n, std::chrono::duration<double>(stop - start).count(), failure};
}

/// `benchInproc(n, window, bodySize): Promise<{ messages, seconds }>`, off the event loop.
class bench_worker final : public Napi::AsyncWorker {
 public:
  bench_worker(Napi::Env env, std::uint64_t n, std::uint64_t window, std::size_t body_size)
      : Napi::AsyncWorker(env), deferred_(env), n_(n), window_(window), body_size_(body_size) {}

  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    result_ = bench_inproc_loop(n_, window_, body_size_);
    if (!result_.error.empty())
      SetError(result_.error);
  }
  void OnOK() override {
    Napi::Object o = Napi::Object::New(Env());
    o.Set("messages", Napi::Number::New(Env(), static_cast<double>(result_.messages)));
    o.Set("seconds", Napi::Number::New(Env(), result_.seconds));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::uint64_t n_, window_;
  std::size_t body_size_;
  bench_result result_;
};

Napi::Value bench_inproc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto n = to_uint(env, info[0], "n", std::uint64_t{1} << 40);
  const auto window = to_uint(env, info[1], "window", 10000);
  const auto body = to_uint(env, info[2], "bodySize", 65536);
  if (n == 0 || window == 0)
    throw_invalid(env, "n and window must be at least 1");
  auto* w = new bench_worker(env, n, window, static_cast<std::size_t>(body));
  auto p = w->promise();
  w->Queue();
  return p;
}

}  // namespace
}  // namespace devicebound::node

namespace {
Napi::Object init_devicebound_bench(Napi::Env env, Napi::Object exports) {
  // throw_invalid() reads the environment's addon_data; without the main
  // addon's setup() its errors are plain Errors with a `code`.
  env.SetInstanceData<devicebound::node::addon_data>(new devicebound::node::addon_data());
  exports.Set("benchInproc",
              Napi::Function::New<devicebound::node::bench_inproc>(env, "benchInproc"));
  return exports;
}
}  // namespace

NODE_API_MODULE(devicebound_bench, init_devicebound_bench)
