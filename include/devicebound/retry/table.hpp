/// \file retry/table.hpp
/// The retry machine's transition table (SPEC 8.9): one row per transition, as plain
/// constexpr data. It is the one definition of the machine. Two executors read it:
/// `retry/controller.hpp`, which the clients run, and the Boost.MSM machine of
/// `retry/machine.hpp`, whose transition table is generated from these rows; a property test
/// checks that the two answer every event sequence alike. docs/retry.md holds the same table,
/// and docs/architecture.md says why the clients do not run Boost.MSM themselves.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "../message.hpp"
#include "classification.hpp"
#include "decision.hpp"

namespace devicebound::retry {

/// The events the machine takes. Each carries the caller's `now`; the machine never reads a
/// clock.
enum class event_kind : std::uint8_t {
  start,              ///< an operation begins (its first attempt)
  attempt_failed,     ///< the running attempt failed (with an error class)
  attempt_succeeded,  ///< the running attempt succeeded
  timer_fired,        ///< the wait asked for by `attempt_at` is over
  reset,              ///< forget the episode
};

/// Every `event_kind`, in declaration order.
inline constexpr std::array<event_kind, 5> event_kind_values = {
    event_kind::start, event_kind::attempt_failed, event_kind::attempt_succeeded,
    event_kind::timer_fired, event_kind::reset};

/// `start`, `attempt_failed`, `attempt_succeeded`, `timer_fired`, `reset`.
constexpr std::string_view to_string(event_kind e) noexcept {
  switch (e) {
    case event_kind::start:
      return "start";
    case event_kind::attempt_failed:
      return "attempt_failed";
    case event_kind::attempt_succeeded:
      return "attempt_succeeded";
    case event_kind::timer_fired:
      return "timer_fired";
    case event_kind::reset:
      return "reset";
  }
  return "start";
}

/// Parses a `to_string(event_kind)` spelling; nullopt otherwise.
constexpr std::optional<event_kind> parse_event_kind(std::string_view s) noexcept {
  for (auto v : event_kind_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// One event: its kind, the caller's time and, for `attempt_failed`, the error's class.
struct event {
  event_kind kind = event_kind::start;
  time_point now{};
  error_class cls = error_class::transient;  ///< meaningful for attempt_failed only
};

/// A row's guard. The four attempt_failed guards partition the plan, so exactly one row
/// fires and the order the rows are tried in does not matter; likewise the three
/// timer_fired guards.
enum class guard : std::uint8_t {
  none,               ///< always
  plans_attempt_now,  ///< the plan for this failure is an immediate retry
  plans_attempt_at,   ///< ... a retry after a wait
  plans_give_up,      ///< ... giving up for a reason other than a fatal error
  plans_fatal,        ///< ... giving up on a fatal error
  is_due,             ///< the next attempt is due and the deadline not passed
  is_early,           ///< the next attempt is not due yet and the deadline not passed
  is_past_deadline,   ///< the retry deadline has passed
};

/// Every `guard`, in declaration order.
inline constexpr std::array<guard, 8> guard_values = {
    guard::none,          guard::plans_attempt_now, guard::plans_attempt_at,
    guard::plans_give_up, guard::plans_fatal,       guard::is_due,
    guard::is_early,      guard::is_past_deadline};

/// The guard's name as the table spells it (`none`, `plans_attempt_now`, ...).
constexpr std::string_view to_string(guard g) noexcept {
  switch (g) {
    case guard::none:
      return "none";
    case guard::plans_attempt_now:
      return "plans_attempt_now";
    case guard::plans_attempt_at:
      return "plans_attempt_at";
    case guard::plans_give_up:
      return "plans_give_up";
    case guard::plans_fatal:
      return "plans_fatal";
    case guard::is_due:
      return "is_due";
    case guard::is_early:
      return "is_early";
    case guard::is_past_deadline:
      return "is_past_deadline";
  }
  return "none";
}

/// Parses a `to_string(guard)` spelling; nullopt otherwise.
constexpr std::optional<guard> parse_guard(std::string_view s) noexcept {
  for (auto v : guard_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// A row's action. Each one sets the answer returned to the caller (or refuses the event).
enum class action : std::uint8_t {
  begin_operation,     ///< stamp the operation's start; attempt now
  record_success,      ///< clear the episode if the policy says so; nothing to do
  retry_now,           ///< count a retry; attempt now
  schedule_retry,      ///< remember when the next attempt is due; attempt then
  stop,                ///< give up with the plan's reason
  retry_when_due,      ///< count a retry; attempt now
  refuse_early_timer,  ///< a typed error: the timer fired before the attempt was due
  stop_late,           ///< give up: the deadline passed while waiting
  clear,               ///< forget the episode; nothing to do
};

/// Every `action`, in declaration order.
inline constexpr std::array<action, 9> action_values = {
    action::begin_operation,    action::record_success, action::retry_now,
    action::schedule_retry,     action::stop,           action::retry_when_due,
    action::refuse_early_timer, action::stop_late,      action::clear};

/// The action's name as the table spells it (`begin_operation`, ...).
constexpr std::string_view to_string(action a) noexcept {
  switch (a) {
    case action::begin_operation:
      return "begin_operation";
    case action::record_success:
      return "record_success";
    case action::retry_now:
      return "retry_now";
    case action::schedule_retry:
      return "schedule_retry";
    case action::stop:
      return "stop";
    case action::retry_when_due:
      return "retry_when_due";
    case action::refuse_early_timer:
      return "refuse_early_timer";
    case action::stop_late:
      return "stop_late";
    case action::clear:
      return "clear";
  }
  return "clear";
}

/// Parses a `to_string(action)` spelling; nullopt otherwise.
constexpr std::optional<action> parse_action(std::string_view s) noexcept {
  for (auto v : action_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// One transition. A row without a target is internal: its action runs and the state stays.
struct row {
  state source;
  event_kind on;
  std::optional<state> target;
  retry::action act;
  retry::guard when;
};

namespace table_spelling {
using enum state;
inline constexpr std::optional<state> stay = std::nullopt;
}  // namespace table_spelling

/// The retry machine of SPEC 8.9. One row per transition; docs/retry.md holds the same table.
/// An event with no row whose guard holds is refused with a typed error, and the state does
/// not change.
// clang-format off
inline constexpr std::array<row, 16> transition_table = [] {
  using namespace table_spelling;
  using enum event_kind;
  using enum action;
  using enum guard;
  return std::array<row, 16>{{
    //Source      Event              Target      Action              Guard
    {idle,       start,             attempting, begin_operation,    none              },
    {succeeded,  start,             attempting, begin_operation,    none              },
    {attempting, attempt_succeeded, succeeded,  record_success,     none              },
    {attempting, attempt_failed,    attempting, retry_now,          plans_attempt_now },
    {attempting, attempt_failed,    waiting,    schedule_retry,     plans_attempt_at  },
    {attempting, attempt_failed,    exhausted,  stop,               plans_give_up     },
    {attempting, attempt_failed,    fatal,      stop,               plans_fatal       },
    {waiting,    timer_fired,       attempting, retry_when_due,     is_due            },
    {waiting,    timer_fired,       stay,       refuse_early_timer, is_early          },
    {waiting,    timer_fired,       exhausted,  stop_late,          is_past_deadline  },
    {idle,       reset,             idle,       clear,              none              },
    {attempting, reset,             idle,       clear,              none              },
    {waiting,    reset,             idle,       clear,              none              },
    {succeeded,  reset,             idle,       clear,              none              },
    {exhausted,  reset,             idle,       clear,              none              },
    {fatal,      reset,             idle,       clear,              none              },
  }};
}();
// clang-format on

}  // namespace devicebound::retry
