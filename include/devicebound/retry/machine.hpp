/// \file retry/machine.hpp
/// The retry machine (SPEC 8.9) as a sans-I/O Boost.MSM machine, and `controller`, which
/// drives it. The only retry header that includes Boost.MSM.
#pragma once

#include <algorithm>
#include <boost/mpl/vector.hpp>
#include <boost/msm/back/state_machine.hpp>
#include <boost/msm/front/functor_row.hpp>
#include <boost/msm/front/state_machine_def.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../errors.hpp"
#include "../message.hpp"
#include "classification.hpp"
#include "decision.hpp"
#include "policy.hpp"
#include "random.hpp"

namespace devicebound::retry {

namespace detail {

namespace msmf = boost::msm::front;
using msmf::none;
using msmf::Row;

// Events. Each carries the caller's `now`; the machine never reads a clock.
struct start {
  time_point now;
  static constexpr std::string_view name = "start";
};
struct attempt_failed {
  error_class cls;
  time_point now;
  static constexpr std::string_view name = "attempt_failed";
};
struct attempt_succeeded {
  time_point now;
  static constexpr std::string_view name = "attempt_succeeded";
};
struct timer_fired {
  time_point now;
  static constexpr std::string_view name = "timer_fired";
};
struct reset {
  time_point now;
  static constexpr std::string_view name = "reset";
};

template <class Policy, class Random>
struct machine_def : msmf::state_machine_def<machine_def<Policy, Random>> {
  typedef int no_exception_thrown;
  typedef int no_message_queue;

  // States.
  struct idle : msmf::state<> {
    static constexpr retry::state id = retry::state::idle;
  };
  struct attempting : msmf::state<> {
    static constexpr retry::state id = retry::state::attempting;
  };
  struct waiting : msmf::state<> {
    static constexpr retry::state id = retry::state::waiting;
  };
  struct succeeded : msmf::state<> {
    static constexpr retry::state id = retry::state::succeeded;
  };
  struct exhausted : msmf::state<> {
    static constexpr retry::state id = retry::state::exhausted;
  };
  struct fatal : msmf::state<> {
    static constexpr retry::state id = retry::state::fatal;
  };
  using initial_state = idle;

  machine_def() = default;
  machine_def(Policy p, Random r) : policy_(std::move(p)), random_(std::move(r)) {}

