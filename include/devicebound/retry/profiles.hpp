/// \file retry/profiles.hpp
/// The official SDKs' retry policies (SPEC 8.7), each as a typed policy, and by name as a
/// runtime one.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../errors.hpp"
#include "../message.hpp"
#include "backoff.hpp"
#include "classification.hpp"
#include "policy.hpp"

namespace devicebound::retry {

namespace profiles {

using std::chrono::milliseconds;
using std::chrono::seconds;

/// The knobs of every C policy: immediate first retry, waits from the attempt start, timeout
/// from the first retry (0 = forever), reset on CONNACK, whole seconds (SPEC 8.1).
inline options c_options(seconds retry_timeout_limit = seconds{0}) {
  options o;
  o.first = first_retry::immediate;
  o.timeout = std::max(retry_timeout_limit, seconds{0});
  o.timeout_from = timeout_origin::first_retry;
  o.reset_on_success = true;
  o.wait_from = wait_origin::attempt_start;
  o.whole_seconds = true;
  return o;
}

/// C default, EXPONENTIAL_BACKOFF_WITH_JITTER: 0, 1, 2, 4, 8, 16, 30-31, 30-31 ... s.
inline basic_policy<exponential_backoff_with_jitter> c_sdk(seconds retry_timeout_limit = {}) {
  return basic_policy<exponential_backoff_with_jitter>(
      {seconds{1}, seconds{30}, milliseconds{0}, jitter::up_to(0.05)},
      c_options(retry_timeout_limit), classifier::of(error_table::c));
}
/// C EXPONENTIAL_BACKOFF: 0, 1, 2, 4, 8, 16, 30, 30 ... s.
inline basic_policy<exponential_backoff> c_exponential_backoff(seconds retry_timeout_limit = {}) {
  return basic_policy<exponential_backoff>(
      {seconds{1}, seconds{30}}, c_options(retry_timeout_limit), classifier::of(error_table::c));
}
/// C LINEAR_BACKOFF: 0, 5, 10, 15, 20, 25, 30, 30 ... s.
inline basic_policy<linear_backoff> c_linear_backoff(seconds retry_timeout_limit = {}) {
  return basic_policy<linear_backoff>({seconds{5}, seconds{30}}, c_options(retry_timeout_limit),
                                      classifier::of(error_table::c));
}
/// C INTERVAL: 0, 5, 5, 5 ... s.
inline basic_policy<interval> c_interval(seconds retry_timeout_limit = {}) {
  return basic_policy<interval>({seconds{5}}, c_options(retry_timeout_limit),
                                classifier::of(error_table::c));
}
/// C RANDOM: 0, then 5 * U[0,1) s truncated (0-4 s), not capped.
inline basic_policy<random> c_random(seconds retry_timeout_limit = {}) {
  return basic_policy<random>({seconds{5}}, c_options(retry_timeout_limit),
                              classifier::of(error_table::c));
}
/// C IMMEDIATE: always at once (the timeout still applies).
inline basic_policy<immediate> c_immediate(seconds retry_timeout_limit = {}) {
  return basic_policy<immediate>({}, c_options(retry_timeout_limit),
                                 classifier::of(error_table::c));
}
/// C NONE: stop at the first failure.
inline basic_policy<no_retry> c_none() {
  return basic_policy<no_retry>({}, c_options(), classifier::of(error_table::c));
}

/// Node ExponentialBackOffWithJitter as documented (devdoc/retry_policy_requirements.md), not as
/// coded: the immediate first retry happens and the lower bound C*(1-jd) is added (SPEC 8.2).
/// Normal 0, 100, 150-175, 250-325 ... 10000 ms; throttled 10000, 12500-13750 ... 60000 ms;
/// 240 s per operation.
inline basic_policy<exponential_backoff_with_jitter> node() {
  constexpr double ju = 0.25, jd = 0.5;  // jitter up / down: U[C(1-jd), C(1-ju))
  options o;
  o.first = first_retry::immediate;  // intent of immediateFirstRetry=true
  o.timeout = milliseconds{240000};  // MAX_OPERATION_TIMEOUT
  o.timeout_from = timeout_origin::operation;
  return basic_policy<exponential_backoff_with_jitter>(
      {milliseconds{100}, milliseconds{10000}, milliseconds{100}, jitter::additive(1 - jd, 1 - ju)},
      o, classifier::of(error_table::node),
      exponential_backoff_with_jitter{milliseconds{5000}, milliseconds{60000}, milliseconds{10000},
                                      jitter::additive(1 - jd, 1 - ju)});
}
/// Node NoRetry.
inline basic_policy<no_retry> node_no_retry() {
  options o;
  o.timeout = milliseconds{240000};
  return basic_policy<no_retry>({}, o, classifier::of(error_table::node));
}

/// Python: reconnect after 0.01 s, then every `connection_retry_interval` (10 s); no jitter,
/// no limit (SPEC 8.3).
inline basic_policy<interval> python(seconds connection_retry_interval = seconds{10}) {
  options o;
  o.first = first_retry::immediate;
  o.first_retry_delay = milliseconds{10};
  return basic_policy<interval>({connection_retry_interval}, o,
                                classifier::of(error_table::python));
}

/// C# v1 client default: ExponentialBackoff(int.Max, 100 ms, 10 s, 100 ms), 1 s minimum
/// spacing, 4 min per operation: about 1, 1, 1, 1, 1.3-1.9, 2.6-3.8, 5.1-7.7, then 10 s.
inline basic_policy<exponential_backoff_with_jitter> csharp_v1() {
  options o;
  o.first = first_retry::backoff;    // RetryStrategyAdapter passes fastFirstRetry=false
  o.timeout = milliseconds{240000};  // DefaultOperationTimeoutInMilliseconds
  o.timeout_from = timeout_origin::operation;
  o.max_retries = 2147483647;  // int.MaxValue
  o.min_spacing = seconds{1};  // minimumTimeBetweenRetries
  return basic_policy<exponential_backoff_with_jitter>(
      {milliseconds{100}, seconds{10}, milliseconds{100}, jitter::additive(0.8, 1.2)}, o,
      classifier::of(error_table::csharp_v1));
}
/// C# v1 RetryStrategy.DefaultExponential: 10 retries, min 1 s, max 30 s, delta 10 s,
/// FirstFastRetry: 0, 9-13, 25-30, 30 ... s.
inline basic_policy<exponential_backoff_with_jitter> csharp_v1_default_exponential() {
  options o;
  o.first = first_retry::fast;  // DefaultFirstFastRetry = true
  o.max_retries = 10;           // DefaultClientRetryCount
  o.min_spacing = seconds{1};
  return basic_policy<exponential_backoff_with_jitter>(
      {seconds{10}, seconds{30}, seconds{1}, jitter::additive(0.8, 1.2)}, o,
      classifier::of(error_table::csharp_v1));
}
/// C# v2 IotHubClientExponentialBackoffRetryPolicy(0, 12 h, true): 2^(n+6) ms from n = 1
/// (128 ms), cap 12 h, x U[0.95, 1.05) for waits >= 50 ms, unlimited (SPEC 8.4).
inline basic_policy<exponential_backoff_with_jitter> csharp_v2(
    std::uint32_t max_retries = 0, duration max_wait = std::chrono::hours{12}) {
  options o;
  o.max_retries = max_retries;
  return basic_policy<exponential_backoff_with_jitter>(
      {milliseconds{128}, max_wait, milliseconds{0}, jitter::plus_minus(0.05, milliseconds{50})}, o,
      classifier::of(error_table::csharp_v2));
}

/// Java ExponentialBackoffWithJitter defaults: 0, 180-220, 340-460 ... 10000 ms (SPEC 8.5).
inline basic_policy<exponential_backoff_with_jitter> java() {
  options o;
  o.first = first_retry::fast;  // firstFastRetry = true
  o.max_retries = 2147483647;   // Integer.MAX_VALUE
  return basic_policy<exponential_backoff_with_jitter>(
      {milliseconds{100}, milliseconds{10000}, milliseconds{100}, jitter::additive(0.8, 1.2)}, o,
      classifier::of(error_table::java));
}

/// A profile's name and its policy, as a runtime policy.
struct named_profile {
  std::string_view name;
  policy (*make)();
};

/// Every profile, each name written once: `profile()` and `names` read this table.
inline constexpr std::array<named_profile, 14> all = {{
    {"c_sdk",
     [] {
       return policy(c_sdk());
     }},
    {"c_exponential_backoff",
     [] {
       return policy(c_exponential_backoff());
     }},
    {"c_linear_backoff",
     [] {
       return policy(c_linear_backoff());
     }},
    {"c_interval",
     [] {
       return policy(c_interval());
     }},
    {"c_random",
     [] {
       return policy(c_random());
     }},
    {"c_immediate",
     [] {
       return policy(c_immediate());
     }},
    {"c_none",
     [] {
       return policy(c_none());
     }},
    {"node",
     [] {
       return policy(node());
     }},
    {"node_no_retry",
     [] {
       return policy(node_no_retry());
     }},
    {"python",
     [] {
       return policy(python());
     }},
    {"csharp_v1",
     [] {
       return policy(csharp_v1());
     }},
    {"csharp_v1_default_exponential",
     [] {
       return policy(csharp_v1_default_exponential());
     }},
    {"csharp_v2",
     [] {
       return policy(csharp_v2());
     }},
    {"java",
     [] {
       return policy(java());
     }},
}};

/// Names accepted by `profile()`, in the order of `all`.
inline constexpr std::array<std::string_view, all.size()> names = [] {
  std::array<std::string_view, all.size()> n{};
  for (std::size_t i = 0; i < all.size(); ++i)
    n[i] = all[i].name;
  return n;
}();

/// A profile by name, as a runtime policy (for bindings).
inline result<policy> profile(std::string_view name) {
  for (const named_profile& p : all)
    if (p.name == name)
      return p.make();
  return make_error(errc::argument_invalid, "retry: unknown profile '" + std::string(name) + "'");
}

}  // namespace profiles

}  // namespace devicebound::retry
