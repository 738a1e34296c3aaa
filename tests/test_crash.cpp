// The daemon's durability through the broker (SPEC 1.2, docs/architecture.md
// "Durability"): devicebound-hub runs on a SQLite store under load (back-end
// senders with ack=full and message ids, extended devices completing,
// rejecting and abandoning, a back end taking feedback) and is killed with
// SIGKILL at random moments, then restarted on the same file. At the end every
// acknowledged send must have been delivered and have its feedback with the
// outcome the device chose; nothing acknowledged is lost, duplicates occur only
// where at-least-once allows them and are counted, and sequence numbers never
// repeat. The test owns its mosquitto and daemon by PID; it waits on events and
// counts, never sleeps for synchronisation (the kill point alone is a bounded
// random wait). The ledger is printed for the record.
//
// DEVICEBOUND_CRASH_SEED=<n> replays a run with another seed.
#include <gtest/gtest.h>

#include "support/required.hpp"

#if DEVICEBOUND_WITH_MQTT

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <devicebound/hub.hpp>
#include <devicebound/store/sqlite.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/mosquitto.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
namespace support = devicebound::test_support;
namespace proto = devicebound::codec::protocol;

constexpr int kills = 5;
constexpr int senders = 3;
constexpr int device_count = 3;

/// FNV-1a: the device's choice for a message depends on its id only, so a
/// redelivered message is settled the same way.
std::uint32_t fnv(const std::string& s) {
  std::uint32_t h = 2166136261u;
  for (unsigned char c : s)
    h = (h ^ c) * 16777619u;
  return h;
}

/// What the device does with the first delivery of a message (later ones of an
/// abandoned message are completed), and the outcome its feedback must carry.
enum class plan : std::uint8_t { complete, reject, abandon_then_complete };
plan plan_for(const std::string& message_id) {
  switch (fnv(message_id) % 10) {
    case 0:
      return plan::reject;
    case 1:
      return plan::abandon_then_complete;
    default:
      return plan::complete;
  }
}
feedback_status expected_status(const std::string& message_id) {
  return plan_for(message_id) == plan::reject ? feedback_status::rejected
                                              : feedback_status::success;
}

/// Everything the clients saw, under one mutex; waiters use the condition variable.
struct ledger {
  std::mutex m;
  std::condition_variable cv;
  // senders
  std::uint64_t attempts = 0;
  std::uint64_t unacknowledged_attempts = 0;           ///< timed out or failed
  std::map<std::string, std::uint64_t> unacked_by_id;  ///< message id -> such attempts
  std::map<std::string, std::uint64_t> acked;          ///< message id -> sequence number
  std::map<std::uint64_t, std::string> acked_seq;      ///< sequence number -> message id
  std::uint64_t repeated_sequence_numbers = 0;         ///< must stay 0
  std::uint64_t acks_since_restart = 0;
  // devices
  std::uint64_t deliveries = 0;
  std::map<std::uint64_t, std::string> delivered_seq;      ///< sequence number -> message id
  std::map<std::uint64_t, std::uint32_t> times_delivered;  ///< sequence number -> deliveries
  std::set<std::uint64_t> abandoned_once;
  std::uint64_t completed = 0, rejected = 0, abandoned = 0, settle_failures = 0;
  // feedback
  std::map<std::string, std::vector<feedback_status>> feedback;  ///< message id -> records
  std::uint64_t feedback_batches = 0;
};

