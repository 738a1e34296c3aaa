// Retry and reconnection of the clients under injected faults (SPEC 8). The
// transport's calls are logged with their time on a manual_clock, so each test
// asserts the exact attempt times of the policy's schedule; the tests advance
// time only once a client is waiting for it, and never sleep.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <devicebound/clock.hpp>
#include <devicebound/device_client.hpp>
#include <devicebound/retry.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/faulty.hpp>
#include <devicebound/transport/inproc.hpp>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "support/event_log.hpp"

using namespace devicebound;
using namespace std::chrono_literals;

namespace {

using test_support::event_log;

using host_type = inproc::hub_host<manual_clock>;
using faulty_device = faulty::transport<inproc::device_connection<manual_clock>>;
using faulty_service = faulty::transport<inproc::service_connection<manual_clock>>;
using device_type = device_client<faulty_device>;
using service_type = service_client<faulty_service>;
using status_change = std::pair<connection_status, connection_status_reason>;
using S = connection_status;
using R = connection_status_reason;

message make_message(std::string id) {
  message m;
  m.message_id = std::move(id);
  m.body = "x";
  return m;
}

struct retrying : ::testing::Test {
  manual_clock clk;
  time_point t0 = clk.now();
  host_type host{hub_config{}, clk, seeded_token_source(3)};
  std::shared_ptr<faulty::injector> faults = std::make_shared<faulty::injector>();
  event_log<status_change> status;

  void SetUp() override { ASSERT_TRUE(host.add_device("dev")); }

  /// A device client with C's EXPONENTIAL_BACKOFF: first retry at once, then 1, 2,
  /// 4 ... s measured from each attempt's start (SPEC 8.1).
  std::unique_ptr<device_type> make_device(
      retry::policy p = retry::profiles::c_exponential_backoff()) {
    auto d = std::make_unique<device_type>(faulty_device(host.device("dev"), faults), std::move(p),
                                           device_client_options{1min, 1});
    d->set_connection_status_callback([this](S s, R r) { status.push({s, r}); });
    return d;
  }

  /// Advances the clock to `t` once a client waits for exactly `t`.
  void advance_when_awaited(time_point t) {
    ASSERT_TRUE(clk.await_waiter(t)) << "nobody waits for t0 + " << (t - t0).count() << " ms";
    clk.advance_to(t);
  }
};

/// A policy without jitter whose first retry waits (no immediate retry): 1, 2, 4 ... s.
retry::policy plain_backoff() {
  return retry::basic_policy<retry::exponential_backoff>(retry::exponential_backoff{1s, 30s});
}

}  // namespace

// --- device: reconnection -----------------------------------------------------------

TEST_F(retrying, DroppedConnectionIsReestablishedOnThePolicySchedule_NoMessageLost) {
  event_log<std::string> handled;
  auto device = make_device();
  device->set_message_handler([&](const message& m) {
    handled.push(*m.message_id);
    return disposition::complete;
  });
  service_client backend(host.service());
  ASSERT_TRUE(backend.send("dev", make_message("before")));
  ASSERT_TRUE(handled.wait_for_size(1));
  ASSERT_TRUE(clk.await_waiter(t0 + 1min));  // settled, and waiting in receive again

  clk.advance(10s);
  const time_point t = t0 + 10s;
  faults->fail_next(3, errc::not_connected, faulty::op::open);  // the network stays down a while
  faults->disconnect();
  ASSERT_TRUE(faults->await_calls(faulty::op::open, 2));  // C: the first retry is immediate
  // Messages accepted while the device is away wait in its queue.
  ASSERT_TRUE(backend.send("dev", make_message("during-1")));
  ASSERT_TRUE(backend.send("dev", make_message("during-2")));

  advance_when_awaited(t + 1s);
  ASSERT_TRUE(faults->await_calls(faulty::op::open, 3));
  advance_when_awaited(t + 3s);  // 2 s after the previous attempt started
  ASSERT_TRUE(faults->await_calls(faulty::op::open, 4));
  advance_when_awaited(t + 7s);  // 4 s after
  ASSERT_TRUE(handled.wait_for_size(3));

  EXPECT_EQ(faults->call_times(faulty::op::open),
            (std::vector<time_point>{t0, t, t + 1s, t + 3s, t + 7s}));
  EXPECT_EQ(handled.items(), (std::vector<std::string>{"before", "during-1", "during-2"}));
  EXPECT_EQ(status.items(), (std::vector<status_change>{{S::connected, R::ok},
                                                        {S::disconnected, R::communication_error},
                                                        {S::disconnected, R::no_network},
                                                        {S::connected, R::ok}}));
  device->set_message_handler(nullptr);
  const auto s = host.stats();
  EXPECT_EQ(s.accepted, 3u);
  EXPECT_EQ(s.completed, 3u);
}

