/// \file js_channel.hpp
/// The one way from C++ threads into JavaScript: tasks posted from any thread
/// run on the JS thread, in the order they were posted, through one
/// Napi::ThreadSafeFunction. Posts coalesce: while a call is queued, later
/// posts only join the queue, and that one call runs them all.
#pragma once

#include <napi.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace devicebound::node {

class js_channel;

namespace detail {
/// The thread-safe function's JS-thread callback: runs what the channel queued.
inline void run_channel(Napi::Env env, Napi::Function, std::shared_ptr<js_channel>* keep,
                        std::nullptr_t*);
}  // namespace detail

class js_channel {
 public:
  /// Runs on the JS thread, inside a handle scope.
  using task = std::function<void(Napi::Env)>;

  /// A channel of `env`, unreferenced (it does not keep the event loop alive
  /// until `ref()`). The thread-safe function keeps one strong reference to the
  /// state, so a late post after the function is gone is dropped, not a crash.
  static std::shared_ptr<js_channel> create(Napi::Env env, const char* name) {
    auto self = std::shared_ptr<js_channel>(new js_channel());
    auto* keep = new std::shared_ptr<js_channel>(self);
    self->tsfn_ = tsfn_type::New(env, name, 0, 1, keep, &finalize, static_cast<void*>(nullptr));
    self->tsfn_.Unref(env);
    return self;
  }

  js_channel(const js_channel&) = delete;
  js_channel& operator=(const js_channel&) = delete;

  /// Queues `t` (any thread). False when the channel is closed: `t` is dropped.
  bool post(task t) {
    std::lock_guard<std::mutex> g(mutex_);
    if (closed_)
      return false;
    queue_.push_back(std::move(t));
    if (signalled_)
      return true;
    if (tsfn_.NonBlockingCall(static_cast<std::nullptr_t*>(nullptr)) != napi_ok) {
      queue_.pop_back();
      return false;
    }
    signalled_ = true;
    return true;
  }

  /// Keeps the event loop alive (JS thread only).
  void ref(Napi::Env env) {
    if (!closed_on_js_)
      tsfn_.Ref(env);
  }
  /// Lets the event loop end (JS thread only).
  void unref(Napi::Env env) {
    if (!closed_on_js_)
      tsfn_.Unref(env);
  }

  /// No more posts, and queued tasks are dropped: they may refer to the object
  /// that is closing its channel (JS thread only). Idempotent.
  void close() {
    std::vector<task> dropped;
    {
      std::lock_guard<std::mutex> g(mutex_);
      if (closed_)
        return;
      closed_ = true;
      dropped.swap(queue_);
    }
    closed_on_js_ = true;
    tsfn_.Release();
  }

 private:
  using tsfn_type = Napi::TypedThreadSafeFunction<std::shared_ptr<js_channel>, std::nullptr_t,
                                                  &detail::run_channel>;

  js_channel() = default;

  friend void detail::run_channel(Napi::Env, Napi::Function, std::shared_ptr<js_channel>*,
                                  std::nullptr_t*);

  void run_queued(Napi::Env env) {
    std::vector<task> batch;
    {
      std::lock_guard<std::mutex> g(mutex_);
      batch.swap(queue_);
      signalled_ = false;
    }
    // A listener that throws must not cost the tasks after it (they settle
    // Promises and keep counts): run them all, then raise the first error as
    // an uncaught exception, as Node does for a throwing 'data' listener.
    std::optional<Napi::Error> first;
    for (auto& t : batch) {
      Napi::HandleScope scope(env);
      try {
        t(env);
      } catch (const Napi::Error& e) {
        if (!first)
          first = e;
      }
    }
    if (first)
      first->ThrowAsJavaScriptException();
  }

  static void finalize(Napi::Env, void*, std::shared_ptr<js_channel>* keep) {
    {
      std::lock_guard<std::mutex> g((*keep)->mutex_);
      (*keep)->closed_ = true;
      (*keep)->closed_on_js_ = true;
      (*keep)->queue_.clear();
    }
    delete keep;
  }

  std::mutex mutex_;
  std::vector<task> queue_;
  bool signalled_ = false;
  bool closed_ = false;        ///< guarded by mutex_
  bool closed_on_js_ = false;  ///< JS thread only
  tsfn_type tsfn_;
};

inline void detail::run_channel(Napi::Env env, Napi::Function, std::shared_ptr<js_channel>* keep,
                                std::nullptr_t*) {
  if (env == nullptr || keep == nullptr)
    return;  // the environment is going away: nothing can run
  (*keep)->run_queued(env);
}

}  // namespace devicebound::node