  // Guards. The four attempt_failed guards partition the plan, so exactly one row fires and
  // the order MSM tries them in does not matter; likewise the three timer_fired guards.
  struct plans_attempt_now {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      return f.plan(e).what == verdict::attempt_now;
    }
  };
  struct plans_attempt_at {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      return f.plan(e).what == verdict::attempt_at;
    }
  };
  struct plans_give_up {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      const decision d = f.plan(e);
      return d.what == verdict::give_up && d.reason != stop_reason::fatal_error;
    }
  };
  struct plans_fatal {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      return f.plan(e).reason == stop_reason::fatal_error;
    }
  };
  struct is_due {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      return e.now >= f.next_attempt_ && !f.past_deadline(e.now);
    }
  };
  struct is_early {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      return e.now < f.next_attempt_ && !f.past_deadline(e.now);
    }
  };
  struct is_past_deadline {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      return f.past_deadline(e.now);
    }
  };

  // Actions. Each one sets `decision_`, the answer returned to the caller.
  struct begin_operation {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.operation_start_ = f.attempt_start_ = e.now;
      f.decision_ = decision::attempt(e.now);
    }
  };
  struct record_success {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      if (f.policy_.opts.reset_on_success)
        f.clear_episode();  // SPEC 8.1 step 7
      f.decision_ = decision::nothing(e.now);
    }
  };
  struct retry_now {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.note_failure(e.now);
      f.begin_retry(e.now);
    }
  };
  struct schedule_retry {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.note_failure(e.now);
      f.next_attempt_ = f.plan(e).at;
      f.decision_ = f.plan(e);
    }
  };
  struct stop {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.note_failure(e.now);
      f.decision_ = f.plan(e);
    }
  };
  struct retry_when_due {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.begin_retry(e.now);
    }
  };
  struct refuse_early_timer {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.error_ =
          make_error(errc::invalid_operation,
                     "retry: timer_fired at " + std::to_string(e.now.time_since_epoch().count()) +
                         " ms is before next_attempt_at " +
                         std::to_string(f.next_attempt_.time_since_epoch().count()) + " ms");
    }
  };
  struct stop_late {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.decision_ = decision::stop(stop_reason::timeout, e.now);
    }
  };
  struct clear {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.clear_episode();
      f.decision_ = decision::nothing(e.now);
    }
  };

  // The retry machine of SPEC 8.9. One row per transition; docs/retry.md holds the same table.
  // clang-format off
  struct transition_table : boost::mpl::vector<
    //   Source      Event              Target      Action              Guard
    Row< idle,       start,             attempting, begin_operation,    none              >,
    Row< succeeded,  start,             attempting, begin_operation,    none              >,
    Row< attempting, attempt_succeeded, succeeded,  record_success,     none              >,
    Row< attempting, attempt_failed,    attempting, retry_now,          plans_attempt_now >,
    Row< attempting, attempt_failed,    waiting,    schedule_retry,     plans_attempt_at  >,
    Row< attempting, attempt_failed,    exhausted,  stop,               plans_give_up     >,
    Row< attempting, attempt_failed,    fatal,      stop,               plans_fatal       >,
    Row< waiting,    timer_fired,       attempting, retry_when_due,     is_due            >,
    Row< waiting,    timer_fired,       none,       refuse_early_timer, is_early          >,
    Row< waiting,    timer_fired,       exhausted,  stop_late,          is_past_deadline  >,
    Row< idle,       reset,             idle,       clear,              none              >,
    Row< attempting, reset,             idle,       clear,              none              >,
    Row< waiting,    reset,             idle,       clear,              none              >,
    Row< succeeded,  reset,             idle,       clear,              none              >,
    Row< exhausted,  reset,             idle,       clear,              none              >,
    Row< fatal,      reset,             idle,       clear,              none              >
  > {};
  // clang-format on

  /// The public state for an MSM state id.
  template <class Fsm>
  static retry::state state_of(int id) {
    using stt = typename Fsm::stt;
    namespace back = boost::msm::back;
    if (id == back::get_state_id<stt, attempting>::value)
      return attempting::id;
    if (id == back::get_state_id<stt, waiting>::value)
      return waiting::id;
    if (id == back::get_state_id<stt, succeeded>::value)
      return succeeded::id;
    if (id == back::get_state_id<stt, exhausted>::value)
      return exhausted::id;
    if (id == back::get_state_id<stt, fatal>::value)
      return fatal::id;
    return idle::id;
  }

  /// Any event without a row: a typed error; the state does not change.
  template <class Fsm, class Event>
  void no_transition(const Event&, Fsm&, int id) {
    error_ = make_error(errc::invalid_operation, "retry: " + std::string(Event::name) +
                                                     " is not valid in state " +
                                                     std::string(to_string(state_of<Fsm>(id))));
  }

  // --- what the rows call ---

  /// The decision for a failure, computed once per event (a guard asks first, the action
  /// reuses it), so the random source is drawn at most once.
  const decision& plan(const attempt_failed& e) {
    if (!plan_)
      plan_ = compute_plan(e);
    return *plan_;
  }

  decision compute_plan(const attempt_failed& e) {
    if (e.cls == error_class::fatal)
      return decision::stop(stop_reason::fatal_error, e.now);
    const options& o = policy_.opts;
    if (o.max_retries != 0 && retries_ >= o.max_retries)
      return decision::stop(stop_reason::retries_exhausted, e.now);
    const std::optional<duration> wait = policy_.delay(retries_, e.cls, random_);
    if (!wait)
      return decision::stop(stop_reason::no_retry, e.now);
    const time_point base = o.wait_from == wait_origin::attempt_start ? attempt_start_ : e.now;
    time_point at = std::max(e.now, saturating_add(base, *wait));
    // C# v1: a non-zero wait keeps attempt starts min_spacing apart, counting the failed
    // attempt's own duration (SPEC 8.4).
    if (*wait > duration::zero())
      at = std::max(at, saturating_add(attempt_start_, o.min_spacing));
    if (const auto dl = deadline_for(e.now); dl && at >= *dl)
      return decision::stop(stop_reason::timeout, e.now);  // SPEC 8.1 step 4
    return at == e.now ? decision::attempt(e.now) : decision::wait_until(at);
  }

  /// The retry deadline, if the policy has a timeout, for a failure at `failure_now`.
  std::optional<time_point> deadline_for(time_point failure_now) const {
    const options& o = policy_.opts;
    if (o.timeout <= duration::zero())
      return std::nullopt;  // SPEC 8.1: 0 = forever
    const time_point origin = o.timeout_from == timeout_origin::first_retry
                                  ? first_failure_.value_or(failure_now)
                                  : operation_start_;
    return saturating_add(origin, o.timeout);
  }

  bool past_deadline(time_point now) const {
    const auto dl = deadline_for(now);
    return dl && now >= *dl;
  }

  void note_failure(time_point now) {
    if (!first_failure_)
      first_failure_ = now;  // SPEC 8.1 step 2: C stamps the first retry
  }

  void begin_retry(time_point now) {
    ++retries_;
    attempt_start_ = now;
    decision_ = decision::attempt(now);
  }

  void clear_episode() {
    retries_ = 0;
    first_failure_.reset();
  }

  // --- data ---
  Policy policy_{};
  Random random_{};
  std::uint32_t retries_ = 0;                ///< retries begun in this episode
  time_point operation_start_{};             ///< last `start`
  time_point attempt_start_{};               ///< start of the running or last attempt
  time_point next_attempt_{};                ///< valid in waiting
  std::optional<time_point> first_failure_;  ///< first failure of this episode
  std::optional<decision> plan_;             ///< memo for the event in flight
  decision decision_{};                      ///< answer to the last accepted event
  std::optional<devicebound::error> error_;  ///< set when the event in flight is refused
};

