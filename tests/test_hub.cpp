// The hub engine, one test per SPEC rule (SPEC 1-4, 7.1-7.5). Time is driven
// by hand: every call takes `now`.
#include <gtest/gtest.h>

#include <devicebound/hub.hpp>

using namespace devicebound;
using namespace std::chrono_literals;

namespace {

const time_point t0{std::chrono::sys_days{std::chrono::year{2026} / 3 / 1}};

struct hub_fixture : ::testing::Test {
  hub_config cfg;
  std::unique_ptr<hub> h;
  std::vector<transition> log;

  void make(hub_config c = {}) {
    cfg = std::move(c);
    h = std::make_unique<hub>(cfg, seeded_token_source(42));
    h->set_observer([this](const transition& t) {
      transition copy = t;
      copy.device_id = {};
      copy.message_id.reset();
      log.push_back(copy);
    });
    ASSERT_TRUE(h->add_device("dev1"));
  }
  void SetUp() override { make(); }

  static message msg(std::string body, ack_mode ack = ack_mode::none,
                     std::optional<std::string> id = {}) {
    message m;
    m.body = std::move(body);
    m.ack = ack;
    m.message_id = std::move(id);
    return m;
  }
  std::uint64_t send(std::string body, ack_mode ack = ack_mode::none,
                     std::optional<std::string> id = {}, time_point now = t0) {
    auto r = h->enqueue("dev1", msg(std::move(body), ack, std::move(id)), now);
    EXPECT_TRUE(r) << (r ? "" : r.error().message);
    return r ? r->sequence_number : 0;
  }
  message recv(time_point now = t0) {
    auto r = h->receive("dev1", now);
    EXPECT_TRUE(r);
    EXPECT_TRUE(r && r->has_value());
    return r && r->has_value() ? **r : message{};
  }
  std::vector<feedback_record> drain_feedback(time_point now) {
    std::vector<feedback_record> out;
    h->tick(now);
    for (;;) {
      auto b = h->receive_feedback(now);
      EXPECT_TRUE(b);
      if (!b || !b->has_value())
        break;
      for (auto& r : (*b)->records)
        out.push_back(r);
      EXPECT_TRUE(h->complete_feedback((*b)->lock_token, now));
    }
    return out;
  }
  std::size_t depth(time_point now = t0) { return h->queue_depth("dev1", now).value(); }
};

}  // namespace

// --- SPEC 1: lifecycle through the hub -------------------------------------------

TEST_F(hub_fixture, Spec_1_1_HubSetsToAddress) {
  send("a");
  auto m = recv();
  EXPECT_EQ(m.to, "/devices/dev1/messages/devicebound");
}

TEST_F(hub_fixture, Spec_1_1_ToNamingAnotherDeviceIsRefused) {
  auto m = msg("a");
  m.to = "/devices/other/messages/devicebound";
  auto r = h->enqueue("dev1", m, t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
  EXPECT_EQ(depth(), 0u);
  m.to = "/devices/dev1/messages/deviceBound";  // SPEC 7.7 both casings
  EXPECT_TRUE(h->enqueue("dev1", m, t0));
}

TEST_F(hub_fixture, Spec_1_2_MessageStaysUntilCompleted) {
  send("a");
  auto m1 = recv();
  EXPECT_FALSE(h->receive("dev1", t0)->has_value()) << "locked message is invisible";
  auto m2 = recv(t0 + 60s);  // lock expired: delivered again
  EXPECT_EQ(m1.sequence_number, m2.sequence_number);
  EXPECT_NE(*m1.lock_token, *m2.lock_token);
  ASSERT_TRUE(h->complete("dev1", *m2.lock_token, t0 + 61s));
  EXPECT_EQ(depth(t0 + 61s), 0u);
}

TEST_F(hub_fixture, Spec_1_4_SendAcceptedIsEnqueuedWithSequenceNumber) {
  auto a = send("a");
  auto b = send("b");
  EXPECT_GT(a, 0u);
  EXPECT_GT(b, a);
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front().cause, transition_cause::accepted);
  EXPECT_EQ(h->stats().accepted, 2u);
}

TEST_F(hub_fixture, Spec_1_4_SeveralMessagesInvisibleAtOnce) {
  send("a");
  send("b");
  auto m1 = recv();
  auto m2 = recv();
  EXPECT_EQ(m1.body, "a");
  EXPECT_EQ(m2.body, "b");
  EXPECT_EQ(depth(), 2u);
}

TEST_F(hub_fixture, Spec_1_4_CompleteRemovesAndSendsSuccess) {
  send("a", ack_mode::positive, "m1");
  auto m = recv();
  ASSERT_TRUE(h->complete("dev1", *m.lock_token, t0 + 1s));
  EXPECT_EQ(depth(t0 + 1s), 0u);
  auto fb = drain_feedback(t0 + 1s);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].status_code, feedback_status::success);
  EXPECT_EQ(fb[0].description, "Success");
  EXPECT_EQ(fb[0].original_message_id, "m1");
  EXPECT_EQ(fb[0].device_id, "dev1");
  EXPECT_EQ(fb[0].device_generation_id, h->generation_id("dev1").value());
  EXPECT_EQ(fb[0].enqueued_time_utc, t0 + 1s);
}