class crash_test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!support::mosquitto_broker::available())
      DEVICEBOUND_MISSING_PART("mosquitto not found at " << support::default_mosquitto);
    if (!support::hub_daemon::available())
      DEVICEBOUND_MISSING_PART("devicebound-hub not found at " << support::default_hub);
    broker_ = std::make_unique<support::mosquitto_broker>();
    store_ = dir_.file("hub.db");
    log_ = dir_.file("devicebound-hub.log");
    // Follows the hub's retained status: a (re)started daemon is ready when it says `online`.
    mqtt::connection_options o;
    o.port = broker_->port();
    status_ = std::make_unique<mqtt::session>(
        o, "crash-status-watch",
        [this](std::string_view topic, std::string_view payload) {
          if (topic != proto::hub_status_topic || payload != "online")
            return;
          std::lock_guard<std::mutex> g(status_m_);
          ++online_;
          status_cv_.notify_all();
        },
        nullptr);
    ASSERT_TRUE(status_->connect(true, {std::string(proto::hub_status_topic)}, std::nullopt));
  }

  void TearDown() override {
    if (HasFailure()) {
      const std::string log = support::read_file(log_);
      std::cerr << "---- devicebound-hub log (last 12000 bytes) ----\n"
                << (log.size() > 12000 ? log.substr(log.size() - 12000) : log);
    }
    daemon_.reset();
    status_.reset();
  }

  /// The daemon's command line on `store`, after `wrapper` (e.g. a shell setting a limit).
  std::vector<std::string> daemon_argv(const std::string& store,
                                       std::vector<std::string> wrapper = {}) const {
    std::vector<std::string> argv = std::move(wrapper);
    argv.insert(argv.end(), {support::default_hub,
                             "--host",
                             "127.0.0.1",
                             "--port",
                             std::to_string(broker_->port()),
                             "--store",
                             store,
                             "--lock-duration",
                             "3s",
                             "--feedback-batch-interval",
                             "200ms",
                             "--feedback-lock-duration",
                             "5s",
                             "--max-queue-depth",
                             "2000",
                             "--max-in-flight",
                             "8",
                             "--reconnect-initial",
                             "50ms",
                             "--reconnect-max",
                             "500ms",
                             "--log-level",
                             "info"});
    for (int d = 0; d < device_count; ++d) {
      argv.push_back("--device");
      argv.push_back("crash-dev-" + std::to_string(d));
    }
    return argv;
  }

  /// Starts the daemon on the store and waits for its `online`.
  void start_daemon(std::vector<std::string> wrapper = {}) {
    std::uint64_t before = 0;
    {
      std::lock_guard<std::mutex> g(status_m_);
      before = online_;
    }
    daemon_ =
        std::make_unique<support::child_process>(daemon_argv(store_, std::move(wrapper)), log_);
    std::unique_lock<std::mutex> g(status_m_);
    ASSERT_TRUE(
        status_cv_.wait_for(g, 20s, [&] { return online_ > before || !daemon_->running(); }));
    ASSERT_TRUE(daemon_->running())
        << "devicebound-hub exited with " << daemon_->exit_code().value_or(-1);
  }

  /// Runs the daemon on `store` until it exits by itself: its exit code and log.
  std::pair<std::optional<int>, std::string> run_to_exit(const std::string& store) {
    const std::string log = dir_.file("refused-" + std::to_string(++refused_) + ".log");
    support::child_process p(daemon_argv(store), log);
    const auto code = p.wait_exit(20s);
    return {code, support::read_file(log)};
  }

  mqtt::connection_options client_options(std::string id) const {
    mqtt::connection_options o;
    o.port = broker_->port();
    o.client_id = std::move(id);
    o.connect_timeout = 5s;
    o.request_timeout = 4s;  // a request the killed daemon never answered fails after this
    o.attach_retry = 1s;
    o.prefetch = 4;
    return o;
  }

  support::temp_dir dir_{"devicebound-crash-"};
  std::unique_ptr<support::mosquitto_broker> broker_;
  std::string store_, log_;
  std::mutex status_m_;
  std::condition_variable status_cv_;
  std::uint64_t online_ = 0;
  // after what its callback writes, so destroyed before it
  std::unique_ptr<mqtt::session> status_;
  std::unique_ptr<support::child_process> daemon_;
  int refused_ = 0;
};

