// Retry policies (SPEC 8): exact schedules of every SDK profile with a fixed random source,
// the classification tables, the retry machine row by row, and properties over random
// policies and failure sequences.
//
// Built twice: `test_retry` runs every test against `controller` (the table executor the
// clients use), `test_retry_msm` (DEVICEBOUND_TEST_RETRY_MSM) against `msm_controller` (the
// same table as a Boost.MSM machine) and adds the property that the two agree on every event
// sequence.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <devicebound/retry.hpp>
#ifdef DEVICEBOUND_TEST_RETRY_MSM
#include <devicebound/retry/machine.hpp>
#endif
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

using namespace devicebound;
using namespace std::chrono_literals;
namespace rt {
using namespace devicebound::retry;
#ifdef DEVICEBOUND_TEST_RETRY_MSM
/// The executor under test: the Boost.MSM machine. A class, not an alias
/// template: clang 14 has no class template argument deduction for aliases.
template <class Policy = devicebound::retry::policy,
          class Random = devicebound::retry::default_random>
class controller : public devicebound::retry::msm_controller<Policy, Random> {
 public:
  using devicebound::retry::msm_controller<Policy, Random>::msm_controller;
};
template <class Policy>
controller(Policy) -> controller<Policy>;
template <class Policy, class Random>
controller(Policy, Random) -> controller<Policy, Random>;
#endif
}  // namespace rt
namespace pf = devicebound::retry::profiles;

namespace {

const time_point t0{std::chrono::sys_days{std::chrono::year{2026} / 1 / 1}};

/// Returns the values of `v` in turn, forever (0 when empty).
struct script_random {
  std::vector<double> v;
  std::size_t i = 0;
  double operator()() { return v.empty() ? 0.0 : v[i++ % v.size()]; }
};

/// What a run of back-to-back failures produced: the wait between each failure and the
/// next attempt, and how the run ended if the controller gave up.
struct run {
  std::vector<duration> waits;
  std::optional<rt::decision> stopped;
  std::uint32_t retries = 0;
  rt::state final_state = rt::state::idle;
};

/// Starts an operation at `start_at` and fails every attempt `cost` after it starts, `n`
/// times or until the controller gives up. Timers fire exactly when asked.
template <class Policy, class Random = rt::fixed_random>
run fail_repeatedly(Policy p, Random r, int n, duration cost = 0ms,
                    rt::error_class cls = rt::error_class::transient, time_point start_at = t0) {
  rt::controller<Policy, Random> c{std::move(p), std::move(r)};
  run out;
  time_point t = start_at;
  EXPECT_TRUE(c.start(t));
  for (int i = 0; i < n; ++i) {
    t += cost;
    auto d = c.attempt_failed(cls, t);
    EXPECT_TRUE(d) << d.error().message;
    if (d->what == rt::verdict::give_up) {
      out.stopped = *d;
      break;
    }
    if (d->what == rt::verdict::attempt_now) {
      out.waits.push_back(0ms);
      continue;
    }
    EXPECT_EQ(d->what, rt::verdict::attempt_at);
    EXPECT_EQ(c.next_attempt_at(), d->at);
    out.waits.push_back(d->at - t);
    t = d->at;
    auto fired = c.timer_fired(t);
    EXPECT_TRUE(fired);
    EXPECT_EQ(fired->what, rt::verdict::attempt_now);
  }
  out.retries = c.retries();
  out.final_state = c.state();
  return out;
}

std::vector<duration> ms_list(std::initializer_list<long long> v) {
  std::vector<duration> out;
  for (auto x : v)
    out.emplace_back(x);
  return out;
}

std::vector<duration> s_list(std::initializer_list<long long> v) {
  std::vector<duration> out;
  for (auto x : v)
    out.emplace_back(std::chrono::seconds{x});
  return out;
}

constexpr double almost_one = 0.999999;

}  // namespace

// ---------------------------------------------------------------------------------------------
// SPEC 8.1: C SDK
// ---------------------------------------------------------------------------------------------

TEST(Spec_8_1, CDefaultScheduleIs0_1_2_4_8_16_30) {
  auto r = fail_repeatedly(pf::c_sdk(), rt::fixed_random{0.0}, 8);
  EXPECT_EQ(r.waits, s_list({0, 1, 2, 4, 8, 16, 30, 30}));
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.retries, 8u);
}

TEST(Spec_8_1, CDefaultJitterIsPlus0To5PercentInWholeSeconds) {
  EXPECT_EQ(fail_repeatedly(pf::c_sdk(), rt::fixed_random{0.5}, 8).waits,
            s_list({0, 1, 2, 4, 8, 16, 30, 30}));
  EXPECT_EQ(fail_repeatedly(pf::c_sdk(), rt::fixed_random{0.99}, 8).waits,
            s_list({0, 1, 2, 4, 8, 16, 31, 31}))
      << "30 s * 1.0495 = 31.485 s, truncated";
  // Every wait is whole seconds and within [base, base * 1.05].
  const auto p = pf::c_sdk();
  for (double u : {0.0, 0.25, 0.5, 0.75, almost_one}) {
    rt::fixed_random rnd{u};
    for (std::uint32_t k = 1; k < 40; ++k) {
      const auto d = *p.delay(k, rt::error_class::transient, rnd);
      const double base = std::min(std::ldexp(1.0, static_cast<int>(k) - 1), 30.0) * 1000.0;
      EXPECT_EQ(d.count() % 1000, 0);
      EXPECT_GE(static_cast<double>(d.count()), std::floor(base / 1000) * 1000);
      EXPECT_LE(static_cast<double>(d.count()), base * 1.05);
    }
  }
}

TEST(Spec_8_1, CExponentialBackoffScheduleIs0_1_2_4_8_16_30) {
  EXPECT_EQ(fail_repeatedly(pf::c_exponential_backoff(), rt::fixed_random{almost_one}, 8).waits,
            s_list({0, 1, 2, 4, 8, 16, 30, 30}));
}

TEST(Spec_8_1, CLinearBackoffScheduleIs0_5_10_15_20_25_30) {
  EXPECT_EQ(fail_repeatedly(pf::c_linear_backoff(), rt::fixed_random{}, 8).waits,
            s_list({0, 5, 10, 15, 20, 25, 30, 30}));
}

TEST(Spec_8_1, CIntervalScheduleIs0_5_5_5) {
  EXPECT_EQ(fail_repeatedly(pf::c_interval(), rt::fixed_random{}, 4).waits, s_list({0, 5, 5, 5}));
}

TEST(Spec_8_1, CRandomScheduleIs5TimesUniformTruncatedAndUncapped) {
  EXPECT_EQ(fail_repeatedly(pf::c_random(), rt::fixed_random{0.0}, 3).waits, s_list({0, 0, 0}));
  EXPECT_EQ(fail_repeatedly(pf::c_random(), rt::fixed_random{0.5}, 3).waits, s_list({0, 2, 2}));
  EXPECT_EQ(fail_repeatedly(pf::c_random(), rt::fixed_random{0.99}, 3).waits, s_list({0, 4, 4}));
  auto big = pf::c_random();
  big.backoff.initial = 100s;  // retry_interval_sec; RANDOM has no cap
  EXPECT_EQ(fail_repeatedly(big, rt::fixed_random{0.99}, 2).waits, s_list({0, 99}));
}

TEST(Spec_8_1, CImmediateRetriesAtOnceUntilTheTimeout) {
  // Each attempt fails 1 s after it starts; the 5 s timeout starts at the first failure.
  auto r = fail_repeatedly(pf::c_immediate(5s), rt::fixed_random{}, 100, 1s);
  EXPECT_EQ(r.waits, s_list({0, 0, 0, 0, 0}));
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.stopped->reason, rt::stop_reason::timeout);
  EXPECT_EQ(r.stopped->at, t0 + 6s);
  EXPECT_EQ(r.final_state, rt::state::exhausted);
}

