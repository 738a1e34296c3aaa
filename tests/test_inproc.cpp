// The how-to of SPEC 6 as integration tests over the in-process transport: a
// device app receiving, handling and acknowledging C2D messages on its own
// thread; a back-end app sending with ack=full and receiving delivery feedback.
// Time is a manual_clock: it moves only when a test advances it, and the tests
// wait on events (bounded by real-time timeouts), never sleep.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <devicebound/clock.hpp>
#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/inproc.hpp>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "support/event_log.hpp"

using namespace devicebound;
using namespace std::chrono_literals;

namespace {

using test_support::event_log;

using host_type = inproc::hub_host<manual_clock>;
using device_type = device_client<inproc::device_connection<manual_clock>>;
using service_type = service_client<inproc::service_connection<manual_clock>>;

message make_message(std::string id, std::string body) {
  message m;
  m.message_id = std::move(id);
  m.body = std::move(body);
  return m;
}

struct howto : ::testing::Test {
  manual_clock clk;
  time_point t0 = clk.now();
  hub_config cfg = [] {
    hub_config c;
    c.name = "howto-hub";
    return c;
  }();
  std::unique_ptr<host_type> host;

  void SetUp() override { make_host(); }
  void make_host() {
    host = std::make_unique<host_type>(cfg, clk, seeded_token_source(7));
    ASSERT_TRUE(host->add_device("thermostat-1"));
  }

  /// Collects every feedback record the back end gets, completing each batch.
  void collect_feedback(service_type& backend, event_log<feedback_record>& out) {
    backend.set_feedback_handler([&out](const feedback_batch& b) {
      for (const auto& r : b.records)
        out.push(r);
      return feedback_disposition::complete;
    });
  }
};

std::map<std::string, feedback_status> by_id(const std::vector<feedback_record>& records) {
  std::map<std::string, feedback_status> out;
  for (const auto& r : records)
    out[r.original_message_id] = r.status_code;
  return out;
}

}  // namespace

// --- the how-to: device app and back-end app --------------------------------------------

TEST_F(howto, DeviceAppCompletes_BackEndGetsSuccessFeedback) {
  event_log<message> received;
  device_type device(host->device("thermostat-1"));
  device.set_message_handler([&](const message& m) {
    received.push(m);
    return disposition::complete;
  });

  event_log<feedback_record> feedback;
  service_type backend(host->service());
  collect_feedback(backend, feedback);

  auto m = make_message("set-21", "{\"target\":21}");
  m.app_properties["unit"] = "celsius";
  auto receipt = backend.send("thermostat-1", m, ack_mode::full);
  ASSERT_TRUE(receipt) << receipt.error().message;

  ASSERT_TRUE(received.wait_for_size(1));
  const message got = received.items()[0];
  EXPECT_EQ(got.body, "{\"target\":21}");
  EXPECT_EQ(got.message_id, "set-21");
  EXPECT_EQ(got.app_properties.at("unit"), "celsius");
  EXPECT_EQ(got.ack, ack_mode::full);
  EXPECT_EQ(got.to, "/devices/thermostat-1/messages/devicebound");
  EXPECT_EQ(got.sequence_number, receipt->sequence_number);
  EXPECT_EQ(got.delivery_count, 0u);
  EXPECT_TRUE(got.lock_token.has_value());
  EXPECT_EQ(got.enqueued_time_utc, t0);

  ASSERT_TRUE(feedback.wait_for_size(1));
  const auto rec = feedback.items()[0];
  EXPECT_EQ(rec.original_message_id, "set-21");
  EXPECT_EQ(rec.status_code, feedback_status::success);
  EXPECT_EQ(rec.description, "Success");
  EXPECT_EQ(rec.device_id, "thermostat-1");
  EXPECT_EQ(rec.device_generation_id,
            host->with_hub([](hub& h) { return h.generation_id("thermostat-1").value(); }));

  const auto s = host->stats();
  EXPECT_EQ(s.accepted, 1u);
  EXPECT_EQ(s.completed, 1u);
  EXPECT_EQ(device.status(), connection_status::connected);
}

