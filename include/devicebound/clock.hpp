/// \file clock.hpp
/// Clocks for transports and clients: the `clock` concept, `system_clock` (real
/// time, real waits) and `manual_clock` (tests: time moves only when told).
///
/// The core never reads a clock (DESIGN principle 1): transports and clients do,
/// and they wait through the clock so that a test's `manual_clock` controls every
/// timeout, lock expiry and retry wait without sleeping.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "message.hpp"

namespace devicebound {

/// A source of UTC time that can also wait.
///
/// `c.wait_until(lock, cv, deadline)` blocks (with `lock` held on entry and on
/// return, released while blocked) until `cv` is notified or the clock reaches
/// `deadline`; it may return early (spurious wakeup), so callers re-check their
/// condition. A clock is a cheap handle: copies share the same time.
template <class C>
concept clock = std::copy_constructible<C> &&
    requires(const C& c, std::unique_lock<std::mutex>& lock, std::condition_variable_any& cv,
             time_point deadline) {
  { c.now() } -> std::same_as<time_point>;
  c.wait_until(lock, cv, deadline);
};

/// Waits on `cv` until `pred()` holds or `c` reaches `deadline`; returns `pred()`.
template <clock C, class Pred>
bool wait_until(const C& c, std::unique_lock<std::mutex>& lock, std::condition_variable_any& cv,
                time_point deadline, Pred pred) {
  while (!pred()) {
    if (c.now() >= deadline)
      return pred();
    c.wait_until(lock, cv, deadline);
  }
  return true;
}

/// Real UTC time (`std::chrono::system_clock` at millisecond resolution) and real waits.
class system_clock {
 public:
  time_point now() const {
    return std::chrono::time_point_cast<duration>(std::chrono::system_clock::now());
  }

  /// Waits for at most `deadline - now()`, measured on the steady clock so that a
  /// stepped wall clock cannot stretch a wait; callers re-check the wall clock.
  void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable_any& cv,
                  time_point deadline) const {
    if (deadline == time_point::max()) {
      cv.wait(lock);
      return;
    }
    const time_point t = now();
    if (deadline <= t)
      return;
    cv.wait_for(lock, deadline - t);
  }
};

/// Test time: starts at a fixed instant and moves only when `advance` or
/// `advance_to` is called. Thread-safe. Waiting on it neither spins nor sleeps:
/// a waiter blocks on its condition variable, and advancing the clock notifies
/// every waiter whose deadline has come. Copies share one time.
///
/// Tests can also see who is waiting (`waiting_deadlines`, `await_waiter`), so
/// they advance time exactly when a client has started waiting for it.
class manual_clock {
 public:
  /// 2026-01-01T00:00:00Z.
  static constexpr time_point default_start{
      std::chrono::sys_days{std::chrono::year{2026} / 1 / 1}.time_since_epoch()};

  explicit manual_clock(time_point start = default_start)
      : state_(std::make_shared<state>(start)) {}

  time_point now() const {
    std::lock_guard<std::mutex> g(state_->mutex);
    return state_->now;
  }

  /// Moves time forward by `d` (negative: ignored) and wakes the waiters that are due.
  void advance(duration d) {
    std::lock_guard<std::mutex> g(state_->mutex);
    set_locked(saturating_add(state_->now, d));
  }

  /// Moves time forward to `t`; an earlier `t` is ignored (time never goes backwards).
  void advance_to(time_point t) {
    std::lock_guard<std::mutex> g(state_->mutex);
    set_locked(std::max(t, state_->now));
  }

  void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable_any& cv,
                  time_point deadline) const {
    state& s = *state_;
    std::unique_lock<std::mutex> mine(s.mutex);
    if (s.now >= deadline)
      return;
    waiter w{&cv, deadline};
    s.waiters.push_back(&w);
    s.changed.notify_all();
    // Wait with both locks held as one: advance() needs `mine` to move time, so it
    // cannot notify between our check above and the moment `cv` holds us (no lost
    // wakeup). The lock order is always the caller's lock, then the clock's.
    both_locks both{lock, mine};
    cv.wait(both);
    s.waiters.erase(std::find(s.waiters.begin(), s.waiters.end(), &w));
    s.changed.notify_all();
  }

  // --- for tests ---------------------------------------------------------------

  /// Deadlines of the threads waiting on this clock right now, earliest first.
  std::vector<time_point> waiting_deadlines() const {
    std::lock_guard<std::mutex> g(state_->mutex);
    return deadlines_locked();
  }

  /// Blocks (at most `real_timeout` of real time) until some thread waits on this
  /// clock with exactly `deadline`; returns whether one did.
  bool await_waiter(time_point deadline, std::chrono::steady_clock::duration real_timeout =
                                             std::chrono::seconds(10)) const {
    return await_waiters(
        [deadline](const std::vector<time_point>& ds) {
          return std::find(ds.begin(), ds.end(), deadline) != ds.end();
        },
        real_timeout);
  }

  /// Blocks (at most `real_timeout`) until `pred(waiting_deadlines())` holds.
  template <class Pred>
  bool await_waiters(Pred pred, std::chrono::steady_clock::duration real_timeout =
                                    std::chrono::seconds(10)) const {
    std::unique_lock<std::mutex> g(state_->mutex);
    return state_->changed.wait_for(g, real_timeout, [&] { return pred(deadlines_locked()); });
  }

 private:
  struct waiter {
    std::condition_variable_any* cv;
    time_point deadline;
  };
  struct state {
    explicit state(time_point t) : now(t) {}
    std::mutex mutex;
    time_point now;
    std::vector<waiter*> waiters;
    std::condition_variable changed;  ///< waiter set or time changed (for tests)
  };
  /// Locks the caller's lock, then the clock's; unlocks in reverse.
  struct both_locks {
    std::unique_lock<std::mutex>& outer;
    std::unique_lock<std::mutex>& inner;
    void lock() {
      outer.lock();
      inner.lock();
    }
    void unlock() {
      inner.unlock();
      outer.unlock();
    }
  };

  void set_locked(time_point t) {
    state& s = *state_;
    s.now = t;
    for (waiter* w : s.waiters)
      if (w->deadline <= t)
        w->cv->notify_all();
    s.changed.notify_all();
  }

  std::vector<time_point> deadlines_locked() const {
    std::vector<time_point> out;
    out.reserve(state_->waiters.size());
    for (const waiter* w : state_->waiters)
      out.push_back(w->deadline);
    std::sort(out.begin(), out.end());
    return out;
  }

  std::shared_ptr<state> state_;
};

static_assert(clock<system_clock>);
static_assert(clock<manual_clock>);

}  // namespace devicebound