TEST_F(retrying, MessageLostInTransitIsRedeliveredAfterTheLockExpires) {
  // The first delivery is locked at the hub but never reaches the client, and the
  // connection goes with it.
  faults->drop_next(1, faulty::op::receive, faulty::drop_point::response);
  event_log<message> handled;
  auto device = make_device();
  device->set_message_handler([&](const message& m) {
    handled.push(m);
    return disposition::complete;
  });
  service_client backend(host.service());
  const auto seq = backend.send("dev", make_message("m")).value().sequence_number;

  ASSERT_TRUE(faults->await_calls(faulty::op::open, 2));  // reconnected at once
  EXPECT_EQ(handled.size(), 0u);
  advance_when_awaited(t0 + 60s);  // the handler thread waits for the lock expiry
  ASSERT_TRUE(handled.wait_for_size(1));
  const message m = handled.items()[0];
  EXPECT_EQ(m.sequence_number, seq);
  EXPECT_EQ(m.delivery_count, 0u);
  EXPECT_EQ(faults->call_times(faulty::op::open), (std::vector<time_point>{t0, t0}));
  device->set_message_handler(nullptr);
  EXPECT_EQ(host.stats().completed, 1u);
}

TEST_F(retrying, TransientReceiveErrorIsRetriedWithoutReconnecting) {
  auto device = make_device(plain_backoff());
  service_client backend(host.service());
  ASSERT_TRUE(backend.send("dev", make_message("m")));
  ASSERT_TRUE(device->connect());
  faults->fail_next(1, errc::server_busy, faulty::op::receive);
  auto waiting = std::async(std::launch::async, [&] { return device->receive(1min); });
  advance_when_awaited(t0 + 1s);
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready);
  auto got = waiting.get();
  ASSERT_TRUE(got && *got);
  EXPECT_EQ(faults->call_times(faulty::op::receive), (std::vector<time_point>{t0, t0 + 1s}));
  EXPECT_EQ(faults->calls(faulty::op::open), 1u);
}

TEST_F(retrying, PullReceiveGivesUpWhenTheNextAttemptIsPastItsTimeout) {
  auto device = make_device(plain_backoff());
  ASSERT_TRUE(device->connect());
  faults->set_offline(true);
  faults->disconnect();
  auto waiting = std::async(std::launch::async, [&] { return device->receive(2500ms); });
  advance_when_awaited(t0 + 1s);  // next would be t0 + 3 s: after the 2.5 s timeout
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(waiting.get().code(), errc::not_connected);
  EXPECT_EQ(faults->call_times(faulty::op::open), (std::vector<time_point>{t0, t0, t0 + 1s}));
}

// --- device: giving up ----------------------------------------------------------------

TEST_F(retrying, FatalOpenErrorIsNotRetried) {
  auto device = make_device(plain_backoff());  // consolidated table: 401 is fatal
  faults->fail_next(1, errc::unauthorized, faulty::op::open);
  auto r = device->connect();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::unauthorized);
  EXPECT_EQ(faults->calls(faulty::op::open), 1u);
  EXPECT_TRUE(clk.waiting_deadlines().empty());
  EXPECT_EQ(status.items(), (std::vector<status_change>{{S::disconnected, R::bad_credential}}));
}

