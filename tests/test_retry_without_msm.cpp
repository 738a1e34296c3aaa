// The retry headers other than retry/machine.hpp do not pull in Boost.MSM, so a consumer can
// take classification, backoffs, policies, profiles, runtime configuration and the table's
// executor `controller` (what the clients run) without it.
#include <gtest/gtest.h>

#include <devicebound/retry.hpp>
#include <devicebound/retry/backoff.hpp>
#include <devicebound/retry/classification.hpp>
#include <devicebound/retry/controller.hpp>
#include <devicebound/retry/decision.hpp>
#include <devicebound/retry/policy.hpp>
#include <devicebound/retry/profiles.hpp>
#include <devicebound/retry/random.hpp>
#include <devicebound/retry/runtime_config.hpp>
#include <devicebound/retry/table.hpp>

#if defined(BOOST_MSM_BACK_STATEMACHINE_H) || defined(BOOST_MSM_FRONT_STATEMACHINE_DEF_H)
#error "a retry header other than retry/machine.hpp included Boost.MSM"
#endif

namespace rt = devicebound::retry;

TEST(RetryWithoutMsm, ProfilesAndSchedulesNeedNoMachine) {
  auto p = rt::profiles::profile("c_sdk");
  ASSERT_TRUE(p);
  rt::fixed_random rnd{0.0};
  EXPECT_EQ(p->delay(0, rt::error_class::transient, rnd), devicebound::duration{0});
  EXPECT_EQ(p->delay(1, rt::error_class::transient, rnd), std::chrono::seconds{1});
  EXPECT_EQ(p->delay(0, rt::error_class::fatal, rnd), std::nullopt);
}

TEST(RetryWithoutMsm, TheControllerRunsTheTable) {
  rt::controller<rt::policy, rt::fixed_random> c{*rt::profiles::profile("c_sdk"),
                                                 rt::fixed_random{0.0}};
  const devicebound::time_point t{std::chrono::seconds(10)};
  ASSERT_TRUE(c.start(t));
  const auto d = c.attempt_failed(rt::error_class::transient, t);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->what, rt::verdict::attempt_now);  // c_sdk retries at once the first time
  EXPECT_EQ(c.state(), rt::state::attempting);
  // timer_fired has no row from attempting: a typed refusal, the state unchanged.
  const auto refused = c.timer_fired(t);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message, "retry: timer_fired is not valid in state Attempting");
  EXPECT_EQ(c.state(), rt::state::attempting);
}
