/// \file retry/runtime_config.hpp
/// A retry policy as plain fields, for whatever builds one at run time (the bindings, config
/// files): `make_policy` checks the fields and builds the policy, `to_config` goes back.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "../errors.hpp"
#include "../message.hpp"
#include "backoff.hpp"
#include "classification.hpp"
#include "policy.hpp"

namespace devicebound::retry {

/// Which backoff formula a `backoff_config` selects.
enum class backoff_kind : std::uint8_t {
  no_retry,
  immediate,
  interval,
  linear_backoff,
  exponential_backoff,
  exponential_backoff_with_jitter,
  random,
};

/// Every `backoff_kind`, in declaration order.
inline constexpr std::array<backoff_kind, 7> backoff_kind_values = {
    backoff_kind::no_retry,
    backoff_kind::immediate,
    backoff_kind::interval,
    backoff_kind::linear_backoff,
    backoff_kind::exponential_backoff,
    backoff_kind::exponential_backoff_with_jitter,
    backoff_kind::random};

/// `no_retry`, `immediate`, `interval`, `linear_backoff`, `exponential_backoff`,
/// `exponential_backoff_with_jitter`, `random`.
constexpr std::string_view to_string(backoff_kind k) noexcept {
  switch (k) {
    case backoff_kind::no_retry:
      return "no_retry";
    case backoff_kind::immediate:
      return "immediate";
    case backoff_kind::interval:
      return "interval";
    case backoff_kind::linear_backoff:
      return "linear_backoff";
    case backoff_kind::exponential_backoff:
      return "exponential_backoff";
    case backoff_kind::exponential_backoff_with_jitter:
      return "exponential_backoff_with_jitter";
    case backoff_kind::random:
      return "random";
  }
  return "no_retry";
}

/// Parses a `to_string(backoff_kind)` spelling; nullopt otherwise.
constexpr std::optional<backoff_kind> parse_backoff_kind(std::string_view s) noexcept {
  for (auto v : backoff_kind_values)
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// A backoff as plain fields; fields a kind does not use are ignored.
struct backoff_config {
  backoff_kind kind = backoff_kind::exponential_backoff_with_jitter;
  duration initial{1000};
  duration cap{30000};
  duration floor{0};
  retry::jitter jitter = retry::jitter::up_to(0.05);

  friend bool operator==(const backoff_config&, const backoff_config&) = default;
};

/// A whole policy as plain fields; `make_policy` checks it.
struct policy_config {
  backoff_config backoff{};
  std::optional<backoff_config> throttled{};
  retry::options opts{};
  classifier errors{};

  friend bool operator==(const policy_config&, const policy_config&) = default;
};

namespace detail {

/// Longest duration a configuration may hold: 2^40 ms, about 34.8 years.
inline constexpr duration max_config_duration{std::int64_t{1} << 40};

inline result<void> check_duration(duration d, std::string_view what) {
  if (d < duration::zero() || d > max_config_duration)
    return make_error(errc::argument_invalid, "retry: " + std::string(what) +
                                                  " must be in [0, 2^40] ms, got " +
                                                  std::to_string(d.count()));
  return {};
}

}  // namespace detail

/// Checks a backoff configuration and builds the backoff.
inline result<any_backoff> make_backoff(const backoff_config& c) {
  for (auto [d, what] : {std::pair{c.initial, "initial"}, std::pair{c.cap, "cap"},
                         std::pair{c.floor, "floor"}, std::pair{c.jitter.threshold, "threshold"}})
    if (auto r = detail::check_duration(d, what); !r)
      return r.error();
  const jitter& j = c.jitter;
  if (!(j.low >= 0.0 && j.low <= j.high && j.high <= 100.0))
    return make_error(errc::argument_invalid, "retry: jitter needs 0 <= low <= high <= 100, got [" +
                                                  std::to_string(j.low) + ", " +
                                                  std::to_string(j.high) + ")");
  switch (c.kind) {
    case backoff_kind::no_retry:
      return any_backoff(no_retry{});
    case backoff_kind::immediate:
      return any_backoff(immediate{});
    case backoff_kind::interval:
      return any_backoff(interval{c.initial});
    case backoff_kind::linear_backoff:
      return any_backoff(linear_backoff{c.initial, c.cap});
    case backoff_kind::exponential_backoff:
      return any_backoff(exponential_backoff{c.initial, c.cap});
    case backoff_kind::exponential_backoff_with_jitter:
      return any_backoff(exponential_backoff_with_jitter{c.initial, c.cap, c.floor, j});
    case backoff_kind::random:
      return any_backoff(random{c.initial});
  }
  return make_error(errc::argument_invalid, "retry: unknown backoff kind");
}

/// Checks a policy configuration and builds the runtime policy.
inline result<policy> make_policy(const policy_config& c) {
  auto b = make_backoff(c.backoff);
  if (!b)
    return b.error();
  std::optional<any_backoff> thr;
  if (c.throttled) {
    auto t = make_backoff(*c.throttled);
    if (!t)
      return t.error();
    thr = std::move(*t);
  }
  for (auto [d, what] :
       {std::pair{c.opts.first_retry_delay, "first_retry_delay"},
        std::pair{c.opts.timeout, "timeout"}, std::pair{c.opts.min_spacing, "min_spacing"}})
    if (auto r = detail::check_duration(d, what); !r)
      return r.error();
  return policy(std::move(*b), c.opts, c.errors, std::move(thr));
}

/// The configuration of a runtime policy (`make_policy(to_config(p)) == p`).
inline policy_config to_config(const policy& p) {
  auto one = [](const any_backoff& b) {
    backoff_config c;
    std::visit(
        [&c](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, no_retry>) {
            c.kind = backoff_kind::no_retry;
          } else if constexpr (std::is_same_v<T, immediate>) {
            c.kind = backoff_kind::immediate;
          } else if constexpr (std::is_same_v<T, interval>) {
            c.kind = backoff_kind::interval;
            c.initial = v.initial;
          } else if constexpr (std::is_same_v<T, linear_backoff>) {
            c.kind = backoff_kind::linear_backoff;
            c.initial = v.initial;
            c.cap = v.cap;
          } else if constexpr (std::is_same_v<T, exponential_backoff>) {
            c.kind = backoff_kind::exponential_backoff;
            c.initial = v.initial;
            c.cap = v.cap;
          } else if constexpr (std::is_same_v<T, exponential_backoff_with_jitter>) {
            c.kind = backoff_kind::exponential_backoff_with_jitter;
            c.initial = v.initial;
            c.cap = v.cap;
            c.floor = v.floor;
            c.jitter = v.jitter;
          } else {
            c.kind = backoff_kind::random;
            c.initial = v.initial;
          }
        },
        b.value);
    return c;
  };
  policy_config c;
  c.backoff = one(p.backoff);
  if (p.throttled)
    c.throttled = one(*p.throttled);
  c.opts = p.opts;
  c.errors = p.errors;
  return c;
}

}  // namespace devicebound::retry