template <class Policy, class Random>
using machine = boost::msm::back::state_machine<machine_def<Policy, Random>>;

}  // namespace detail

/// Drives one retry policy: feed it events with the current time, do what each decision says.
///
/// Sans-I/O: it never reads a clock, sleeps or starts a timer. An event not valid in the
/// current state, or a `now` earlier than the previous event's, returns a typed error and
/// changes nothing.
template <class Policy = policy, unit_random Random = default_random>
class controller {
 public:
  explicit controller(Policy p = Policy{}, Random r = Random{}) : sm_(std::move(p), std::move(r)) {
    sm_.start();
  }
  // Boost.MSM's state_machine has no real move constructor (its forwarding
  // constructor would take the rvalue machine as a constructor argument and
  // restart it): copy the machine, state and data, instead.
  controller(const controller& o) : sm_(o.sm_), last_now_(o.last_now_) {}
  controller(controller&& o) : sm_(std::as_const(o.sm_)), last_now_(o.last_now_) {}
  controller& operator=(const controller& o) {
    sm_ = o.sm_;
    last_now_ = o.last_now_;
    return *this;
  }
  controller& operator=(controller&& o) {
    sm_ = std::as_const(o.sm_);
    last_now_ = o.last_now_;
    return *this;
  }

  /// Begins an operation (its first attempt): idle/succeeded -> attempting.
  result<decision> start(time_point now) { return process(detail::start{now}); }
  /// The running attempt failed with an error of class `c`.
  result<decision> attempt_failed(error_class c, time_point now) {
    return process(detail::attempt_failed{c, now});
  }
  /// The running attempt failed with `e`, classified by the policy's `errors`.
  result<decision> attempt_failed(errc e, time_point now) {
    return attempt_failed(sm_.policy_.errors(e), now);
  }
  /// The running attempt succeeded.
  result<decision> attempt_succeeded(time_point now) {
    return process(detail::attempt_succeeded{now});
  }
  /// The wait asked for by `attempt_at` is over.
  result<decision> timer_fired(time_point now) { return process(detail::timer_fired{now}); }
  /// Forgets the episode (count, timeout) and returns to idle from any state.
  result<decision> reset(time_point now) { return process(detail::reset{now}); }

  /// Replaces the policy and resets, as C's SetRetryPolicy does (SPEC 8.1); re-arms exhausted.
  result<decision> set_policy(Policy p, time_point now) {
    if (last_now_ && now < *last_now_)
      return backwards(now);
    sm_.policy_ = std::move(p);
    return reset(now);
  }

  /// The current state.
  retry::state state() const {
    return sm_.template state_of<detail::machine<Policy, Random>>(sm_.current_state()[0]);
  }
  /// When the next attempt is due (in waiting), else nullopt.
  std::optional<time_point> next_attempt_at() const {
    if (state() != retry::state::waiting)
      return std::nullopt;
    return sm_.next_attempt_;
  }
  /// The retry deadline of the episode, if the policy has a timeout and it is known.
  std::optional<time_point> deadline() const {
    if (state() == retry::state::idle)
      return std::nullopt;
    if (sm_.policy_.opts.timeout_from == timeout_origin::first_retry && !sm_.first_failure_)
      return std::nullopt;
    return sm_.deadline_for(sm_.attempt_start_);
  }
  /// Retries begun in this episode.
  std::uint32_t retries() const noexcept { return sm_.retries_; }
  /// The answer to the last accepted event.
  const decision& last_decision() const noexcept { return sm_.decision_; }
  /// The policy in force.
  const Policy& active_policy() const noexcept { return sm_.policy_; }
  /// The random source (for reseeding).
  Random& random_source() noexcept { return sm_.random_; }

 private:
  template <class Event>
  result<decision> process(const Event& e) {
    if (last_now_ && e.now < *last_now_)
      return backwards(e.now);
    sm_.plan_.reset();
    sm_.error_.reset();
    sm_.process_event(e);
    if (sm_.error_)
      return *sm_.error_;
    last_now_ = e.now;
    return sm_.decision_;
  }

  result<decision> backwards(time_point now) const {
    return make_error(errc::argument_invalid,
                      "retry: now " + std::to_string(now.time_since_epoch().count()) +
                          " ms is before the previous event at " +
                          std::to_string(last_now_->time_since_epoch().count()) + " ms");
  }

  detail::machine<Policy, Random> sm_;
  std::optional<time_point> last_now_;
};

}  // namespace devicebound::retry
