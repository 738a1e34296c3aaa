/// \file detail/handler_pump.hpp
/// The handler thread both clients share: receive, call the application's
/// handler, settle what it returned; errors go to the client's error handler.
/// Internal: named only by the clients.
#pragma once

#include <atomic>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>

#include "../connection_status.hpp"
#include "../errors.hpp"

namespace devicebound::detail {

/// A thread that, while a handler is set, receives an `Item` (a message, a
/// feedback batch), calls the handler for its `Disposition` and settles it.
/// `receive` gives up (an error) only when the retry policy did: the thread then
/// reports it and stops until `resume()`. A handler that throws is reported, and
/// `settle` gets no disposition (nullopt) to pick its fallback. Thread-safe.
template <class Item, class Disposition>
class handler_pump {
 public:
  using handler = std::function<Disposition(const Item&)>;
  using receive_fn = std::function<result<std::optional<Item>>(const std::stop_token&)>;
  using settle_fn =
      std::function<result<void>(const Item&, std::optional<Disposition>, const std::stop_token&)>;

  /// `what` names the handler in errors ("message handler").
  handler_pump(std::string what, receive_fn receive, settle_fn settle)
      : what_(std::move(what)), receive_(std::move(receive)), settle_(std::move(settle)) {}

  handler_pump(const handler_pump&) = delete;
  handler_pump& operator=(const handler_pump&) = delete;

  ~handler_pump() { stop(); }

  void set_error_handler(client_error_handler h) {
    std::lock_guard<std::mutex> g(mutex_);
    error_handler_ = std::move(h);
  }

  /// Stops the thread, sets `h` and, unless it is empty, starts the thread again.
  void set_handler(handler h) {
    stop();
    std::lock_guard<std::mutex> g(mutex_);
    handler_ = std::move(h);
    if (handler_)
      start_locked();
  }

  bool has_handler() const {
    std::lock_guard<std::mutex> g(mutex_);
    return static_cast<bool>(handler_);
  }

  /// Restarts a thread that stopped because the policy gave up (after connect()).
  void resume() {
    std::lock_guard<std::mutex> g(mutex_);
    if (handler_ && done_.load())
      start_locked();
  }

  /// Stops the thread and waits for it. Do not call it from the handler.
  void stop() {
    std::jthread t;
    {
      std::lock_guard<std::mutex> g(mutex_);
      t = std::move(thread_);
    }
    if (t.joinable()) {
      t.request_stop();
      t.join();
    }
  }

  void report_error(const error& e) {
    client_error_handler h;
    {
      std::lock_guard<std::mutex> g(mutex_);
      h = error_handler_;
    }
    if (h)
      h(e);
  }

 private:
  void start_locked() {
    if (thread_.joinable())
      thread_.join();  // an exited thread (done_)
    done_.store(false);
    thread_ = std::jthread([this, h = handler_](std::stop_token stop) { run(stop, h); });
  }

  void run(const std::stop_token& stop, const handler& h) {
    while (!stop.stop_requested()) {
      auto r = receive_(stop);
      if (stop.stop_requested())
        break;
      if (!r) {
        report_error(r.error());  // the policy gave up; resume() restarts the thread
        break;
      }
      if (!*r)
        continue;
      const Item& item = **r;
      std::optional<Disposition> d;
      try {
        d = h(item);
      } catch (const std::exception& e) {
        report_error(make_error(errc::invalid_operation, what_ + " threw: " + e.what()));
      } catch (...) {
        report_error(make_error(errc::invalid_operation, what_ + " threw"));
      }
      if (auto s = settle_(item, d, stop); !s)
        report_error(s.error());
    }
    done_.store(true);
  }

  const std::string what_;
  const receive_fn receive_;
  const settle_fn settle_;

  mutable std::mutex mutex_;
  handler handler_;
  client_error_handler error_handler_;
  std::jthread thread_;
  std::atomic<bool> done_{true};
};

}  // namespace devicebound::detail
