/// \file device_client.hpp
/// The device side of C2D (SPEC 1.6, 6): connect under a retry policy with a
/// connection-status callback, receive with a handler or by pulling, and
/// complete, reject or abandon. Templated over a `device_transport` and a retry
/// policy (`retry::policy` by default; `retry::profiles` has the SDKs' ones).
///
/// Retry model (as the C# and Node SDKs): every operation is attempted as
/// "open the connection if it is not open, then do it", and an attempt that fails
/// with an error the policy classifies as transient is attempted again when the
/// policy's `retry::controller` says so. So a lost connection is re-established
/// by whichever operation needs it next: the handler thread's receive, or the
/// application's own call. 412002 (lock lost) is never retried: the message will
/// be redelivered (SPEC 8.8).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include "clock.hpp"
#include "connection_status.hpp"
#include "errors.hpp"
#include "hub.hpp"
#include "message.hpp"
#include "retry.hpp"
#include "transport.hpp"

namespace devicebound {


/// Called on every change of (status, reason), on the thread that saw it. It runs
/// under the client's connection lock: it must not call connect(), disconnect() or
/// operations of the same client.
using connection_status_callback = std::function<void(connection_status, connection_status_reason)>;

/// Errors the client cannot return to a caller (the handler thread's settlements,
/// a receive that gave up) go here.
using client_error_handler = std::function<void(const error&)>;

namespace detail {

/// A transport, the retry policy, and the connection state machine around them:
/// shared by `device_client` and `service_client`. Thread-safe.
template <class Transport, class Policy>
class connection_runner {
 public:
  using clock_type = typename Transport::clock_type;

  connection_runner(Transport t, Policy p, std::optional<std::uint64_t> seed)
      : transport_(std::move(t)),
        clock_(transport_.clock()),
        policy_(std::move(p)),
        seeds_(seed ? *seed
                    : (std::uint64_t{std::random_device{}()} << 32 | std::random_device{}())) {}

  Transport& transport() noexcept { return transport_; }
  const Transport& transport() const noexcept { return transport_; }
  const clock_type& clock() const noexcept { return clock_; }
  const Policy& policy() const noexcept { return policy_; }

  void set_status_callback(connection_status_callback cb) {
    std::lock_guard<std::mutex> g(connect_mutex_);
    status_cb_ = std::move(cb);
  }

  connection_status status() const {
    return connected_.load() ? connection_status::connected : connection_status::disconnected;
  }

  /// A token that is stopped by disconnect() (interrupts retry waits).
  std::stop_token closing_token() {
    std::lock_guard<std::mutex> g(connect_mutex_);
    return closing_.get_token();
  }

  /// Opens the connection under the retry policy. Re-arms a client that disconnect() closed.
  result<void> connect() {
    {
      std::lock_guard<std::mutex> g(connect_mutex_);
      if (closed_) {
        closed_ = false;
        closing_ = std::stop_source{};
      }
    }
    return run([] { return result<void>{}; }, closing_token());
  }

  /// Closes the connection; operations fail with 409002 until connect().
  void disconnect() {
    std::lock_guard<std::mutex> g(connect_mutex_);
    closed_ = true;
    closing_.request_stop();
    transport_.close();
    report(connection_status::disconnected, connection_status_reason::client_closed);
  }

  /// Runs `op` (returning `result<T>`) under the retry policy: each attempt opens
  /// the connection if needed first. Gives up when the policy says so, when `stop`
  /// is requested, or when the next attempt would start after `limit`; then returns
  /// the last attempt's error.
  template <class Op>
  std::invoke_result_t<Op&> run(Op&& op, const std::stop_token& stop,
                                std::optional<time_point> limit = std::nullopt) {
    using R = std::invoke_result_t<Op&>;
    bool connection_problem = false;
    R r = attempt(op, connection_problem);
    if (r.has_value() || !retryable(r.code()))
      return r;
    // Only a failure pays for a controller (policy copy, seeded random source). The
    // episode starts when the first attempt failed, not when it began: a receive
    // may wait a minute before its connection drops, and that wait is no retry.
    time_point last = clock_.now();
    retry::controller<Policy> ctrl(policy_, retry::default_random(std::mt19937_64(next_seed())));
    if (!ctrl.start(last))
      return r;
    for (;;) {
      auto d = ctrl.attempt_failed(r.code(), monotonic(last));
      while (d && d->what == retry::verdict::attempt_at) {
        if ((limit && d->at > *limit) || !sleep_until(d->at, stop))
          return r;
        d = ctrl.timer_fired(monotonic(last));
      }
      if (!d)
        return r;
      if (d->what == retry::verdict::give_up) {
        if (connection_problem && d->reason != retry::stop_reason::fatal_error) {
          std::lock_guard<std::mutex> g(connect_mutex_);
          if (!closed_)
            report(connection_status::disconnected, connection_status_reason::retry_expired);
        }
        return r;
      }
      if (d->what != retry::verdict::attempt_now || stop.stop_requested())
        return r;
      r = attempt(op, connection_problem);
      if (r.has_value()) {
        (void)ctrl.attempt_succeeded(monotonic(last));
        return r;
      }
      if (!retryable(r.code()))
        return r;
    }
  }

