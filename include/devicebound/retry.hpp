/// \file retry.hpp
/// Retry policies of the Azure IoT SDKs (SPEC 8): error classification, backoff
/// formulas, SDK profiles, and a sans-I/O Boost.MSM machine that tells the caller
/// when to attempt again. Long explanations live in docs/retry.md.
#pragma once

#include <algorithm>
#include <array>
#include <boost/mpl/vector.hpp>
#include <boost/msm/back/state_machine.hpp>
#include <boost/msm/front/functor_row.hpp>
#include <boost/msm/front/state_machine_def.hpp>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "errors.hpp"
#include "message.hpp"

namespace devicebound::retry {

// ---------------------------------------------------------------------------------------------
// Error classes (SPEC 8.8)
// ---------------------------------------------------------------------------------------------

/// What a failed attempt means for retrying (SPEC 8.8, 8.9).
enum class error_class : std::uint8_t {
  transient,  ///< retry with the normal backoff
  throttled,  ///< retry, with the throttled backoff where the policy has one (Node, SPEC 8.2)
  fatal,      ///< stop and notify (SPEC 8.6)
};

/// `transient`, `throttled`, `fatal`.
constexpr std::string_view to_string(error_class c) noexcept {
  switch (c) {
    case error_class::transient:
      return "transient";
    case error_class::throttled:
      return "throttled";
    case error_class::fatal:
      return "fatal";
  }
  return "fatal";
}

/// Whose classification table to use. They differ only where SPEC 8.8 lists a disagreement.
enum class error_table : std::uint8_t {
  consolidated,  ///< SPEC 8.8 with our choices: QuotaExceeded and Unauthorized are fatal
  c,             ///< C: Unauthorized is retried (CONNACK 5 NOT_AUTHORIZED, SPEC 8.1)
  node,          ///< Node DefaultErrorFilter (SPEC 8.2): same as consolidated
  python,        ///< Python transient set (SPEC 8.3): same as consolidated
  csharp_v1,     ///< C# v1: QuotaExceededException is transient (SPEC 8.4)
  csharp_v2,     ///< C# v2: QuotaExceeded is transient (SPEC 8.4)
  java,          ///< Java: no filter in SPEC 8.5, so consolidated
};

/// `consolidated`, `c`, `node`, `python`, `csharp_v1`, `csharp_v2`, `java`.
constexpr std::string_view to_string(error_table t) noexcept {
  switch (t) {
    case error_table::consolidated:
      return "consolidated";
    case error_table::c:
      return "c";
    case error_table::node:
      return "node";
    case error_table::python:
      return "python";
    case error_table::csharp_v1:
      return "csharp_v1";
    case error_table::csharp_v2:
      return "csharp_v2";
    case error_table::java:
      return "java";
  }
  return "consolidated";
}

/// Classifies an error code with one SDK's table (SPEC 8.8). Pure; unknown codes are fatal.
constexpr error_class classify(errc e, error_table t = error_table::consolidated) noexcept {
  const bool csharp = t == error_table::csharp_v1 || t == error_table::csharp_v2;
  switch (e) {
    case errc::throttling:
      return error_class::throttled;  // 429: all SDKs retry (SPEC 8.8)
    case errc::not_connected:         // network loss
    case errc::timeout:               // 408
    case errc::server_busy:           // 503, CONNACK 3
    case errc::server_error:
      return error_class::transient;  // 500
    // SPEC 8.8 disagreement: transient in C# v1/v2, fatal in Node. A daily quota does not
    // come back within any backoff cap, so by default we stop and notify.
    case errc::iothub_quota_exceeded:
      return csharp ? error_class::transient : error_class::fatal;
    // SPEC 8.8 disagreement: C retries CONNACK 5 NOT_AUTHORIZED, Python/Node/C# stop.
    case errc::unauthorized:
      return t == error_table::c ? error_class::transient : error_class::fatal;
    case errc::argument_invalid:
    case errc::device_maximum_queue_depth_exceeded:  // 403004: the sender must back off (SPEC 8.8)
    case errc::device_not_found:
    case errc::device_already_exists:
    case errc::precondition_failed:
    case errc::device_message_lock_lost:  // do not retry a disposition (SPEC 8.8)
    case errc::message_too_large:
    case errc::not_supported:  // e.g. reject over MQTT (SPEC 8.2, 8.4)
    case errc::invalid_operation:
    case errc::malformed:
      return error_class::fatal;
  }
  return error_class::fatal;  // Node: a name missing from the filter is not retried (SPEC 8.2)
}

/// A classification table plus user overrides; an override wins over the table.
struct classifier {
  error_table table = error_table::consolidated;
  std::vector<std::pair<errc, error_class>> overrides;

  /// Sets (or replaces) the class of one code.
  classifier& set(errc e, error_class c) {
    for (auto& [code, cls] : overrides)
      if (code == e) {
        cls = c;
        return *this;
      }
    overrides.emplace_back(e, c);
    return *this;
  }

