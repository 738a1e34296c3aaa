/// \file retry/backoff.hpp
/// Backoff formulas (SPEC 8.7, 8.9): the waits of a retry schedule, one type per SDK formula,
/// and `any_backoff` to choose one at run time.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <variant>

#include "../message.hpp"
#include "random.hpp"

namespace devicebound::retry {

namespace detail {

/// Longest wait we compute: 2^53 ms (about 285,000 years) is exact in a double and far from
/// overflowing `time_point` arithmetic (C issue #18: 2^n overflowed into days).
inline constexpr double max_wait_ms = 9007199254740992.0;

/// A duration as non-negative milliseconds in a double.
inline double ms(duration d) noexcept {
  return d.count() <= 0 ? 0.0 : std::min(static_cast<double>(d.count()), max_wait_ms);
}

/// Milliseconds back to a duration: truncates (like the SDKs' integer casts), clamps to
/// [0, max_wait_ms], maps NaN to 0.
inline duration from_ms(double x) noexcept {
  if (!(x > 0.0))
    return duration{0};
  return duration{static_cast<duration::rep>(std::min(x, max_wait_ms))};
}

/// 2^i without overflow: the exponent is clamped at 1023, the largest finite power.
inline double pow2(std::uint32_t i) noexcept {
  return std::ldexp(1.0, static_cast<int>(std::min<std::uint32_t>(i, 1023)));
}

/// `T` is one of `Ts`.
template <class T, class... Ts>
concept one_of = (std::same_as<T, Ts> || ...);

}  // namespace detail

// Every backoff has `delay(i, rnd)`: the i-th wait of the schedule (i = 0 is the first wait
// that is not an immediate first retry); std::nullopt means "never retry" (SPEC 8.7).

/// Never retry (C RETRY_NONE, Node/C#/Java NoRetry).
struct no_retry {
  constexpr bool never_retries() const noexcept { return true; }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t, R&) const {
    return std::nullopt;
  }
  friend bool operator==(const no_retry&, const no_retry&) = default;
};

/// Retry at once, every time (C RETRY_IMMEDIATE).
struct immediate {
  constexpr bool never_retries() const noexcept { return false; }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t, R&) const {
    return duration{0};
  }
  friend bool operator==(const immediate&, const immediate&) = default;
};

/// A fixed wait (C RETRY_INTERVAL: 5 s; Python connection_retry_interval: 10 s).
struct interval {
  duration initial{5000};  ///< every wait

  constexpr bool never_retries() const noexcept { return false; }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t, R&) const {
    return detail::from_ms(detail::ms(initial));
  }
  friend bool operator==(const interval&, const interval&) = default;
};

/// `min(initial * (i + 1), cap)` (C RETRY_LINEAR_BACKOFF: 5 s steps, cap 30 s).
struct linear_backoff {
  duration initial{5000};
  duration cap{30000};

  constexpr bool never_retries() const noexcept { return false; }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t i, R&) const {
    return detail::from_ms(
        std::min(detail::ms(initial) * (static_cast<double>(i) + 1.0), detail::ms(cap)));
  }
  friend bool operator==(const linear_backoff&, const linear_backoff&) = default;
};

/// `min(initial * 2^i, cap)` (C RETRY_EXPONENTIAL_BACKOFF: 1 s, cap 30 s).
struct exponential_backoff {
  duration initial{1000};
  duration cap{30000};

  constexpr bool never_retries() const noexcept { return false; }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t i, R&) const {
    return detail::from_ms(std::min(detail::ms(initial) * detail::pow2(i), detail::ms(cap)));
  }
  friend bool operator==(const exponential_backoff&, const exponential_backoff&) = default;
};

/// Where the random part of an exponential backoff goes (SPEC 8.9).
enum class jitter_shape : std::uint8_t {
  none,            ///< `min(initial * 2^i, cap)`
  multiplicative,  ///< `min(initial * 2^i, cap) * U[low, high)` (C +0..5 %, C# v2 95-105 %)
  additive,        ///< `min(floor + (2^i - 1) * initial * U[low, high), cap)` (Node, Java, C# v1)
};

/// Every `jitter_shape`, in declaration order.
inline constexpr std::array<jitter_shape, 3> jitter_shape_values = {
    jitter_shape::none, jitter_shape::multiplicative, jitter_shape::additive};

/// `none`, `multiplicative`, `additive`.
constexpr std::string_view to_string(jitter_shape s) noexcept {
  switch (s) {
    case jitter_shape::none:
      return "none";
    case jitter_shape::multiplicative:
      return "multiplicative";
    case jitter_shape::additive:
      return "additive";
  }
  return "none";
}