TEST_F(howto, AllThreeDispositions_FeedbackBatchedEvery15Seconds) {
  cfg.max_delivery_count = 2;  // abandoned twice -> dead-lettered
  make_host();
  event_log<transition> terminal;
  host->set_observer([&](const transition& t) {
    if (is_terminal(t.to)) {
      transition copy = t;
      copy.device_id = {};
      copy.message_id.reset();
      terminal.push(copy);
    }
  });

  event_log<message> received;
  device_type device(host->device("thermostat-1"));
  device.set_message_handler([&](const message& m) {
    received.push(m);
    if (m.message_id->starts_with("ok"))
      return disposition::complete;
    if (*m.message_id == "bad")
      return disposition::reject;
    return disposition::abandon;
  });

  event_log<feedback_record> feedback;
  service_type backend(host->service());
  collect_feedback(backend, feedback);

  for (const char* id : {"ok-1", "bad", "flaky", "ok-2"})
    ASSERT_TRUE(backend.send("thermostat-1", make_message(id, "x"), ack_mode::full));

  // 4 outcomes; 'flaky' is delivered twice (abandon, abandon -> DeliveryCountExceeded).
  ASSERT_TRUE(terminal.wait_for_size(4));
  EXPECT_EQ(received.size(), 5u);
  std::vector<std::uint32_t> flaky_counts;
  for (const auto& m : received.items())
    if (*m.message_id == "flaky")
      flaky_counts.push_back(m.delivery_count);
  EXPECT_EQ(flaky_counts, (std::vector<std::uint32_t>{0, 1}));

  // The first record after a quiet period goes out at once; the rest wait for
  // the 15 s batching interval (SPEC 4.3).
  ASSERT_TRUE(feedback.wait_for_size(1));
  EXPECT_EQ(feedback.size(), 1u);
  clk.advance(15s);
  ASSERT_TRUE(feedback.wait_for_size(4));

  const auto got = by_id(feedback.items());
  EXPECT_EQ(got.at("ok-1"), feedback_status::success);
  EXPECT_EQ(got.at("ok-2"), feedback_status::success);
  EXPECT_EQ(got.at("bad"), feedback_status::rejected);
  EXPECT_EQ(got.at("flaky"), feedback_status::delivery_count_exceeded);

  const auto s = host->stats();
  EXPECT_EQ(s.accepted, 4u);
  EXPECT_EQ(s.completed, 2u);
  EXPECT_EQ(s.rejected, 1u);
  EXPECT_EQ(s.delivery_count_exceeded, 1u);
  EXPECT_EQ(s.feedback_batches, 2u);
}

TEST_F(howto, PullReceiveAndSettleEachWay) {
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  for (const char* id : {"a", "b", "c"})
    ASSERT_TRUE(backend.send("thermostat-1", make_message(id, id), ack_mode::full));

  auto a = device.receive(0ms);
  auto b = device.receive(0ms);
  auto c = device.receive(0ms);
  ASSERT_TRUE(a && *a && b && *b && c && *c);
  EXPECT_LT((*a)->sequence_number, (*b)->sequence_number);
  EXPECT_LT((*b)->sequence_number, (*c)->sequence_number);
  EXPECT_EQ(backend.queue_depth("thermostat-1").value(), 3u);  // Invisible counts

  EXPECT_TRUE(device.complete(**a));
  EXPECT_TRUE(device.reject(**b));
  EXPECT_TRUE(device.abandon(**c));
  auto again = device.receive(0ms);
  ASSERT_TRUE(again && *again);
  EXPECT_EQ((*again)->message_id, "c");
  EXPECT_EQ((*again)->delivery_count, 1u);
  EXPECT_NE((*again)->lock_token, (*c)->lock_token);
  EXPECT_TRUE(device.complete((*again)->lock_token.value()));

  EXPECT_EQ(backend.queue_depth("thermostat-1").value(), 0u);
  auto none = device.receive(0ms);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
}

// --- lock expiry ------------------------------------------------------------------------

TEST_F(howto, LockExpiryRedeliversByAdvancingTheClock) {
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  ASSERT_TRUE(backend.send("thermostat-1", make_message("m", "x"), ack_mode::full));

  auto first = device.receive(0ms).value();
  ASSERT_TRUE(first);

  clk.advance(59s);  // still locked (SPEC 1.5: one minute)
  auto none = device.receive(0ms);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());

  clk.advance(1s);
  auto second = device.receive(0ms).value();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->sequence_number, first->sequence_number);
  EXPECT_NE(second->lock_token, first->lock_token);
  EXPECT_EQ(second->delivery_count, 0u);  // lock expiry does not count (SPEC 1.4, current rule)

  auto stale = device.complete(*first);
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.code(), errc::device_message_lock_lost);
  EXPECT_TRUE(device.complete(*second));
  EXPECT_EQ(host->stats().completed, 1u);
}

