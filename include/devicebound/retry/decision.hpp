/// \file retry/decision.hpp
/// What the retry machine answers (SPEC 8.9): a verdict, when, and why it gave up; and the
/// machine's states. Plain values, with no Boost.MSM, so they can be held and compared anywhere.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "../message.hpp"

namespace devicebound::retry {

/// What the caller should do next.
enum class verdict : std::uint8_t {
  none,         ///< nothing (after a success or a reset)
  attempt_now,  ///< attempt now, then report attempt_succeeded or attempt_failed
  attempt_at,   ///< wait until `at`, then report timer_fired
  give_up,      ///< stop retrying; `reason` says why
};

/// Every `verdict`, in declaration order.
inline constexpr std::array<verdict, 4> verdict_values = {verdict::none, verdict::attempt_now,
                                                          verdict::attempt_at, verdict::give_up};

/// `none`, `attempt_now`, `attempt_at`, `give_up`.
constexpr std::string_view to_string(verdict v) noexcept {
  switch (v) {
    case verdict::none:
      return "none";
    case verdict::attempt_now:
      return "attempt_now";
    case verdict::attempt_at:
      return "attempt_at";
    case verdict::give_up:
      return "give_up";
  }
  return "none";
}

/// Parses a `to_string(verdict)` spelling; nullopt otherwise.
constexpr std::optional<verdict> parse_verdict(std::string_view s) noexcept {
  for (auto v : verdict_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// Why the controller gave up.
enum class stop_reason : std::uint8_t {
  none,
  fatal_error,        ///< the failure was classified fatal (state `fatal`)
  no_retry,           ///< the backoff never retries (state `exhausted`)
  retries_exhausted,  ///< `max_retries` reached (state `exhausted`)
  timeout,            ///< the next attempt would be at or after the deadline (state `exhausted`)
};

/// Every `stop_reason`, in declaration order.
inline constexpr std::array<stop_reason, 5> stop_reason_values = {
    stop_reason::none, stop_reason::fatal_error, stop_reason::no_retry,
    stop_reason::retries_exhausted, stop_reason::timeout};

/// `none`, `fatal_error`, `no_retry`, `retries_exhausted`, `timeout`.
constexpr std::string_view to_string(stop_reason r) noexcept {
  switch (r) {
    case stop_reason::none:
      return "none";
    case stop_reason::fatal_error:
      return "fatal_error";
    case stop_reason::no_retry:
      return "no_retry";
    case stop_reason::retries_exhausted:
      return "retries_exhausted";
    case stop_reason::timeout:
      return "timeout";
  }
  return "none";
}

/// Parses a `to_string(stop_reason)` spelling; nullopt otherwise.
constexpr std::optional<stop_reason> parse_stop_reason(std::string_view s) noexcept {
  for (auto v : stop_reason_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// The answer to an event: what to do, when, and (for give_up) why.
struct decision {
  verdict what = verdict::none;
  time_point at{};  ///< attempt_now: now; attempt_at: when; none/give_up: the event's time
  stop_reason reason = stop_reason::none;

  static constexpr decision nothing(time_point now) noexcept { return {verdict::none, now, {}}; }
  static constexpr decision attempt(time_point now) noexcept {
    return {verdict::attempt_now, now, {}};
  }
  static constexpr decision wait_until(time_point t) noexcept {
    return {verdict::attempt_at, t, {}};
  }
  static constexpr decision stop(stop_reason r, time_point now) noexcept {
    return {verdict::give_up, now, r};
  }

  friend bool operator==(const decision&, const decision&) = default;
};

/// The controller's states (SPEC 8.9).
enum class state : std::uint8_t {
  idle,        ///< no operation in progress
  attempting,  ///< an attempt is running; its outcome is awaited
  waiting,     ///< waiting for `next_attempt_at()`
  succeeded,   ///< the last attempt succeeded
  exhausted,   ///< gave up (timeout, max retries, no-retry policy); re-armed by reset
  fatal,       ///< gave up on a fatal error; left only by reset
};

/// Every `state`, in declaration order.
inline constexpr std::array<state, 6> state_values = {state::idle,      state::attempting,
                                                      state::waiting,   state::succeeded,
                                                      state::exhausted, state::fatal};

/// `Idle`, `Attempting`, `Waiting`, `Succeeded`, `Exhausted`, `Fatal`: display names, capitalised
/// like `to_string(message_state)`'s; the enumerators and the machine's states are snake_case.
constexpr std::string_view to_string(state s) noexcept {
  switch (s) {
    case state::idle:
      return "Idle";
    case state::attempting:
      return "Attempting";
    case state::waiting:
      return "Waiting";
    case state::succeeded:
      return "Succeeded";
    case state::exhausted:
      return "Exhausted";
    case state::fatal:
      return "Fatal";
  }
  return "Idle";
}

/// Parses a `to_string(state)` spelling; nullopt otherwise.
constexpr std::optional<state> parse_state(std::string_view s) noexcept {
  for (auto v : state_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

}  // namespace devicebound::retry