TEST_F(hub_fixture, Spec_1_4_RejectDeadLettersAndSendsRejected) {
  send("a", ack_mode::negative, "m1");
  auto m = recv();
  ASSERT_TRUE(h->reject("dev1", *m.lock_token, t0));
  EXPECT_EQ(depth(), 0u);
  EXPECT_EQ(h->stats().rejected, 1u);
  auto fb = drain_feedback(t0);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].status_code, feedback_status::rejected);
}

TEST_F(hub_fixture, Spec_1_4_AbandonReEnqueuesWithCountPlusOne) {
  send("a");
  auto m = recv();
  EXPECT_EQ(m.delivery_count, 0u);
  ASSERT_TRUE(h->abandon("dev1", *m.lock_token, t0));
  auto again = recv();
  EXPECT_EQ(again.sequence_number, m.sequence_number);
  EXPECT_EQ(again.delivery_count, 1u);
}

TEST_F(hub_fixture, Spec_1_4_LockTimeoutDoesNotCount) {
  send("a");
  recv();
  auto again = recv(t0 + 60s);
  EXPECT_EQ(again.delivery_count, 0u);
  EXPECT_EQ(log.back().cause, transition_cause::lock);
}

TEST_F(hub_fixture, Spec_1_4_OlderRuleCountsEveryDeliveryWhenChosen) {
  hub_config c;
  c.delivery_count = delivery_count_rule::every_delivery;
  c.max_delivery_count = 2;
  make(c);
  send("a", ack_mode::negative, "m1");
  EXPECT_EQ(recv().delivery_count, 1u);
  EXPECT_EQ(recv(t0 + 60s).delivery_count, 2u);
  h->tick(t0 + 120s);  // second lock expires at the limit
  EXPECT_EQ(depth(t0 + 120s), 0u);
  auto fb = drain_feedback(t0 + 120s);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].status_code, feedback_status::delivery_count_exceeded);
}

TEST_F(hub_fixture, Spec_1_4_MaxDeliveryCountDeadLetters) {
  send("a", ack_mode::full, "m1");
  for (int i = 0; i < 10; ++i) {
    auto m = recv();
    ASSERT_TRUE(h->abandon("dev1", *m.lock_token, t0));
  }
  EXPECT_EQ(depth(), 0u);
  EXPECT_EQ(h->stats().delivery_count_exceeded, 1u);
  auto fb = drain_feedback(t0);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].status_code, feedback_status::delivery_count_exceeded);
  EXPECT_EQ(fb[0].description, "DeliveryCountExceeded");
}

TEST_F(hub_fixture, Spec_1_4_ExpiryDeadLettersAsExpired) {
  auto m = msg("a", ack_mode::negative, "m1");
  m.expiry_time_utc = t0 + 10s;
  ASSERT_TRUE(h->enqueue("dev1", m, t0));
  recv(t0 + 1s);  // expiry applies to Invisible messages too
  h->tick(t0 + 10s);
  EXPECT_EQ(depth(t0 + 10s), 0u);
  auto fb = drain_feedback(t0 + 10s);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].status_code, feedback_status::expired);
  EXPECT_EQ(fb[0].enqueued_time_utc, t0 + 10s) << "the record carries the instant of expiry";
}

TEST_F(hub_fixture, Spec_1_4_ExpiredMessageIsNeverDelivered) {
  auto m = msg("a");
  m.expiry_time_utc = t0 + 10s;
  ASSERT_TRUE(h->enqueue("dev1", m, t0));
  auto r = h->receive("dev1", t0 + 10s);  // no tick in between: still expired
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_value());
}

TEST_F(hub_fixture, Spec_1_4_DefaultTtlIsOneHour) {
  auto r = h->enqueue("dev1", msg("a"), t0);
  EXPECT_EQ(r->expiry_time_utc, t0 + 1h);
  EXPECT_EQ(depth(t0 + 1h - 1ms), 1u);
  EXPECT_EQ(depth(t0 + 1h), 0u);
}

TEST_F(hub_fixture, Spec_1_4_PurgeRemovesAllAndReportsPurgedToNegativeAcks) {
  send("a", ack_mode::negative, "m1");
  send("b", ack_mode::positive, "m2");
  send("c", ack_mode::full, "m3");
  recv();  // one Invisible message is purged too
  auto n = h->purge("dev1", t0);
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(depth(), 0u);
  auto fb = drain_feedback(t0);
  ASSERT_EQ(fb.size(), 2u);
  for (auto& r : fb)
    EXPECT_EQ(r.status_code, feedback_status::purged);
  EXPECT_EQ(fb[0].original_message_id, "m1");
  EXPECT_EQ(fb[1].original_message_id, "m3");
}

