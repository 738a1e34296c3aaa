/// \file client_wrap.hpp
/// What the device and the service client objects share: the JS event
/// callback, open/close with their effect on the process lifetime, and a
/// receive thread (C2D messages for a device, feedback batches for a service)
/// that waits under the client's retry policy, like the C++ clients' handler
/// threads, and hands each item to JS through the channel.
///
/// `Derived` provides:
///   result<void> open_connection();          // call queue thread
///   void close_connection();                 // closer thread
///   void set_status_callback(connection_status_callback);
///   result<bool> receive_one();              // receive thread: false = nothing came
#pragma once

#include <napi.h>

#include <chrono>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "async_object.hpp"
#include "convert.hpp"

namespace devicebound::node {

template <class Derived>
class client_wrap : public async_object<Derived> {
  using base = async_object<Derived>;

 public:
  /// An open client, and one whose receive thread runs, keeps the process alive.
  bool extra_liveness() {
    std::lock_guard<std::mutex> g(recv_mutex_);
    return recv_running_;
  }

 protected:
  client_wrap(const Napi::CallbackInfo& info, const char* name) : base(info, name) {
    if (!info[0].IsFunction())
      throw_invalid(info.Env(), std::string(name) + " needs an event callback");
    // A property of this object, not a persistent reference: the callback
    // refers to the JS client that refers to this object, and that cycle must
    // stay collectable once the client is closed and dropped.
    info.This().As<Napi::Object>().Set("onEvent", info[0]);
  }

  /// Reports connection status changes as `('status', status, reason)` events.
  void report_status() {
    self().set_status_callback([this](connection_status s, connection_status_reason r) {
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
    self().set_status_callback(nullptr);
    if (close_now)
      self().close_connection();
    join_receiver();
    this->calls_.drain();
  }

  /// `open(): Promise<void>`: connects under the retry policy, then (re)starts
  /// the receive thread if items are wanted.
  Napi::Value open_call(Napi::Env env) {
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      recv_closed_ = false;
    }
    accepting_ = true;
    set_opened(env, true);
    return this->async_call(
        env, [this] { return self().open_connection(); }, typename base::to_undefined{},
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
  Napi::Value close_call(Napi::Env env) {
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      recv_closed_ = true;
    }
    accepting_ = false;
    return this->async_call(
        env,
        [this] {
          self().close_connection();
          join_receiver();
          return result<void>{};
        },
        typename base::to_undefined{}, [this](Napi::Env e, bool) { set_opened(e, false); });
  }

  /// From now on, items are received and emitted (until close()).
  void start_receiving(Napi::Env env) {
    {
      std::lock_guard<std::mutex> g(recv_mutex_);
      recv_wanted_ = true;
    }
    maybe_start_receiver();
    this->update_liveness(env);
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

 private:
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

/// How long one receive of the receive thread waits: it returns when an item
/// comes, when the policy gives up, or at once when close() interrupts it.
inline constexpr duration receive_thread_wait = std::chrono::hours(24);

}  // namespace devicebound::node