TEST_F(retrying, CProfileRetriesUnauthorizedAsTheCSdkDoes) {
  auto device = make_device(retry::profiles::c_exponential_backoff());  // SPEC 8.8 disagreement
  faults->fail_next(1, errc::unauthorized, faulty::op::open);
  ASSERT_TRUE(device->connect());
  EXPECT_EQ(faults->call_times(faulty::op::open), (std::vector<time_point>{t0, t0}));
  EXPECT_EQ(status.items(), (std::vector<status_change>{{S::disconnected, R::bad_credential},
                                                        {S::connected, R::ok}}));
}

TEST_F(retrying, RetryExpiresAtThePolicyTimeout) {
  // C semantics: the 5 s timeout runs from the first retry; an attempt due at or
  // after it is not made (SPEC 8.1 step 4).
  auto device = make_device(retry::profiles::c_exponential_backoff(std::chrono::seconds{5}));
  faults->set_offline(true);
  auto connecting = std::async(std::launch::async, [&] { return device->connect(); });
  advance_when_awaited(t0 + 1s);
  advance_when_awaited(t0 + 3s);
  ASSERT_EQ(connecting.wait_for(10s), std::future_status::ready);  // next would be t0 + 7 s
  auto r = connecting.get();
  EXPECT_EQ(r.code(), errc::not_connected);
  EXPECT_EQ(faults->call_times(faulty::op::open),
            (std::vector<time_point>{t0, t0, t0 + 1s, t0 + 3s}));
  EXPECT_EQ(status.items(), (std::vector<status_change>{{S::disconnected, R::no_network},
                                                        {S::disconnected, R::retry_expired}}));
}

TEST_F(retrying, NoRetryPolicyStopsAtTheFirstFailure) {
  auto device = make_device(retry::profiles::c_none());
  faults->set_offline(true);
  EXPECT_EQ(device->connect().code(), errc::not_connected);
  EXPECT_EQ(faults->calls(faulty::op::open), 1u);
  EXPECT_EQ(status.items(), (std::vector<status_change>{{S::disconnected, R::no_network},
                                                        {S::disconnected, R::retry_expired}}));
}

TEST_F(retrying, DisconnectInterruptsARetryWait) {
  auto device = make_device(plain_backoff());
  faults->set_offline(true);
  auto connecting = std::async(std::launch::async, [&] { return device->connect(); });
  ASSERT_TRUE(clk.await_waiter(t0 + 1s));
  device->disconnect();
  ASSERT_EQ(connecting.wait_for(10s), std::future_status::ready);
  EXPECT_FALSE(connecting.get());
  EXPECT_EQ(faults->calls(faulty::op::open), 1u);
  EXPECT_EQ(status.items().back(), (status_change{S::disconnected, R::client_closed}));
}

TEST_F(retrying, DelayFaultWaitsOnTheInjectedClock) {
  auto device = make_device();
  faults->set_delay(5s, faulty::op::open);
  auto connecting = std::async(std::launch::async, [&] { return device->connect(); });
  advance_when_awaited(t0 + 5s);
  ASSERT_EQ(connecting.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(connecting.get());
  EXPECT_EQ(faults->call_times(faulty::op::open), (std::vector<time_point>{t0}));
}

// --- device: settlements ----------------------------------------------------------------

TEST_F(retrying, LockLostIsReportedNotRetried) {
  auto device = make_device();
  service_client backend(host.service());
  ASSERT_TRUE(backend.send("dev", make_message("m")));
  auto m = device->receive(0ms).value().value();
  clk.advance(60s);  // the lock expires
  auto r = device->complete(m);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::device_message_lock_lost);
  EXPECT_EQ(r.error().numeric(), 412002u);
  EXPECT_EQ(faults->calls(faulty::op::complete), 1u);

  // Even a classifier that calls 412002 transient does not retry a settlement.
  auto p = retry::policy(retry::profiles::c_exponential_backoff());
  p.errors.set(errc::device_message_lock_lost, retry::error_class::transient);
  auto stubborn = make_device(p);
  auto m2 = stubborn->receive(0ms).value().value();  // redelivered after the expiry
  clk.advance(60s);
  EXPECT_EQ(stubborn->complete(m2).code(), errc::device_message_lock_lost);
  EXPECT_EQ(faults->calls(faulty::op::complete), 2u);
}