TEST_F(hub_fixture, Spec_1_4_PurgeFeedbackCanBeTurnedOff) {
  hub_config c;
  c.purge_feedback_for = purge_feedback::none;
  make(c);
  send("a", ack_mode::full, "m1");
  EXPECT_EQ(h->purge("dev1", t0).value(), 1u);
  EXPECT_TRUE(drain_feedback(t0).empty());
  EXPECT_EQ(h->stats().purged, 1u);
}

TEST_F(hub_fixture, Spec_1_4_DeviceRemovalDropsQueueAndPendingFeedback) {
  hub_config c;
  c.feedback_batch_interval = 15s;
  make(c);
  ASSERT_TRUE(h->add_device("dev2"));
  // first record flushes at once (no batch sent yet); later ones wait 15 s
  ASSERT_TRUE(h->enqueue("dev2", msg("x", ack_mode::positive, "x"), t0));
  auto x = h->receive("dev2", t0);
  ASSERT_TRUE(h->complete("dev2", *(*x)->lock_token, t0));
  send("a", ack_mode::positive, "m1");
  auto m = recv();
  ASSERT_TRUE(h->complete("dev1", *m.lock_token, t0 + 1s));
  send("b");
  EXPECT_EQ(h->pending_feedback_records(), 1u);
  ASSERT_TRUE(h->remove_device("dev1", std::nullopt, t0 + 2s));
  EXPECT_EQ(h->pending_feedback_records(), 0u);
  EXPECT_EQ(h->stats().feedback_records_dropped, 1u);
  EXPECT_EQ(h->stats().removed_with_device, 1u);
  EXPECT_FALSE(h->has_device("dev1"));
  EXPECT_EQ(h->enqueue("dev1", msg("c"), t0 + 2s).code(), errc::device_not_found);
  auto fb = drain_feedback(t0 + 20s);
  ASSERT_EQ(fb.size(), 1u) << "only dev2's batched record survives";
  EXPECT_EQ(fb[0].device_id, "dev2");
}

TEST_F(hub_fixture, Spec_1_5_LockIsOneMinute) {
  send("a");
  auto m = recv();
  EXPECT_FALSE(h->receive("dev1", t0 + 59s)->has_value());
  ASSERT_TRUE(h->complete("dev1", *m.lock_token, t0 + 60s - 1ms));
}

TEST_F(hub_fixture, Spec_1_5_ExpiredLockGivesLockLostAndChangesNothing) {
  send("a", ack_mode::full, "m1");
  auto m = recv();
  auto r = h->complete("dev1", *m.lock_token, t0 + 60s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::device_message_lock_lost);
  EXPECT_EQ(r.error().numeric(), 412002u);
  EXPECT_EQ(depth(t0 + 60s), 1u);
  EXPECT_EQ(h->stats().completed, 0u);
}

TEST_F(hub_fixture, Spec_1_5_UnknownOrUsedTokenGivesLockLost) {
  send("a");
  auto m = recv();
  lock_token bogus{{9, 9, 9}};
  EXPECT_EQ(h->complete("dev1", bogus, t0).code(), errc::device_message_lock_lost);
  EXPECT_EQ(h->reject("dev1", bogus, t0).code(), errc::device_message_lock_lost);
  EXPECT_EQ(h->abandon("dev1", bogus, t0).code(), errc::device_message_lock_lost);
  ASSERT_TRUE(h->complete("dev1", *m.lock_token, t0));
  EXPECT_EQ(h->complete("dev1", *m.lock_token, t0).code(), errc::device_message_lock_lost);
  EXPECT_EQ(h->abandon("dev1", *m.lock_token, t0).code(), errc::device_message_lock_lost);
}

TEST_F(hub_fixture, Spec_1_5_StaleTokenOfRedeliveredMessageIsRefused) {
  send("a");
  auto first = recv();
  auto second = recv(t0 + 60s);
  EXPECT_EQ(h->complete("dev1", *first.lock_token, t0 + 61s).code(),
            errc::device_message_lock_lost);
  EXPECT_TRUE(h->complete("dev1", *second.lock_token, t0 + 61s));
}

TEST_F(hub_fixture, Spec_1_5_TokenOfOneDeviceDoesNotSettleAnother) {
  ASSERT_TRUE(h->add_device("dev2"));
  send("a");
  auto m = recv();
  EXPECT_EQ(h->complete("dev2", *m.lock_token, t0).code(), errc::device_message_lock_lost);
  EXPECT_EQ(depth(), 1u);
}

TEST_F(hub_fixture, Spec_1_10_OldestEnqueuedFirstBySequenceNumber) {
  send("a");
  send("b");
  send("c");
  auto a = recv();
  ASSERT_TRUE(h->abandon("dev1", *a.lock_token, t0));
  // abandoned "a" keeps its sequence number, so it is the oldest again
  EXPECT_EQ(recv().body, "a");
  EXPECT_EQ(recv().body, "b");
  EXPECT_EQ(recv().body, "c");
}