  /// The plain table `t`, without overrides.
  static classifier of(error_table t) {
    classifier c;
    c.table = t;
    return c;
  }

  error_class operator()(errc e) const noexcept {
    for (const auto& [code, cls] : overrides)
      if (code == e)
        return cls;
    return classify(e, table);
  }

  friend bool operator==(const classifier&, const classifier&) = default;
};

// ---------------------------------------------------------------------------------------------
// Random sources
// ---------------------------------------------------------------------------------------------

/// A source of doubles in [0, 1): a callable returning a floating-point value. Values outside
/// [0, 1) (or NaN) are clamped into it. Integer-returning generators are refused on purpose:
/// wrap a UniformRandomBitGenerator in `urbg_random`.
template <class R>
concept unit_random = requires(R& r) {
  { r() } -> std::floating_point;
};

/// Always returns `value` (clamped into [0, 1)); for tests and for bounds.
struct fixed_random {
  double value = 0.0;
  double operator()() const noexcept { return value; }
};

/// Adapts a UniformRandomBitGenerator (`std::mt19937_64`, ...) to `unit_random`.
template <std::uniform_random_bit_generator G>
class urbg_random {
 public:
  urbg_random() = default;
  explicit urbg_random(G g) : g_(std::move(g)) {}
  double operator()() { return std::generate_canonical<double, 53>(g_); }
  G& generator() noexcept { return g_; }

