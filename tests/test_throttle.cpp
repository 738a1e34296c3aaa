// The daemon's C2D throttles (apps/devicebound-hub/throttle.hpp, SPEC 2.7):
// a token bucket driven by made-up instants, no clock and no sleeps.
#include <gtest/gtest.h>

#include <cstdint>

#include "throttle.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
using namespace std::chrono_literals;

const time_point t0 = time_point{} + std::chrono::hours(24 * 365 * 30);

TEST(Spec_2_7_Throttle, tier_names_parse_in_any_case_and_print_as_iot_hub_writes_them) {
  for (auto t : {throttle_tier::off, throttle_tier::free, throttle_tier::s1, throttle_tier::s2,
                 throttle_tier::s3})
    EXPECT_EQ(parse_throttle_tier(to_string(t)), t);
  EXPECT_EQ(parse_throttle_tier("s3"), throttle_tier::s3);
  EXPECT_EQ(parse_throttle_tier("FREE"), throttle_tier::free);
  EXPECT_EQ(parse_throttle_tier("S4"), std::nullopt);
  EXPECT_EQ(parse_throttle_tier(""), std::nullopt);
  EXPECT_EQ(parse_throttle_tier("B1"), std::nullopt);
}

TEST(Spec_2_7_Throttle, per_tier_rates_are_spec_2_7) {
  EXPECT_EQ(rates_of(throttle_tier::off).sends_per_minute, 0u);
  for (auto t : {throttle_tier::free, throttle_tier::s1, throttle_tier::s2}) {
    EXPECT_EQ(rates_of(t).sends_per_minute, 100u);
    EXPECT_EQ(rates_of(t).receives_per_minute, 1000u);
  }
  EXPECT_EQ(rates_of(throttle_tier::s3).sends_per_minute, 5000u);
  EXPECT_EQ(rates_of(throttle_tier::s3).receives_per_minute, 50000u);
}

TEST(Spec_2_7_Throttle, a_full_bucket_admits_one_minute_of_burst_then_refuses) {
  token_bucket b(100, t0);
  EXPECT_EQ(b.available(t0), 100u);
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(b.take(t0)) << i;
  EXPECT_FALSE(b.admits(t0));
  EXPECT_FALSE(b.take(t0));
  EXPECT_EQ(b.available(t0), 0u);
}

TEST(Spec_2_7_Throttle, refill_is_the_rate_and_exact_at_every_step) {
  token_bucket b(100, t0);  // one every 600 ms
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(b.take(t0));
  EXPECT_FALSE(b.admits(t0 + 599ms));
  EXPECT_EQ(b.wait(t0 + 599ms), 1ms);
  EXPECT_EQ(b.wait(t0), 600ms);
  EXPECT_TRUE(b.admits(t0 + 600ms));
  EXPECT_TRUE(b.take(t0 + 600ms));
  EXPECT_FALSE(b.take(t0 + 600ms));
  // A steady rate in 1 ms steps over ten minutes: exactly 100 a minute.
  std::uint64_t taken = 0;
  for (auto t = t0 + 601ms; t <= t0 + 600ms + 10min; t += 1ms)
    taken += b.take(t) ? 1 : 0;
  EXPECT_EQ(taken, 1000u);
}

TEST(Spec_2_7_Throttle, the_burst_never_exceeds_a_minute_however_long_the_pause) {
  token_bucket b(5000, t0);
  ASSERT_TRUE(b.take(t0));
  EXPECT_EQ(b.available(t0 + 1s), 5000u);
  EXPECT_EQ(b.available(t0 + std::chrono::hours(24 * 365 * 100)), 5000u);
  EXPECT_EQ(b.available(time_point::max()), 5000u);
}

TEST(Spec_2_7_Throttle, a_clock_that_goes_back_refills_nothing) {
  token_bucket b(60, t0);  // one a second
  for (int i = 0; i < 60; ++i)
    ASSERT_TRUE(b.take(t0 + 10s));
  EXPECT_FALSE(b.admits(t0));
  EXPECT_FALSE(b.admits(t0 + 10s));
  EXPECT_TRUE(b.admits(t0 + 11s));
}

TEST(Spec_2_7_Throttle, a_refusal_changes_nothing) {
  token_bucket b(100, t0);
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(b.take(t0));
  const auto before_at_300 = b.available(t0 + 300ms);
  const auto wait_before = b.wait(t0 + 300ms);
  for (int i = 0; i < 1000; ++i)
    ASSERT_FALSE(b.take(t0 + 300ms));
  EXPECT_EQ(b.available(t0 + 300ms), before_at_300);
  EXPECT_EQ(b.wait(t0 + 300ms), wait_before);
  // The next is admitted exactly when it would have been without the refusals.
  EXPECT_TRUE(b.take(t0 + 600ms));
}

TEST(Spec_2_7_Throttle, off_limits_nothing) {
  c2d_throttle t({throttle_tier::off, 1}, t0);
  EXPECT_FALSE(t.on());
  for (int i = 0; i < 100000; ++i) {
    ASSERT_TRUE(t.check_send(t0));
    t.took_send(t0);
    ASSERT_TRUE(t.check_receive(t0));
    t.took_receive(t0);
  }
}

TEST(Spec_2_7_Throttle, units_multiply_the_rate_and_free_has_one_unit) {
  c2d_throttle s1({throttle_tier::s1, 3}, t0);
  EXPECT_EQ(s1.sends().per_minute(), 300u);
  EXPECT_EQ(s1.receives().per_minute(), 3000u);
  c2d_throttle s3({throttle_tier::s3, 2}, t0);
  EXPECT_EQ(s3.sends().per_minute(), 10000u);
  EXPECT_EQ(s3.receives().per_minute(), 100000u);
  c2d_throttle free({throttle_tier::free, 5}, t0);
  EXPECT_EQ(free.sends().per_minute(), 100u);
  EXPECT_EQ((throttle_config{throttle_tier::s1, 0}).problem().has_value(), true);
  EXPECT_EQ((throttle_config{throttle_tier::s1, max_throttle_units + 1}).problem().has_value(),
            true);
  EXPECT_FALSE((throttle_config{throttle_tier::s2, max_throttle_units}).problem());
}

TEST(Spec_2_7_Throttle, check_does_not_take_and_the_refusal_is_429001_naming_the_tier) {
  c2d_throttle t({throttle_tier::s2, 1}, t0);
  for (int i = 0; i < 1000; ++i)
    ASSERT_TRUE(t.check_send(t0));  // checks alone never use the bucket
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(t.check_send(t0));
    t.took_send(t0);
  }
  const auto r = t.check_send(t0 + 100ms);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::throttling);
  EXPECT_EQ(r.error().numeric(), 429001u);
  EXPECT_NE(r.error().message.find("S2"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("500 ms"), std::string::npos) << r.error().message;
  // Sends and receives have their own buckets.
  EXPECT_TRUE(t.check_receive(t0 + 100ms));
}

}  // namespace
