// The retry headers other than retry/machine.hpp do not pull in Boost.MSM, so a consumer can
// take classification, backoffs, policies, profiles and runtime configuration without it.
#include <gtest/gtest.h>

#include <devicebound/retry/backoff.hpp>
#include <devicebound/retry/classification.hpp>
#include <devicebound/retry/decision.hpp>
#include <devicebound/retry/policy.hpp>
#include <devicebound/retry/profiles.hpp>
#include <devicebound/retry/random.hpp>
#include <devicebound/retry/runtime_config.hpp>

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