TEST_F(hub_fixture, Spec_1_10_SequenceNumbersNeverRepeatAcrossReAdd) {
  auto a = send("a");
  ASSERT_TRUE(h->remove_device("dev1"));
  ASSERT_TRUE(h->add_device("dev1"));
  auto b = send("b");
  EXPECT_GT(b, a);
}

// --- SPEC 2: configuration and limits ---------------------------------------------

TEST(HubConfig, Spec_2_1_DefaultsAreIotHubs) {
  hub_config c;
  EXPECT_EQ(c.default_ttl, 1h);
  EXPECT_EQ(c.max_delivery_count, 10u);
  EXPECT_EQ(c.feedback_ttl, 1h);
  EXPECT_EQ(c.feedback_max_delivery_count, 10u);
  EXPECT_EQ(c.feedback_lock_duration, 60s);
  EXPECT_EQ(c.lock_duration, 60s);
  EXPECT_EQ(c.max_queue_depth, 50u);
  EXPECT_EQ(c.max_message_size, 65536u);
  EXPECT_EQ(c.feedback_batch_size, 64u);
  EXPECT_EQ(c.feedback_batch_interval, 15s);
  EXPECT_TRUE(c.validate());
}

TEST(HubConfig, Spec_2_1_RangesAreValidated) {
  auto expect_bad = [](auto mutate, const char* field) {
    hub_config c;
    mutate(c);
    auto r = c.validate();
    ASSERT_FALSE(r) << field;
    EXPECT_EQ(r.code(), errc::argument_invalid);
    EXPECT_NE(r.error().message.find(field), std::string::npos) << r.error().message;
    EXPECT_THROW(hub{c}, exception);
    EXPECT_FALSE(hub::create(c));
  };
  expect_bad([](hub_config& c) { c.default_ttl = 59s; }, "default_ttl");
  expect_bad([](hub_config& c) { c.default_ttl = 48h + 1ms; }, "default_ttl");
  expect_bad([](hub_config& c) { c.max_delivery_count = 0; }, "max_delivery_count");
  expect_bad([](hub_config& c) { c.max_delivery_count = 101; }, "max_delivery_count");
  expect_bad([](hub_config& c) { c.feedback_ttl = 48h + 1s; }, "feedback_ttl");
  expect_bad([](hub_config& c) { c.feedback_max_delivery_count = 101; },
             "feedback_max_delivery_count");
  expect_bad([](hub_config& c) { c.feedback_lock_duration = 4s; }, "feedback_lock_duration");
  expect_bad([](hub_config& c) { c.feedback_lock_duration = 301s; }, "feedback_lock_duration");
  expect_bad([](hub_config& c) { c.max_queue_depth = 0; }, "max_queue_depth");
  expect_bad([](hub_config& c) { c.feedback_batch_size = 65; }, "feedback_batch_size");
  hub_config edge;
  edge.default_ttl = 1min;
  edge.max_delivery_count = 100;
  edge.feedback_ttl = 48h;
  edge.feedback_lock_duration = 5s;
  EXPECT_TRUE(edge.validate());
}

TEST_F(hub_fixture, Spec_2_2_PerMessageExpiryOverridesDefault) {
  auto m = msg("a");
  m.expiry_time_utc = t0 + 5h;
  auto r = h->enqueue("dev1", m, t0);
  EXPECT_EQ(r->expiry_time_utc, t0 + 5h);
  auto got = recv();
  EXPECT_EQ(got.expiry_time_utc, t0 + 5h);
}

TEST_F(hub_fixture, Spec_2_2_ExpiryBeyondTwoDaysIsClampedByDefault) {
  auto m = msg("a");
  m.expiry_time_utc = t0 + 72h;
  auto r = h->enqueue("dev1", m, t0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->expiry_time_utc, t0 + 48h);
  EXPECT_EQ(recv().expiry_time_utc, t0 + 48h) << "the device sees the expiry the hub applies";
}

TEST_F(hub_fixture, Spec_2_2_ExpiryBeyondTwoDaysCanBeRejected) {
  hub_config c;
  c.expiry_over_cap = expiry_cap_policy::reject;
  make(c);
  auto m = msg("a");
  m.expiry_time_utc = t0 + 48h + 1ms;
  auto r = h->enqueue("dev1", m, t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
  EXPECT_EQ(depth(), 0u);
  m.expiry_time_utc = t0 + 48h;
  EXPECT_TRUE(h->enqueue("dev1", m, t0));
}

TEST_F(hub_fixture, Spec_2_2_ExpiryInThePastDeadLettersAtOnce) {
  auto m = msg("a", ack_mode::negative, "late");
  m.expiry_time_utc = t0 - 1s;
  ASSERT_TRUE(h->enqueue("dev1", m, t0));
  EXPECT_EQ(depth(), 0u);
  auto fb = drain_feedback(t0);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].status_code, feedback_status::expired);
}

