/// \file retry/controller.hpp
/// `controller`: drives one retry policy by the transition table of retry/table.hpp. This is
/// what the clients run. It includes no Boost.MSM: `msm_controller` (retry/machine.hpp) runs
/// the same table as a Boost.MSM machine, and a property test checks that the two answer every
/// event sequence alike (docs/architecture.md, "The retry machine").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "../errors.hpp"
#include "../message.hpp"
#include "classification.hpp"
#include "decision.hpp"
#include "episode.hpp"
#include "policy.hpp"
#include "random.hpp"
#include "table.hpp"

namespace devicebound::retry {

namespace detail {

/// Runs the table directly: the first row for (state, event) whose guard holds fires. The
/// guards of one (state, event) pair partition its cases, so at most one can hold.
template <class Policy, class Random>
class table_executor {
 public:
  table_executor() = default;
  table_executor(Policy p, Random r) : data_(std::move(p), std::move(r)) {}

  void dispatch(const event& e) {
    for (const row& r : transition_table) {
      if (r.source != state_ || r.on != e.kind || !data_.holds(r.when, e))
        continue;
      data_.run(r.act, e);
      if (r.target)
        state_ = *r.target;
      return;
    }
    data_.refuse(e, state_);
  }

  retry::state current() const noexcept { return state_; }
  episode<Policy, Random>& data() noexcept { return data_; }
  const episode<Policy, Random>& data() const noexcept { return data_; }

 private:
  retry::state state_ = retry::state::idle;
  episode<Policy, Random> data_;
};

}  // namespace detail

/// The public face of a retry machine, whichever executor runs its table: feed it events with
/// the current time, do what each decision says.
///
/// Sans-I/O: it never reads a clock, sleeps or starts a timer. An event not valid in the
/// current state, or a `now` earlier than the previous event's, returns a typed error and
/// changes nothing.
template <class Policy, class Random, class Executor>
class basic_controller {
 public:
  explicit basic_controller(Policy p = Policy{}, Random r = Random{})
      : exec_(std::move(p), std::move(r)) {}

  /// Begins an operation (its first attempt): idle/succeeded -> attempting.
  result<decision> start(time_point now) { return process({event_kind::start, now}); }
  /// The running attempt failed with an error of class `c`.
  result<decision> attempt_failed(error_class c, time_point now) {
    return process({event_kind::attempt_failed, now, c});
  }
  /// The running attempt failed with `e`, classified by the policy's `errors`.
  result<decision> attempt_failed(errc e, time_point now) {
    return attempt_failed(exec_.data().classify(e), now);
  }
  /// The running attempt succeeded.
  result<decision> attempt_succeeded(time_point now) {
    return process({event_kind::attempt_succeeded, now});
  }
  /// The wait asked for by `attempt_at` is over.
  result<decision> timer_fired(time_point now) { return process({event_kind::timer_fired, now}); }
  /// Forgets the episode (count, timeout) and returns to idle from any state.
  result<decision> reset(time_point now) { return process({event_kind::reset, now}); }

  /// Replaces the policy and resets, as C's SetRetryPolicy does (SPEC 8.1); re-arms exhausted.
  result<decision> set_policy(Policy p, time_point now) {
    if (last_now_ && now < *last_now_)
      return backwards(now);
    exec_.data().active_policy() = std::move(p);
    return reset(now);
  }

  /// The current state.
  retry::state state() const { return exec_.current(); }
  /// When the next attempt is due (in waiting), else nullopt.
  std::optional<time_point> next_attempt_at() const {
    if (state() != retry::state::waiting)
      return std::nullopt;
    return exec_.data().next_attempt();
  }
  /// The retry deadline of the episode, if the policy has a timeout and it is known.
  std::optional<time_point> deadline() const { return exec_.data().deadline_in(state()); }
  /// Retries begun in this episode.
  std::uint32_t retries() const noexcept { return exec_.data().retries(); }
  /// The answer to the last accepted event.
  const decision& last_decision() const noexcept { return exec_.data().last_decision(); }
  /// The policy in force.
  const Policy& active_policy() const noexcept { return exec_.data().active_policy(); }
  /// The random source (for reseeding).
  Random& random_source() noexcept { return exec_.data().random_source(); }

 private:
  result<decision> process(const event& e) {
    if (last_now_ && e.now < *last_now_)
      return backwards(e.now);
    exec_.data().begin_event();
    exec_.dispatch(e);
    if (const auto& refused = exec_.data().refusal())
      return *refused;
    last_now_ = e.now;
    return exec_.data().last_decision();
  }

  result<decision> backwards(time_point now) const {
    return make_error(errc::argument_invalid,
                      "retry: now " + std::to_string(now.time_since_epoch().count()) +
                          " ms is before the previous event at " +
                          std::to_string(last_now_->time_since_epoch().count()) + " ms");
  }

  Executor exec_;
  std::optional<time_point> last_now_;
};

/// Drives one retry policy by the table of retry/table.hpp (SPEC 8.9).
template <class Policy = policy, unit_random Random = default_random>
class controller : public basic_controller<Policy, Random, detail::table_executor<Policy, Random>> {
  using base = basic_controller<Policy, Random, detail::table_executor<Policy, Random>>;

 public:
  explicit controller(Policy p = Policy{}, Random r = Random{})
      : base(std::move(p), std::move(r)) {}
};

}  // namespace devicebound::retry
