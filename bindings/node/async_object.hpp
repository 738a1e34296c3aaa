/// \file async_object.hpp
/// What every native object of the addon shares: a channel into JS, a queue for
/// its blocking calls (in order), Promise plumbing, and the rule that decides whether it
/// keeps the process alive (it does while it has calls in flight or is "held":
/// an open client, a running receiver), like a libuv handle.
#pragma once

#include <napi.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include "call_queue.hpp"
#include "convert.hpp"
#include "js_channel.hpp"

namespace devicebound::node {

template <class Derived>
class async_object : public Napi::ObjectWrap<Derived>, public closeable {
 public:
  ~async_object() override {
    data_of(env_).live.erase(this);
    channel_->close();
  }

 protected:
  async_object(const Napi::CallbackInfo& info, const char* name)
      : Napi::ObjectWrap<Derived>(info),
        env_(info.Env()),
        channel_(js_channel::create(info.Env(), name)),
        calls_() {
    data_of(env_).live.insert(this);
  }

  /// Does nothing after a call (see `async_call`).
  struct no_after {
    void operator()(Napi::Env, bool) const {}
  };
  /// Resolves with `undefined` (for `result<void>`).
  struct to_undefined {
    Napi::Value operator()(Napi::Env env) const { return env.Undefined(); }
  };

  /// Runs `work()` (returning `result<T>`) on the call queue. On the JS thread,
  /// `after(env, ok)` runs first, then the Promise resolves with
  /// `to_js(env, T&)` (`to_js(env)` for `result<void>`) or rejects with the
  /// error's JS class.
  template <class Work, class ToJs, class After = no_after>
  Napi::Value async_call(Napi::Env env, Work work, ToJs to_js, After after = {}) {
    auto deferred = std::make_shared<Napi::Promise::Deferred>(env);
    Napi::Value promise = deferred->Promise();
    ++pending_;
    update_liveness(env);
    calls_.submit([this, deferred, work = std::move(work), to_js = std::move(to_js),
                   after = std::move(after)]() mutable {
      auto r = work();
      post([this, deferred, r = std::move(r), to_js = std::move(to_js),
            after = std::move(after)](Napi::Env e) mutable {
        --pending_;
        after(e, r.has_value());
        update_liveness(e);
        if (!r) {
          deferred->Reject(to_js_error(e, r.error()));
        } else if constexpr (std::is_same_v<std::decay_t<decltype(r)>, result<void>>) {
          deferred->Resolve(to_js(e));
        } else {
          deferred->Resolve(to_js(e, *r));
        }
      });
    });
    return promise;
  }

  /// Queues `t` to run on the JS thread (any thread).
  bool post(js_channel::task t) { return channel_->post(std::move(t)); }

  /// Marks one reason more or less to stay alive (JS thread).
  void hold(Napi::Env env) {
    ++holds_;
    update_liveness(env);
  }
  void unhold(Napi::Env env) {
    if (holds_ > 0)
      --holds_;
    update_liveness(env);
  }

  /// Re-evaluates whether the object keeps the event loop (and itself) alive.
  /// Derived classes may add reasons through `extra_liveness()` (JS thread).
  void update_liveness(Napi::Env env) {
    const bool alive = pending_ > 0 || holds_ > 0 || static_cast<Derived*>(this)->extra_liveness();
    if (alive == alive_)
      return;
    alive_ = alive;
    if (alive) {
      channel_->ref(env);
      this->Ref();  // an open client must not be collected while it is working
    } else {
      channel_->unref(env);
      this->Unref();
    }
  }

  bool extra_liveness() const { return false; }

  /// Stops the channel (no JS runs for this object after pending tasks).
  void close_channel() { channel_->close(); }

  Napi::Env env_;
  std::shared_ptr<js_channel> channel_;
  call_queue calls_;         ///< this object's blocking calls, in order
  std::size_t pending_ = 0;  ///< calls in flight (JS thread)
  std::size_t holds_ = 0;    ///< open / receiving reasons (JS thread)
  bool alive_ = false;       ///< JS thread
};

}  // namespace devicebound::node