 private:
  G g_{};
};

/// The controller's default source. Seed it per client (from `std::random_device` at the I/O
/// edge): the default seed is fixed, so unseeded clients would jitter in lock-step.
using default_random = urbg_random<std::mt19937_64>;

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

/// One draw from `r`, clamped into [0, 1).
template <unit_random R>
double draw(R& r) {
  const double x = static_cast<double>(r());
  if (!(x >= 0.0))
    return 0.0;
  if (x >= 1.0)
    return std::nextafter(1.0, 0.0);
  return x;
}

/// `T` is one of `Ts`.
template <class T, class... Ts>
concept one_of = (std::same_as<T, Ts> || ...);

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Backoff formulas (SPEC 8.7). `delay(i, rnd)` is the i-th wait of the schedule (i = 0 is the
// first wait that is not an immediate first retry); std::nullopt means "never retry".
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Policy knobs (SPEC 8.9)
// ---------------------------------------------------------------------------------------------

/// How the first retry of an episode is timed.
enum class first_retry : std::uint8_t {
  backoff,    ///< waits delay(0), delay(1), ... (Node as coded, C# v1 client, C# v2)
  immediate,  ///< an extra retry after `first_retry_delay`, then delay(0), ... (C; Node intent;
              ///< Python with 10 ms)
  fast,       ///< after `first_retry_delay` instead of delay(0), then delay(1), ... (Java,
              ///< C# FastFirstRetry)
};

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

/// When the total retry timeout starts.
enum class timeout_origin : std::uint8_t {
  operation,    ///< at `start` (Node 240 s, C# 4 min per operation)
  first_retry,  ///< at the first failure, i.e. the first retry (C `first_retry_tick`)
};

/// `operation`, `first_retry`.
constexpr std::string_view to_string(timeout_origin o) noexcept {
  return o == timeout_origin::operation ? "operation" : "first_retry";
}

/// What a wait is measured from.
enum class wait_origin : std::uint8_t {
  failure,        ///< the failure report (Node, Python, C#, Java)
  attempt_start,  ///< the start of the failed attempt (C `last_retry_tick`, SPEC 8.1 step 6)
};

/// `failure`, `attempt_start`.
constexpr std::string_view to_string(wait_origin o) noexcept {
  return o == wait_origin::failure ? "failure" : "attempt_start";
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

// ---------------------------------------------------------------------------------------------
// Decisions and states
// ---------------------------------------------------------------------------------------------

/// What the caller should do next.
enum class verdict : std::uint8_t {
  none,         ///< nothing (after a success or a reset)
  attempt_now,  ///< attempt now, then report attempt_succeeded or attempt_failed
  attempt_at,   ///< wait until `at`, then report timer_fired
  give_up,      ///< stop retrying; `reason` says why
};

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

/// Why the controller gave up.
enum class stop_reason : std::uint8_t {
  none,
  fatal_error,        ///< the failure was classified fatal (state Fatal)
  no_retry,           ///< the backoff never retries (state Exhausted)
  retries_exhausted,  ///< `max_retries` reached (state Exhausted)
  timeout,            ///< the next attempt would be at or after the deadline (state Exhausted)
};

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

/// `Idle`, `Attempting`, `Waiting`, `Succeeded`, `Exhausted`, `Fatal`.
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

// ---------------------------------------------------------------------------------------------
// The machine (SPEC 8.9)
// ---------------------------------------------------------------------------------------------

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
  struct Idle : msmf::state<> {
    static constexpr retry::state id = retry::state::idle;
  };
  struct Attempting : msmf::state<> {
    static constexpr retry::state id = retry::state::attempting;
  };
  struct Waiting : msmf::state<> {
    static constexpr retry::state id = retry::state::waiting;
  };
  struct Succeeded : msmf::state<> {
    static constexpr retry::state id = retry::state::succeeded;
  };
  struct Exhausted : msmf::state<> {
    static constexpr retry::state id = retry::state::exhausted;
  };
  struct Fatal : msmf::state<> {
    static constexpr retry::state id = retry::state::fatal;
  };
  using initial_state = Idle;

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
    Row< Idle,       start,             Attempting, begin_operation,    none              >,
    Row< Succeeded,  start,             Attempting, begin_operation,    none              >,
    Row< Attempting, attempt_succeeded, Succeeded,  record_success,     none              >,
    Row< Attempting, attempt_failed,    Attempting, retry_now,          plans_attempt_now >,
    Row< Attempting, attempt_failed,    Waiting,    schedule_retry,     plans_attempt_at  >,
    Row< Attempting, attempt_failed,    Exhausted,  stop,               plans_give_up     >,
    Row< Attempting, attempt_failed,    Fatal,      stop,               plans_fatal       >,
    Row< Waiting,    timer_fired,       Attempting, retry_when_due,     is_due            >,
    Row< Waiting,    timer_fired,       none,       refuse_early_timer, is_early          >,
    Row< Waiting,    timer_fired,       Exhausted,  stop_late,          is_past_deadline  >,
    Row< Idle,       reset,             Idle,       clear,              none              >,
    Row< Attempting, reset,             Idle,       clear,              none              >,
    Row< Waiting,    reset,             Idle,       clear,              none              >,
    Row< Succeeded,  reset,             Idle,       clear,              none              >,
    Row< Exhausted,  reset,             Idle,       clear,              none              >,
    Row< Fatal,      reset,             Idle,       clear,              none              >
  > {};
  // clang-format on

  /// The public state for an MSM state id.
  template <class Fsm>
  static retry::state state_of(int id) {
    using stt = typename Fsm::stt;
    namespace back = boost::msm::back;
    if (id == back::get_state_id<stt, Attempting>::value)
      return Attempting::id;
    if (id == back::get_state_id<stt, Waiting>::value)
      return Waiting::id;
    if (id == back::get_state_id<stt, Succeeded>::value)
      return Succeeded::id;
    if (id == back::get_state_id<stt, Exhausted>::value)
      return Exhausted::id;
    if (id == back::get_state_id<stt, Fatal>::value)
      return Fatal::id;
    return Idle::id;
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
  time_point next_attempt_{};                ///< valid in Waiting
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

  /// Begins an operation (its first attempt): Idle/Succeeded -> Attempting.
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
  /// Forgets the episode (count, timeout) and returns to Idle from any state.
  result<decision> reset(time_point now) { return process(detail::reset{now}); }

  /// Replaces the policy and resets, as C's SetRetryPolicy does (SPEC 8.1); re-arms Exhausted.
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
  /// When the next attempt is due (in Waiting), else nullopt.
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

// ---------------------------------------------------------------------------------------------
// SDK profiles (SPEC 8.7)
// ---------------------------------------------------------------------------------------------

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

/// Names accepted by `profile()`.
inline constexpr std::array<std::string_view, 14> names = {"c_sdk",
                                                           "c_exponential_backoff",
                                                           "c_linear_backoff",
                                                           "c_interval",
                                                           "c_random",
                                                           "c_immediate",
                                                           "c_none",
                                                           "node",
                                                           "node_no_retry",
                                                           "python",
                                                           "csharp_v1",
                                                           "csharp_v1_default_exponential",
                                                           "csharp_v2",
                                                           "java"};

/// A profile by name, as a runtime policy (for bindings).
inline result<policy> profile(std::string_view name) {
  if (name == "c_sdk")
    return policy(c_sdk());
  if (name == "c_exponential_backoff")
    return policy(c_exponential_backoff());
  if (name == "c_linear_backoff")
    return policy(c_linear_backoff());
  if (name == "c_interval")
    return policy(c_interval());
  if (name == "c_random")
    return policy(c_random());
  if (name == "c_immediate")
    return policy(c_immediate());
  if (name == "c_none")
    return policy(c_none());
  if (name == "node")
    return policy(node());
  if (name == "node_no_retry")
    return policy(node_no_retry());
  if (name == "python")
    return policy(python());
  if (name == "csharp_v1")
    return policy(csharp_v1());
  if (name == "csharp_v1_default_exponential")
    return policy(csharp_v1_default_exponential());
  if (name == "csharp_v2")
    return policy(csharp_v2());
  if (name == "java")
    return policy(java());
  return make_error(errc::argument_invalid, "retry: unknown profile '" + std::string(name) + "'");
}

}  // namespace profiles

// ---------------------------------------------------------------------------------------------
// Runtime configuration (bindings)
// ---------------------------------------------------------------------------------------------

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