TEST_F(crash_test, sigkill_under_load_loses_no_acknowledged_send) {
  const auto started = std::chrono::steady_clock::now();
  std::uint32_t seed = 20260101;
  if (const char* s = std::getenv("DEVICEBOUND_CRASH_SEED"))
    seed = static_cast<std::uint32_t>(std::strtoul(s, nullptr, 10));
  std::mt19937 rng(seed);

  ASSERT_NO_FATAL_FAILURE(start_daemon());
  ledger L;
  std::atomic<bool> stop_sending{false}, stop_clients{false};

  mqtt::service_connection service(client_options("crash-service"));
  ASSERT_TRUE(service.open());
  std::vector<std::unique_ptr<mqtt::extended_device_connection>> devices;
  for (int d = 0; d < device_count; ++d) {
    const std::string id = "crash-dev-" + std::to_string(d);
    devices.push_back(std::make_unique<mqtt::extended_device_connection>(id, client_options(id)));
    ASSERT_TRUE(devices.back()->open());
  }
  std::vector<std::thread> threads;
  struct joiner {  // a failed assertion below still stops and joins every client thread
    std::atomic<bool>& a;
    std::atomic<bool>& b;
    std::vector<std::thread>& threads;
    ~joiner() {
      a = true;
      b = true;
      for (auto& t : threads)
        if (t.joinable())
          t.join();
    }
  } join_all{stop_sending, stop_clients, threads};

  // --- the back end: senders (ack=full, message ids) and a feedback receiver -----------------
  for (int t = 0; t < senders; ++t)
    threads.emplace_back([&, t] {
      for (std::uint64_t k = 0; !stop_sending.load(); ++k) {
        const std::string id = "m-" + std::to_string(t) + "-" + std::to_string(k);
        const std::string device = "crash-dev-" + std::to_string((k + t) % device_count);
        message msg;
        msg.message_id = id;
        msg.ack = ack_mode::full;
        msg.body = "body of " + id;
        // At-least-once from the sender's side: a send without an answer is sent again.
        while (!stop_sending.load()) {
          auto r = service.send(device, msg);
          std::lock_guard<std::mutex> g(L.m);
          ++L.attempts;
          if (!r) {
            ++L.unacknowledged_attempts;
            ++L.unacked_by_id[id];
            continue;
          }
          const auto seq = r->sequence_number;
          if (auto [it, fresh] = L.acked_seq.emplace(seq, id); !fresh && it->second != id)
            ++L.repeated_sequence_numbers;
          L.acked[id] = seq;
          ++L.acks_since_restart;
          L.cv.notify_all();
          break;
        }
      }
    });
  threads.emplace_back([&] {
    while (!stop_clients.load()) {
      auto b = service.receive_feedback(500ms);
      if (!b || !*b)
        continue;
      {
        std::lock_guard<std::mutex> g(L.m);
        ++L.feedback_batches;
        for (const auto& r : (*b)->records)
          L.feedback[r.original_message_id].push_back(r.status_code);
        L.cv.notify_all();
      }
      (void)service.complete_feedback((*b)->lock_token);  // a lost one comes again
    }
  });

  // --- extended devices: complete, reject, abandon ----------------------------------------
  for (auto& dev : devices)
    threads.emplace_back([&, conn = dev.get()] {
      while (!stop_clients.load()) {
        auto r = conn->receive(500ms);
        if (!r || !*r)
          continue;
        const message& m = **r;
        const std::string id = m.message_id.value_or("");
        disposition d = disposition::complete;
        {
          std::lock_guard<std::mutex> g(L.m);
          ++L.deliveries;
          if (auto [it, fresh] = L.delivered_seq.emplace(m.sequence_number, id);
              !fresh && it->second != id)
            ++L.repeated_sequence_numbers;
          ++L.times_delivered[m.sequence_number];
          const plan p = plan_for(id);
          if (p == plan::reject)
            d = disposition::reject;
          else if (p == plan::abandon_then_complete &&
                   L.abandoned_once.insert(m.sequence_number).second)
            d = disposition::abandon;
        }
        const auto s = d == disposition::complete ? conn->complete(*m.lock_token)
                       : d == disposition::reject ? conn->reject(*m.lock_token)
                                                  : conn->abandon(*m.lock_token);
        std::lock_guard<std::mutex> g(L.m);
        if (!s)
          ++L.settle_failures;  // the daemon died first, or the lock expired: comes again
        else if (d == disposition::complete)
          ++L.completed;
        else if (d == disposition::reject)
          ++L.rejected;
        else
          ++L.abandoned;
      }
    });

  // --- kill the daemon at random moments, restart it on the same store -------------------
  std::uint64_t acked_at_last_kill = 0;
  std::vector<long> restart_ms;
  for (int k = 0; k < kills; ++k) {
    const std::uint64_t after_acks = 40 + rng() % 160;
    const auto extra = std::chrono::milliseconds(rng() % 300);
    {
      std::unique_lock<std::mutex> g(L.m);
      ASSERT_TRUE(L.cv.wait_for(g, 30s, [&] { return L.acks_since_restart >= after_acks; }))
          << "kill " << k << ": only " << L.acks_since_restart << " sends acknowledged";
    }
    {
      // The kill point: a bounded random wait while the load runs.
      std::unique_lock<std::mutex> g(L.m);
      L.cv.wait_for(g, extra, [] { return false; });
    }
    const auto killed = std::chrono::steady_clock::now();
    ASSERT_EQ(daemon_->stop(SIGKILL), 128 + SIGKILL);
    {
      std::lock_guard<std::mutex> g(L.m);
      L.acks_since_restart = 0;
      acked_at_last_kill = L.acked.size();
    }
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    restart_ms.push_back(static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                               std::chrono::steady_clock::now() - killed)
                                               .count()));
  }
  {
    // Some load on the last incarnation too, then the senders stop.
    std::unique_lock<std::mutex> g(L.m);
    ASSERT_TRUE(L.cv.wait_for(g, 30s, [&] { return L.acks_since_restart >= 100; }));
  }
  stop_sending = true;
  for (int t = 0; t < senders; ++t)
    threads[static_cast<std::size_t>(t)].join();

  // --- drain: every acknowledged send reaches its final feedback ---------------------------
  const auto missing_feedback = [&] {
    std::vector<std::string> out;
    for (const auto& [id, seq] : L.acked)
      if (!L.feedback.count(id))
        out.push_back(id);
    return out;
  };
  {
    std::unique_lock<std::mutex> g(L.m);
    L.cv.wait_for(g, 45s, [&] { return missing_feedback().empty(); });
  }
  // The queues drain (a send that was enqueued but never answered is delivered too).
  bool drained = false;
  for (int i = 0; i < 60 && !drained; ++i) {
    drained = true;
    for (int d = 0; d < device_count && drained; ++d) {
      auto depth = service.queue_depth("crash-dev-" + std::to_string(d));
      drained = depth && *depth == 0;
    }
    if (!drained) {
      std::unique_lock<std::mutex> g(L.m);
      L.cv.wait_for(g, 500ms);  // bounded; a settlement wakes it early
    }
  }
  EXPECT_TRUE(drained) << "queues did not drain";
  stop_clients = true;
  for (auto& t : threads)
    if (t.joinable())
      t.join();
  service.close();
  for (auto& d : devices)
    d->close();
  EXPECT_EQ(daemon_->stop(SIGTERM), 0) << "the daemon's exit code after SIGTERM";

  // --- the ledger ----------------------------------------------------------------------------
  std::lock_guard<std::mutex> g(L.m);
  std::uint64_t lost = 0, never_delivered = 0, wrong_outcome = 0;
  std::map<feedback_status, std::uint64_t> outcomes;
  for (const auto& [id, seq] : L.acked) {
    auto f = L.feedback.find(id);
    if (f == L.feedback.end()) {
      ++lost;
      ADD_FAILURE() << "acknowledged send " << id << " (sequence number " << seq
                    << ") is lost: no feedback";
      continue;
    }
    if (!L.times_delivered.count(seq)) {
      ++never_delivered;
      ADD_FAILURE() << "acknowledged send " << id << " (sequence number " << seq
                    << ") was never delivered";
    }
    for (auto st : f->second) {
      ++outcomes[st];
      if (st != expected_status(id)) {
        ++wrong_outcome;
        ADD_FAILURE() << id << ": feedback " << to_string(st) << ", expected "
                      << to_string(expected_status(id));
      }
    }
  }
  // Duplicates. A message id enqueued more than once (distinct sequence numbers):
  // by the sender's resend after an unanswered send, or by the broker
  // redelivering a send request the killed daemon had not PUBACKed (QoS 1): at
  // most the requests in flight at a kill.
  std::map<std::string, std::set<std::uint64_t>> seqs_of;
  for (const auto& [seq, id] : L.delivered_seq)
    seqs_of[id].insert(seq);
  for (const auto& [seq, id] : L.acked_seq)
    seqs_of[id].insert(seq);
  std::uint64_t duplicate_enqueues = 0, after_resend = 0, redelivered_requests = 0;
  std::uint64_t feedback_duplicates = 0;
  for (const auto& [id, seqs] : seqs_of) {
    const auto extra = seqs.size() - 1;
    duplicate_enqueues += extra;
    const auto resent = L.unacked_by_id.count(id) ? L.unacked_by_id.at(id) : 0;
    after_resend += std::min<std::uint64_t>(extra, resent);
    redelivered_requests += extra - std::min<std::uint64_t>(extra, resent);
    if (auto f = L.feedback.find(id); f != L.feedback.end() && f->second.size() > seqs.size())
      feedback_duplicates += f->second.size() - seqs.size();
  }
  // A sequence number delivered again: after an abandon (planned), or because its
  // lock expired (a settlement lost with a killed daemon, or a slow device).
  std::uint64_t redeliveries = 0, unplanned_redeliveries = 0;
  for (const auto& [seq, n] : L.times_delivered) {
    redeliveries += n - 1;
    const std::uint32_t planned = L.abandoned_once.count(seq) ? 2 : 1;
    unplanned_redeliveries += n > planned ? n - planned : 0;
  }
  // Enqueued, but the sender never had an answer and stopped before sending it again.
  std::uint64_t unanswered_delivered = 0;
  for (const auto& [seq, id] : L.delivered_seq)
    unanswered_delivered += L.acked.count(id) ? 0 : 1;

  EXPECT_EQ(lost, 0u);
  EXPECT_EQ(never_delivered, 0u);
  EXPECT_EQ(wrong_outcome, 0u);
  EXPECT_EQ(L.repeated_sequence_numbers, 0u) << "a sequence number named two messages";
  EXPECT_LE(redelivered_requests, static_cast<std::uint64_t>(kills * senders))
      << "more duplicate sends than requests could be in flight at the kills";
  EXPECT_GT(acked_at_last_kill, 0u);

  // The store agrees: nothing left queued, every accepted message counted.
  {
    auto s = sqlite_store::open(store_);
    ASSERT_TRUE(s) << s.error().message;
    auto h = hub::open(*s);
    ASSERT_TRUE(h) << h.error().message;
    const auto snap = h->snapshot();
    EXPECT_TRUE(snap.messages.empty()) << snap.messages.size() << " message(s) still queued";
    EXPECT_EQ(h->stats().accepted, L.delivered_seq.size())
        << "accepted by the hub vs distinct sequence numbers delivered";
    ASSERT_TRUE(snap.counters);
    EXPECT_GE(snap.counters->last_sequence, L.delivered_seq.rbegin()->first);
  }

  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::string restarts;
  for (auto ms : restart_ms)
    restarts += (restarts.empty() ? "" : ", ") + std::to_string(ms);
  std::cout << "[ledger] seed " << seed << ", " << kills << " SIGKILLs of devicebound-hub, " << secs
            << " s (kill to online again: " << restarts << " ms)\n"
            << "[ledger] sends: " << L.attempts << " attempts, " << L.acked.size()
            << " acknowledged, " << L.unacknowledged_attempts
            << " unanswered (daemon killed; sent again)\n"
            << "[ledger] delivered: " << L.delivered_seq.size() << " messages in " << L.deliveries
            << " deliveries (" << redeliveries << " redeliveries of a sequence number, "
            << unplanned_redeliveries << " of them not after an abandon); " << unanswered_delivered
            << " of them never answered to the sender (it stopped)\n"
            << "[ledger] settled: " << L.completed << " completed, " << L.rejected << " rejected, "
            << L.abandoned << " abandoned, " << L.settle_failures
            << " settlements failed (lock lost or daemon killed)\n"
            << "[ledger] feedback: " << outcomes[feedback_status::success] << " Success, "
            << outcomes[feedback_status::rejected] << " Rejected in " << L.feedback_batches
            << " batches; " << feedback_duplicates << " duplicate records\n"
            << "[ledger] acknowledged and lost: " << lost
            << "; acknowledged, never delivered: " << never_delivered << "\n"
            << "[ledger] duplicate enqueues (message id with 2+ sequence numbers): "
            << duplicate_enqueues << " (" << after_resend << " after an unanswered send, "
            << redelivered_requests << " redelivered send requests)\n"
            << "[ledger] sequence numbers: " << L.acked_seq.size() << " acknowledged, highest "
            << L.acked_seq.rbegin()->first << ", repeated " << L.repeated_sequence_numbers << "\n";
}

