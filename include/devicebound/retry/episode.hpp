/// \file retry/episode.hpp
/// What the retry machine's guards and actions (retry/table.hpp) read and write: the policy,
/// the random source and the running episode (retries begun, first failure, deadline, next
/// attempt). Both executors of the table — `controller` (retry/controller.hpp) and the
/// Boost.MSM machine (retry/machine.hpp) — call these same functions, so the two can differ
/// only in how they pick a row. Sans-I/O: time comes in with each event.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "../errors.hpp"
#include "../message.hpp"
#include "classification.hpp"
#include "decision.hpp"
#include "policy.hpp"
#include "random.hpp"
#include "table.hpp"

namespace devicebound::retry {

template <class Policy, class Random>
class episode {
 public:
  episode() = default;
  episode(Policy p, Random r) : policy_(std::move(p)), random_(std::move(r)) {}

  /// Forgets the answer and the refusal of the previous event (call before each event).
  void begin_event() {
    plan_.reset();
    error_.reset();
  }

  /// Whether guard `g` holds for `e`.
  bool holds(retry::guard g, const event& e) {
    switch (g) {
      case guard::none:
        return true;
      case guard::plans_attempt_now:
        return plan(e).what == verdict::attempt_now;
      case guard::plans_attempt_at:
        return plan(e).what == verdict::attempt_at;
      case guard::plans_give_up: {
        const decision d = plan(e);
        return d.what == verdict::give_up && d.reason != stop_reason::fatal_error;
      }
      case guard::plans_fatal:
        return plan(e).reason == stop_reason::fatal_error;
      case guard::is_due:
        return e.now >= next_attempt_ && !past_deadline(e.now);
      case guard::is_early:
        return e.now < next_attempt_ && !past_deadline(e.now);
      case guard::is_past_deadline:
        return past_deadline(e.now);
    }
    return false;
  }

  /// Runs action `a` for `e`: sets the answer, or refuses the event (`refusal()`).
  void run(retry::action a, const event& e) {
    switch (a) {
      case action::begin_operation:
        operation_start_ = attempt_start_ = e.now;
        decision_ = decision::attempt(e.now);
        return;
      case action::record_success:
        if (policy_.opts.reset_on_success)
          clear_episode();  // SPEC 8.1 step 7
        decision_ = decision::nothing(e.now);
        return;
      case action::retry_now:
        note_failure(e.now);
        begin_retry(e.now);
        return;
      case action::schedule_retry:
        note_failure(e.now);
        next_attempt_ = plan(e).at;
        decision_ = plan(e);
        return;
      case action::stop:
        note_failure(e.now);
        decision_ = plan(e);
        return;
      case action::retry_when_due:
        begin_retry(e.now);
        return;
      case action::refuse_early_timer:
        error_ =
            make_error(errc::invalid_operation,
                       "retry: timer_fired at " + std::to_string(e.now.time_since_epoch().count()) +
                           " ms is before next_attempt_at " +
                           std::to_string(next_attempt_.time_since_epoch().count()) + " ms");
        return;
      case action::stop_late:
        decision_ = decision::stop(stop_reason::timeout, e.now);
        return;
      case action::clear:
        clear_episode();
        decision_ = decision::nothing(e.now);
        return;
    }
  }

  /// Refuses `e` because no row of the table takes it in state `s`.
  void refuse(const event& e, state s) {
    error_ = make_error(errc::invalid_operation, "retry: " + std::string(to_string(e.kind)) +
                                                     " is not valid in state " +
                                                     std::string(to_string(s)));
  }

  /// Set when the event in flight was refused.
  const std::optional<devicebound::error>& refusal() const noexcept { return error_; }
  /// The answer to the last accepted event.
  const decision& last_decision() const noexcept { return decision_; }

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

  /// The deadline as the controller reports it, given the state it is in.
  std::optional<time_point> deadline_in(state s) const {
    if (s == state::idle)
      return std::nullopt;
    if (policy_.opts.timeout_from == timeout_origin::first_retry && !first_failure_)
      return std::nullopt;
    return deadline_for(attempt_start_);
  }

  time_point next_attempt() const noexcept { return next_attempt_; }
  std::uint32_t retries() const noexcept { return retries_; }
  const Policy& active_policy() const noexcept { return policy_; }
  Policy& active_policy() noexcept { return policy_; }
  Random& random_source() noexcept { return random_; }
  error_class classify(errc e) const { return policy_.errors(e); }

 private:
  /// The decision for a failure, computed once per event (a guard asks first, the action
  /// reuses it), so the random source is drawn at most once.
  const decision& plan(const event& e) {
    if (!plan_)
      plan_ = compute_plan(e);
    return *plan_;
  }

  decision compute_plan(const event& e) {
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

}  // namespace devicebound::retry
