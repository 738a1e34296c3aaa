// Stateful property test: random sequences of hub operations, on a randomly
// configured hub, against the reference model of tests/support/hub_model.hpp.
// After every step the harness checks results and error codes, the queues,
// the statistics, the observer's transitions and the feedback batches.
//
// Runs 1000 sequences by default (250 in a sanitizer build: the same paths,
// about ten times slower each; the Release run checks the 1000). RC_PARAMS
// overrides it, e.g.
//   RC_PARAMS="max_success=100000" ./test_hub_model
//   RC_PARAMS="reproduce=..."      (the string rapidcheck prints on failure)
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <rapidcheck/state.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "support/hub_model.hpp"
#include "support/hub_model_gen.hpp"

namespace {

using namespace devicebound;
using model::op;
using model::op_kind;
using model::reference_hub;
using model::gen::draw_config;
using model::gen::draw_op;

#if defined(__has_feature)  // clang
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DEVICEBOUND_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)  // g++
#define DEVICEBOUND_TEST_SANITIZED 1
#endif

#ifdef DEVICEBOUND_TEST_SANITIZED
constexpr const char* default_sequences = "max_success=250";
#else
constexpr const char* default_sequences = "max_success=1000";
#endif

// rapidcheck reads RC_PARAMS once, on first use, after static initialisation:
// default max_success unless the caller chose a value.
[[maybe_unused]] const bool default_max_success = [] {
  const char* given = std::getenv("RC_PARAMS");
  std::string params = given ? given : "";
  if (params.find("max_success") == std::string::npos) {
    params += params.empty() ? "" : " ";
    params += default_sequences;
    ::setenv("RC_PARAMS", params.c_str(), 1);
  }
  return true;
}();

using step = model::gen::step<>;

RC_GTEST_PROP(hub_model, agrees_with_reference_model, ()) {
  const hub_config cfg = draw_config();
  const auto seed = *rc::gen::arbitrary<std::uint64_t>();
  RC_LOG() << model::describe(cfg) << '\n';
  reference_hub initial(cfg);
  model::harness hub(cfg, seed);
  // sequences up to ~500 operations (rapidcheck's default is up to size + 1)
  const auto ops = *rc::gen::scale(
      5.0, rc::state::gen::commands(initial, rc::state::gen::execOneOfWithArgs<step>()));
  rc::state::runAll(ops, initial, hub);
}

// One fixed sequence through the harness: an already-past expiry, abandons up to
// DeliveryCountExceeded, a feedback batch dropped at its delivery limit.
TEST(hub_model, fixed_sequences_agree) {
  hub_config cfg;
  cfg.max_queue_depth = 2;
  cfg.max_delivery_count = 2;
  cfg.lock_duration = std::chrono::seconds(1);
  cfg.default_ttl = std::chrono::minutes(1);
  cfg.feedback_batch_size = 2;
  cfg.feedback_batch_interval = std::chrono::seconds(15);
  cfg.feedback_max_delivery_count = 1;
  model::harness h(cfg, 42);
  auto run = [&](op o) {
    const auto broken = h.step(o);
    EXPECT_EQ(broken, "");
  };
  op add{op_kind::add_device};
  run(add);
  op enq{op_kind::enqueue};
  enq.ack = ack_mode::full;
  enq.message_id = 1;
  run(enq);
  enq.explicit_expiry = true;
  enq.expiry_ms = -1;  // already expired: Expired feedback at once
  enq.id_number = 1;
  run(enq);
  op recv{op_kind::receive};
  run(recv);
  op abandon{op_kind::settle};
  abandon.how = disposition::abandon;
  run(abandon);
  run(recv);
  abandon.handle = 1;
  run(abandon);  // count reaches 2: DeliveryCountExceeded
  op tick{op_kind::tick};
  tick.delta_ms = 16000;
  run(tick);
  op rf{op_kind::receive_feedback};
  run(rf);
  op af{op_kind::abandon_feedback};
  run(af);  // max delivery 1: batch dropped
  EXPECT_EQ(h.engine().feedback_batches_dropped(), 1u);
  EXPECT_EQ(h.engine().stats().expired, 1u);
  EXPECT_EQ(h.engine().stats().delivery_count_exceeded, 1u);
}

// --- regressions found by the model, pinned without it -------------------------

constexpr time_point t0 = model::start_time;

// A locked message moved by its queue's vector (growth here) kept its lock
// token but came out Enqueued: Boost.MSM's forwarding constructor restarts a
// moved machine in its initial state.
TEST(hub_model_regressions, lock_survives_queue_growth) {
  hub h({}, seeded_token_source(1));
  ASSERT_TRUE(h.add_device("d0"));
  for (int i = 0; i < 4; ++i)
    ASSERT_TRUE(h.enqueue("d0", message{}, t0));
  auto first = h.receive("d0", t0);
  ASSERT_TRUE(first && *first);
  ASSERT_TRUE(h.enqueue("d0", message{}, t0));  // the 5th push grows the vector
  auto second = h.receive("d0", t0);
  ASSERT_TRUE(second && *second);
  EXPECT_EQ((*second)->sequence_number, 2u);
  EXPECT_TRUE(h.complete("d0", *(*first)->lock_token, t0));
}

// remove_device with a `now` first applies the timers due by then, like every
// other operation: the message below expired before the removal.
TEST(hub_model_regressions, remove_device_applies_due_timers_first) {
  hub h({}, seeded_token_source(1));
  ASSERT_TRUE(h.add_device("d0"));
  message m;
  m.message_id = "m1";
  m.ack = ack_mode::negative;
  m.expiry_time_utc = t0 + std::chrono::seconds(60);
  ASSERT_TRUE(h.enqueue("d0", m, t0));
  ASSERT_TRUE(h.remove_device("d0", std::nullopt, t0 + std::chrono::seconds(120)));
  EXPECT_EQ(h.last_now(), t0 + std::chrono::seconds(120));
  EXPECT_EQ(h.stats().expired, 1u);
  EXPECT_EQ(h.stats().removed_with_device, 0u);
  auto fb = h.receive_feedback(t0 + std::chrono::seconds(120));
  ASSERT_TRUE(fb && *fb);
  ASSERT_EQ((*fb)->records.size(), 1u);
  EXPECT_EQ((*fb)->records[0].status_code, feedback_status::expired);
}

// Devices whose timers fall due at the same instant run them in device id
// order, whatever the order of their nodes in memory.
TEST(hub_model_regressions, same_instant_timers_run_in_device_id_order) {
  hub h({}, seeded_token_source(1));
  for (auto id : {"a", "b", "c", "d"})
    ASSERT_TRUE(h.add_device(id));
  ASSERT_TRUE(h.remove_device("a"));
  ASSERT_TRUE(h.remove_device("c"));
  for (auto id : {"f", "e"})
    ASSERT_TRUE(h.add_device(id));  // may reuse the freed nodes
  for (auto id : {"f", "d", "b", "e"}) {
    message m;
    m.ack = ack_mode::negative;
    ASSERT_TRUE(h.enqueue(id, std::move(m), t0));
  }
  std::vector<std::string> order;
  h.set_observer([&](const transition& t) { order.emplace_back(t.device_id); });
  h.tick(t0 + std::chrono::hours(1));  // all four expire at the same instant
  EXPECT_EQ(order, (std::vector<std::string>{"b", "d", "e", "f"}));
}

}  // namespace