/// A store this build cannot use is refused, with a line naming the problem and
/// exit code 3, and is left as it was (never replaced by an empty one).
TEST_F(crash_test, unusable_store_is_refused_with_exit_code_3) {
  const auto expect_refused = [&](const std::string& path, const std::string& why,
                                  bool byte_equal = true) {
    const std::string before = support::read_file(path);
    auto [code, log] = run_to_exit(path);
    EXPECT_EQ(code, 3) << log;
    EXPECT_NE(log.find("cannot open the store"), std::string::npos) << log;
    EXPECT_NE(log.find(why), std::string::npos) << log;
    if (byte_equal) {
      EXPECT_EQ(support::read_file(path), before) << path << " was changed";
    }
  };
  {
    // written by a newer devicebound (schema version 7)
    const std::string path = dir_.file("newer.db");
    {
      auto s = sqlite_store::open(path);
      ASSERT_TRUE(s) << s.error().message;
      ASSERT_EQ(sqlite3_exec(s->handle(), "PRAGMA user_version=7", nullptr, nullptr, nullptr),
                SQLITE_OK);
    }
    expect_refused(path, "has schema version 7, newer than this devicebound understands");
  }
  {
    // another application's SQLite database
    const std::string path = dir_.file("foreign.db");
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);", nullptr, nullptr,
                           nullptr),
              SQLITE_OK);
    sqlite3_close(db);
    // (sqlite_store::open switches a file to WAL mode before it reads the schema
    // version, so the header's journal mode changes; the data stay)
    expect_refused(path, "not a devicebound store", false);
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    std::int64_t x = 0;
    ASSERT_EQ(sqlite3_exec(
                  db, "SELECT x FROM t",
                  [](void* out, int, char** v, char**) {
                    *static_cast<std::int64_t*>(out) = std::atoll(v[0]);
                    return 0;
                  },
                  &x, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
    EXPECT_EQ(x, 1);
  }
  {
    // not a database at all
    const std::string path = dir_.file("garbage.db");
    std::ofstream(path) << std::string(8192, 'x');
    expect_refused(path, "not an SQLite database");
  }
  {
    // one daemon per store: a second one on the same file is refused
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    auto [code, log] = run_to_exit(store_);
    EXPECT_EQ(code, 3) << log;
    EXPECT_NE(log.find("another process has this store open"), std::string::npos) << log;
    EXPECT_EQ(daemon_->stop(SIGTERM), 0);
  }
}