TEST_F(hub_fixture, Spec_2_3_QueueOfFiftyCountsInvisibleThenRefuses) {
  for (int i = 0; i < 50; ++i)
    send("m" + std::to_string(i));
  recv();  // Invisible still counts (SPEC 2.3)
  auto r = h->enqueue("dev1", msg("overflow"), t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::device_maximum_queue_depth_exceeded);
  EXPECT_EQ(r.error().numeric(), 403004u);
  EXPECT_EQ(depth(), 50u);
  EXPECT_EQ(h->stats().accepted, 50u);
}

TEST_F(hub_fixture, Spec_2_3_SpaceFreedBySettlementIsReusable) {
  for (int i = 0; i < 50; ++i)
    send("m");
  auto m = recv();
  ASSERT_TRUE(h->complete("dev1", *m.lock_token, t0));
  EXPECT_TRUE(h->enqueue("dev1", msg("again"), t0));
}

TEST_F(hub_fixture, Spec_2_5_UnknownDeviceIs404001) {
  auto r = h->enqueue("nobody", msg("a"), t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().numeric(), 404001u);
  EXPECT_NE(r.error().message.find("nobody"), std::string::npos);
  EXPECT_EQ(h->receive("nobody", t0).code(), errc::device_not_found);
  EXPECT_EQ(h->purge("nobody", t0).code(), errc::device_not_found);
  EXPECT_EQ(h->queue_depth("nobody", t0).code(), errc::device_not_found);
  EXPECT_EQ(h->complete("nobody", lock_token{}, t0).code(), errc::device_not_found);
}

TEST_F(hub_fixture, Spec_2_6_SizeRuleCountsBodyAndProperties) {
  auto m = msg(std::string(65536 - 10 - 4 - 34, 'x'));  // 34 = len of the hub's `to`
  m.app_properties["k"] = "123456789";                  // 1 + 9
  m.message_id = "abcd";                                // 4
  EXPECT_EQ(message_size([&] {
              auto c = m;
              c.to = hub::device_bound_address("dev1");
              return c;
            }()),
            65536u);
  ASSERT_TRUE(h->enqueue("dev1", m, t0));
  m.app_properties["k"] = "1234567890";
  auto r = h->enqueue("dev1", m, t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().numeric(), 413001u);
  EXPECT_EQ(depth(), 1u);

  // A 64 KB body alone is refused for the `to` the hub sets, and the message says
  // what was counted.
  r = h->enqueue("dev1", msg(std::string(65536, 'x')), t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            "message is 65570 bytes by the size rule (body + system property values, including "
            "the 'to' the hub sets, + application property names and values); the limit is 65536");
}

TEST_F(hub_fixture, Spec_2_10_QueueDepthIsPendingCount) {
  EXPECT_EQ(depth(), 0u);
  send("a");
  send("b");
  auto m = recv();
  EXPECT_EQ(depth(), 2u);
  ASSERT_TRUE(h->complete("dev1", *m.lock_token, t0));
  EXPECT_EQ(depth(), 1u);
}

TEST(HubRegistry, Spec_2_11_DeviceIdRules) {
  hub h({}, seeded_token_source(1));
  EXPECT_TRUE(h.add_device(std::string(128, 'a')));
  EXPECT_EQ(h.add_device(std::string(129, 'a')).code(), errc::argument_invalid);
  EXPECT_EQ(h.add_device("").code(), errc::argument_invalid);
  EXPECT_EQ(h.add_device("a/b").code(), errc::argument_invalid);
  EXPECT_EQ(h.add_device("a+b").code(), errc::argument_invalid);
  EXPECT_EQ(h.add_device("a#b").code(), errc::argument_invalid);
  EXPECT_TRUE(h.add_device("dev-1.x_%*?!(),:=@$'"));
  EXPECT_EQ(h.device_count(), 2u);
}

TEST(HubRegistry, AddTwiceIs409001AndRemoveChecksGeneration) {
  hub h({}, seeded_token_source(1));
  auto gen = h.add_device("d");
  ASSERT_TRUE(gen);
  EXPECT_EQ(gen->size(), 18u);
  EXPECT_EQ(h.add_device("d").code(), errc::device_already_exists);
  EXPECT_EQ(h.remove_device("d", std::string_view("wrong")).code(), errc::precondition_failed);
  EXPECT_TRUE(h.has_device("d"));
  EXPECT_TRUE(h.remove_device("d", std::string_view(*gen)));
  EXPECT_EQ(h.remove_device("d").code(), errc::device_not_found);
  auto gen2 = h.add_device("d");
  EXPECT_NE(*gen, *gen2) << "a new generation";
}

// --- SPEC 3: properties --------------------------------------------------------------

