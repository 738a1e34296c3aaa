/// \file transport/faulty.hpp
/// A fault-injecting decorator over any device or service transport, for tests
/// of retry and reconnection. Faults are planned on a shared `faulty::injector`
/// that the test keeps while the decorated transport lives inside a client:
///
/// - `fail_next(n, code, ops)`: the next `n` matching calls fail with `code`
///   without reaching the inner transport;
/// - `drop_next(n, ops, where)`: the next `n` matching calls are lost with the
///   connection: the request never arrives (`drop_point::request`) or its answer
///   never comes back (`drop_point::response`: a received message vanishes while
///   locked at the hub, a completion happens but is not confirmed). The call
///   fails with `not_connected` and the connection is closed;
/// - `disconnect()`: every connection decorated with this injector is closed now
///   (`is_open()` false until reopened; blocked receives return `not_connected`);
/// - `set_offline(true)`: every `open()` fails with `not_connected` until `false`;
/// - `set_delay(d, ops)`: matching calls first wait `d` on the transport's clock.
///
/// The injector records when each call was made (on the transport's clock), so a
/// test can assert the exact times of a retry schedule, and wait for calls.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../clock.hpp"
#include "../errors.hpp"
#include "../feedback_batch.hpp"
#include "../message.hpp"
#include "../settlement.hpp"
#include "../transport.hpp"

namespace devicebound::faulty {

/// The operations of both transport concepts.
enum class op : std::uint8_t {
  open,
  receive,
  complete,
  reject,
  abandon,
  send,
  purge,
  queue_depth,
  receive_feedback,
  complete_feedback,
  abandon_feedback,
};
inline constexpr std::size_t op_count = 11;

constexpr std::string_view to_string(op o) noexcept {
  switch (o) {
    case op::open:
      return "open";
    case op::receive:
      return "receive";
    case op::complete:
      return "complete";
    case op::reject:
      return "reject";
    case op::abandon:
      return "abandon";
    case op::send:
      return "send";
    case op::purge:
      return "purge";
    case op::queue_depth:
      return "queue_depth";
    case op::receive_feedback:
      return "receive_feedback";
    case op::complete_feedback:
      return "complete_feedback";
    case op::abandon_feedback:
      return "abandon_feedback";
  }
  return "open";
}

/// Parses an operation's `to_string` spelling exactly (`queue_depth`); nullopt otherwise.
constexpr std::optional<op> parse_op(std::string_view s) noexcept {
  for (std::size_t i = 0; i < op_count; ++i)
    if (s == to_string(static_cast<op>(i)))
      return static_cast<op>(i);
  return std::nullopt;
}

/// A set of operations.
class ops {
 public:
  constexpr ops() = default;
  constexpr ops(op o) : bits_(bit(o)) {}  // NOLINT(implicit)
  constexpr ops(std::initializer_list<op> l) {
    for (op o : l)
      bits_ |= bit(o);
  }
  /// Every operation.
  static constexpr ops all() {
    ops s;
    s.bits_ = (1u << op_count) - 1;
    return s;
  }
  /// complete, reject and abandon.
  static constexpr ops settlements() { return {op::complete, op::reject, op::abandon}; }
  constexpr bool contains(op o) const noexcept { return (bits_ & bit(o)) != 0; }
  friend constexpr ops operator|(ops a, ops b) noexcept {
    ops s;
    s.bits_ = a.bits_ | b.bits_;
    return s;
  }

