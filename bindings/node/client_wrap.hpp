/// \file client_wrap.hpp
/// What the device and the service client objects share: the client behind its
/// interface (`Api`, client_api.hpp), the JS event callback, the JS methods
/// open(), close(), status() and the one that starts receiving, with their
/// effect on the process lifetime, the end of a collected or torn-down client,
/// and a receive thread (C2D messages for a device, feedback batches for a
/// service) that waits under the client's retry policy, like the C++ clients'
/// handler threads, and hands each item to JS through the channel.
///
/// `Derived` sets `api_` in its constructor, then calls report_status(), and provides
///   result<bool> receive_one();              // receive thread: false = nothing came
/// (receive_and_post() does the work of one).
#pragma once

#include <napi.h>

#include <chrono>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "async_object.hpp"
#include "client_api.hpp"
#include "convert.hpp"

namespace devicebound::node {

/// How long one receive of the receive thread waits: it returns when an item
/// comes, when the policy gives up, or at once when close() interrupts it.
inline constexpr duration receive_thread_wait = std::chrono::hours(24);

template <class Derived, class Api>
class client_wrap : public async_object<Derived> {
  using base = async_object<Derived>;

 public:
  /// An open client, and one whose receive thread runs, keeps the process alive.
  bool extra_liveness() {
    std::lock_guard<std::mutex> g(recv_mutex_);
    return recv_running_;
  }

  /// Collected: closing the connection may wait for a broker, so a thread does it.
  ~client_wrap() override {
    if (!api_)
      return;
    stop_threads(false);
    data_of(this->env_).reap([api = std::shared_ptr<Api>(std::move(api_))] { api->close(); });
  }

  /// The environment goes: every thread stops, the connection closes now.
  void teardown() override {
    if (!api_)
      return;
    stop_threads(true);
    api_.reset();
  }

 protected:
  using method_list = std::vector<Napi::ClassPropertyDescriptor<Derived>>;

  /// `Derived`'s JS methods: open(), close(), status(), `start_name`() (which
  /// starts emitting received items) and then `own`.
  static method_list methods(const char* start_name, method_list own) {
    using method = Napi::Value (Derived::*)(const Napi::CallbackInfo&);
    method_list all{base::InstanceMethod("open", static_cast<method>(&client_wrap::open)),
                    base::InstanceMethod("close", static_cast<method>(&client_wrap::close)),
                    base::InstanceMethod("status", static_cast<method>(&client_wrap::status)),
                    base::InstanceMethod(start_name, static_cast<method>(&client_wrap::start))};
    all.insert(all.end(), own.begin(), own.end());
    return all;
  }

  /// `new <name>(onEvent, spec)`: `info[0]` is the JS event callback, `info[1]`
  /// the spec object (`what` names it in the error when it is not an object).
  client_wrap(const Napi::CallbackInfo& info, const char* name, const char* what)
      : base(info, name) {
    if (!info[0].IsFunction())
      throw_invalid(info.Env(), std::string(name) + " needs an event callback");
    if (!info[1].IsObject())
      throw_invalid(info.Env(), std::string(what) + " options must be an object");
    // A property of this object, not a persistent reference: the callback
    // refers to the JS client that refers to this object, and that cycle must
    // stay collectable once the client is closed and dropped.
    info.This().As<Napi::Object>().Set("onEvent", info[0]);
  }

  /// Receives one item with `receive(wait)` (a `result<std::optional<Item>>`)
  /// and emits it as `(kind, to_js(env, item))`; false when nothing came.
  template <class Receive, class ToJs>
  result<bool> receive_and_post(const char* kind, Receive receive, ToJs to_js) {
    auto r = receive(receive_thread_wait);
    if (!r)
      return r.error();
    if (!*r)
      return false;
    post_item(kind, std::move(**r), to_js);
    return true;
  }

  /// Reports connection status changes as `('status', status, reason)` events.
  void report_status() {
    api_->set_status_callback([this](connection_status s, connection_status_reason r) {
      this->post([this, s, r](Napi::Env e) {
        call_on_event(
            e, {Napi::String::New(e, "status"), Napi::String::New(e, std::string(to_string(s))),
                Napi::String::New(e, std::string(to_string(r)))});
      });
    });
  }

  /// Stops every thread (the environment's teardown, or the destructor). With
  /// `close_now` false (a collected client: its receive thread and call queue
  /// are idle, or it would not have been collected) the connection is left for
  /// the caller to close elsewhere, so the garbage collector does not wait for it.
  void stop_threads(bool close_now) {
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      if (torn_down_)
        return;
      torn_down_ = true;
      recv_closed_ = true;
    }
    api_->set_status_callback(nullptr);
    if (close_now)
      api_->close();
    join_receiver();
    this->calls_.drain();
  }