TEST(Spec_8_1, CNoneStopsAtTheFirstFailure) {
  auto r = fail_repeatedly(pf::c_none(), rt::fixed_random{}, 5);
  EXPECT_TRUE(r.waits.empty());
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.stopped->reason, rt::stop_reason::no_retry);
  EXPECT_EQ(r.final_state, rt::state::exhausted);
}

TEST(Spec_8_1, CWaitIsMeasuredFromTheAttemptStart) {
  rt::controller c{pf::c_exponential_backoff(), rt::fixed_random{}};
  ASSERT_TRUE(c.start(t0));
  EXPECT_EQ(c.attempt_failed(rt::error_class::transient, t0)->what, rt::verdict::attempt_now);
  // Retry 1 started at t0 and fails after 400 ms: retry 2 is due 1 s after t0.
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, t0 + 400ms),
            rt::decision::wait_until(t0 + 1s));
  ASSERT_TRUE(c.timer_fired(t0 + 1s));
  // Retry 2 (wait 2 s) takes 30 s to fail (CONNACK timeout): retry 3 goes at once (SPEC 8.1).
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, t0 + 31s),
            rt::decision::attempt(t0 + 31s));
}

TEST(Spec_8_1, CTimeoutCountsFromTheFirstRetryNotTheOperation) {
  // The operation starts 100 s before its first failure; the 10 s timeout starts there.
  rt::controller c{pf::c_sdk(10s), rt::fixed_random{}};
  ASSERT_TRUE(c.start(t0));
  const time_point f = t0 + 100s;
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, f), rt::decision::attempt(f));
  EXPECT_EQ(c.deadline(), f + 10s);
  std::vector<time_point> attempts{f};
  time_point t = f;
  for (;;) {
    auto d = c.attempt_failed(rt::error_class::transient, t);
    ASSERT_TRUE(d);
    if (d->what == rt::verdict::give_up) {
      EXPECT_EQ(d->reason, rt::stop_reason::timeout);
      break;
    }
    t = d->at;
    ASSERT_TRUE(c.timer_fired(t));
    attempts.push_back(t);
  }
  EXPECT_EQ(attempts, (std::vector<time_point>{f, f + 1s, f + 3s, f + 7s})) << "next: f + 15 s";
  EXPECT_EQ(c.state(), rt::state::exhausted);
  EXPECT_EQ(c.retries(), 4u);
}

TEST(Spec_8_1, CTimeoutZeroMeansRetryForever) {
  auto r = fail_repeatedly(pf::c_sdk(0s), rt::fixed_random{almost_one}, 1000);
  EXPECT_FALSE(r.stopped);
  ASSERT_EQ(r.waits.size(), 1000u);
  EXPECT_EQ(r.waits.back(), 31s);
  rt::controller c{pf::c_sdk(), rt::fixed_random{}};
  ASSERT_TRUE(c.start(t0));
  ASSERT_TRUE(c.attempt_failed(rt::error_class::transient, t0));
  EXPECT_EQ(c.deadline(), std::nullopt);
}

TEST(Spec_8_1, CExhaustedIsRearmedByResetOrByANewPolicy) {
  rt::controller c{pf::c_sdk(2s), rt::fixed_random{}};
  ASSERT_TRUE(c.start(t0));
  ASSERT_TRUE(c.attempt_failed(rt::error_class::transient, t0));  // retry 1 now
  ASSERT_TRUE(c.attempt_failed(rt::error_class::transient, t0));  // retry 2 at +1 s
  ASSERT_TRUE(c.timer_fired(t0 + 1s));
  auto d = c.attempt_failed(rt::error_class::transient, t0 + 1s);  // +3 s >= +2 s
  ASSERT_EQ(d->reason, rt::stop_reason::timeout);
  ASSERT_EQ(c.state(), rt::state::exhausted);
  EXPECT_EQ(c.start(t0 + 5s).code(), errc::invalid_operation);
  // reset re-arms
  EXPECT_EQ(*c.reset(t0 + 5s), rt::decision::nothing(t0 + 5s));
  EXPECT_EQ(c.state(), rt::state::idle);
  EXPECT_EQ(c.retries(), 0u);
  ASSERT_TRUE(c.start(t0 + 5s));
  EXPECT_EQ(c.attempt_failed(rt::error_class::transient, t0 + 5s)->what, rt::verdict::attempt_now);
  // so does SetRetryPolicy (SPEC 8.1: a new retry control)
  ASSERT_TRUE(c.attempt_failed(rt::error_class::transient, t0 + 5s));
  ASSERT_TRUE(c.timer_fired(t0 + 6s));
  ASSERT_EQ(c.attempt_failed(rt::error_class::transient, t0 + 6s)->what, rt::verdict::give_up);
  EXPECT_TRUE(c.set_policy(pf::c_sdk(60s), t0 + 7s));
  EXPECT_EQ(c.state(), rt::state::idle);
  EXPECT_EQ(c.active_policy().opts.timeout, 60s);
  EXPECT_TRUE(c.start(t0 + 7s));
}

TEST(Spec_8_1, CSuccessResetsTheCountLikeConnack) {
  rt::controller c{pf::c_sdk(), rt::fixed_random{}};
  time_point t = t0;
  ASSERT_TRUE(c.start(t));
  for (int i = 0; i < 4; ++i) {
    auto d = c.attempt_failed(rt::error_class::transient, t);
    if (d->what == rt::verdict::attempt_at) {
      t = d->at;
      ASSERT_TRUE(c.timer_fired(t));
    }
  }
  ASSERT_EQ(c.retries(), 4u);
  EXPECT_EQ(*c.attempt_succeeded(t), rt::decision::nothing(t));
  EXPECT_EQ(c.state(), rt::state::succeeded);
  EXPECT_EQ(c.retries(), 0u);
  ASSERT_TRUE(c.start(t + 1h));
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, t + 1h), rt::decision::attempt(t + 1h))
      << "first retry immediate again";
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, t + 1h),
            rt::decision::wait_until(t + 1h + 1s));
}

TEST(Spec_8_1, CLargeRetryCountsDoNotOverflow_Issue18) {
  const auto p = pf::c_sdk();
  rt::fixed_random rnd{almost_one};
  for (std::uint32_t k : {31u, 32u, 33u, 63u, 64u, 65u, 1023u, 1024u, 100000u, UINT32_MAX})
    EXPECT_EQ(p.delay(k, rt::error_class::transient, rnd), 31s) << k;
  // Without a meaningful cap the wait saturates instead of wrapping.
  rt::exponential_backoff huge{1s, duration::max()};
  for (std::uint32_t k : {10u, 62u, 63u, 64u, 2000u, UINT32_MAX}) {
    auto d = huge.delay(k, rnd);
    ASSERT_TRUE(d);
    EXPECT_GT(*d, 0ms);
    EXPECT_LE(static_cast<double>(d->count()), rt::detail::max_wait_ms);
  }
  rt::exponential_backoff_with_jitter add{1s, duration::max(), 1s, rt::jitter::additive(0, 2)};
  EXPECT_GE(add.delay(UINT32_MAX, rnd)->count(), 0);
  rt::fixed_random zero{0.0};
  EXPECT_EQ(add.delay(UINT32_MAX, zero), 1s) << "inf * 0 must not become NaN";
}

TEST(Spec_8_1, CTableRetriesUnauthorizedButNotQuota) {
  const auto p = pf::c_sdk();
  EXPECT_EQ(p.errors(errc::unauthorized), rt::error_class::transient);
  EXPECT_EQ(p.errors(errc::iothub_quota_exceeded), rt::error_class::fatal);
}

// ---------------------------------------------------------------------------------------------
// SPEC 8.2: Node SDK (documented intent; the two coded bugs are not reproduced)
// ---------------------------------------------------------------------------------------------