TEST_F(retrying, LockLostInTheHandlerThreadGoesToTheErrorHandler) {
  event_log<error> errors;
  event_log<message> handled;
  auto device = make_device();
  device->set_error_handler([&](const error& e) { errors.push(e); });
  device->set_message_handler([&](const message& m) {
    handled.push(m);
    if (handled.size() == 1)
      clk.advance(60s);  // too slow: the lock expires meanwhile
    return disposition::complete;
  });
  service_client backend(host.service());
  ASSERT_TRUE(backend.send("dev", make_message("slow")));
  ASSERT_TRUE(handled.wait_for_size(2));  // redelivered, completed the second time
  ASSERT_TRUE(errors.wait_for_size(1));
  device->set_message_handler(nullptr);
  EXPECT_EQ(errors.items()[0].code, errc::device_message_lock_lost);
  EXPECT_EQ(faults->calls(faulty::op::complete), 2u);  // one per delivery, no retry
  EXPECT_EQ(host.stats().completed, 1u);
}

TEST_F(retrying, LostCompletionAnswerSurfacesAsLockLost) {
  // The hub completes the message but the answer is lost with the connection; the
  // client reconnects and retries, and the retry finds the lock gone.
  auto device = make_device();
  service_client backend(host.service());
  ASSERT_TRUE(backend.send("dev", make_message("m")));
  auto m = device->receive(0ms).value().value();
  faults->drop_next(1, faulty::op::complete, faulty::drop_point::response);
  auto r = device->complete(m);
  EXPECT_EQ(r.code(), errc::device_message_lock_lost);
  EXPECT_EQ(faults->call_times(faulty::op::complete), (std::vector<time_point>{t0, t0}));
  EXPECT_EQ(faults->calls(faulty::op::open), 2u);
  EXPECT_EQ(host.stats().completed, 1u);  // exactly once
}