  std::unique_ptr<Api> api_;

 private:
  /// `open(): Promise<void>`: connects under the retry policy, then (re)starts
  /// the receive thread if items are wanted.
  Napi::Value open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      recv_closed_ = false;
    }
    accepting_ = true;
    set_opened(env, true);
    return this->async_call(
        env, [api = api_.get()] { return api->open(); }, typename base::to_undefined{},
        [this](Napi::Env e, bool ok) {
          if (!ok)
            set_opened(e, false);
          else
            maybe_start_receiver();
        });
  }

  /// `close(): Promise<void>`: no more items are emitted (one that arrives now
  /// stays locked and comes again when its lock expires); the calls made
  /// before run to their end; then the connection closes (the client reports
  /// disconnected/client_closed) and the receive thread stops. Calls made
  /// after fail with 409002 until open().
  Napi::Value close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      recv_closed_ = true;
    }
    accepting_ = false;
    return this->async_call(
        env,
        [this] {
          api_->close();
          join_receiver();
          return result<void>{};
        },
        typename base::to_undefined{}, [this](Napi::Env e, bool) { set_opened(e, false); });
  }

  /// `startReceiving()` / `startFeedback()`: from now on, items are received
  /// and emitted (until close()).
  Napi::Value start(const Napi::CallbackInfo& info) {
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      recv_wanted_ = true;
    }
    maybe_start_receiver();
    this->update_liveness(info.Env());
    return info.Env().Undefined();
  }

  /// `status(): string`: the connection status.
  Napi::Value status(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), std::string(to_string(api_->status())));
  }

  /// Calls the JS event callback with `(kind, value)` (JS thread).
  void emit(Napi::Env env, const char* kind, Napi::Value value) {
    call_on_event(env, {Napi::String::New(env, kind), value});
  }

  /// Emits a received item, unless close() was called since (JS thread).
  template <class Item, class ToJs>
  void post_item(const char* kind, Item item, ToJs to_js) {
    this->post([this, kind, item = std::move(item), to_js](Napi::Env env) {
      if (accepting_)
        emit(env, kind, to_js(env, item));
    });
  }

  Derived& self() { return static_cast<Derived&>(*this); }

  void call_on_event(Napi::Env, const std::initializer_list<napi_value>& args) {
    Napi::Object self_js = this->Value();
    if (self_js.IsEmpty())
      return;  // collected: nobody is listening
    Napi::Value f = self_js.Get("onEvent");
    if (f.IsFunction())
      f.As<Napi::Function>().Call(self_js, args);
  }

  void set_opened(Napi::Env env, bool open) {
    if (open != opened_) {
      opened_ = open;
      if (open)
        this->hold(env);
      else
        this->unhold(env);
    }
    this->update_liveness(env);
  }

  void maybe_start_receiver() {
    std::lock_guard<std::mutex> g(recv_mutex_);
    if (!recv_wanted_ || recv_closed_ || recv_running_)
      return;
    if (recv_thread_.joinable())
      recv_thread_.join();  // it has left its loop (recv_running_ is false)
    recv_running_ = true;
    recv_thread_ = std::thread([this] { receive_loop(); });
  }

  void join_receiver() {
    std::thread t;
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      t = std::move(recv_thread_);
    }
    if (t.joinable())
      t.join();
  }

  /// One receive after another until close(), or until the retry policy gives
  /// up: then an 'error' event, as the C++ handler threads report; open()
  /// starts the thread again.
  void receive_loop() {
    for (;;) {
      {
        std::lock_guard<std::mutex> g(recv_mutex_);
        if (recv_closed_)
          break;
      }
      auto r = self().receive_one();
      if (r)
        continue;
      bool report = false;
      {
        std::lock_guard<std::mutex> g(recv_mutex_);
        report = !recv_closed_;
      }
      if (report)
        this->post(
            [this, e = r.error()](Napi::Env env) { emit(env, "error", to_js_error(env, e)); });
      break;
    }
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      recv_running_ = false;
    }
    this->post([this](Napi::Env env) { this->update_liveness(env); });
  }

  bool opened_ = false;    ///< JS thread: open() called, no close() since
  bool accepting_ = true;  ///< JS thread: no close() since the last open()

  std::mutex recv_mutex_;
  bool recv_wanted_ = false;   ///< JS asked for items
  bool recv_closed_ = false;   ///< close() was called (until open())
  bool recv_running_ = false;  ///< the receive thread is in its loop
  bool torn_down_ = false;
  std::thread recv_thread_;
};

}  // namespace devicebound::node