/// Parses a `to_string(jitter_shape)` spelling; nullopt otherwise.
constexpr std::optional<jitter_shape> parse_jitter_shape(std::string_view s) noexcept {
  for (auto j : jitter_shape_values)
    if (s == to_string(j))
      return j;
  return std::nullopt;
}

/// The random factor of an exponential backoff: `U[low, high)` and where it applies.
struct jitter {
  jitter_shape shape = jitter_shape::none;
  double low = 1.0;
  double high = 1.0;
  duration threshold{0};  ///< multiplicative: only waits >= threshold get jitter (C# v2: 50 ms)

  /// No randomness.
  static constexpr jitter none() noexcept { return {}; }
  /// `x (1 + U[0, fraction))`: C's +0..max_jitter_percent (SPEC 8.1).
  static constexpr jitter up_to(double fraction) noexcept {
    return {jitter_shape::multiplicative, 1.0, 1.0 + fraction, duration{0}};
  }
  /// `x U[1 - fraction, 1 + fraction)` for waits >= threshold: C# v2's 95-105 % (SPEC 8.4).
  static constexpr jitter plus_minus(double fraction, duration threshold = duration{0}) noexcept {
    return {jitter_shape::multiplicative, 1.0 - fraction, 1.0 + fraction, threshold};
  }
  /// `(2^i - 1) initial U[low, high)` added to the floor: Node, Java, C# v1 (SPEC 8.2, 8.4, 8.5).
  static constexpr jitter additive(double low, double high) noexcept {
    return {jitter_shape::additive, low, high, duration{0}};
  }

  friend bool operator==(const jitter&, const jitter&) = default;
};

/// Exponential backoff with jitter; the shape decides the formula (see `jitter_shape`).
struct exponential_backoff_with_jitter {
  duration initial{1000};  ///< first wait (none, multiplicative) or delta (additive)
  duration cap{30000};     ///< largest wait before a multiplicative factor
  duration floor{0};       ///< additive: the constant term (Node cMin, Java/C# minBackoff)
  retry::jitter jitter = retry::jitter::up_to(0.05);

  constexpr bool never_retries() const noexcept { return false; }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t i, R& rnd) const {
    using detail::ms;
    const double lo = std::max(jitter.low, 0.0);
    const double hi = std::max(jitter.high, lo);
    switch (jitter.shape) {
      case jitter_shape::none:
        break;
      case jitter_shape::multiplicative: {
        double w = std::min(ms(initial) * detail::pow2(i), ms(cap));
        const double factor = lo + (hi - lo) * detail::draw(rnd);
        if (w >= ms(jitter.threshold))
          w *= factor;
        return detail::from_ms(w);
      }
      case jitter_shape::additive: {
        // (2^i - 1) stays finite (i <= 1023) and initial * factor is finite, so the product
        // is at worst +inf, never NaN; min() then takes the cap.
        const double factor = lo + (hi - lo) * detail::draw(rnd);
        const double w = ms(floor) + (detail::pow2(i) - 1.0) * (ms(initial) * factor);
        return detail::from_ms(std::min(w, ms(cap)));
      }
    }
    return detail::from_ms(std::min(ms(initial) * detail::pow2(i), ms(cap)));
  }
  friend bool operator==(const exponential_backoff_with_jitter&,
                         const exponential_backoff_with_jitter&) = default;
};

/// `initial * U[0, 1)`, not capped (C RETRY_RANDOM: 5 s).
struct random {
  duration initial{5000};

  constexpr bool never_retries() const noexcept { return false; }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t, R& rnd) const {
    return detail::from_ms(detail::ms(initial) * detail::draw(rnd));
  }
  friend bool operator==(const random&, const random&) = default;
};

/// Any of the backoff types, chosen at run time (bindings, `policy_config`).
struct any_backoff {
  using variant_type = std::variant<no_retry, immediate, interval, linear_backoff,
                                    exponential_backoff, exponential_backoff_with_jitter, random>;
  variant_type value{exponential_backoff_with_jitter{}};

  any_backoff() = default;
  template <detail::one_of<no_retry, immediate, interval, linear_backoff, exponential_backoff,
                           exponential_backoff_with_jitter, random>
                B>
  any_backoff(B b) : value(std::move(b)) {}  // NOLINT(implicit)

  bool never_retries() const noexcept {
    return std::visit([](const auto& b) { return b.never_retries(); }, value);
  }
  template <unit_random R>
  std::optional<duration> delay(std::uint32_t i, R& rnd) const {
    return std::visit([&](const auto& b) { return b.delay(i, rnd); }, value);
  }
  friend bool operator==(const any_backoff&, const any_backoff&) = default;
};

}  // namespace devicebound::retry