TEST_F(hub_fixture, Spec_3_1_PropertiesRoundTripThroughTheQueue) {
  message m = msg("payload", ack_mode::full, "mid-1");
  m.correlation_id = "cid";
  m.user_id = "uid";
  m.content_type = "application/json";
  m.content_encoding = "utf-8";
  m.creation_time_utc = t0 - 5s;
  m.app_properties = {{"a", "1"}, {"b", ""}, {"c~", "x|y"}};
  auto r = h->enqueue("dev1", m, t0);
  ASSERT_TRUE(r);
  auto got = recv(t0 + 1s);
  EXPECT_EQ(got.body, "payload");
  EXPECT_EQ(got.message_id, "mid-1");
  EXPECT_EQ(got.correlation_id, "cid");
  EXPECT_EQ(got.user_id, "uid");
  EXPECT_EQ(got.content_type, "application/json");
  EXPECT_EQ(got.content_encoding, "utf-8");
  EXPECT_EQ(got.creation_time_utc, t0 - 5s);
  EXPECT_EQ(got.app_properties, m.app_properties);
  EXPECT_EQ(got.ack, ack_mode::full);
  EXPECT_EQ(got.sequence_number, r->sequence_number);
  EXPECT_EQ(got.enqueued_time_utc, t0);
  EXPECT_TRUE(got.lock_token.has_value());
}

TEST_F(hub_fixture, Spec_3_1_SenderCannotSetHubAssignedFields) {
  message m = msg("a");
  m.sequence_number = 999;
  m.delivery_count = 7;
  m.lock_token = lock_token{{1}};
  m.enqueued_time_utc = t0 - 1h;
  auto r = h->enqueue("dev1", m, t0);
  auto got = recv();
  EXPECT_EQ(got.sequence_number, r->sequence_number);
  EXPECT_EQ(got.delivery_count, 0u);
  EXPECT_EQ(got.enqueued_time_utc, t0);
  EXPECT_NE(got.lock_token, m.lock_token);
}

TEST(Validate, Spec_3_2_MessageIdFormat) {
  EXPECT_TRUE(validate_message_id("abc-:.+%_#*?!(),=@;$'"));
  EXPECT_TRUE(validate_message_id(std::string(128, 'x')));
  EXPECT_EQ(validate_message_id(std::string(129, 'x')).code(), errc::argument_invalid);
  EXPECT_EQ(validate_message_id("").code(), errc::argument_invalid);
  EXPECT_EQ(validate_message_id("a b").code(), errc::argument_invalid);
  EXPECT_EQ(validate_message_id("a/b").code(), errc::argument_invalid);
  EXPECT_EQ(validate_message_id("caf\xc3\xa9").code(), errc::argument_invalid);
}

TEST(Validate, Spec_3_3_ApplicationPropertyCharacters) {
  EXPECT_TRUE(validate_app_property("Az09!#$%&'*+-.^_`|~", "Az09!#$%&'*+-.^_`|~"));
  EXPECT_TRUE(validate_app_property("k", ""));
  EXPECT_EQ(validate_app_property("", "v").code(), errc::argument_invalid);
  EXPECT_EQ(validate_app_property("a b", "v").code(), errc::argument_invalid);
  EXPECT_EQ(validate_app_property("k", "a b").code(), errc::argument_invalid);
  EXPECT_EQ(validate_app_property("k", "a/b").code(), errc::argument_invalid);
  EXPECT_EQ(validate_app_property("k", "a\"b").code(), errc::argument_invalid);
  EXPECT_EQ(validate_app_property("iothub-ack", "full").code(), errc::argument_invalid);
  EXPECT_EQ(validate_app_property("IoTHub-x", "1").code(), errc::argument_invalid);
  EXPECT_EQ(validate_app_property("$.mid", "1").code(), errc::argument_invalid);
}

TEST_F(hub_fixture, Spec_3_3_BadPropertyIsRefusedAndChangesNothing) {
  auto m = msg("a");
  m.app_properties["bad key"] = "v";
  auto r = h->enqueue("dev1", m, t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().numeric(), 400004u);
  EXPECT_NE(r.error().message.find("bad key"), std::string::npos);
  EXPECT_EQ(depth(), 0u);
  EXPECT_EQ(h->stats().accepted, 0u);
  EXPECT_TRUE(log.empty());
}

TEST(Message, Spec_3_6_AckWireValues) {
  EXPECT_EQ(to_string(ack_mode::none), "none");
  EXPECT_EQ(to_string(ack_mode::positive), "positive");
  EXPECT_EQ(to_string(ack_mode::negative), "negative");
  EXPECT_EQ(to_string(ack_mode::full), "full");
  EXPECT_EQ(parse_ack_mode("Full"), ack_mode::full);
  EXPECT_EQ(parse_ack_mode("NEGATIVE"), ack_mode::negative);
  EXPECT_EQ(parse_ack_mode("fullish"), std::nullopt);
}