 private:
  /// 412002 is never retried, whatever the classifier says (SPEC 8.8).
  bool retryable(errc e) const {
    return e != errc::device_message_lock_lost && policy_.errors(e) != retry::error_class::fatal;
  }

  /// The retry controller refuses times that go backwards; a system clock may step.
  time_point monotonic(time_point& last) const {
    last = std::max(last, clock_.now());
    return last;
  }

  std::uint64_t next_seed() {
    std::lock_guard<std::mutex> g(seed_mutex_);
    return seeds_();
  }

  template <class Op>
  std::invoke_result_t<Op&> attempt(Op& op, bool& connection_problem) {
    using R = std::invoke_result_t<Op&>;
    if (auto c = ensure_open(); !c) {
      connection_problem = c.code() != errc::invalid_operation;
      return R(c.error());
    }
    R r = op();
    connection_problem = !r.has_value() && r.code() == errc::not_connected;
    if (connection_problem) {
      std::lock_guard<std::mutex> g(connect_mutex_);
      if (!closed_)
        report(connection_status::disconnected, connection_status_reason::communication_error);
    } else if (!connected_.load()) {
      // The operation went through, so the connection is up (it may have come back
      // without an open() of ours, e.g. after an injected transient error).
      std::lock_guard<std::mutex> g(connect_mutex_);
      if (!closed_ && transport_.is_open())
        report(connection_status::connected, connection_status_reason::ok);
    }
    return r;
  }

  result<void> ensure_open() {
    std::lock_guard<std::mutex> g(connect_mutex_);
    if (closed_)
      return make_error(errc::invalid_operation,
                        "the client is disconnected: call connect() first");
    if (transport_.is_open())
      return {};
    auto r = transport_.open();
    if (r)
      report(connection_status::connected, connection_status_reason::ok);
    else
      report(connection_status::disconnected, status_reason_for(r.code()));
    return r;
  }

  /// Reports a change of (status, reason); called with connect_mutex_ held.
  void report(connection_status s, connection_status_reason why) {
    connected_.store(s == connection_status::connected);
    if (reported_ && reported_->first == s && reported_->second == why)
      return;
    reported_ = {s, why};
    if (status_cb_)
      status_cb_(s, why);
  }

  /// Waits on the clock until `at`; false if `stop` was requested first.
  bool sleep_until(time_point at, const std::stop_token& stop) {
    std::stop_callback wake(stop, [this] {
      { std::lock_guard<std::mutex> g(wait_mutex_); }
      wait_cv_.notify_all();
    });
    std::unique_lock<std::mutex> lock(wait_mutex_);
    devicebound::wait_until(clock_, lock, wait_cv_, at, [&] { return stop.stop_requested(); });
    return !stop.stop_requested();
  }

  Transport transport_;
  clock_type clock_;
  Policy policy_;

  std::mutex connect_mutex_;  ///< serialises open/close and status reports
  bool closed_ = false;       ///< disconnect() was called
  std::stop_source closing_;
  std::atomic<bool> connected_{false};
  std::optional<std::pair<connection_status, connection_status_reason>> reported_;
  connection_status_callback status_cb_;

  std::mutex seed_mutex_;
  std::mt19937_64 seeds_;