 private:
  static constexpr std::uint32_t bit(op o) noexcept { return 1u << static_cast<std::uint32_t>(o); }
  std::uint32_t bits_ = 0;
};

/// Where a dropped call is lost.
enum class drop_point : std::uint8_t {
  request,   ///< the inner transport is never called
  response,  ///< the inner transport does the work; its answer is lost
};

/// `request` or `response`.
constexpr std::string_view to_string(drop_point p) noexcept {
  return p == drop_point::request ? "request" : "response";
}

/// Parses `request` or `response` (exact spelling); nullopt otherwise.
constexpr std::optional<drop_point> parse_drop_point(std::string_view s) noexcept {
  for (auto v : {drop_point::request, drop_point::response})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// The fault plan and the call log, shared by the test and the decorators.
class injector {
 public:
  /// The next `n` calls of `which` fail with `code` (not reaching the inner transport).
  void fail_next(std::uint32_t n, errc code, ops which = ops::all()) {
    std::lock_guard<std::mutex> g(mutex_);
    plans_.push_back({kind::fail, n, code, which, drop_point::request});
  }

  /// The next `n` calls of `which` are lost with the connection (see the file comment).
  void drop_next(std::uint32_t n, ops which = ops::all(), drop_point where = drop_point::response) {
    std::lock_guard<std::mutex> g(mutex_);
    plans_.push_back({kind::drop, n, errc::not_connected, which, where});
  }

  /// Calls of `which` first wait `d` on the transport's clock (0: no delay).
  void set_delay(duration d, ops which = ops::all()) {
    std::lock_guard<std::mutex> g(mutex_);
    delay_ = d;
    delayed_ = which;
  }

  /// While offline, every `open()` fails with `not_connected`.
  void set_offline(bool offline) {
    std::lock_guard<std::mutex> g(mutex_);
    offline_ = offline;
  }

  /// Closes every connection decorated with this injector, as a network loss would.
  void disconnect() {
    std::lock_guard<std::mutex> g(mutex_);
    for (auto& [id, close] : closers_)
      close();
  }

  /// Forgets every planned fault, the delay and the offline flag (not the log).
  void clear() {
    std::lock_guard<std::mutex> g(mutex_);
    plans_.clear();
    delay_ = duration::zero();
    offline_ = false;
  }

  /// Calls of `o` so far (including failed ones).
  std::size_t calls(op o) const {
    std::lock_guard<std::mutex> g(mutex_);
    return log_[index(o)].size();
  }

  /// When each call of `o` was made, on the transport's clock, oldest first.
  std::vector<time_point> call_times(op o) const {
    std::lock_guard<std::mutex> g(mutex_);
    return log_[index(o)];
  }

  /// Blocks (at most `real_timeout` of real time) until `o` was called `n` times.
  bool await_calls(
      op o, std::size_t n,
      std::chrono::steady_clock::duration real_timeout = std::chrono::seconds(10)) const {
    std::unique_lock<std::mutex> g(mutex_);
    return called_.wait_for(g, real_timeout, [&] { return log_[index(o)].size() >= n; });
  }

 private:
  template <class Inner>
  friend class transport;

  enum class kind : std::uint8_t { fail, drop };
  struct plan {
    kind what;
    std::uint32_t remaining;
    errc code;
    ops which;
    drop_point where;
  };
  /// What a call must suffer.
  struct verdict {
    std::optional<plan> fault;  ///< the plan entry that applies (its `remaining` already taken)
    duration delay{};
  };

  static std::size_t index(op o) noexcept { return static_cast<std::size_t>(o); }

  verdict on_call(op o, time_point now) {
    std::lock_guard<std::mutex> g(mutex_);
    log_[index(o)].push_back(now);
    called_.notify_all();
    verdict v;
    if (delayed_.contains(o))
      v.delay = delay_;
    if (o == op::open && offline_) {
      v.fault = plan{kind::fail, 0, errc::not_connected, op::open, drop_point::request};
      return v;
    }
    for (auto it = plans_.begin(); it != plans_.end(); ++it) {
      if (!it->which.contains(o))
        continue;
      v.fault = *it;
      if (--it->remaining == 0)
        plans_.erase(it);
      break;
    }
    return v;
  }

  std::uint64_t add_closer(std::function<void()> close) {
    std::lock_guard<std::mutex> g(mutex_);
    closers_.emplace_back(++last_closer_, std::move(close));
    return last_closer_;
  }
  void remove_closer(std::uint64_t id) {
    std::lock_guard<std::mutex> g(mutex_);
    std::erase_if(closers_, [id](const auto& c) { return c.first == id; });
  }

  mutable std::mutex mutex_;
  mutable std::condition_variable called_;
  std::vector<plan> plans_;
  duration delay_{};
  ops delayed_{};
  bool offline_ = false;
  std::array<std::vector<time_point>, op_count> log_{};
  std::vector<std::pair<std::uint64_t, std::function<void()>>> closers_;
  std::uint64_t last_closer_ = 0;
};

/// The decorator: satisfies `device_transport` when `Inner` does, and
/// `service_transport` when `Inner` does, with `Inner`'s capabilities.
template <class Inner>
class transport {
 public:
  using clock_type = typename Inner::clock_type;
  static constexpr bool can_reject = transport_traits<Inner>::can_reject;
  static constexpr bool can_abandon = transport_traits<Inner>::can_abandon;
  static constexpr bool settles_in_order = transport_traits<Inner>::settles_in_order;
  static constexpr bool can_purge = transport_traits<Inner>::can_purge;
  static constexpr bool can_query_queue_depth = transport_traits<Inner>::can_query_queue_depth;

  transport(Inner inner, std::shared_ptr<injector> faults)
      : inner_(std::make_unique<Inner>(std::move(inner))),
        faults_(std::move(faults)),
        state_(std::make_unique<wait_state>()) {
    closer_ = faults_->add_closer([p = inner_.get()] { p->close(); });
  }
  transport(transport&& o) noexcept
      : inner_(std::move(o.inner_)),
        faults_(std::move(o.faults_)),
        state_(std::move(o.state_)),
        closer_(std::exchange(o.closer_, 0)) {}
  transport& operator=(transport&&) = delete;
  transport(const transport&) = delete;
  ~transport() {
    if (faults_ && closer_ != 0)
      faults_->remove_closer(closer_);
  }

  Inner& inner() noexcept { return *inner_; }
  const std::shared_ptr<injector>& faults() const noexcept { return faults_; }
  clock_type clock() const { return inner_->clock(); }

  // --- connection -----------------------------------------------------------------

  result<void> open() {
    return call(op::open, [&] { return inner_->open(); });
  }
  void close() { inner_->close(); }
  bool is_open() const { return inner_->is_open(); }

  // --- device side ----------------------------------------------------------------

  std::string_view device_id() const requires device_transport<Inner> {
    return inner_->device_id();
  }
  result<std::optional<message>> receive(duration timeout, std::stop_token stop = {}) requires
      device_transport<Inner> {
    return call(op::receive, [&] { return inner_->receive(timeout, stop); });
  }
  result<void> complete(const lock_token& token) requires device_transport<Inner> {
    return call(op::complete, [&] { return inner_->complete(token); });
  }
  result<void> reject(const lock_token& token) requires(
      device_transport<Inner>&& transport_traits<Inner>::can_reject) {
    return call(op::reject, [&] { return inner_->reject(token); });
  }
  result<void> abandon(const lock_token& token) requires(
      device_transport<Inner>&& transport_traits<Inner>::can_abandon) {
    return call(op::abandon, [&] { return inner_->abandon(token); });
  }

  // --- service side ---------------------------------------------------------------

  result<enqueue_receipt> send(std::string_view device_id,
                               const message& msg) requires service_transport<Inner> {
    return call(op::send, [&] { return inner_->send(device_id, msg); });
  }
  result<std::size_t> purge(std::string_view device_id) requires(
      service_transport<Inner>&& transport_traits<Inner>::can_purge) {
    return call(op::purge, [&] { return inner_->purge(device_id); });
  }
  result<std::size_t> queue_depth(std::string_view device_id) requires(
      service_transport<Inner>&& transport_traits<Inner>::can_query_queue_depth) {
    return call(op::queue_depth, [&] { return inner_->queue_depth(device_id); });
  }
  result<std::optional<feedback_batch>> receive_feedback(
      duration timeout, std::stop_token stop = {}) requires service_transport<Inner> {
    return call(op::receive_feedback, [&] { return inner_->receive_feedback(timeout, stop); });
  }
  result<void> complete_feedback(const lock_token& token) requires service_transport<Inner> {
    return call(op::complete_feedback, [&] { return inner_->complete_feedback(token); });
  }
  result<void> abandon_feedback(const lock_token& token) requires service_transport<Inner> {
    return call(op::abandon_feedback, [&] { return inner_->abandon_feedback(token); });
  }

 private:
  struct wait_state {
    std::mutex mutex;
    std::condition_variable_any cv;
  };

  static error lost(op o) {
    return make_error(errc::not_connected,
                      "connection lost during " + std::string(to_string(o)) + " (injected fault)");
  }

  template <class F>
  auto call(op o, F&& f) -> decltype(f()) {
    using R = decltype(f());
    const auto c = inner_->clock();
    const auto v = faults_->on_call(o, c.now());
    if (v.delay > duration::zero()) {
      std::unique_lock<std::mutex> lock(state_->mutex);
      const time_point until = saturating_add(c.now(), v.delay);
      devicebound::wait_until(c, lock, state_->cv, until, [] { return false; });
    }
    if (!v.fault)
      return f();
    if (v.fault->what == injector::kind::fail) {
      return R(make_error(v.fault->code, std::string(to_string(v.fault->code)) + " during " +
                                             std::string(to_string(o)) + " (injected fault)"));
    }
    if (v.fault->where == drop_point::response)
      (void)f();
    inner_->close();
    return R(lost(o));
  }

  std::unique_ptr<Inner> inner_;  ///< on the heap: the injector's closer points at it
  std::shared_ptr<injector> faults_;
  std::unique_ptr<wait_state> state_;
  std::uint64_t closer_ = 0;
};

}  // namespace devicebound::faulty