TEST_F(howto, LockExpiryWakesADeviceWaitingInReceive) {
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  ASSERT_TRUE(backend.send("thermostat-1", make_message("m", "x")));
  auto first = device.receive(0ms).value();
  ASSERT_TRUE(first);

  auto waiting = std::async(std::launch::async, [&] { return device.receive(10min); });
  // The receive waits until the lock expires (the hub's next deadline), not 10 min.
  ASSERT_TRUE(clk.await_waiter(t0 + 60s));
  clk.advance(60s);
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready);
  auto again = waiting.get();
  ASSERT_TRUE(again && *again);
  EXPECT_EQ((*again)->sequence_number, first->sequence_number);
}

TEST_F(howto, ShortLockFromConfig) {
  cfg.lock_duration = 5s;
  make_host();
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  ASSERT_TRUE(backend.send("thermostat-1", make_message("m", "x")));
  ASSERT_TRUE(device.receive(0ms).value());
  clk.advance(5s);
  auto again = device.receive(0ms).value();
  ASSERT_TRUE(again);
}

// --- waiting on the clock ---------------------------------------------------------------

TEST_F(howto, ReceiveWaitsForASend) {
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  auto waiting = std::async(std::launch::async, [&] { return device.receive(1min); });
  ASSERT_TRUE(clk.await_waiter(t0 + 1min));
  ASSERT_TRUE(backend.send("thermostat-1", make_message("late", "x")));
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready);
  auto got = waiting.get();
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->message_id, "late");
}

TEST_F(howto, ReceiveTimesOutOnTheClock) {
  device_type device(host->device("thermostat-1"));
  auto waiting = std::async(std::launch::async, [&] { return device.receive(30s); });
  ASSERT_TRUE(clk.await_waiter(t0 + 30s));
  clk.advance(29s);
  EXPECT_EQ(waiting.wait_for(0ms), std::future_status::timeout);
  clk.advance(1s);
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready);
  auto got = waiting.get();
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->has_value());
}

// --- back end: purge, depth, feedback by pulling, errors --------------------------------

TEST_F(howto, PurgeCountsAndReportsPurgedFeedback) {
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  for (const char* id : {"p1", "p2", "p3"})
    ASSERT_TRUE(backend.send("thermostat-1", make_message(id, "x"), ack_mode::negative));
  ASSERT_TRUE(device.receive(0ms).value());  // one of them Invisible
  EXPECT_EQ(backend.queue_depth("thermostat-1").value(), 3u);
  EXPECT_EQ(backend.purge("thermostat-1").value(), 3u);
  EXPECT_EQ(backend.queue_depth("thermostat-1").value(), 0u);

  auto batch = backend.receive_feedback(0ms);
  ASSERT_TRUE(batch && *batch);
  EXPECT_EQ((*batch)->user_id, "howto-hub");
  ASSERT_EQ((*batch)->records.size(), 3u);
  for (const auto& r : (*batch)->records)
    EXPECT_EQ(r.status_code, feedback_status::purged);
  EXPECT_TRUE(backend.complete_feedback(**batch));
  auto none = backend.receive_feedback(0ms);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
}

TEST_F(howto, AbandonedFeedbackBatchComesBack) {
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  ASSERT_TRUE(backend.send("thermostat-1", make_message("f", "x"), ack_mode::positive));
  ASSERT_TRUE(device.complete(device.receive(0ms).value().value()));

  auto first = backend.receive_feedback(0ms).value();
  ASSERT_TRUE(first);
  EXPECT_TRUE(backend.abandon_feedback(*first));
  auto second = backend.receive_feedback(0ms).value();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->records, first->records);
  EXPECT_GT(second->delivery_count, first->delivery_count);
  EXPECT_TRUE(backend.complete_feedback(*second));
  auto stale = backend.complete_feedback(*first);
  EXPECT_EQ(stale.code(), errc::device_message_lock_lost);
}

