// Clients on many threads against one in-process hub: the step-1 invariants
// (every accepted message ends in exactly one outcome, feedback for each) hold
// through the clients. Meant to run clean under ASan and TSan. Waits are on
// events with real-time bounds; time moves only through the manual clock
// (one test uses the system clock with real, bounded waits).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <devicebound/clock.hpp>
#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/inproc.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/event_log.hpp"

using namespace devicebound;
using namespace std::chrono_literals;

namespace {

using test_support::event_log;

using host_type = inproc::hub_host<manual_clock>;
using device_type = device_client<inproc::device_connection<manual_clock>>;
using service_type = service_client<inproc::service_connection<manual_clock>>;

/// The transitions the lifecycle table allows (docs/lifecycle.md), checked for
/// every state change the hub reports while the clients run.
bool allowed(const transition& t) {
  using M = message_state;
  switch (t.cause) {
    case transition_cause::accepted:
      return t.from == M::enqueued && t.to == M::enqueued;
    case transition_cause::lock:
      return t.from == M::enqueued && t.to == M::invisible;
    case transition_cause::complete:
      return t.from == M::invisible && t.to == M::completed;
    case transition_cause::reject:
      return t.from == M::invisible && t.to == M::dead_lettered;
    case transition_cause::abandon:
    case transition_cause::lock_expired:
      return t.from == M::invisible && (t.to == M::enqueued || t.to == M::dead_lettered);
    case transition_cause::ttl_expired:
      return t.to == M::dead_lettered;
    case transition_cause::purge:
      return t.to == M::purged;
    case transition_cause::device_removed:
      return t.to == M::purged;
  }
  return false;
}

/// Counts state changes under the host's lock and checks each one.
struct transition_audit {
  std::mutex mutex;
  std::uint64_t accepted = 0;
  std::uint64_t terminal = 0;
  std::uint64_t refused = 0;
  std::map<std::uint64_t, int> outcomes;  ///< sequence number -> terminal transitions

  void attach(host_type& host) {
    host.set_observer([this](const transition& t) {
      std::lock_guard<std::mutex> g(mutex);
      if (!allowed(t))
        ++refused;
      if (t.cause == transition_cause::accepted)
        ++accepted;
      if (is_terminal(t.to)) {
        ++terminal;
        ++outcomes[t.sequence_number];
      }
    });
  }
};

int number_of(const std::string& message_id) {
  return std::stoi(message_id.substr(message_id.find('-') + 1));
}

}  // namespace

