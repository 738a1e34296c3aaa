// The lifecycle machine row by row (SPEC 1.3-1.5), and every event that does
// not apply: a typed error and no change.
#include <gtest/gtest.h>

#include <devicebound/lifecycle.hpp>
#include <vector>

using namespace devicebound;
using namespace std::chrono_literals;
namespace ev = devicebound::lifecycle_event;

namespace {

const time_point t0{std::chrono::sys_days{std::chrono::year{2026} / 1 / 1}};
const lock_token tok{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};

struct machine_fixture : ::testing::Test {
  lifecycle m;
  lifecycle_fields f;
  lifecycle_rules r;

  void SetUp() override { f.expires_at = t0 + 1h; }
  ev::base at(time_point now) { return {&f, &r, now}; }
  result<message_state> lock(time_point now = t0) { return m.process(ev::lock{at(now), tok, 60s}); }
};

bool same(const lifecycle_fields& a, const lifecycle_fields& b) {
  return a.expires_at == b.expires_at && a.locked_until == b.locked_until && a.token == b.token &&
         a.delivery_count == b.delivery_count && a.reason == b.reason;
}

}  // namespace

TEST_F(machine_fixture, Spec_1_3_StartsEnqueued) {
  EXPECT_EQ(m.state(), message_state::enqueued);
}

TEST_F(machine_fixture, Spec_1_4_ReceiveLocksToInvisible) {
  auto s = lock();
  ASSERT_TRUE(s);
  EXPECT_EQ(*s, message_state::invisible);
  EXPECT_EQ(f.token, tok);
  EXPECT_EQ(f.locked_until, t0 + 60s);
  EXPECT_EQ(f.delivery_count, 0u) << "current rule: a lock does not count";
}

TEST_F(machine_fixture, Spec_1_4_ExpiredMessageIsNotLocked) {
  auto before = f;
  auto s = lock(t0 + 1h);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.code(), errc::invalid_operation);
  EXPECT_EQ(m.state(), message_state::enqueued);
  EXPECT_TRUE(same(f, before));
}

TEST_F(machine_fixture, Spec_1_4_CompleteToCompleted) {
  ASSERT_TRUE(lock());
  auto s = m.process(ev::complete{at(t0)});
  ASSERT_TRUE(s);
  EXPECT_EQ(*s, message_state::completed);
  EXPECT_TRUE(f.token.is_nil());
}

TEST_F(machine_fixture, Spec_1_4_RejectToDeadLetteredRejected) {
  ASSERT_TRUE(lock());
  ASSERT_TRUE(m.process(ev::reject{at(t0)}));
  EXPECT_EQ(m.state(), message_state::dead_lettered);
  EXPECT_EQ(f.reason, dead_letter_reason::rejected);
}

TEST_F(machine_fixture, Spec_1_4_AbandonReEnqueuesAndCounts) {
  ASSERT_TRUE(lock());
  ASSERT_TRUE(m.process(ev::abandon{at(t0)}));
  EXPECT_EQ(m.state(), message_state::enqueued);
  EXPECT_EQ(f.delivery_count, 1u);
  EXPECT_TRUE(f.token.is_nil());
}

TEST_F(machine_fixture, Spec_1_4_LockTimeoutReEnqueuesWithoutCounting) {
  ASSERT_TRUE(lock());
  ASSERT_TRUE(m.process(ev::lock_expired{at(t0 + 60s)}));
  EXPECT_EQ(m.state(), message_state::enqueued);
  EXPECT_EQ(f.delivery_count, 0u);
}

TEST_F(machine_fixture, Spec_1_4_LockTimeoutCyclesPastMaxUnderCurrentRule) {
  r.max_delivery_count = 2;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(lock());
    ASSERT_TRUE(m.process(ev::lock_expired{at(t0)}));
  }
  EXPECT_EQ(m.state(), message_state::enqueued);
}

TEST_F(machine_fixture, Spec_1_4_MaxDeliveryCountDeadLetters) {
  r.max_delivery_count = 3;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(lock());
    ASSERT_TRUE(m.process(ev::abandon{at(t0)}));
    EXPECT_EQ(m.state(), message_state::enqueued);
  }
  ASSERT_TRUE(lock());
  ASSERT_TRUE(m.process(ev::abandon{at(t0)}));
  EXPECT_EQ(m.state(), message_state::dead_lettered);
  EXPECT_EQ(f.reason, dead_letter_reason::delivery_count_exceeded);
  EXPECT_EQ(f.delivery_count, 3u);
}

TEST_F(machine_fixture, Spec_1_4_OlderRuleCountsEveryDelivery) {
  r.rule = delivery_count_rule::every_delivery;
  r.max_delivery_count = 2;
  ASSERT_TRUE(lock());
  EXPECT_EQ(f.delivery_count, 1u);
  ASSERT_TRUE(m.process(ev::lock_expired{at(t0)}));
  EXPECT_EQ(m.state(), message_state::enqueued);
  ASSERT_TRUE(lock());
  EXPECT_EQ(f.delivery_count, 2u);
  ASSERT_TRUE(m.process(ev::lock_expired{at(t0)}));
  EXPECT_EQ(m.state(), message_state::dead_lettered);
  EXPECT_EQ(f.reason, dead_letter_reason::delivery_count_exceeded);
}

TEST_F(machine_fixture, Spec_1_4_OlderRuleAbandonDoesNotCountTwice) {
  r.rule = delivery_count_rule::every_delivery;
  r.max_delivery_count = 3;
  ASSERT_TRUE(lock());
  ASSERT_TRUE(m.process(ev::abandon{at(t0)}));
  EXPECT_EQ(f.delivery_count, 1u);
}