TEST_F(retrying, SettlementRetriedAfterReconnectWhileTheLockHolds) {
  auto device = make_device(plain_backoff());
  service_client backend(host.service());
  ASSERT_TRUE(backend.send("dev", make_message("m")));
  auto m = device->receive(0ms).value().value();
  faults->drop_next(1, faulty::op::complete, faulty::drop_point::request);
  faults->fail_next(1, errc::not_connected, faulty::op::open);
  auto completing = std::async(std::launch::async, [&] { return device->complete(m); });
  advance_when_awaited(t0 + 1s);
  advance_when_awaited(t0 + 3s);
  ASSERT_EQ(completing.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(completing.get());
  EXPECT_EQ(faults->call_times(faulty::op::complete), (std::vector<time_point>{t0, t0 + 3s}));
  EXPECT_EQ(faults->call_times(faulty::op::open), (std::vector<time_point>{t0, t0 + 1s, t0 + 3s}));
  EXPECT_EQ(host.stats().completed, 1u);
}

// --- service client ---------------------------------------------------------------------

TEST_F(retrying, ThrottledSendIsRetried_FatalSendErrorsAreNot) {
  service_type backend(faulty_service(host.service(), faults), plain_backoff());
  faults->fail_next(2, errc::throttling, faulty::op::send);
  auto sending =
      std::async(std::launch::async, [&] { return backend.send("dev", make_message("m")); });
  advance_when_awaited(t0 + 1s);
  advance_when_awaited(t0 + 3s);
  ASSERT_EQ(sending.wait_for(10s), std::future_status::ready);
  auto receipt = sending.get();
  ASSERT_TRUE(receipt) << receipt.error().message;
  EXPECT_EQ(faults->call_times(faulty::op::send), (std::vector<time_point>{t0, t0 + 1s, t0 + 3s}));
  EXPECT_EQ(host.stats().accepted, 1u);

  const auto before = faults->calls(faulty::op::send);
  EXPECT_EQ(backend.send("nobody", make_message("m")).code(), errc::device_not_found);
  message big = make_message("big");
  big.body.assign(64 * 1024 + 1, 'x');
  EXPECT_EQ(backend.send("dev", big).code(), errc::message_too_large);
  faults->fail_next(1, errc::device_maximum_queue_depth_exceeded, faulty::op::send);
  EXPECT_EQ(backend.send("dev", make_message("m")).code(),
            errc::device_maximum_queue_depth_exceeded);
  faults->fail_next(1, errc::iothub_quota_exceeded, faulty::op::send);
  EXPECT_EQ(backend.send("dev", make_message("m")).code(), errc::iothub_quota_exceeded);
  EXPECT_EQ(faults->calls(faulty::op::send), before + 4);  // one attempt each
  EXPECT_TRUE(clk.waiting_deadlines().empty());
}

TEST_F(retrying, SendReopensALostServiceConnection) {
  service_type backend(faulty_service(host.service(), faults), plain_backoff());
  ASSERT_TRUE(backend.open());
  faults->disconnect();
  ASSERT_TRUE(backend.send("dev", make_message("m")));
  EXPECT_EQ(faults->calls(faulty::op::open), 2u);
  EXPECT_EQ(faults->calls(faulty::op::send), 1u);
}

TEST_F(retrying, FeedbackReceiverSurvivesADroppedConnection) {
  event_log<feedback_record> feedback;
  service_type backend(faulty_service(host.service(), faults),
                       retry::profiles::c_exponential_backoff());
  backend.set_feedback_handler([&](const feedback_batch& b) {
    for (const auto& r : b.records)
      feedback.push(r);
    return feedback_disposition::complete;
  });
  ASSERT_TRUE(faults->await_calls(faulty::op::receive_feedback, 1));
  faults->disconnect();
  ASSERT_TRUE(faults->await_calls(faulty::op::receive_feedback, 2));  // reconnected at once

  device_client device(host.device("dev"));  // not behind the injector
  ASSERT_TRUE(backend.send("dev", make_message("m"), ack_mode::full));
  ASSERT_TRUE(device.complete(device.receive(0ms).value().value()));
  ASSERT_TRUE(feedback.wait_for_size(1));
  EXPECT_EQ(feedback.items()[0].original_message_id, "m");
  EXPECT_EQ(faults->call_times(faulty::op::open), (std::vector<time_point>{t0, t0}));
  backend.set_feedback_handler(nullptr);
}

TEST_F(retrying, SentMessageIdIsKeptAcrossRetries) {
  service_client_options o;
  o.assign_message_id = message_id_assignment::when_unset;
  o.message_id_source = seeded_token_source(9);
  service_type backend(faulty_service(host.service(), faults), plain_backoff(), o);
  faults->drop_next(1, faulty::op::send, faulty::drop_point::response);  // enqueued, answer lost
  message m;
  m.body = "x";
  auto sending = std::async(std::launch::async, [&] { return backend.send("dev", m); });
  advance_when_awaited(t0 + 1s);
  ASSERT_EQ(sending.wait_for(10s), std::future_status::ready);
  ASSERT_TRUE(sending.get());
  // At-least-once: both copies are queued, with the same assigned id.
  auto device = make_device();
  auto a = device->receive(0ms).value().value();
  auto b = device->receive(0ms).value().value();
  ASSERT_TRUE(a.message_id);
  EXPECT_EQ(a.message_id, b.message_id);
  EXPECT_EQ(*a.message_id, make_uuid_v4(seeded_token_source(9)));
}