TEST(threads, DevicesSendersPurgerAndFeedbackOnTheirOwnThreads_EveryMessageAccountedFor) {
  manual_clock clk;
  hub_config cfg;
  cfg.max_queue_depth = 10000;
  cfg.max_delivery_count = 3;
  cfg.feedback_batch_interval = 0s;  // a batch per outcome: no clock needed for feedback
  host_type host(cfg, clk, seeded_token_source(11));
  transition_audit audit;
  audit.attach(host);

  constexpr int devices = 4, senders = 3, per_sender = 100;
  constexpr std::size_t total = senders * per_sender;
  event_log<error> device_errors;
  std::vector<std::unique_ptr<device_type>> clients;
  std::atomic<int> handled{0};
  for (int d = 0; d < devices; ++d) {
    const std::string id = "d" + std::to_string(d);
    ASSERT_TRUE(host.add_device(id));
    clients.push_back(std::make_unique<device_type>(host.device(id)));
    clients.back()->set_error_handler([&](const error& e) { device_errors.push(e); });
    clients.back()->set_message_handler([&](const message& m) {
      ++handled;
      const int n = number_of(*m.message_id);
      if (n % 5 == 0)
        return disposition::reject;
      if (n % 5 == 1)
        return disposition::abandon;  // until DeliveryCountExceeded
      return disposition::complete;
    });
  }

  event_log<feedback_record> feedback;
  service_type feedback_client(host.service());
  feedback_client.set_feedback_handler([&](const feedback_batch& b) {
    for (const auto& r : b.records)
      feedback.push(r);
    return feedback_disposition::complete;
  });

  std::atomic<int> send_errors{0};
  std::vector<std::thread> threads;
  for (int s = 0; s < senders; ++s) {
    threads.emplace_back([&, s] {
      service_type backend(host.service());
      for (int k = 0; k < per_sender; ++k) {
        message m;
        m.message_id = "s" + std::to_string(s) + "-" + std::to_string(k);
        m.body = "payload";
        if (!backend.send("d" + std::to_string((k + s) % devices), m, ack_mode::full))
          ++send_errors;
      }
    });
  }
  // Purges race with deliveries and settlements on d3; 412002 on a purged lock is expected.
  std::atomic<std::size_t> purged{0};
  threads.emplace_back([&] {
    service_type purger(host.service());
    for (int i = 0; i < 20; ++i) {
      purged += purger.purge("d3").value();
      (void)purger.queue_depth("d0").value();
    }
  });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(send_errors.load(), 0);

  ASSERT_TRUE(feedback.wait_for_size(total)) << feedback.size() << " of " << total;
  for (auto& c : clients)
    c->set_message_handler(nullptr);
  feedback_client.set_feedback_handler(nullptr);

  const auto s = host.stats();
  EXPECT_EQ(s.accepted, total);
  EXPECT_EQ(s.completed + s.rejected + s.delivery_count_exceeded + s.expired + s.purged,
            s.accepted);
  EXPECT_EQ(s.purged, purged.load());
  EXPECT_EQ(s.expired, 0u);
  EXPECT_EQ(s.feedback_records, total);
  for (int d = 0; d < devices; ++d)
    EXPECT_EQ(host.with_hub([&](hub& h) {
      return h.queue_depth("d" + std::to_string(d), clk.now()).value();
    }),
              0u);

  // Every message id has exactly one record, and its status follows the handler's rule.
  std::map<std::string, feedback_status> outcome;
  for (const auto& r : feedback.items()) {
    EXPECT_TRUE(outcome.emplace(r.original_message_id, r.status_code).second)
        << r.original_message_id;
    if (r.status_code == feedback_status::purged)
      continue;
    const int n = number_of(r.original_message_id);
    const auto expected = n % 5 == 0   ? feedback_status::rejected
                          : n % 5 == 1 ? feedback_status::delivery_count_exceeded
                                       : feedback_status::success;
    EXPECT_EQ(r.status_code, expected) << r.original_message_id;
  }
  EXPECT_EQ(outcome.size(), total);

  std::lock_guard<std::mutex> g(audit.mutex);
  EXPECT_EQ(audit.refused, 0u);
  EXPECT_EQ(audit.accepted, total);
  EXPECT_EQ(audit.terminal, total);
  for (const auto& [seq, n] : audit.outcomes)
    EXPECT_EQ(n, 1) << "sequence number " << seq;
  for (const auto& e : device_errors.items())
    EXPECT_EQ(e.code, errc::device_message_lock_lost) << e.message;
}