/// A restart keeps the configured devices' generation ids and their queues, and
/// an attached device gets its messages from the new daemon without reconnecting
/// (it attaches again on the daemon's `online`).
TEST_F(crash_test, restart_keeps_generation_ids_and_queues) {
  const auto generations = [&] {
    std::map<std::string, std::string> out;
    auto s = sqlite_store::open(store_);
    EXPECT_TRUE(s) << s.error().message;
    if (!s)
      return out;
    auto snap = s->load();
    EXPECT_TRUE(snap) << snap.error().message;
    if (snap)
      for (const auto& d : snap->devices)
        out[d.device_id] = d.generation_id;
    return out;
  };
  ASSERT_NO_FATAL_FAILURE(start_daemon());
  mqtt::service_connection service(client_options("restart-service"));
  mqtt::extended_device_connection device("crash-dev-0", client_options("crash-dev-0"));
  ASSERT_TRUE(service.open());
  ASSERT_TRUE(device.open());
  message m;
  m.message_id = "attached";
  ASSERT_TRUE(service.send("crash-dev-0", m));
  {
    auto r = device.receive(10s);  // the device attaches to this daemon
    ASSERT_TRUE(r && *r);
    ASSERT_TRUE(device.complete(*(*r)->lock_token));
  }
  m.message_id = "before-restart";
  ASSERT_TRUE(service.send("crash-dev-0", m));
  ASSERT_EQ(daemon_->stop(SIGTERM), 0);
  const auto before = generations();
  ASSERT_EQ(before.size(), static_cast<std::size_t>(device_count));

  ASSERT_NO_FATAL_FAILURE(start_daemon());
  m.message_id = "after-restart";
  ASSERT_TRUE(service.send("crash-dev-0", m));
  auto depth = service.queue_depth("crash-dev-0");
  ASSERT_TRUE(depth) << depth.error().message;
  EXPECT_EQ(*depth, 2u);
  for (const char* id : {"before-restart", "after-restart"}) {
    auto r = device.receive(10s);
    ASSERT_TRUE(r && *r) << "no delivery of " << id;
    EXPECT_EQ((*r)->message_id, id);
    ASSERT_TRUE(device.complete(*(*r)->lock_token));
  }
  ASSERT_EQ(daemon_->stop(SIGTERM), 0);
  EXPECT_EQ(generations(), before);
  EXPECT_NE(support::read_file(log_).find("device 'crash-dev-0' is registered (generation " +
                                          before.at("crash-dev-0") + ")"),
            std::string::npos);
}