TEST(Spec_8_2, NodeImmediateFirstRetryHappens) {
  auto r = fail_repeatedly(pf::node(), rt::fixed_random{}, 2);
  EXPECT_EQ(r.waits, ms_list({0, 100})) << "the code would start at 100 ms (SPEC 8.2 bug)";
}

TEST(Spec_8_2, NodeNormalScheduleAddsTheLowerBound) {
  // min(100 + (2^(x-1) - 1) * U[C(1-jd), C(1-ju)), 10000) with U at its lower end: 50 ms.
  EXPECT_EQ(fail_repeatedly(pf::node(), rt::fixed_random{0.0}, 10).waits,
            ms_list({0, 100, 150, 250, 450, 850, 1650, 3250, 6450, 10000}));
  // ... and near its upper end, 75 ms.
  auto hi = fail_repeatedly(pf::node(), rt::fixed_random{almost_one}, 10).waits;
  const std::vector<double> upper{0, 100, 175, 325, 625, 1225, 2425, 4825, 9625, 10000};
  ASSERT_EQ(hi.size(), upper.size());
  for (std::size_t i = 2; i + 1 < upper.size(); ++i) {
    EXPECT_LT(static_cast<double>(hi[i].count()), upper[i]) << i;
    EXPECT_GE(static_cast<double>(hi[i].count()), upper[i] - 1) << i;
  }
  EXPECT_EQ(hi.back(), 10000ms);
}

TEST(Spec_8_2, NodeThrottledScheduleUsesTheLongConstants) {
  EXPECT_EQ(
      fail_repeatedly(pf::node(), rt::fixed_random{0.0}, 7, 0ms, rt::error_class::throttled).waits,
      ms_list({10000, 12500, 17500, 27500, 47500, 60000, 60000}))
      << "no immediate first retry when throttled";
  auto hi =
      fail_repeatedly(pf::node(), rt::fixed_random{almost_one}, 5, 0ms, rt::error_class::throttled)
          .waits;
  EXPECT_EQ(hi, ms_list({10000, 13749, 21249, 36249, 60000}));
}

TEST(Spec_8_2, NodeOperationTimeoutIs240s) {
  auto r = fail_repeatedly(pf::node(), rt::fixed_random{}, 100, 0ms, rt::error_class::throttled);
  // Attempts at 10, 22.5, 40, 67.5, 115, 175, 235 s; the next (295 s) is past 240 s.
  EXPECT_EQ(r.retries, 7u);
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.stopped->reason, rt::stop_reason::timeout);
}

TEST(Spec_8_2, NodeFilterStopsOnQuotaUnauthorizedAndLockLost) {
  const auto p = pf::node();
  EXPECT_EQ(p.errors(errc::iothub_quota_exceeded), rt::error_class::fatal);
  EXPECT_EQ(p.errors(errc::unauthorized), rt::error_class::fatal);
  EXPECT_EQ(p.errors(errc::device_message_lock_lost), rt::error_class::fatal);
  EXPECT_EQ(p.errors(errc::throttling), rt::error_class::throttled);
  EXPECT_EQ(p.errors(errc::not_connected), rt::error_class::transient);
}

TEST(Spec_8_2, NodeNoRetryGivesUpAtOnce) {
  auto r = fail_repeatedly(pf::node_no_retry(), rt::fixed_random{}, 3);
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.stopped->reason, rt::stop_reason::no_retry);
}

// ---------------------------------------------------------------------------------------------
// SPEC 8.3: Python SDK
// ---------------------------------------------------------------------------------------------

TEST(Spec_8_3, PythonReconnectsAfter10msThenEvery10s) {
  auto r = fail_repeatedly(pf::python(), rt::fixed_random{almost_one}, 500);
  EXPECT_FALSE(r.stopped) << "no attempt limit, no time limit";
  ASSERT_EQ(r.waits.size(), 500u);
  EXPECT_EQ(r.waits[0], 10ms);
  for (std::size_t i = 1; i < r.waits.size(); ++i)
    EXPECT_EQ(r.waits[i], 10s) << i;
  EXPECT_EQ(fail_repeatedly(pf::python(3s), rt::fixed_random{}, 3).waits,
            ms_list({10, 3000, 3000}));
}

TEST(Spec_8_3, PythonStopsOnUnauthorized) {
  rt::controller c{pf::python(), rt::fixed_random{}};
  ASSERT_TRUE(c.start(t0));
  auto d = c.attempt_failed(errc::unauthorized, t0);
  EXPECT_EQ(*d, rt::decision::stop(rt::stop_reason::fatal_error, t0));
  EXPECT_EQ(c.state(), rt::state::fatal);
}

// ---------------------------------------------------------------------------------------------
// SPEC 8.4: C# SDK v1 and v2
// ---------------------------------------------------------------------------------------------

TEST(Spec_8_4, CSharpV1DefaultIsAbout1_1_1_1_then10s) {
  EXPECT_EQ(fail_repeatedly(pf::csharp_v1(), rt::fixed_random{0.0}, 9).waits,
            ms_list({1000, 1000, 1000, 1000, 1300, 2580, 5140, 10000, 10000}));
  EXPECT_EQ(fail_repeatedly(pf::csharp_v1(), rt::fixed_random{0.5}, 8).waits,
            ms_list({1000, 1000, 1000, 1000, 1600, 3200, 6400, 10000}));
  auto hi = fail_repeatedly(pf::csharp_v1(), rt::fixed_random{almost_one}, 8).waits;
  EXPECT_EQ(hi, ms_list({1000, 1000, 1000, 1000, 1899, 3819, 7659, 10000}));
}

TEST(Spec_8_4, CSharpV1MinimumSpacingCountsTheFailedAttempt) {
  rt::controller c{pf::csharp_v1(), rt::fixed_random{}};
  ASSERT_TRUE(c.start(t0));
  // The first attempt fails after 600 ms; the 100 ms wait is stretched to the 1 s spacing.
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, t0 + 600ms),
            rt::decision::wait_until(t0 + 1s));
  ASSERT_TRUE(c.timer_fired(t0 + 1s));
  // The retry fails after 2 s: the 180 ms wait stands.
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, t0 + 3s),
            rt::decision::wait_until(t0 + 3180ms));
}

TEST(Spec_8_4, CSharpV1OperationTimeoutIs4Minutes) {
  auto r = fail_repeatedly(pf::csharp_v1(), rt::fixed_random{}, 1000);
  // Retries at 1, 2, 3, 4, 5.3, 7.88, 13.02 s, then every 10 s up to 233.02 s.
  EXPECT_EQ(r.retries, 29u);
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.stopped->reason, rt::stop_reason::timeout);
}

TEST(Spec_8_4, CSharpV1DefaultExponentialIs0_9_25_30For10Retries) {
  auto r = fail_repeatedly(pf::csharp_v1_default_exponential(), rt::fixed_random{}, 20);
  EXPECT_EQ(r.waits, ms_list({0, 9000, 25000, 30000, 30000, 30000, 30000, 30000, 30000, 30000}));
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.stopped->reason, rt::stop_reason::retries_exhausted);
  EXPECT_EQ(r.final_state, rt::state::exhausted);
  auto hi = fail_repeatedly(pf::csharp_v1_default_exponential(), rt::fixed_random{almost_one}, 3);
  EXPECT_EQ(hi.waits, ms_list({0, 12999, 30000}));
}

TEST(Spec_8_4, CSharpQuotaExceededIsTransient) {
  EXPECT_EQ(pf::csharp_v1().errors(errc::iothub_quota_exceeded), rt::error_class::transient);
  EXPECT_EQ(pf::csharp_v2().errors(errc::iothub_quota_exceeded), rt::error_class::transient);
  EXPECT_EQ(pf::csharp_v1().errors(errc::device_maximum_queue_depth_exceeded),
            rt::error_class::fatal);
  EXPECT_EQ(pf::csharp_v2().errors(errc::unauthorized), rt::error_class::fatal);
}