  std::mutex wait_mutex_;
  std::condition_variable_any wait_cv_;
};

}  // namespace detail

/// Options of a `device_client`.
struct device_client_options {
  /// How long the handler thread's receive waits before it asks again. It is
  /// interrupted at once on stop, so this only bounds how stale a wait can get.
  duration receive_timeout = std::chrono::minutes(1);
  /// Seed of the retry jitter; unset: from `std::random_device`.
  std::optional<std::uint64_t> random_seed;
};

/// A device's C2D client over `Transport` (SPEC 6). Thread-safe; not movable.
///
/// Two ways to receive, mutually exclusive (as in the Python SDK):
/// - a handler (`set_message_handler`) called on the client's own thread; its
///   return value settles the message;
/// - pulling with `receive(timeout)` and settling with complete/reject/abandon.
///
/// `reject` and `abandon` do not compile when the transport cannot do them.
template <device_transport Transport, class Policy = retry::policy>
class device_client {
  using traits = transport_traits<Transport>;

 public:
  using transport_type = Transport;
  using policy_type = Policy;
  using clock_type = typename Transport::clock_type;
  /// Returns how to settle the message. Over a complete-only transport, `reject`
  /// and `abandon` leave the message locked (it is redelivered after the lock
  /// expires, like the C SDK's ABANDONED over MQTT) and report 405001.
  using message_handler = std::function<disposition(const message&)>;

  explicit device_client(Transport transport, Policy policy = Policy{},
                         device_client_options options = {})
      : runner_(std::move(transport), std::move(policy), options.random_seed), options_(options) {}

  device_client(const device_client&) = delete;
  device_client& operator=(const device_client&) = delete;

  /// Stops the handler thread and closes the connection.
  ~device_client() {
    stop_pump();
    runner_.transport().close();
  }

  std::string_view device_id() const { return runner_.transport().device_id(); }
  Transport& transport() noexcept { return runner_.transport(); }
  clock_type clock() const { return runner_.clock(); }
  connection_status status() const { return runner_.status(); }

  void set_connection_status_callback(connection_status_callback cb) {
    runner_.set_status_callback(std::move(cb));
  }
  void set_error_handler(client_error_handler h) {
    std::lock_guard<std::mutex> g(handler_mutex_);
    error_handler_ = std::move(h);
  }

  /// Opens the connection under the retry policy (attempt, wait as the policy
  /// decides, give up on a fatal error or when the policy is exhausted). Operations
  /// also connect on demand; connect() is needed again only after disconnect().
  /// Restarts the handler thread if a handler is set and it had stopped.
  result<void> connect() {
    auto r = runner_.connect();
    if (r) {
      std::lock_guard<std::mutex> g(handler_mutex_);
      if (handler_ && pump_done_.load())
        start_pump_locked();
    }
    return r;
  }

  /// Stops the handler thread, closes the connection, reports
  /// (disconnected, client_closed). Do not call it from a handler or callback.
  void disconnect() {
    stop_pump();
    runner_.disconnect();
  }

  /// Sets the handler and starts the client's thread that receives, calls it and
  /// settles; `nullptr` stops that thread. Do not call it from the handler.
  void set_message_handler(message_handler h) {
    stop_pump();
    std::lock_guard<std::mutex> g(handler_mutex_);
    handler_ = std::move(h);
    if (handler_)
      start_pump_locked();
  }

  /// The next message, locked for this device, waiting up to `timeout`; nullopt if
  /// none came. Reconnects under the policy within `timeout`. Refused (409002)
  /// while a handler is set.
  result<std::optional<message>> receive(duration timeout) {
    {
      std::lock_guard<std::mutex> g(handler_mutex_);
      if (handler_)
        return make_error(errc::invalid_operation,
                          "a message handler is set: receive() and the handler are exclusive");
    }
    const auto& c = runner_.clock();
    const time_point deadline = saturating_add(c.now(), timeout);
    const auto stop = runner_.closing_token();
    return runner_.run(
        [&] {
          const time_point now = c.now();
          return runner_.transport().receive(deadline > now ? deadline - now : duration::zero(),
                                             stop);
        },
        stop, deadline);
  }

  /// Completes a received message (SPEC 1.4). 412002 if its lock expired.
  result<void> complete(const message& m) { return settle(m, disposition::complete); }
  result<void> complete(const lock_token& token) { return settle(token, disposition::complete); }