TEST(threads, CompetingPullReceiversWhileTheClockMoves_LockExpiryRedelivers) {
  manual_clock clk;
  hub_config cfg;
  cfg.default_ttl = 48h;  // time moves a lot here; nothing may expire
  cfg.max_queue_depth = 1000;
  host_type host(cfg, clk, seeded_token_source(12));
  ASSERT_TRUE(host.add_device("shared"));
  transition_audit audit;
  audit.attach(host);
  constexpr std::size_t total = 60;

  std::mutex seen_mutex;
  std::set<std::uint64_t> seen;  // sequence numbers delivered at least once
  std::atomic<int> redeliveries{0};
  std::atomic<bool> done{false};
  event_log<error> errors;
  std::vector<std::unique_ptr<device_type>> clients;
  for (int i = 0; i < 3; ++i)
    clients.push_back(std::make_unique<device_type>(host.device("shared")));

  std::vector<std::thread> threads;
  for (auto& c : clients) {
    threads.emplace_back([&, client = c.get()] {
      for (;;) {
        auto r = client->receive(10s);
        if (!r) {
          if (!done)
            errors.push(r.error());
          return;
        }
        if (!*r)
          continue;
        bool first_time = false;
        {
          std::lock_guard<std::mutex> g(seen_mutex);
          first_time = seen.insert((*r)->sequence_number).second;
        }
        if (!first_time)
          ++redeliveries;
        // Every 4th message is "forgotten" on its first delivery: its lock must expire.
        if (first_time && (*r)->sequence_number % 4 == 0)
          continue;
        // After `done` the test disconnects the clients: a late, stale completion may fail.
        if (auto s = client->complete(**r);
            !s && s.code() != errc::device_message_lock_lost && !done)
          errors.push(s.error());
      }
    });
  }
  std::thread sender([&] {
    service_type backend(host.service());
    for (std::size_t k = 0; k < total; ++k) {
      message m;
      m.message_id = "m-" + std::to_string(k);
      if (auto r = backend.send("shared", m); !r)
        errors.push(r.error());
    }
  });
  sender.join();  // the receivers run meanwhile; time starts moving once all are sent

  // Move time only once somebody has seen the current time and waits for a later
  // one (a waiter not yet woken by the last advance does not count), until every
  // message is completed.
  for (int step = 0; step < 10000 && host.stats().completed < total; ++step) {
    const time_point now = clk.now();
    const auto somebody_waits = [now](const std::vector<time_point>& ds) {
      return !ds.empty() && ds.back() > now;
    };
    if (!clk.await_waiters(somebody_waits, 30s)) {
      ADD_FAILURE() << "nobody waits on the clock any more";
      break;
    }
    clk.advance(5s);
  }
  done = true;
  for (auto& c : clients)
    c->disconnect();  // wakes the receivers
  for (auto& t : threads)
    t.join();

  for (const auto& e : errors.items())
    ADD_FAILURE() << e.numeric() << " " << e.message;
  const auto s = host.stats();
  EXPECT_EQ(s.accepted, total);
  EXPECT_EQ(s.completed, total);
  EXPECT_GE(redeliveries.load(), static_cast<int>(total / 4));
  std::lock_guard<std::mutex> g(audit.mutex);
  EXPECT_EQ(audit.refused, 0u);
  for (const auto& [seq, n] : audit.outcomes)
    EXPECT_EQ(n, 1) << "sequence number " << seq;
}

TEST(threads, ManyWaitersWhileTheManualClockAdvances) {
  manual_clock clk;
  host_type host(hub_config{}, clk, seeded_token_source(13));
  constexpr int waiters = 8, rounds = 20;
  std::vector<std::unique_ptr<device_type>> clients;
  for (int i = 0; i < waiters; ++i) {
    const std::string id = "w" + std::to_string(i);
    ASSERT_TRUE(host.add_device(id));
    clients.push_back(std::make_unique<device_type>(host.device(id)));
  }
  std::atomic<int> remaining{waiters};
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  for (auto& c : clients) {
    threads.emplace_back([&, client = c.get()] {
      for (int i = 0; i < rounds; ++i) {
        auto r = client->receive(1s);  // nothing comes: each one times out on the clock
        if (!r || r->has_value())
          ++unexpected;
      }
      --remaining;
      clk.advance(duration::zero());  // wakes await_waiters() to see `remaining`
    });
  }
  while (remaining.load() > 0) {
    if (!clk.await_waiters([&](const auto& ds) { return !ds.empty() || remaining.load() == 0; },
                           30s)) {
      ADD_FAILURE() << "the waiters stopped waiting";
      for (auto& c : clients)
        c->disconnect();
      break;
    }
    clk.advance(1s);
  }
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(unexpected.load(), 0);
}

TEST(threads, SystemClockDriverAndRealWaits) {
  hub_config cfg;
  cfg.lock_duration = 1s;
  cfg.feedback_batch_interval = 0s;
  inproc::hub_host<system_clock> host(cfg);
  host.start_driver();
  ASSERT_TRUE(host.add_device("real"));
  device_client puller(host.device("real"));
  service_client backend(host.service());

  const auto before = std::chrono::steady_clock::now();
  auto none = puller.receive(50ms);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  // The clock has millisecond resolution: the wait may end up to 1 ms early in real time.
  EXPECT_GE(std::chrono::steady_clock::now() - before, 49ms);

  message m;
  m.message_id = "real-1";
  ASSERT_TRUE(backend.send("real", m, ack_mode::full));
  auto first = puller.receive(0ms).value();
  ASSERT_TRUE(first);
  auto again = puller.receive(10s).value();  // the 1 s lock expires for real
  ASSERT_TRUE(again);
  EXPECT_EQ(again->sequence_number, first->sequence_number);
  EXPECT_TRUE(puller.complete(*again));

  auto batch = backend.receive_feedback(10s).value();
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->records.at(0).status_code, feedback_status::success);
  EXPECT_TRUE(backend.complete_feedback(*batch));
  host.stop_driver();
}