TEST(Spec_8_4, CSharpV2Is128msDoublingWithin95To105Percent) {
  EXPECT_EQ(fail_repeatedly(pf::csharp_v2(), rt::fixed_random{0.5}, 6).waits,
            ms_list({128, 256, 512, 1024, 2048, 4096}));
  EXPECT_EQ(fail_repeatedly(pf::csharp_v2(), rt::fixed_random{0.0}, 4).waits,
            ms_list({121, 243, 486, 972}));
  EXPECT_EQ(fail_repeatedly(pf::csharp_v2(), rt::fixed_random{almost_one}, 4).waits,
            ms_list({134, 268, 537, 1075}));
  const auto p = pf::csharp_v2();
  rt::fixed_random half{0.5};
  EXPECT_EQ(p.delay(18, rt::error_class::transient, half), 33554432ms);
  EXPECT_EQ(p.delay(19, rt::error_class::transient, half), 12h) << "maxWait 12 h";
  rt::fixed_random top{almost_one};
  EXPECT_LE(*p.delay(40, rt::error_class::transient, top), duration{12h} * 105 / 100);
}

TEST(Spec_8_4, CSharpV2JitterSkipsWaitsUnder50ms) {
  rt::exponential_backoff_with_jitter b{16ms, 1h, 0ms, rt::jitter::plus_minus(0.05, 50ms)};
  rt::fixed_random low{0.0};
  EXPECT_EQ(b.delay(0, low), 16ms);
  EXPECT_EQ(b.delay(1, low), 32ms);
  EXPECT_EQ(b.delay(2, low), 60ms) << "64 ms * 0.95";
}

TEST(Spec_8_4, CSharpV2MaxRetriesStops) {
  auto r = fail_repeatedly(pf::csharp_v2(3), rt::fixed_random{0.5}, 10);
  EXPECT_EQ(r.waits, ms_list({128, 256, 512}));
  ASSERT_TRUE(r.stopped);
  EXPECT_EQ(r.stopped->reason, rt::stop_reason::retries_exhausted);
}

// ---------------------------------------------------------------------------------------------
// SPEC 8.5: Java
// ---------------------------------------------------------------------------------------------

TEST(Spec_8_5, JavaScheduleIs0_then100Plus2nMinus1TimesDelta) {
  EXPECT_EQ(fail_repeatedly(pf::java(), rt::fixed_random{0.5}, 9).waits,
            ms_list({0, 200, 400, 800, 1600, 3200, 6400, 10000, 10000}));
  EXPECT_EQ(fail_repeatedly(pf::java(), rt::fixed_random{0.0}, 8).waits,
            ms_list({0, 180, 340, 660, 1300, 2580, 5140, 10000}));
  EXPECT_EQ(fail_repeatedly(pf::java(), rt::fixed_random{almost_one}, 7).waits,
            ms_list({0, 219, 459, 939, 1899, 3819, 7659}));
}

// ---------------------------------------------------------------------------------------------
// SPEC 8.8: classification
// ---------------------------------------------------------------------------------------------

TEST(Spec_8_8, ConsolidatedTable) {
  using enum rt::error_class;
  const std::vector<std::pair<errc, rt::error_class>> table{
      {errc::throttling, throttled},
      {errc::not_connected, transient},
      {errc::timeout, transient},
      {errc::server_busy, transient},
      {errc::server_error, transient},
      {errc::iothub_quota_exceeded, fatal},
      {errc::unauthorized, fatal},
      {errc::argument_invalid, fatal},
      {errc::device_maximum_queue_depth_exceeded, fatal},
      {errc::device_not_found, fatal},
      {errc::device_already_exists, fatal},
      {errc::precondition_failed, fatal},
      {errc::device_message_lock_lost, fatal},
      {errc::message_too_large, fatal},
      {errc::not_supported, fatal},
      {errc::invalid_operation, fatal},
      {errc::malformed, fatal},
  };
  for (auto [e, cls] : table) {
    EXPECT_EQ(rt::classify(e), cls) << to_string(e);
    EXPECT_EQ(rt::classifier{}(e), cls) << to_string(e);
  }
  static_assert(rt::classify(errc::throttling) == throttled, "classify is constexpr");
}

TEST(Spec_8_8, DisagreementsAreDecidedPerTable) {
  using rt::error_table;
  for (auto t : {error_table::consolidated, error_table::c, error_table::node, error_table::python,
                 error_table::java})
    EXPECT_EQ(rt::classify(errc::iothub_quota_exceeded, t), rt::error_class::fatal) << to_string(t);
  for (auto t : {error_table::csharp_v1, error_table::csharp_v2})
    EXPECT_EQ(rt::classify(errc::iothub_quota_exceeded, t), rt::error_class::transient)
        << to_string(t);
  for (auto t : {error_table::consolidated, error_table::node, error_table::python,
                 error_table::csharp_v1, error_table::csharp_v2, error_table::java})
    EXPECT_EQ(rt::classify(errc::unauthorized, t), rt::error_class::fatal) << to_string(t);
  EXPECT_EQ(rt::classify(errc::unauthorized, error_table::c), rt::error_class::transient);
}

TEST(Spec_8_8, OverridesWinOverTheTable) {
  auto c = rt::classifier::of(rt::error_table::node);
  c.set(errc::iothub_quota_exceeded, rt::error_class::throttled)
      .set(errc::timeout, rt::error_class::fatal)
      .set(errc::timeout, rt::error_class::transient);
  EXPECT_EQ(c(errc::iothub_quota_exceeded), rt::error_class::throttled);
  EXPECT_EQ(c(errc::timeout), rt::error_class::transient);
  EXPECT_EQ(c.overrides.size(), 2u);
  EXPECT_EQ(c(errc::unauthorized), rt::error_class::fatal);
}

TEST(Spec_8_8, UnknownCodesAreFatal) {
  EXPECT_EQ(rt::classify(static_cast<errc>(123456)), rt::error_class::fatal);
}

TEST(Spec_8_8, AttemptFailedWithACodeUsesThePolicyTable) {
  rt::controller v1{pf::csharp_v1(), rt::fixed_random{}};
  ASSERT_TRUE(v1.start(t0));
  EXPECT_EQ(v1.attempt_failed(errc::iothub_quota_exceeded, t0)->what, rt::verdict::attempt_at);
  rt::controller n{pf::node(), rt::fixed_random{}};
  ASSERT_TRUE(n.start(t0));
  EXPECT_EQ(n.attempt_failed(errc::iothub_quota_exceeded, t0)->reason,
            rt::stop_reason::fatal_error);
  EXPECT_EQ(n.state(), rt::state::fatal);
}

// ---------------------------------------------------------------------------------------------
// SPEC 8.9: the machine and its knobs
// ---------------------------------------------------------------------------------------------

namespace {

struct snapshot {
  rt::state s;
  std::uint32_t retries;
  std::optional<time_point> next;
  rt::decision last;
  friend bool operator==(const snapshot&, const snapshot&) = default;
};

template <class C>
snapshot snap(const C& c) {
  return {c.state(), c.retries(), c.next_attempt_at(), c.last_decision()};
}

using any_controller = rt::controller<rt::policy, rt::fixed_random>;

/// A controller in `s` at time t0 + 10 s (Waiting: next attempt due at t0 + 11 s).
any_controller in_state(rt::state s) {
  auto p = rt::policy(pf::c_sdk(30s));
  any_controller c{p, rt::fixed_random{}};
  const time_point t = t0 + 10s;
  switch (s) {
    case rt::state::idle:
      break;
    case rt::state::attempting:
      (void)c.start(t);
      break;
    case rt::state::waiting:
      (void)c.start(t);
      (void)c.attempt_failed(rt::error_class::transient, t);
      (void)c.attempt_failed(rt::error_class::transient, t);
      break;
    case rt::state::succeeded:
      (void)c.start(t);
      (void)c.attempt_succeeded(t);
      break;
    case rt::state::exhausted:
      (void)c.set_policy(rt::policy(pf::c_none()), t);
      (void)c.start(t);
      (void)c.attempt_failed(rt::error_class::transient, t);
      break;
    case rt::state::fatal:
      (void)c.start(t);
      (void)c.attempt_failed(rt::error_class::fatal, t);
      break;
  }
  EXPECT_EQ(c.state(), s);
  return c;
}

}  // namespace