TEST_F(machine_fixture, Spec_1_4_ExpiryDeadLettersFromEitherState) {
  ASSERT_TRUE(m.process(ev::ttl_expired{at(t0 + 1h)}));
  EXPECT_EQ(m.state(), message_state::dead_lettered);
  EXPECT_EQ(f.reason, dead_letter_reason::expired);

  lifecycle m2;
  lifecycle_fields f2;
  f2.expires_at = t0 + 1h;
  ASSERT_TRUE(m2.process(ev::lock{{&f2, &r, t0}, tok, 60s}));
  ASSERT_TRUE(m2.process(ev::ttl_expired{{&f2, &r, t0 + 1h}}));
  EXPECT_EQ(m2.state(), message_state::dead_lettered);
  EXPECT_EQ(f2.reason, dead_letter_reason::expired);
  EXPECT_TRUE(f2.token.is_nil());
}

TEST_F(machine_fixture, Spec_1_4_PurgeFromEitherState) {
  ASSERT_TRUE(m.process(ev::purge{at(t0)}));
  EXPECT_EQ(m.state(), message_state::purged);
  lifecycle m2;
  ASSERT_TRUE(m2.process(ev::lock{at(t0), tok, 60s}));
  ASSERT_TRUE(m2.process(ev::purge{at(t0)}));
  EXPECT_EQ(m2.state(), message_state::purged);
}

// Every (state, event) pair missing from the table is refused without change.
TEST(Lifecycle, NoTransitionReturnsTypedErrorAndChangesNothing) {
  lifecycle_rules r;
  auto reach = [&](message_state target, lifecycle& m, lifecycle_fields& f) {
    f.expires_at = t0 + 1h;
    auto b = ev::base{&f, &r, t0};
    if (target == message_state::enqueued)
      return;
    ASSERT_TRUE(m.process(ev::lock{b, tok, 60s}));
    if (target == message_state::completed) {
      ASSERT_TRUE(m.process(ev::complete{b}));
    }
    if (target == message_state::dead_lettered) {
      ASSERT_TRUE(m.process(ev::reject{b}));
    }
    if (target == message_state::purged) {
      ASSERT_TRUE(m.process(ev::purge{b}));
    }
  };
  struct expect {
    message_state s;
    bool lock, complete, reject, abandon, lock_expired, ttl_expired, purge;
  };
  const expect table[] = {
      {message_state::enqueued, true, false, false, false, false, true, true},
      {message_state::invisible, false, true, true, true, true, true, true},
      {message_state::completed, false, false, false, false, false, false, false},
      {message_state::dead_lettered, false, false, false, false, false, false, false},
      {message_state::purged, false, false, false, false, false, false, false},
  };
  for (const auto& row : table) {
    auto check = [&](auto make_event, bool allowed, const char* what) {
      lifecycle m;
      lifecycle_fields f;
      reach(row.s, m, f);
      ASSERT_EQ(m.state(), row.s);
      const auto before = f;
      auto res = m.process(make_event(ev::base{&f, &r, t0}));
      EXPECT_EQ(static_cast<bool>(res), allowed) << to_string(row.s) << " + " << what;
      if (!allowed) {
        EXPECT_EQ(res.code(), errc::invalid_operation);
        EXPECT_NE(res.error().message.find(what), std::string::npos) << res.error().message;
        EXPECT_EQ(m.state(), row.s);
        EXPECT_TRUE(same(f, before));
      }
    };
    check([](ev::base b) { return ev::lock{b, tok, 60s}; }, row.lock, "lock");
    check([](ev::base b) { return ev::complete{b}; }, row.complete, "complete");
    check([](ev::base b) { return ev::reject{b}; }, row.reject, "reject");
    check([](ev::base b) { return ev::abandon{b}; }, row.abandon, "abandon");
    check([](ev::base b) { return ev::lock_expired{b}; }, row.lock_expired, "lock_expired");
    check([](ev::base b) { return ev::ttl_expired{b}; }, row.ttl_expired, "ttl_expired");
    check([](ev::base b) { return ev::purge{b}; }, row.purge, "purge");
  }
}

TEST(Lifecycle, MachineIsSmall) {
  // A queued message carries one machine; keep it cheap (docs/architecture.md).
  EXPECT_LE(sizeof(lifecycle), 32u);
}

TEST(Lifecycle, StateSurvivesCopyAndMove) {
  // Boost.MSM's own move constructor restarts the machine; lifecycle must not.
  lifecycle_rules r;
  lifecycle_fields f;
  f.expires_at = t0 + 1h;
  lifecycle a;
  ASSERT_TRUE(a.process(ev::lock{{&f, &r, t0}, tok, 60s}));
  lifecycle copy(a);
  EXPECT_EQ(copy.state(), message_state::invisible);
  lifecycle moved(std::move(a));
  EXPECT_EQ(moved.state(), message_state::invisible);
  lifecycle assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.state(), message_state::invisible);
  lifecycle copy_assigned;
  copy_assigned = copy;
  EXPECT_EQ(copy_assigned.state(), message_state::invisible);
  std::vector<lifecycle> v(1);
  ASSERT_TRUE(v[0].process(ev::lock{{&f, &r, t0}, tok, 60s}));
  for (int i = 0; i < 100; ++i)
    v.emplace_back();  // reallocations move v[0]
  EXPECT_EQ(v[0].state(), message_state::invisible);
}