TEST_F(howto, FeedbackByPullWaitsForTheBatchingInterval) {
  device_type device(host->device("thermostat-1"));
  service_type backend(host->service());
  for (const char* id : {"x1", "x2"})
    ASSERT_TRUE(backend.send("thermostat-1", make_message(id, "x"), ack_mode::full));
  ASSERT_TRUE(device.complete(device.receive(0ms).value().value()));  // batch 1 at once
  ASSERT_TRUE(device.complete(device.receive(0ms).value().value()));  // waits for 15 s
  auto b1 = backend.receive_feedback(0ms).value();
  ASSERT_TRUE(b1);
  EXPECT_TRUE(backend.complete_feedback(*b1));

  auto waiting = std::async(std::launch::async, [&] { return backend.receive_feedback(1min); });
  ASSERT_TRUE(clk.await_waiter(t0 + 15s));  // the batch is due then, before the 1 min timeout
  clk.advance(15s);
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready);
  auto b2 = waiting.get();
  ASSERT_TRUE(b2 && *b2);
  ASSERT_EQ((*b2)->records.size(), 1u);
  EXPECT_EQ((*b2)->records[0].original_message_id, "x2");
  EXPECT_EQ((*b2)->enqueued_time_utc, t0 + 15s);
  EXPECT_TRUE(backend.complete_feedback(**b2));
}

TEST_F(howto, SendErrorsAreTyped) {
  cfg.max_queue_depth = 1;
  make_host();
  service_type backend(host->service());
  EXPECT_EQ(backend.send("nobody", make_message("a", "x")).code(), errc::device_not_found);
  message big = make_message("big", std::string(64 * 1024 + 1, 'x'));
  EXPECT_EQ(backend.send("thermostat-1", big).code(), errc::message_too_large);
  EXPECT_EQ(backend.send("thermostat-1", make_message("bad id/", "x")).code(),
            errc::argument_invalid);
  ASSERT_TRUE(backend.send("thermostat-1", make_message("one", "x")));
  auto full = backend.send("thermostat-1", make_message("two", "x"));
  EXPECT_EQ(full.code(), errc::device_maximum_queue_depth_exceeded);
  EXPECT_EQ(full.error().numeric(), 403004u);
  EXPECT_EQ(backend.purge("nobody").code(), errc::device_not_found);
  EXPECT_EQ(host->stats().accepted, 1u);
}

TEST_F(howto, MessageIdAssignedWhenUnset) {
  device_type device(host->device("thermostat-1"));
  service_client_options o;
  o.assign_message_id = message_id_assignment::when_unset;
  o.message_id_source = seeded_token_source(1);
  service_type backend(host->service(), retry::policy{}, o);
  message m;
  m.body = "no id";
  ASSERT_TRUE(backend.send("thermostat-1", m));
  ASSERT_TRUE(backend.send("thermostat-1", make_message("mine", "x")));

  const auto first = device.receive(0ms).value().value();
  ASSERT_TRUE(first.message_id);
  const std::string& id = *first.message_id;
  ASSERT_EQ(id.size(), 36u);
  EXPECT_EQ(id[8], '-');
  EXPECT_EQ(id[14], '4');                                          // version 4
  EXPECT_NE(std::string("89ab").find(id[19]), std::string::npos);  // RFC 4122 variant
  EXPECT_EQ(id, make_uuid_v4(seeded_token_source(1)));
  EXPECT_EQ(device.receive(0ms).value()->message_id, "mine");

  service_type plain(host->service());  // default: message_id_assignment::never
  ASSERT_TRUE(plain.send("thermostat-1", m));
  auto third = device.receive(0ms).value();
  ASSERT_TRUE(third);
  EXPECT_FALSE(third->message_id.has_value());
}

// --- device connection status ------------------------------------------------------------

TEST_F(howto, StatusCallbackAndDisconnect) {
  event_log<std::pair<connection_status, connection_status_reason>> status;
  event_log<message> received;
  device_type device(host->device("thermostat-1"));
  device.set_connection_status_callback([&](connection_status s, connection_status_reason r) {
    status.push({s, r});
  });
  EXPECT_EQ(device.status(), connection_status::disconnected);
  ASSERT_TRUE(device.connect());
  EXPECT_EQ(device.status(), connection_status::connected);

  device.set_message_handler([&](const message& m) {
    received.push(m);
    return disposition::complete;
  });
  EXPECT_EQ(device.receive(0ms).code(), errc::invalid_operation);  // handler and pull are exclusive
  device.disconnect();
  EXPECT_EQ(device.receive(0ms).code(), errc::invalid_operation);  // closed until connect()

  service_type backend(host->service());
  ASSERT_TRUE(backend.send("thermostat-1", make_message("after", "x")));
  ASSERT_TRUE(device.connect());  // restarts the handler thread
  ASSERT_TRUE(received.wait_for_size(1));

  using S = connection_status;
  using R = connection_status_reason;
  EXPECT_EQ(status.items(), (std::vector<std::pair<S, R>>{{S::connected, R::ok},
                                                          {S::disconnected, R::client_closed},
                                                          {S::connected, R::ok}}));
}