TEST(Spec_8_9, FatalErrorStopsWithNoFurtherAttempts) {
  auto c = in_state(rt::state::fatal);
  EXPECT_EQ(c.last_decision(), rt::decision::stop(rt::stop_reason::fatal_error, t0 + 10s));
  EXPECT_EQ(c.next_attempt_at(), std::nullopt);
  const time_point t = t0 + 20s;
  EXPECT_EQ(c.start(t).code(), errc::invalid_operation);
  EXPECT_EQ(c.timer_fired(t).code(), errc::invalid_operation);
  EXPECT_EQ(c.attempt_failed(rt::error_class::transient, t).code(), errc::invalid_operation);
  EXPECT_EQ(c.attempt_succeeded(t).code(), errc::invalid_operation);
  EXPECT_EQ(c.state(), rt::state::fatal);
  EXPECT_TRUE(c.reset(t));
  EXPECT_EQ(c.state(), rt::state::idle);
}

TEST(Spec_8_9, InvalidEventsReturnTypedErrorsAndChangeNothing) {
  enum ev { start, failed, succeeded, timer };
  const std::vector<std::pair<rt::state, std::vector<ev>>> invalid{
      {rt::state::idle, {failed, succeeded, timer}},
      {rt::state::attempting, {start, timer}},
      {rt::state::waiting, {start, failed, succeeded}},
      {rt::state::succeeded, {failed, succeeded, timer}},
      {rt::state::exhausted, {start, failed, succeeded, timer}},
      {rt::state::fatal, {start, failed, succeeded, timer}},
  };
  for (const auto& [s, events] : invalid)
    for (ev e : events) {
      auto c = in_state(s);
      const auto before = snap(c);
      const time_point t = t0 + 20s;
      result<rt::decision> r = e == start       ? c.start(t)
                               : e == failed    ? c.attempt_failed(rt::error_class::transient, t)
                               : e == succeeded ? c.attempt_succeeded(t)
                                                : c.timer_fired(t);
      ASSERT_FALSE(r) << to_string(s) << " event " << e;
      EXPECT_EQ(r.code(), errc::invalid_operation);
      EXPECT_NE(r.error().message.find(std::string(to_string(s))), std::string::npos)
          << r.error().message;
      EXPECT_EQ(snap(c), before) << to_string(s) << " event " << e;
      // The refused event left time alone: an earlier valid event is still accepted.
      EXPECT_TRUE(c.reset(t0 + 10s));
    }
}

TEST(Spec_8_9, EarlyTimerIsRefused) {
  auto c = in_state(rt::state::waiting);
  ASSERT_EQ(c.next_attempt_at(), t0 + 11s);
  const auto before = snap(c);
  auto r = c.timer_fired(t0 + 10500ms);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::invalid_operation);
  EXPECT_EQ(snap(c), before);
  EXPECT_EQ(c.timer_fired(t0 + 11s)->what, rt::verdict::attempt_now);
  EXPECT_EQ(c.retries(), 2u);
}

TEST(Spec_8_9, LateTimerPastTheDeadlineGivesUp) {
  auto c = in_state(rt::state::waiting);  // deadline t0 + 40 s
  ASSERT_EQ(c.deadline(), t0 + 40s);
  EXPECT_EQ(*c.timer_fired(t0 + 40s), rt::decision::stop(rt::stop_reason::timeout, t0 + 40s));
  EXPECT_EQ(c.state(), rt::state::exhausted);
  EXPECT_EQ(c.retries(), 1u) << "no attempt after the retry timeout";
}

