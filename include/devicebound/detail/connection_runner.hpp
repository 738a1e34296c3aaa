/// \file detail/connection_runner.hpp
/// The connection plumbing both clients share: a transport, the retry policy,
/// and the connection state machine around them. Internal: named only by the
/// clients.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "../clock.hpp"
#include "../connection_status.hpp"
#include "../errors.hpp"
#include "../message.hpp"
#include "../retry.hpp"

namespace devicebound {

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

  /// Runs `op(left, stop)` under the policy for at most `timeout`: each attempt
  /// gets the time that is left of it, and disconnect() stops it.
  template <class Op>
  auto run_for(duration timeout, Op&& op) {
    const time_point deadline = saturating_add(clock_.now(), timeout);
    const auto stop = closing_token();
    return run(
        [&] {
          const time_point now = clock_.now();
          return op(deadline > now ? deadline - now : duration::zero(), stop);
        },
        stop, deadline);
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

}  // namespace devicebound
