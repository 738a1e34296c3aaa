/// \file retry/policy.hpp
/// A retry policy (SPEC 8.9): a backoff, an optional throttled backoff, the knobs every SDK
/// turns (first retry, timeout, limits, spacing), and the error table.
#pragma once

#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

#include "../message.hpp"
#include "backoff.hpp"
#include "classification.hpp"
#include "random.hpp"

namespace devicebound::retry {

/// How the first retry of an episode is timed.
enum class first_retry : std::uint8_t {
  backoff,    ///< waits delay(0), delay(1), ... (Node as coded, C# v1 client, C# v2)
  immediate,  ///< an extra retry after `first_retry_delay`, then delay(0), ... (C; Node intent;
              ///< Python with 10 ms)
  fast,       ///< after `first_retry_delay` instead of delay(0), then delay(1), ... (Java,
              ///< C# FastFirstRetry)
};

/// Every `first_retry`, in declaration order.
inline constexpr std::array<first_retry, 3> first_retry_values = {
    first_retry::backoff, first_retry::immediate, first_retry::fast};

/// `backoff`, `immediate`, `fast`.
constexpr std::string_view to_string(first_retry f) noexcept {
  switch (f) {
    case first_retry::backoff:
      return "backoff";
    case first_retry::immediate:
      return "immediate";
    case first_retry::fast:
      return "fast";
  }
  return "backoff";
}

/// Parses a `to_string(first_retry)` spelling; nullopt otherwise.
constexpr std::optional<first_retry> parse_first_retry(std::string_view s) noexcept {
  for (auto v : first_retry_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// When the total retry timeout starts.
enum class timeout_origin : std::uint8_t {
  operation,    ///< at `start` (Node 240 s, C# 4 min per operation)
  first_retry,  ///< at the first failure, i.e. the first retry (C `first_retry_tick`)
};

/// Every `timeout_origin`, in declaration order.
inline constexpr std::array<timeout_origin, 2> timeout_origin_values = {
    timeout_origin::operation, timeout_origin::first_retry};

/// `operation`, `first_retry`.
constexpr std::string_view to_string(timeout_origin o) noexcept {
  return o == timeout_origin::operation ? "operation" : "first_retry";
}

/// Parses a `to_string(timeout_origin)` spelling; nullopt otherwise.
constexpr std::optional<timeout_origin> parse_timeout_origin(std::string_view s) noexcept {
  for (auto v : timeout_origin_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// What a wait is measured from.
enum class wait_origin : std::uint8_t {
  failure,        ///< the failure report (Node, Python, C#, Java)
  attempt_start,  ///< the start of the failed attempt (C `last_retry_tick`, SPEC 8.1 step 6)
};

/// Every `wait_origin`, in declaration order.
inline constexpr std::array<wait_origin, 2> wait_origin_values = {wait_origin::failure,
                                                                  wait_origin::attempt_start};

/// `failure`, `attempt_start`.
constexpr std::string_view to_string(wait_origin o) noexcept {
  return o == wait_origin::failure ? "failure" : "attempt_start";
}

/// Parses a `to_string(wait_origin)` spelling; nullopt otherwise.
constexpr std::optional<wait_origin> parse_wait_origin(std::string_view s) noexcept {
  for (auto v : wait_origin_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// The knobs shared by every backoff (SPEC 8.9).
struct options {
  retry::first_retry first = first_retry::backoff;
  duration first_retry_delay{0};  ///< wait of an immediate/fast first retry (Python: 10 ms)
  duration timeout{0};            ///< total retry time; 0 = retry forever
  timeout_origin timeout_from = timeout_origin::operation;
  std::uint32_t max_retries = 0;  ///< retries per episode; 0 = unlimited
  bool reset_on_success = true;   ///< a success starts a new episode (C resets on CONNACK)
  duration min_spacing{0};        ///< non-zero waits keep attempt starts this far apart (C# v1)
  wait_origin wait_from = wait_origin::failure;
  bool whole_seconds = false;  ///< truncate every wait to whole seconds (C's `(unsigned int)`)

  friend bool operator==(const options&, const options&) = default;
};

/// A backoff for transient failures, an optional one for throttled failures, the knobs and
/// the error table: everything a `controller` needs.
template <class Backoff>
struct basic_policy {
  Backoff backoff{};
  std::optional<Backoff> throttled{};  ///< used for `error_class::throttled` when set (Node)
  retry::options opts{};
  classifier errors{};

  basic_policy() = default;
  explicit basic_policy(Backoff b, retry::options o = {}, classifier c = {},
                        std::optional<Backoff> thr = std::nullopt)
      : backoff(std::move(b)), throttled(std::move(thr)), opts(o), errors(std::move(c)) {}

  /// Converts a typed policy into a runtime one (`basic_policy<any_backoff>`).
  template <std::convertible_to<Backoff> Other>
  basic_policy(const basic_policy<Other>& p)  // NOLINT(implicit)
      : backoff(p.backoff),
        throttled(p.throttled ? std::optional<Backoff>(Backoff(*p.throttled)) : std::nullopt),
        opts(p.opts),
        errors(p.errors) {}

  /// The wait before retry `k` of an episode (k = 0: the first retry) after a failure of
  /// class `c`; std::nullopt: do not retry. Applies `first`, the throttled backoff and
  /// `whole_seconds`; spacing, limits and timeouts are the controller's job.
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t k, error_class c, R& rnd) const {
    if (c == error_class::fatal || backoff.never_retries())
      return std::nullopt;
    std::optional<duration> d;
    if (c == error_class::throttled && throttled) {
      // Node: the immediate first retry is skipped when throttled (SPEC 8.2).
      d = throttled->delay(k, rnd);
    } else if (k == 0 && opts.first != first_retry::backoff) {
      d = detail::from_ms(detail::ms(opts.first_retry_delay));
    } else {
      d = backoff.delay(opts.first == first_retry::immediate ? k - 1 : k, rnd);
    }
    if (d && opts.whole_seconds)
      d = std::chrono::floor<std::chrono::seconds>(*d);  // SPEC 8.1
    return d;
  }

  friend bool operator==(const basic_policy&, const basic_policy&) = default;
};

/// A policy whose backoff is chosen at run time.
using policy = basic_policy<any_backoff>;

}  // namespace devicebound::retry