TEST(Spec_8_9, TimeGoingBackwardsIsRefused) {
  auto c = in_state(rt::state::attempting);
  const auto before = snap(c);
  auto r = c.attempt_failed(rt::error_class::transient, t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
  EXPECT_EQ(snap(c), before);
  EXPECT_EQ(c.set_policy(rt::policy(pf::java()), t0).code(), errc::argument_invalid);
  EXPECT_EQ(c.active_policy(), rt::policy(pf::c_sdk(30s)));
}

TEST(Spec_8_9, ResetOnSuccessOffKeepsTheBackoffGoing) {
  auto p = pf::c_exponential_backoff();
  p.opts.reset_on_success = false;
  rt::controller c{p, rt::fixed_random{}};
  ASSERT_TRUE(c.start(t0));
  ASSERT_TRUE(c.attempt_failed(rt::error_class::transient, t0));  // retry 1 now
  auto d = c.attempt_failed(rt::error_class::transient, t0);      // retry 2 at +1 s
  ASSERT_TRUE(c.timer_fired(d->at));
  ASSERT_TRUE(c.attempt_succeeded(t0 + 2s));
  EXPECT_EQ(c.retries(), 2u);
  ASSERT_TRUE(c.start(t0 + 1h));
  EXPECT_EQ(*c.attempt_failed(rt::error_class::transient, t0 + 1h),
            rt::decision::wait_until(t0 + 1h + 2s))
      << "continues at retry 3, no immediate first retry";
}

TEST(Spec_8_9, ThrottledWithoutAThrottledBackoffUsesTheNormalOne) {
  EXPECT_EQ(
      fail_repeatedly(pf::c_sdk(), rt::fixed_random{}, 4, 0ms, rt::error_class::throttled).waits,
      s_list({0, 1, 2, 4}));
}

TEST(Spec_8_9, FastFirstRetryReplacesTheFirstWait) {
  rt::linear_backoff b{1s, 1h};
  auto p = rt::basic_policy<rt::linear_backoff>(b);
  EXPECT_EQ(fail_repeatedly(p, rt::fixed_random{}, 3).waits, s_list({1, 2, 3}));
  p.opts.first = rt::first_retry::immediate;
  EXPECT_EQ(fail_repeatedly(p, rt::fixed_random{}, 3).waits, s_list({0, 1, 2}));
  p.opts.first = rt::first_retry::fast;
  EXPECT_EQ(fail_repeatedly(p, rt::fixed_random{}, 3).waits, s_list({0, 2, 3}));
}

TEST(Spec_8_9, RandomSourcesAreClampedIntoTheUnitInterval) {
  rt::random b{10s};
  rt::fixed_random above{7.0}, below{-3.0}, nan{std::nan("")};
  EXPECT_EQ(b.delay(0, above), 9999ms);
  EXPECT_EQ(b.delay(0, below), 0ms);
  EXPECT_EQ(b.delay(0, nan), 0ms);
  rt::default_random g{std::mt19937_64{42}};
  for (int i = 0; i < 1000; ++i) {
    const double u = g();
    ASSERT_GE(u, 0.0);
    ASSERT_LE(u, 1.0);
  }
  static_assert(!rt::unit_random<std::mt19937_64>, "integer generators must be wrapped");
  static_assert(rt::unit_random<rt::default_random>);
}

TEST(Spec_8_9, ProfilesByNameAndConfigRoundTrip) {
  for (auto name : pf::names) {
    auto p = pf::profile(name);
    ASSERT_TRUE(p) << name;
    auto back = rt::make_policy(rt::to_config(*p));
    ASSERT_TRUE(back) << name << ": " << back.error().message;
    EXPECT_EQ(*back, *p) << name;
  }
  EXPECT_EQ(pf::profile("cobol").code(), errc::argument_invalid);
  EXPECT_EQ(*pf::profile("c_sdk"), rt::policy(pf::c_sdk()));
}

TEST(Spec_8_7, EachProfileNameIsListedOnceBesideItsPolicy) {
  ASSERT_EQ(pf::names.size(), pf::all.size());
  for (std::size_t i = 0; i < pf::all.size(); ++i) {
    EXPECT_EQ(pf::names[i], pf::all[i].name);
    for (std::size_t j = i + 1; j < pf::all.size(); ++j)
      EXPECT_NE(pf::all[i].name, pf::all[j].name);
    EXPECT_EQ(*pf::profile(pf::all[i].name), pf::all[i].make()) << pf::all[i].name;
  }
  EXPECT_EQ(pf::all.front().name, "c_sdk");
  EXPECT_EQ(pf::all.front().make(), rt::policy(pf::c_sdk()));
}

/// `parse(to_string(v)) == v` for every value, values are 0, 1, ... in order (the Python
/// binding passes them as integers), and anything else parses to nullopt.
template <class E, std::size_t N>
void expect_strings_round_trip(const std::array<E, N>& values,
                               std::optional<E> (*parse)(std::string_view)) {
  for (std::size_t i = 0; i < N; ++i) {
    EXPECT_EQ(static_cast<std::size_t>(values[i]), i) << to_string(values[i]);
    EXPECT_EQ(parse(to_string(values[i])), values[i]) << to_string(values[i]);
    for (std::size_t j = i + 1; j < N; ++j)
      EXPECT_NE(to_string(values[i]), to_string(values[j]));
  }
  EXPECT_EQ(parse(""), std::nullopt);
  EXPECT_EQ(parse("no such value"), std::nullopt);
  EXPECT_EQ(parse(std::string(to_string(values[0])) + " "), std::nullopt);
}

TEST(RetryStrings, EveryEnumParsesItsOwnSpelling) {
  expect_strings_round_trip(rt::error_class_values, rt::parse_error_class);
  expect_strings_round_trip(rt::error_table_values, rt::parse_error_table);
  expect_strings_round_trip(rt::jitter_shape_values, rt::parse_jitter_shape);
  expect_strings_round_trip(rt::first_retry_values, rt::parse_first_retry);
  expect_strings_round_trip(rt::timeout_origin_values, rt::parse_timeout_origin);
  expect_strings_round_trip(rt::wait_origin_values, rt::parse_wait_origin);
  expect_strings_round_trip(rt::verdict_values, rt::parse_verdict);
  expect_strings_round_trip(rt::stop_reason_values, rt::parse_stop_reason);
  expect_strings_round_trip(rt::state_values, rt::parse_state);
  expect_strings_round_trip(rt::backoff_kind_values, rt::parse_backoff_kind);
  expect_strings_round_trip(rt::event_kind_values, rt::parse_event_kind);
  expect_strings_round_trip(rt::guard_values, rt::parse_guard);
  expect_strings_round_trip(rt::action_values, rt::parse_action);
  static_assert(rt::parse_first_retry("fast") == rt::first_retry::fast);
  static_assert(rt::parse_state("Exhausted") == rt::state::exhausted);
  static_assert(!rt::parse_state("exhausted"), "states parse from their display names");
}

// retry/table.hpp holds SPEC 8.9's table: every state is reached or left by a row, every
// (state, event) pair with several rows is split by guards, and each action appears.
TEST(Spec_8_9, TheTableCoversEveryStateAndAction) {
  for (rt::state st : rt::state_values) {
    bool has_reset = false;
    for (const rt::row& r : rt::transition_table)
      has_reset = has_reset || (r.source == st && r.on == rt::event_kind::reset &&
                                r.target == rt::state::idle && r.act == rt::action::clear);
    EXPECT_TRUE(has_reset) << "no reset row from " << to_string(st);
  }
  for (rt::action a : rt::action_values) {
    bool used = false;
    for (const rt::row& r : rt::transition_table)
      used = used || r.act == a;
    EXPECT_TRUE(used) << to_string(a) << " is in no row";
  }
  for (const rt::row& r : rt::transition_table) {
    int same_pair = 0;
    for (const rt::row& o : rt::transition_table)
      same_pair += o.source == r.source && o.on == r.on;
    if (same_pair > 1) {
      EXPECT_NE(r.when, rt::guard::none)
          << to_string(r.source) << " x " << to_string(r.on) << " has rows without guards";
    }
  }
}

TEST(RetryStrings, ErrorCodesParseFromTheirNames) {
  for (errc e : errc_values)
    EXPECT_EQ(parse_errc(to_string(e)), e) << to_string(e);
  EXPECT_EQ(parse_errc("Unknown"), std::nullopt);
  EXPECT_EQ(parse_errc("404001"), std::nullopt);
  static_assert(parse_errc("DeviceNotFound") == errc::device_not_found);
}

TEST(Spec_8_9, PolicyConfigRejectsBadValues) {
  rt::policy_config c;
  ASSERT_TRUE(rt::make_policy(c));
  auto bad = [&](auto mutate) {
    rt::policy_config x = c;
    mutate(x);
    return rt::make_policy(x).code();
  };
  EXPECT_EQ(bad([](auto& x) { x.backoff.initial = -1ms; }), errc::argument_invalid);
  EXPECT_EQ(bad([](auto& x) { x.backoff.cap = duration::max(); }), errc::argument_invalid);
  EXPECT_EQ(bad([](auto& x) { x.backoff.jitter.low = 2.0; }), errc::argument_invalid);
  EXPECT_EQ(bad([](auto& x) { x.backoff.jitter.high = std::nan(""); }), errc::argument_invalid);
  EXPECT_EQ(bad([](auto& x) { x.opts.timeout = -5s; }), errc::argument_invalid);
  EXPECT_EQ(bad([](auto& x) {
              x.throttled = rt::backoff_config{};
              x.throttled->floor = -1ms;
            }),
            errc::argument_invalid);
  EXPECT_EQ(bad([](auto& x) { x.backoff.kind = static_cast<rt::backoff_kind>(99); }),
            errc::argument_invalid);
}

// ---------------------------------------------------------------------------------------------
// Properties (SPEC 8.9)
// ---------------------------------------------------------------------------------------------

namespace {

rt::jitter gen_jitter() {
  const auto shape = *rc::gen::element(rt::jitter_shape::none, rt::jitter_shape::multiplicative,
                                       rt::jitter_shape::additive);
  const double a = *rc::gen::inRange(0, 3000) / 1000.0;
  const double b = *rc::gen::inRange(0, 3000) / 1000.0;
  return {shape, std::min(a, b), std::max(a, b), duration{*rc::gen::inRange(0, 2000)}};
}

rt::backoff_config gen_backoff() {
  rt::backoff_config c;
  c.kind = *rc::gen::element(
      rt::backoff_kind::no_retry, rt::backoff_kind::immediate, rt::backoff_kind::interval,
      rt::backoff_kind::linear_backoff, rt::backoff_kind::exponential_backoff,
      rt::backoff_kind::exponential_backoff_with_jitter, rt::backoff_kind::random);
  c.initial = duration{*rc::gen::inRange(0, 20000)};
  c.cap = duration{*rc::gen::inRange(0, 120000)};
  c.floor = duration{*rc::gen::inRange(0, 5000)};
  c.jitter = gen_jitter();
  return c;
}

rt::policy_config gen_config() {
  rt::policy_config c;
  c.backoff = gen_backoff();
  if (*rc::gen::arbitrary<bool>())
    c.throttled = gen_backoff();
  auto& o = c.opts;
  o.first = *rc::gen::element(rt::first_retry::backoff, rt::first_retry::immediate,
                              rt::first_retry::fast);
  o.first_retry_delay = duration{*rc::gen::inRange(0, 100)};
  o.timeout = *rc::gen::arbitrary<bool>() ? duration{*rc::gen::inRange(0, 600000)} : 0ms;
  o.timeout_from =
      *rc::gen::element(rt::timeout_origin::operation, rt::timeout_origin::first_retry);
  o.max_retries = static_cast<std::uint32_t>(*rc::gen::inRange(0, 30));
  o.reset_on_success = *rc::gen::arbitrary<bool>();
  o.min_spacing = duration{*rc::gen::element(0, 0, 1000, 2500)};
  o.wait_from = *rc::gen::element(rt::wait_origin::failure, rt::wait_origin::attempt_start);
  o.whole_seconds = *rc::gen::arbitrary<bool>();
  c.errors = rt::classifier::of(*rc::gen::element(rt::error_table::consolidated, rt::error_table::c,
                                                  rt::error_table::csharp_v1));
  return c;
}

double gen_unit() {
  return *rc::gen::inRange(0, 1000000) / 1000000.0;
}

/// The bounds of one wait, from the formulas of SPEC 8.7 written out independently.
std::pair<double, double> formula_bounds(const rt::backoff_config& c, std::uint32_t i) {
  const double init = static_cast<double>(c.initial.count());
  const double cap = static_cast<double>(c.cap.count());
  const double floor = static_cast<double>(c.floor.count());
  const double p = std::pow(2.0, std::min<double>(i, 1000));
  const double lo = c.jitter.low, hi = c.jitter.high;
  switch (c.kind) {
    case rt::backoff_kind::no_retry:
    case rt::backoff_kind::immediate:
      return {0, 0};
    case rt::backoff_kind::interval:
      return {init, init};
    case rt::backoff_kind::linear_backoff: {
      const double w = std::min(init * (i + 1.0), cap);
      return {w, w};
    }
    case rt::backoff_kind::exponential_backoff: {
      const double w = std::min(init * p, cap);
      return {w, w};
    }
    case rt::backoff_kind::exponential_backoff_with_jitter: {
      if (c.jitter.shape == rt::jitter_shape::additive)
        return {std::min(floor + (p - 1) * init * lo, cap),
                std::min(floor + (p - 1) * init * hi, cap)};
      const double w = std::min(init * p, cap);
      if (c.jitter.shape == rt::jitter_shape::none ||
          w < static_cast<double>(c.jitter.threshold.count()))
        return {w, w};
      return {w * lo, w * hi};
    }
    case rt::backoff_kind::random:
      return {0, init};
  }
  return {0, 0};
}

}  // namespace

RC_GTEST_PROP(Spec_8_9, EveryWaitIsWithinItsFormulaBoundsAndNeverNegative, ()) {
  const auto cfg = gen_backoff();
  RC_TAG(std::string(to_string(cfg.kind)), std::string(to_string(cfg.jitter.shape)));
  const auto b = rt::make_backoff(cfg);
  RC_ASSERT(b.has_value());
  const auto i = static_cast<std::uint32_t>(
      *rc::gen::oneOf(rc::gen::inRange(0, 40), rc::gen::inRange(0, 2000000000)));
  rt::fixed_random rnd{gen_unit()};
  const auto d = b->delay(i, rnd);
  if (cfg.kind == rt::backoff_kind::no_retry) {
    RC_ASSERT(!d.has_value());
    return;
  }
  RC_ASSERT(d.has_value());
  const double got = static_cast<double>(d->count());
  const auto [lo, hi] = formula_bounds(cfg, i);
  RC_ASSERT(got >= 0.0);
  RC_ASSERT(got >= std::floor(lo) - 1.0);  // the SDKs truncate to whole units
  RC_ASSERT(got <= hi);
  // [min, cap x (1 + jitter)]: nothing but RANDOM and INTERVAL ever exceeds the jittered cap.
  if (cfg.kind != rt::backoff_kind::random && cfg.kind != rt::backoff_kind::interval)
    RC_ASSERT(got <= static_cast<double>(cfg.cap.count()) * std::max(1.0, cfg.jitter.high));
}

RC_GTEST_PROP(Spec_8_9, SchedulesNeverGoBackNorPastTheTimeoutNorAfterAFatalError, ()) {
  const auto cfg = gen_config();
  auto p = rt::make_policy(cfg);
  RC_ASSERT(p.has_value());
  std::vector<double> us;
  for (int i = 0, n = *rc::gen::inRange(1, 8); i < n; ++i)
    us.push_back(gen_unit());
  rt::controller<rt::policy, script_random> c{*p, script_random{us}};

  time_point t = t0 + std::chrono::hours{*rc::gen::inRange(0, 1000)};
  RC_ASSERT(c.start(t).has_value());
  time_point op_start = t;
  std::optional<time_point> first_failure;
  bool saw_timeout = false;
  const int steps = *rc::gen::inRange(1, 60);
  for (int s = 0; s < steps; ++s) {
    RC_ASSERT(c.state() == rt::state::attempting);
    t += duration{*rc::gen::inRange(0, 20000)};  // how long the attempt took
    const int outcome = *rc::gen::inRange(0, 10);
    if (outcome == 0) {
      RC_ASSERT(c.attempt_succeeded(t)->what == rt::verdict::none);
      if (cfg.opts.reset_on_success)
        RC_ASSERT(c.retries() == 0u);
      t += duration{*rc::gen::inRange(0, 60000)};
      RC_ASSERT(c.start(t).has_value());
      op_start = t;
      if (cfg.opts.reset_on_success)
        first_failure.reset();
      continue;
    }
    const auto cls = outcome == 1   ? rt::error_class::fatal
                     : outcome <= 3 ? rt::error_class::throttled
                                    : rt::error_class::transient;
    if (!first_failure)
      first_failure = t;
    const std::uint32_t before = c.retries();
    const auto d = c.attempt_failed(cls, t);
    RC_ASSERT(d.has_value());
    RC_ASSERT(d->at >= t);  // never scheduled in the past, never a negative wait
    std::optional<time_point> deadline;
    if (cfg.opts.timeout > 0ms)
      deadline =
          (cfg.opts.timeout_from == rt::timeout_origin::operation ? op_start : *first_failure) +
          cfg.opts.timeout;
    if (cls == rt::error_class::fatal) {
      RC_ASSERT(*d == rt::decision::stop(rt::stop_reason::fatal_error, t));
      RC_ASSERT(c.state() == rt::state::fatal);
      RC_ASSERT(!c.attempt_failed(rt::error_class::transient, t).has_value());
      RC_ASSERT(!c.timer_fired(t + 1h).has_value());
      RC_ASSERT(!c.start(t).has_value());
      RC_ASSERT(c.retries() == before);  // no retry after a fatal error
    }
    if (d->what == rt::verdict::give_up) {
      if (d->reason == rt::stop_reason::timeout)
        saw_timeout = true;
      RC_ASSERT(c.state() ==
                (cls == rt::error_class::fatal ? rt::state::fatal : rt::state::exhausted));
      RC_ASSERT(c.next_attempt_at() == std::nullopt);
      t += 1s;
      RC_ASSERT(c.reset(t).has_value());
      RC_ASSERT(c.start(t).has_value());
      op_start = t;
      first_failure.reset();
      continue;
    }
    if (deadline)
      RC_ASSERT(d->at < *deadline);  // no attempt at or after the retry timeout
    if (cfg.opts.max_retries != 0)
      RC_ASSERT(before < cfg.opts.max_retries);
    if (d->what == rt::verdict::attempt_at) {
      RC_ASSERT(c.state() == rt::state::waiting);
      RC_ASSERT(c.next_attempt_at() == d->at);
      const time_point fire = d->at + duration{*rc::gen::element(0, 0, 0, 5000, 600000)};
      const auto f = c.timer_fired(fire);
      RC_ASSERT(f.has_value());
      t = fire;
      if (deadline && fire >= *deadline) {
        saw_timeout = true;
        RC_ASSERT(*f == rt::decision::stop(rt::stop_reason::timeout, fire));
        RC_ASSERT(c.retries() == before);
        t += 1s;
        RC_ASSERT(c.reset(t).has_value());
        RC_ASSERT(c.start(t).has_value());
        op_start = t;
        first_failure.reset();
        continue;
      }
      RC_ASSERT(f->what == rt::verdict::attempt_now);
    } else {
      RC_ASSERT(d->what == rt::verdict::attempt_now);
    }
    RC_ASSERT(c.retries() == before + 1);
    if (cfg.opts.max_retries != 0)
      RC_ASSERT(c.retries() <= cfg.opts.max_retries);
  }
  RC_CLASSIFY(saw_timeout, "reached the retry timeout");
}

RC_GTEST_PROP(Spec_8_9, ASuccessResetsTheEpisode, ()) {
  auto cfg = gen_config();
  cfg.opts.reset_on_success = true;
  auto p = rt::make_policy(cfg);
  RC_ASSERT(p.has_value());
  const double u = gen_unit();
  rt::controller<rt::policy, rt::fixed_random> used{*p, rt::fixed_random{u}};
  time_point t = t0;
  RC_ASSERT(used.start(t).has_value());
  for (int i = 0, n = *rc::gen::inRange(0, 12); i < n; ++i) {
    t += duration{*rc::gen::inRange(0, 3000)};
    const auto d = used.attempt_failed(rt::error_class::transient, t);
    RC_ASSERT(d.has_value());
    if (d->what == rt::verdict::give_up) {
      RC_ASSERT(used.reset(t).has_value());
      RC_ASSERT(used.start(t).has_value());
    } else if (d->what == rt::verdict::attempt_at) {
      t = d->at;
      RC_ASSERT(used.timer_fired(t).has_value());
      if (used.state() == rt::state::exhausted) {
        RC_ASSERT(used.reset(t).has_value());
        RC_ASSERT(used.start(t).has_value());
      }
    }
  }
  RC_ASSERT(used.attempt_succeeded(t).has_value());
  RC_ASSERT(used.retries() == 0u);
  // After the success, the next failure is treated exactly like a fresh controller's first.
  const duration gap{*rc::gen::inRange(0, 100000)}, cost{*rc::gen::inRange(0, 5000)};
  rt::controller<rt::policy, rt::fixed_random> fresh{*p, rt::fixed_random{u}};
  RC_ASSERT(used.start(t + gap).has_value());
  RC_ASSERT(fresh.start(t + gap).has_value());
  const auto a = used.attempt_failed(rt::error_class::transient, t + gap + cost);
  const auto b = fresh.attempt_failed(rt::error_class::transient, t + gap + cost);
  RC_ASSERT(a.has_value());
  RC_ASSERT(b.has_value());
  RC_ASSERT(*a == *b);
}

RC_GTEST_PROP(Spec_8_9, RefusedEventsChangeNothing, ()) {
  auto p = rt::make_policy(gen_config());
  RC_ASSERT(p.has_value());
  rt::controller<rt::policy, rt::fixed_random> c{*p, rt::fixed_random{gen_unit()}};
  time_point t = t0;
  for (int s = 0, n = *rc::gen::inRange(1, 80); s < n; ++s) {
    t += duration{*rc::gen::element(0, 0, 10, 1000, 30000)};
    const auto back = duration{*rc::gen::element(0, 0, 0, 0, 1)};  // sometimes go back in time
    const time_point at = t - back;
    const auto before = snap(c);
    time_point used = at;
    result<rt::decision> r = [&]() -> result<rt::decision> {
      switch (*rc::gen::inRange(0, 7)) {
        case 0:
          return c.start(at);
        case 1:
          return c.attempt_failed(rt::error_class::transient, at);
        case 2:
          return c.attempt_failed(rt::error_class::throttled, at);
        case 3:
          return c.attempt_failed(rt::error_class::fatal, at);
        case 4:
          return c.attempt_succeeded(at);
        case 5: {
          const auto next = c.next_attempt_at();
          if (next && *rc::gen::arbitrary<bool>())
            used = std::max(*next, at);
          return c.timer_fired(used);
        }
        default:
          return c.reset(at);
      }
    }();
    if (!r) {
      RC_ASSERT(r.code() == errc::invalid_operation || r.code() == errc::argument_invalid);
      RC_ASSERT(snap(c) == before);
    } else {
      t = std::max(t, used);
    }
  }
}

TEST(RetryController, StateSurvivesCopyAndMove) {
  // Boost.MSM's own move constructor restarts the machine; the controller must not.
  using rt::controller, rt::policy, rt::error_class;
  namespace profiles = rt::profiles;
  const devicebound::time_point t{std::chrono::seconds(1000)};
  controller<> c{policy(profiles::c_sdk())};
  ASSERT_TRUE(c.start(t));
  ASSERT_TRUE(c.attempt_failed(error_class::transient, t));
  const auto st = c.state();
  const auto retries = c.retries();
  controller<> copy(c);
  EXPECT_EQ(copy.state(), st);
  EXPECT_EQ(copy.retries(), retries);
  controller<> moved(std::move(c));
  EXPECT_EQ(moved.state(), st);
  EXPECT_EQ(moved.retries(), retries);
  controller<> assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.state(), st);
}