/// A commit that fails (here: the file size limit, as on a full disk) stops the
/// daemon with exit code 4 before it acknowledges anything of the failed
/// transaction; restarted, it has every acknowledged send and nothing else.
TEST_F(crash_test, failed_commit_exits_4_and_the_restart_has_every_acknowledged_send) {
  // SIGXFSZ ignored (inherited through exec): a write past the limit fails with EFBIG.
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old), 0);
  // 512 blocks of 512 bytes (POSIX sh): the WAL outgrows 256 KiB after some sends.
  start_daemon({"/bin/sh", "-c", "ulimit -f 512 && exec \"$@\"", "sh"});
  sigaction(SIGXFSZ, &old, nullptr);
  if (HasFatalFailure())
    return;
  mqtt::service_connection service(client_options("failure-service"));
  ASSERT_TRUE(service.open());
  message m;
  m.body = std::string(16 * 1024, 'b');
  std::uint64_t acked = 0;
  for (int i = 0; i < 200; ++i) {
    m.message_id = "big-" + std::to_string(i);
    if (!service.send("crash-dev-1", m))
      break;  // no answer: the daemon stopped
    ++acked;
  }
  const auto code = daemon_->wait_exit(20s);
  EXPECT_EQ(code, 4);
  const std::string log = support::read_file(log_);
  EXPECT_NE(log.find("the store failed"), std::string::npos);
  EXPECT_GT(acked, 0u);

  ASSERT_NO_FATAL_FAILURE(start_daemon());  // no limit this time
  auto depth = service.queue_depth("crash-dev-1");
  ASSERT_TRUE(depth) << depth.error().message;
  EXPECT_EQ(*depth, acked) << "queued after the restart vs sends acknowledged before the failure";
  EXPECT_EQ(daemon_->stop(SIGTERM), 0);
  std::cout << "[failure] " << acked
            << " sends acknowledged before the commit failed; all queued after the restart\n";
}

}  // namespace

#else

TEST(crash_test, Skipped) {
  DEVICEBOUND_MISSING_PART(
      "built without DEVICEBOUND_BUILD_APPS (no Paho MQTT C / devicebound-hub)");
}

#endif