  /// Rejects (dead-letters) a received message (SPEC 1.4).
  result<void> reject(const message& m) {
    static_assert(traits::can_reject,
                  "the transport cannot reject: MQTT to IoT Hub has no reject (SPEC 1.6)");
    return settle(m, disposition::reject);
  }
  result<void> reject(const lock_token& token) {
    static_assert(traits::can_reject,
                  "the transport cannot reject: MQTT to IoT Hub has no reject (SPEC 1.6)");
    return settle(token, disposition::reject);
  }

  /// Abandons a received message: back to the queue, delivery count + 1 (SPEC 1.4).
  result<void> abandon(const message& m) {
    static_assert(traits::can_abandon,
                  "the transport cannot abandon: MQTT to IoT Hub has no abandon (SPEC 1.6)");
    return settle(m, disposition::abandon);
  }
  result<void> abandon(const lock_token& token) {
    static_assert(traits::can_abandon,
                  "the transport cannot abandon: MQTT to IoT Hub has no abandon (SPEC 1.6)");
    return settle(token, disposition::abandon);
  }

  /// Settles with a disposition chosen at run time; over a transport that cannot
  /// do `d` it returns 405001 `not_supported` and the message stays locked.
  result<void> settle(const message& m, disposition d) {
    if (!m.lock_token)
      return make_error(errc::argument_invalid,
                        "the message has no lock token: it was not received");
    return settle(*m.lock_token, d);
  }
  result<void> settle(const lock_token& token, disposition d) {
    return settle_with(token, d, runner_.closing_token());
  }

 private:
  static constexpr bool supports(disposition d) noexcept {
    return d == disposition::complete || (d == disposition::reject && traits::can_reject) ||
           (d == disposition::abandon && traits::can_abandon);
  }

  static error unsupported(disposition d) {
    return make_error(errc::not_supported, "the transport cannot " + std::string(to_string(d)) +
                                               ": MQTT to IoT Hub can only complete (SPEC 1.6)");
  }

  result<void> settle_with(const lock_token& token, disposition d, const std::stop_token& stop) {
    if (!supports(d))
      return unsupported(d);
    return runner_.run(
        [&]() -> result<void> {
          auto& t = runner_.transport();
          switch (d) {
            case disposition::complete:
              return t.complete(token);
            case disposition::reject:
              if constexpr (traits::can_reject)
                return t.reject(token);
              break;
            case disposition::abandon:
              if constexpr (traits::can_abandon)
                return t.abandon(token);
              break;
          }
          return unsupported(d);
        },
        stop);
  }

  void report_error(const error& e) {
    client_error_handler h;
    {
      std::lock_guard<std::mutex> g(handler_mutex_);
      h = error_handler_;
    }
    if (h)
      h(e);
  }

  void start_pump_locked() {
    if (pump_.joinable())
      pump_.join();  // an exited thread (pump_done_)
    pump_done_.store(false);
    pump_ = std::jthread([this, h = handler_](std::stop_token stop) { pump(stop, h); });
  }

  void stop_pump() {
    std::jthread t;
    {
      std::lock_guard<std::mutex> g(handler_mutex_);
      t = std::move(pump_);
    }
    if (t.joinable()) {
      t.request_stop();
      t.join();
    }
  }

  void pump(const std::stop_token& stop, const message_handler& handler) {
    while (!stop.stop_requested()) {
      auto r = runner_.run(
          [&] { return runner_.transport().receive(options_.receive_timeout, stop); }, stop);
      if (stop.stop_requested())
        break;
      if (!r) {
        report_error(r.error());  // the policy gave up; connect() restarts the thread
        break;
      }
      if (!*r)
        continue;
      const message& m = **r;
      std::optional<disposition> d;
      try {
        d = handler(m);
      } catch (const std::exception& e) {
        report_error(
            make_error(errc::invalid_operation, std::string("message handler threw: ") + e.what()));
      } catch (...) {
        report_error(make_error(errc::invalid_operation, "message handler threw"));
      }
      // A throwing handler leaves the message to be redelivered: abandon where possible.
      if (!d) {
        if constexpr (!traits::can_abandon)
          continue;
        d = disposition::abandon;
      }
      if (auto s = settle_with(*m.lock_token, *d, stop); !s)
        report_error(s.error());
    }
    pump_done_.store(true);
  }

  detail::connection_runner<Transport, Policy> runner_;
  device_client_options options_;

  std::mutex handler_mutex_;
  message_handler handler_;
  client_error_handler error_handler_;
  std::jthread pump_;
  std::atomic<bool> pump_done_{true};
};

}  // namespace devicebound