TEST(Message, LockTokenGuidForm) {
  lock_token t{{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff}};
  EXPECT_EQ(t.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
  EXPECT_EQ(lock_token::parse("00112233-4455-6677-8899-AABBCCDDEEFF"), t);
  EXPECT_EQ(lock_token::parse("00112233445566778899aabbccddeeff"), std::nullopt);
  EXPECT_EQ(lock_token::parse("00112233-4455-6677-8899-aabbccddeefg"), std::nullopt);
}

// --- SPEC 4: feedback ----------------------------------------------------------------

TEST_F(hub_fixture, Spec_4_1_AckModeSelectsOutcomes) {
  struct row {
    ack_mode ack;
    bool on_success, on_failure;
  };
  for (auto [ack, on_success, on_failure] :
       {row{ack_mode::none, false, false}, row{ack_mode::positive, true, false},
        row{ack_mode::negative, false, true}, row{ack_mode::full, true, true}}) {
    make();
    send("ok", ack, "ok");
    send("bad", ack, "bad");
    auto ok = recv();
    auto bad = recv();
    ASSERT_TRUE(h->complete("dev1", *ok.lock_token, t0));
    ASSERT_TRUE(h->reject("dev1", *bad.lock_token, t0));
    auto fb = drain_feedback(t0 + 15s);
    std::size_t expected = (on_success ? 1u : 0u) + (on_failure ? 1u : 0u);
    EXPECT_EQ(fb.size(), expected) << to_string(ack);
    for (auto& r : fb)
      EXPECT_EQ(r.status_code, r.original_message_id == "ok" ? feedback_status::success
                                                             : feedback_status::rejected);
  }
}

TEST_F(hub_fixture, Spec_4_3_BatchOf64GoesOutAtOnce) {
  hub_config c;
  c.max_queue_depth = 200;
  make(c);
  // the first record flushes alone (no batch sent yet); then 64 fill a batch
  for (int i = 0; i < 65; ++i)
    send("m", ack_mode::positive, "m" + std::to_string(i));
  for (int i = 0; i < 65; ++i)
    ASSERT_TRUE(h->complete("dev1", *recv(t0 + 1s).lock_token, t0 + 1s));
  EXPECT_EQ(h->stats().feedback_batches, 2u);
  EXPECT_EQ(h->pending_feedback_records(), 0u);
  auto b1 = h->receive_feedback(t0 + 1s).value();
  auto b2 = h->receive_feedback(t0 + 1s).value();
  ASSERT_TRUE(b1 && b2);
  EXPECT_EQ(b1->records.size(), 1u);
  EXPECT_EQ(b2->records.size(), 64u);
}

TEST_F(hub_fixture, Spec_4_3_BatchGoesOut15SecondsAfterTheLast) {
  send("a", ack_mode::positive, "a");
  send("b", ack_mode::positive, "b");
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0));  // flushes at once
  ASSERT_TRUE(h->complete("dev1", *recv(t0 + 1s).lock_token, t0 + 1s));
  EXPECT_EQ(h->pending_feedback_records(), 1u);
  EXPECT_EQ(h->next_deadline(), t0 + 15s);
  h->tick(t0 + 15s - 1ms);
  EXPECT_EQ(h->pending_feedback_records(), 1u);
  h->tick(t0 + 15s);
  EXPECT_EQ(h->pending_feedback_records(), 0u);
  EXPECT_EQ(h->stats().feedback_batches, 2u);
}

TEST_F(hub_fixture, Spec_4_4_FeedbackBatchCarriesHubNameAndTime) {
  hub_config c;
  c.name = "myhub";
  make(c);
  send("a", ack_mode::full, "a");
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0 + 2s));
  auto b = h->receive_feedback(t0 + 3s).value();
  ASSERT_TRUE(b);
  EXPECT_EQ(b->user_id, "myhub");
  EXPECT_EQ(b->enqueued_time_utc, t0 + 2s);
  EXPECT_FALSE(b->lock_token.is_nil());
  EXPECT_EQ(feedback_content_type, "application/vnd.microsoft.iothub.feedback.json");
}

TEST_F(hub_fixture, Spec_4_5_MessageWithoutIdGivesEmptyOriginalMessageId) {
  send("a", ack_mode::positive);
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0));
  auto fb = drain_feedback(t0);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].original_message_id, "");
}

TEST_F(hub_fixture, Spec_4_8_FeedbackAbandonRedeliversAndCompleteRemoves) {
  send("a", ack_mode::positive, "a");
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0));
  auto b = h->receive_feedback(t0).value();
  ASSERT_TRUE(b);
  EXPECT_EQ(b->delivery_count, 1u);
  EXPECT_FALSE(h->receive_feedback(t0).value()) << "locked batch is invisible";
  ASSERT_TRUE(h->abandon_feedback(b->lock_token, t0));
  auto again = h->receive_feedback(t0).value();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->records, b->records);
  EXPECT_EQ(again->delivery_count, 2u);
  EXPECT_EQ(h->complete_feedback(b->lock_token, t0).code(), errc::device_message_lock_lost);
  ASSERT_TRUE(h->complete_feedback(again->lock_token, t0));
  EXPECT_EQ(h->feedback_queue_depth(), 0u);
}