#ifdef DEVICEBOUND_TEST_RETRY_MSM
// The clients run `controller`; the Boost.MSM machine runs the same table. For random policies
// and random event sequences (any event in any state, sometimes with a time going backwards),
// both executors give the same answer or the same refusal, and end in the same state with the
// same retries, next attempt and deadline.
RC_GTEST_PROP(Spec_8_9, TableAndMsmExecutorsAgree, ()) {
  auto p = devicebound::retry::make_policy(gen_config());
  RC_ASSERT(p.has_value());
  const double u = gen_unit();
  devicebound::retry::controller<devicebound::retry::policy, rt::fixed_random> table{
      *p, rt::fixed_random{u}};
  devicebound::retry::msm_controller<devicebound::retry::policy, rt::fixed_random> msm{
      *p, rt::fixed_random{u}};
  time_point t = t0;
  for (int s = 0, n = *rc::gen::inRange(1, 120); s < n; ++s) {
    t += duration{*rc::gen::element(0, 0, 10, 1000, 30000)};
    const time_point at = t - duration{*rc::gen::element(0, 0, 0, 0, 1)};
    const int kind = *rc::gen::inRange(0, 8);
    const auto cls = *rc::gen::element(rt::error_class::transient, rt::error_class::throttled,
                                       rt::error_class::fatal);
    auto apply = [&](auto& c) -> result<rt::decision> {
      switch (kind) {
        case 0:
          return c.start(at);
        case 1:
          return c.attempt_failed(cls, at);
        case 2:
          return c.attempt_succeeded(at);
        case 3:
          return c.timer_fired(c.next_attempt_at().value_or(at));
        case 4:
          return c.timer_fired(at);
        case 5:
          return c.reset(at);
        case 6:
          return c.attempt_failed(devicebound::errc::server_busy, at);
        default:
          return c.set_policy(*p, at);
      }
    };
    const auto a = apply(table);
    const auto b = apply(msm);
    RC_ASSERT(a.has_value() == b.has_value());
    if (a)
      RC_ASSERT(*a == *b);
    else
      RC_ASSERT(a.error().code == b.error().code && a.error().message == b.error().message);
    RC_ASSERT(table.state() == msm.state());
    RC_ASSERT(table.retries() == msm.retries());
    RC_ASSERT(table.next_attempt_at() == msm.next_attempt_at());
    RC_ASSERT(table.deadline() == msm.deadline());
    RC_ASSERT(table.last_decision() == msm.last_decision());
  }
}
#endif