TEST_F(howto, UnknownDeviceIsRefusedLikeBadCredentials) {
  event_log<std::pair<connection_status, connection_status_reason>> status;
  device_type device(host->device("nobody"));
  device.set_connection_status_callback([&](connection_status s, connection_status_reason r) {
    status.push({s, r});
  });
  auto r = device.connect();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::unauthorized);
  ASSERT_EQ(status.size(), 1u);
  EXPECT_EQ(status.items()[0].second, connection_status_reason::bad_credential);
}

// --- a complete-only device transport (like MQTT to IoT Hub) -----------------------------

TEST_F(howto, CompleteOnlyTransportCompletes_OtherDispositionsLeaveTheMessageLocked) {
  using mqtt_like = device_client<inproc::complete_only_device_connection<manual_clock>>;
  static_assert(
      !transport_traits<inproc::complete_only_device_connection<manual_clock>>::can_reject);
  static_assert(
      !transport_traits<inproc::complete_only_device_connection<manual_clock>>::can_abandon);
  event_log<error> errors;
  event_log<message> received;
  mqtt_like device(host->complete_only_device("thermostat-1"));
  service_type backend(host->service());
  ASSERT_TRUE(backend.send("thermostat-1", make_message("one", "x")));
  ASSERT_TRUE(backend.send("thermostat-1", make_message("two", "x")));

  auto one = device.receive(0ms).value().value();
  EXPECT_TRUE(device.complete(one));
  auto two = device.receive(0ms).value().value();
  auto refused = device.settle(two, disposition::reject);  // chosen at run time
  EXPECT_EQ(refused.code(), errc::not_supported);

  // A handler that asks to abandon: reported, the message stays locked and comes back.
  device.set_error_handler([&](const error& e) { errors.push(e); });
  device.set_message_handler([&](const message& m) {
    received.push(m);
    return received.size() == 1 ? disposition::abandon : disposition::complete;
  });
  ASSERT_TRUE(clk.await_waiter(t0 + 60s));  // the handler thread waits for the lock expiry
  clk.advance(60s);
  ASSERT_TRUE(received.wait_for_size(1));
  ASSERT_TRUE(errors.wait_for_size(1));
  EXPECT_EQ(errors.items()[0].code, errc::not_supported);
  ASSERT_TRUE(clk.await_waiter(t0 + 120s));
  clk.advance(60s);
  ASSERT_TRUE(received.wait_for_size(2));
  EXPECT_EQ(received.items()[1].message_id, "two");
  device.set_message_handler(nullptr);
  EXPECT_EQ(host->stats().completed, 2u);
}

// --- who calls tick ----------------------------------------------------------------------

TEST_F(howto, PumpAppliesTimersWhenNobodyWaits) {
  service_type backend(host->service());
  auto m = make_message("short", "x");
  m.expiry_time_utc = t0 + 1min;
  ASSERT_TRUE(backend.send("thermostat-1", m, ack_mode::negative));
  EXPECT_EQ(host->pump(), t0 + 1min);
  clk.advance(1min);
  EXPECT_EQ(host->stats().expired, 0u);  // nobody brought the hub up to date yet
  host->pump();
  EXPECT_EQ(host->stats().expired, 1u);
  auto batch = backend.receive_feedback(0ms).value();
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->records.at(0).status_code, feedback_status::expired);
  EXPECT_EQ(batch->records.at(0).enqueued_time_utc, t0 + 1min);
}

TEST_F(howto, DriverThreadTicksAtTheHubsDeadline) {
  event_log<transition> expired;
  host->set_observer([&](const transition& t) {
    if (t.cause == transition_cause::ttl_expired) {
      transition copy = t;
      copy.device_id = {};
      copy.message_id.reset();
      expired.push(copy);
    }
  });
  host->start_driver();
  EXPECT_TRUE(host->driver_running());
  service_type backend(host->service());
  auto m = make_message("short", "x");
  m.expiry_time_utc = t0 + 1min;
  ASSERT_TRUE(backend.send("thermostat-1", m, ack_mode::negative));

  ASSERT_TRUE(clk.await_waiter(t0 + 1min));  // the driver sleeps until the TTL
  clk.advance(1min);
  ASSERT_TRUE(expired.wait_for_size(1));
  EXPECT_EQ(expired.items()[0].at, t0 + 1min);
  host->stop_driver();
  EXPECT_FALSE(host->driver_running());
}