TEST_F(hub_fixture, Spec_4_2_FeedbackLockExpiresAfterLockDuration) {
  hub_config c;
  c.feedback_lock_duration = 5s;
  make(c);
  send("a", ack_mode::positive, "a");
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0));
  auto b = h->receive_feedback(t0).value();
  ASSERT_TRUE(b);
  EXPECT_FALSE(h->receive_feedback(t0 + 5s - 1ms).value());
  auto again = h->receive_feedback(t0 + 5s).value();
  ASSERT_TRUE(again);
  EXPECT_EQ(h->complete_feedback(b->lock_token, t0 + 5s).code(), errc::device_message_lock_lost);
}

TEST_F(hub_fixture, Spec_4_7_FeedbackExpiresAfterItsTtl) {
  send("a", ack_mode::positive, "a");
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0));
  EXPECT_EQ(h->feedback_queue_depth(), 1u);
  h->tick(t0 + 1h);
  EXPECT_EQ(h->feedback_queue_depth(), 0u);
  EXPECT_EQ(h->feedback_batches_dropped(), 1u);
}

TEST_F(hub_fixture, Spec_2_1_FeedbackMaxDeliveryCountDropsBatch) {
  hub_config c;
  c.feedback_max_delivery_count = 2;
  make(c);
  send("a", ack_mode::positive, "a");
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0));
  ASSERT_TRUE(h->abandon_feedback(h->receive_feedback(t0).value()->lock_token, t0));
  ASSERT_TRUE(h->abandon_feedback(h->receive_feedback(t0).value()->lock_token, t0));
  EXPECT_FALSE(h->receive_feedback(t0).value());
  EXPECT_EQ(h->feedback_batches_dropped(), 1u);
}

// --- SPEC 7: engine properties -----------------------------------------------------

TEST_F(hub_fixture, Spec_7_3_TimersApplyAtTheirOwnInstant) {
  // tick late: the lock expiry and redelivery do not depend on when tick runs
  send("a", ack_mode::negative, "a");
  auto m = msg("b", ack_mode::negative, "b");
  m.expiry_time_utc = t0 + 30s;
  ASSERT_TRUE(h->enqueue("dev1", m, t0));
  recv();
  h->tick(t0 + 10min);
  auto fb = drain_feedback(t0 + 10min);
  ASSERT_EQ(fb.size(), 1u);
  EXPECT_EQ(fb[0].original_message_id, "b");
  EXPECT_EQ(fb[0].enqueued_time_utc, t0 + 30s);
  EXPECT_EQ(depth(t0 + 10min), 1u);
}

TEST_F(hub_fixture, TimeNeverGoesBackwards) {
  send("a");
  auto m = recv(t0 + 10s);
  // an earlier `now` is taken as the latest seen: the lock is still held
  EXPECT_FALSE(h->receive("dev1", t0)->has_value());
  EXPECT_TRUE(h->complete("dev1", *m.lock_token, t0));
  EXPECT_EQ(h->last_now(), t0 + 10s);
}

TEST_F(hub_fixture, NextDeadlineTracksEarliestTimer) {
  EXPECT_EQ(h->next_deadline(), std::nullopt);
  send("a");
  EXPECT_EQ(h->next_deadline(), t0 + 1h);
  recv(t0 + 1s);
  EXPECT_EQ(h->next_deadline(), t0 + 61s);
}

TEST(HubDeterminism, SameInputsGiveSameOutputs) {
  auto run = [] {
    hub h({}, seeded_token_source(7));
    std::vector<std::string> out;
    h.set_observer([&](const transition& t) {
      out.push_back(std::to_string(t.sequence_number) + std::string(to_string(t.cause)));
    });
    (void)h.add_device("a");
    for (int i = 0; i < 5; ++i) {
      message m;
      m.body = "x";
      (void)h.enqueue("a", m, t0 + std::chrono::seconds(i));
    }
    auto r = h.receive("a", t0 + 10s);
    out.push_back((*r)->lock_token->to_string());
    h.tick(t0 + 2h);
    return out;
  };
  EXPECT_EQ(run(), run());
}

TEST_F(hub_fixture, Spec_4_2_FeedbackTimersApplyOnAnyOperation) {
  // a driver waits on next_deadline(): it must never be in the past after a call
  hub_config c;
  c.feedback_lock_duration = 5s;
  make(c);
  send("a", ack_mode::positive, "a");
  ASSERT_TRUE(h->complete("dev1", *recv().lock_token, t0));
  ASSERT_TRUE(h->receive_feedback(t0).value());
  EXPECT_EQ(h->next_deadline(), t0 + 5s);
  send("b", ack_mode::none, {}, t0 + 6s);  // any operation past the feedback lock
  ASSERT_TRUE(h->next_deadline());
  EXPECT_GT(*h->next_deadline(), t0 + 6s);
  EXPECT_TRUE(h->receive_feedback(t0 + 6s).value()) << "the expired feedback lock was released";
}
