// Durability (SPEC 1.2): the change journal, `memory_store`, `sqlite_store`,
// reopening a hub from its store, schema versions, damaged files, and a real
// kill -9 of a process that is sending. The random crash-and-reopen property
// against the model is tests/test_store_model.cpp.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <devicebound/hub.hpp>
#include <devicebound/registry.hpp>
#include <devicebound/store/sqlite.hpp>
#include <devicebound/store/store.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "support/temp_dir.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
using test_support::temp_dir;
namespace fs = std::filesystem;

constexpr time_point t0{duration{1704067200000}};  // 2024-01-01T00:00:00Z

/// A message with every sender property set.
message full_message(const std::string& id) {
  message m;
  m.body = std::string("body of ") + id + std::string("\0\x01\xff", 3);
  m.message_id = id;
  m.correlation_id = "corr-" + id;
  m.user_id = "user";
  m.content_type = "application/json";
  m.content_encoding = "utf-8";
  m.creation_time_utc = t0 - 5s;
  m.ack = ack_mode::full;
  m.app_properties = {{"color", "blue"}, {"empty", ""}};
  return m;
}

hub_config small_config() {
  hub_config c;
  c.name = "store-test";
  c.max_queue_depth = 20;
  c.lock_duration = 10s;
  c.max_delivery_count = 3;
  c.feedback_batch_size = 2;
  return c;
}

/// Drives a hub through every kind of state: queued, locked, abandoned,
/// dead-lettered, pending feedback, a locked feedback batch.
struct workload_result {
  lock_token locked;  ///< a lock still held on d1
  std::uint64_t locked_seq = 0;
};
workload_result run_workload(hub& h) {
  workload_result out;
  h.add_device("d0").value();
  h.add_device("d1").value();
  h.add_device("gone").value();
  for (int i = 0; i < 4; ++i)
    h.enqueue("d0", full_message("a" + std::to_string(i)), t0).value();
  for (int i = 0; i < 3; ++i)
    h.enqueue("d1", full_message("b" + std::to_string(i)), t0).value();
  h.enqueue("gone", full_message("c0"), t0).value();
  auto m = h.receive("d0", t0 + 1s).value();
  h.complete("d0", *m->lock_token, t0 + 1s).value();  // Success record, batched at once
  m = h.receive("d0", t0 + 2s).value();
  h.abandon("d0", *m->lock_token, t0 + 2s).value();  // delivery count 1, first in line again
  m = h.receive("d1", t0 + 3s).value();
  h.reject("d1", *m->lock_token, t0 + 3s).value();  // Rejected record, pending
  auto fb = h.receive_feedback(t0 + 4s).value();
  EXPECT_TRUE(fb.has_value());
  m = h.receive("d1", t0 + 5s).value();
  out.locked = *m->lock_token;
  out.locked_seq = m->sequence_number;
  h.remove_device("gone", std::nullopt, t0 + 5s).value();
  return out;
}

// --- the journal and memory_store -------------------------------------------------

TEST(memory_store, holds_exactly_the_hub_state_after_every_operation) {
  memory_store store;
  auto h = hub::open(small_config(), store, seeded_token_source(1)).value();
  EXPECT_TRUE(h.has_store());
  run_workload(h);
  EXPECT_EQ(store.load().value(), h.snapshot());
  EXPECT_FALSE(h.store_failure());
}

TEST(memory_store, reopened_hub_is_the_same_hub) {
  memory_store store;
  std::optional<hub> h(hub::open(small_config(), store, seeded_token_source(1)).value());
  const auto w = run_workload(*h);
  const auto before = h->snapshot();
  const auto stats = h->stats();
  const auto depth = h->feedback_queue_depth();
  h.reset();  // the process dies; the store stays

  auto r = hub::open(store, seeded_token_source(2)).value();  // the stored configuration
  EXPECT_EQ(r.config(), small_config());
  EXPECT_EQ(r.snapshot(), before);
  EXPECT_EQ(r.stats(), stats);
  EXPECT_EQ(r.last_now(), t0 + 5s);
  EXPECT_EQ(r.feedback_queue_depth(), depth);
  EXPECT_EQ(r.pending_feedback_records(), 1u);
  EXPECT_FALSE(r.has_device("gone"));
  EXPECT_EQ(r.queue_depth("d0", t0 + 5s).value(), 3u);

  // the lock handed out before the crash still settles
  EXPECT_TRUE(r.complete("d1", w.locked, t0 + 6s));
  // every property comes back, and the abandoned message keeps its count and place
  auto m = r.receive("d0", t0 + 6s).value();
  ASSERT_TRUE(m);
  message want = full_message("a1");
  EXPECT_EQ(m->body, want.body);
  EXPECT_EQ(m->message_id, want.message_id);
  EXPECT_EQ(m->correlation_id, want.correlation_id);
  EXPECT_EQ(m->user_id, want.user_id);
  EXPECT_EQ(m->content_type, want.content_type);
  EXPECT_EQ(m->content_encoding, want.content_encoding);
  EXPECT_EQ(m->creation_time_utc, want.creation_time_utc);
  EXPECT_EQ(m->app_properties, want.app_properties);
  EXPECT_EQ(m->ack, ack_mode::full);
  EXPECT_EQ(m->delivery_count, 1u);
  EXPECT_EQ(m->enqueued_time_utc, t0);
  // sequence numbers go on from the high-water mark, never repeating
  EXPECT_EQ(r.enqueue("d1", message{}, t0 + 7s).value().sequence_number, 9u);
}

TEST(memory_store, a_lock_that_expired_while_the_hub_was_down_expires_at_its_own_instant) {
  memory_store store;
  std::optional<hub> h(hub::open(small_config(), store, seeded_token_source(1)).value());
  h->add_device("d").value();
  h->enqueue("d", full_message("m"), t0).value();
  const auto m = h->receive("d", t0).value();
  h.reset();
  auto r = hub::open(small_config(), store, seeded_token_source(2)).value();
  std::vector<transition> seen;
  r.set_observer([&](const transition& t) { seen.push_back(t); });
  r.tick(t0 + 1h);  // restarted an hour later
  ASSERT_GE(seen.size(), 1u);
  EXPECT_EQ(seen[0].cause, transition_cause::lock_expired);
  EXPECT_EQ(seen[0].at, t0 + 10s);
  EXPECT_EQ(r.complete("d", *m->lock_token, t0 + 1h).code(), errc::device_message_lock_lost);
}

TEST(memory_store, one_change_set_per_operation_and_none_for_nothing) {
  memory_store store;
  auto h = hub::open(hub_config{}, store, seeded_token_source(1)).value();
  const auto base = store.commits();
  h.add_device("d").value();
  EXPECT_EQ(store.commits(), base + 1);
  h.enqueue("d", message{}, t0).value();
  EXPECT_EQ(store.commits(), base + 2);
  (void)h.queue_depth("d", t0);  // same instant, nothing changed: nothing to commit
  h.tick(t0);
  EXPECT_EQ(store.commits(), base + 2);
  h.tick(t0 + 1s);  // only the clock moved: committed, so time never goes back across a restart
  EXPECT_EQ(store.commits(), base + 3);
  EXPECT_EQ(store.load().value().counters->last_now, t0 + 1s);
  EXPECT_EQ(h.enqueue("nobody", message{}, t0 + 1s).code(), errc::device_not_found);
  EXPECT_EQ(store.commits(), base + 3);  // an error changes nothing
}

TEST(memory_store, a_failed_commit_refuses_the_operation_and_every_later_one) {
  memory_store store;
  std::optional<hub> h(hub::open(hub_config{}, store, seeded_token_source(1)).value());
  h->add_device("d").value();
  const auto acked = h->enqueue("d", full_message("acked"), t0).value();
  store.fail_next_apply(make_error(errc::server_error, "disk full"));
  auto r = h->enqueue("d", full_message("lost"), t0);
  ASSERT_FALSE(r);  // not acknowledged: the sender retries
  EXPECT_EQ(r.code(), errc::server_error);
  EXPECT_NE(r.error().message.find("disk full"), std::string::npos);
  ASSERT_TRUE(h->store_failure());
  EXPECT_EQ(h->receive("d", t0).code(), errc::server_error);
  EXPECT_EQ(h->add_device("e").code(), errc::server_error);
  h->tick(t0 + 1s);
  EXPECT_EQ(h->last_now(), t0);  // refused, not even the clock
  h.reset();

  // reopened, the hub is what the store holds: the acknowledged send, not the other
  auto reopened = hub::open(store, seeded_token_source(2)).value();
  const auto* q = reopened.find_queue("d");
  ASSERT_NE(q, nullptr);
  ASSERT_EQ(q->depth(), 1u);
  EXPECT_EQ(q->entries()[0].sequence_number, acked.sequence_number);
  EXPECT_GT(reopened.enqueue("d", message{}, t0).value().sequence_number, acked.sequence_number);
}

TEST(memory_store, opening_with_a_new_configuration_stores_it) {
  memory_store store;
  hub_config a;
  a.max_queue_depth = 7;
  (void)hub::open(a, store).value();
  EXPECT_EQ(store.load().value().config, a);
  EXPECT_EQ(hub::open(store).value().config(), a);
  hub_config b = a;
  b.lock_duration = 5s;
  (void)hub::open(b, store).value();
  EXPECT_EQ(store.load().value().config, b);
  hub_config bad;
  bad.max_queue_depth = 0;
  EXPECT_EQ(hub::open(bad, store).code(), errc::argument_invalid);
  EXPECT_EQ(store.load().value().config, b);
}

TEST(memory_store, a_hub_without_a_store_journals_nothing) {
  hub h(hub_config{}, seeded_token_source(1));
  EXPECT_FALSE(h.has_store());
  h.add_device("d").value();
  h.enqueue("d", message{}, t0).value();
  const auto s = h.snapshot();
  EXPECT_EQ(s.messages.size(), 1u);
  // a snapshot rebuilds the same hub
  auto r = hub::restore(hub_config{}, s, seeded_token_source(2)).value();
  EXPECT_EQ(r.snapshot(), s);
}

// --- restore refuses what a hub cannot have written -----------------------------------

journal::snapshot good_snapshot() {
  memory_store store;
  auto h = hub::open(small_config(), store, seeded_token_source(1)).value();
  run_workload(h);
  return store.load().value();
}

template <class Damage>
void expect_refused(Damage damage, const std::string& words) {
  auto s = good_snapshot();
  damage(s);
  auto r = hub::restore(small_config(), s);
  ASSERT_FALSE(r) << "expected refusal mentioning '" << words << "'";
  EXPECT_EQ(r.code(), errc::malformed);
  EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
}

TEST(restore, refuses_inconsistent_snapshots_with_a_clear_error) {
  expect_refused([](auto& s) { s.messages[0].device_id = "nobody"; }, "unknown device 'nobody'");
  expect_refused([](auto& s) { s.messages[0].state = message_state::completed; },
                 "state Completed");
  expect_refused([](auto& s) { s.messages[0].content = "\x01"; }, "damaged content");
  expect_refused([](auto& s) { s.messages[1].sequence_number = s.messages[0].sequence_number; },
                 "zero or repeated");
  expect_refused([](auto& s) { s.messages.back().sequence_number = 1000; }, "high-water mark");
  expect_refused(
      [](auto& s) {
        for (auto& m : s.messages)
          if (m.state == message_state::invisible)
            m.token = lock_token{};
      },
      "lock token");
  expect_refused([](auto& s) { s.devices.push_back(s.devices[0]); }, "stored twice");
  expect_refused([](auto& s) { s.devices[0].device_id = "bad/id"; }, "bad/id");
  expect_refused([](auto& s) { s.counters.reset(); }, "no hub counters");
  expect_refused([](auto& s) { s.batches[0].batch_id = 99; }, "above the id counter");
  expect_refused([](auto& s) { s.pending[0].record_id = 99; }, "above the id counter");
}

TEST(packed_message, bytes_round_trip_and_damage_is_refused) {
  std::mt19937 rng(3);
  for (int variant = 0; variant < 64; ++variant) {
    message m;
    m.body = std::string(static_cast<std::size_t>(variant * 7), 'x');
    if (variant & 1)
      m.message_id = "id";
    if (variant & 2)
      m.correlation_id = std::string(200, 'c');  // a two-byte varint
    if (variant & 4)
      m.content_type = "";
    if (variant & 8)
      m.creation_time_utc = t0;
    if (variant & 16)
      m.app_properties = {{"k", "v"}, {"k2", std::string(130, 'v')}};
    if (variant & 32)
      m.content_encoding = "gzip";
    const auto p = detail::packed_message::pack(m);
    const std::string bytes(p.bytes());
    auto back = detail::packed_message::from_bytes(bytes);
    ASSERT_TRUE(back) << "variant " << variant;
    message out;
    back->unpack_into(out);
    EXPECT_EQ(out.body, m.body);
    EXPECT_EQ(out.message_id, m.message_id);
    EXPECT_EQ(out.correlation_id, m.correlation_id);
    EXPECT_EQ(out.content_type, m.content_type);
    EXPECT_EQ(out.content_encoding, m.content_encoding);
    EXPECT_EQ(out.creation_time_utc, m.creation_time_utc);
    EXPECT_EQ(out.app_properties, m.app_properties);
    // every truncation, and a longer block, is refused; bit flips never crash
    for (std::size_t n = 0; n < bytes.size(); ++n)
      EXPECT_FALSE(detail::packed_message::from_bytes(bytes.substr(0, n))) << n;
    EXPECT_FALSE(detail::packed_message::from_bytes(bytes + "x"));
    for (int flip = 0; flip < 50; ++flip) {
      std::string d = bytes;
      d[rng() % d.size()] ^= static_cast<char>(1u << (rng() % 8));
      if (auto q = detail::packed_message::from_bytes(d)) {
        message any;
        q->unpack_into(any);
      }
    }
  }
}

// --- sqlite_store ---------------------------------------------------------------

sqlite_options test_options(sqlite_sync sync = sqlite_sync::off) {
  sqlite_options o;
  o.sync = sync;
  return o;
}

std::string pragma(sqlite3* db, const std::string& name) {
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, ("PRAGMA " + name).c_str(), -1, &st, nullptr), SQLITE_OK);
  std::string out;
  if (sqlite3_step(st) == SQLITE_ROW)
    out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  return out;
}

void exec_sql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

/// The files a kill -9 would leave at this instant: the database and its WAL, copied aside.
std::string crash_image(const std::string& path, const std::string& to) {
  fs::copy_file(path, to, fs::copy_options::overwrite_existing);
  if (fs::exists(path + "-wal"))
    fs::copy_file(path + "-wal", to + "-wal", fs::copy_options::overwrite_existing);
  return to;
}

TEST(sqlite_store, sync_modes_round_trip_through_their_names) {
  std::set<std::string_view> names;
  for (auto s : {sqlite_sync::full, sqlite_sync::normal, sqlite_sync::off}) {
    EXPECT_TRUE(names.insert(to_string(s)).second) << to_string(s);
    EXPECT_EQ(parse_sqlite_sync(to_string(s)), s) << to_string(s);
  }
  EXPECT_EQ(to_string(sqlite_sync::full), "full");  // the daemon's --store-sync spelling
  EXPECT_EQ(to_string(sqlite_sync::normal), "normal");
  EXPECT_FALSE(parse_sqlite_sync("FULL"));
  EXPECT_FALSE(parse_sqlite_sync(""));
}

TEST(sqlite_store, creates_a_versioned_wal_database) {
  temp_dir dir;
  auto s = sqlite_store::open(dir.file("hub.db"), test_options(sqlite_sync::full)).value();
  EXPECT_EQ(pragma(s.handle(), "journal_mode"), "wal");
  EXPECT_EQ(pragma(s.handle(), "synchronous"), "2");  // FULL
  EXPECT_EQ(pragma(s.handle(), "user_version"), std::to_string(sqlite_store::schema_version));
  EXPECT_EQ(pragma(s.handle(), "application_id"), std::to_string(sqlite_store::application_id));
  EXPECT_EQ(s.stored_schema_version().value(), sqlite_store::schema_version);
  const auto empty = s.load().value();
  EXPECT_FALSE(empty.config);
  EXPECT_FALSE(empty.counters);
}

TEST(sqlite_store, reopened_file_gives_the_same_hub) {
  temp_dir dir;
  const auto path = dir.file("hub.db");
  journal::snapshot before;
  workload_result w;
  {
    auto s = sqlite_store::open(path, test_options()).value();
    auto h = hub::open(small_config(), s, seeded_token_source(1)).value();
    w = run_workload(h);
    before = h.snapshot();
    EXPECT_EQ(s.load().value(), before);
  }
  auto s = sqlite_store::open(path, test_options()).value();
  auto h = hub::open(s, seeded_token_source(2)).value();
  EXPECT_EQ(h.snapshot(), before);
  EXPECT_TRUE(h.complete("d1", w.locked, t0 + 6s));
  EXPECT_EQ(s.load().value(), h.snapshot());
}

TEST(sqlite_store, one_transaction_per_operation) {
  temp_dir dir;
  auto s = sqlite_store::open(dir.file("hub.db"), test_options()).value();
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  const auto base = s.commits();
  h.add_device("d").value();
  h.enqueue("d", full_message("m"), t0).value();
  auto m = h.receive("d", t0).value();
  h.complete("d", *m->lock_token, t0).value();
  EXPECT_EQ(s.commits(), base + 4);
  // a crash image taken now holds all four
  const auto image = crash_image(s.path(), dir.file("image.db"));
  auto copy = sqlite_store::open(image, test_options()).value();
  EXPECT_EQ(copy.load().value(), h.snapshot());
}

TEST(sqlite_store, grouped_commits_are_durable_only_once_the_group_commits) {
  temp_dir dir;
  auto s = sqlite_store::open(dir.file("hub.db"), test_options()).value();
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  h.add_device("d").value();
  const auto committed = h.snapshot();
  const auto base = s.commits();
  ASSERT_TRUE(s.begin_group());
  EXPECT_EQ(s.begin_group().code(), errc::invalid_operation);
  for (int i = 0; i < 10; ++i)
    h.enqueue("d", full_message(std::to_string(i)), t0).value();
  {
    // killed before the group commits: none of the ten (none were acknowledged)
    auto image =
        sqlite_store::open(crash_image(s.path(), dir.file("before.db")), test_options()).value();
    EXPECT_EQ(image.load().value(), committed);
  }
  ASSERT_TRUE(s.commit_group());
  EXPECT_EQ(s.commits(), base + 1);
  auto image =
      sqlite_store::open(crash_image(s.path(), dir.file("after.db")), test_options()).value();
  EXPECT_EQ(image.load().value(), h.snapshot());
  EXPECT_EQ(s.commit_group().code(), errc::invalid_operation);
}

TEST(sqlite_store, a_group_stores_the_counters_of_its_last_good_change_set) {
  // Inside a group the counters row is written once, at commit_group: a change
  // set that fails must not leave its counters behind, one that succeeds must.
  temp_dir dir;
  auto s = sqlite_store::open(dir.file("hub.db"), test_options()).value();
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  h.add_device("d").value();
  ASSERT_TRUE(s.begin_group());
  h.enqueue("d", full_message("a"), t0).value();
  h.enqueue("d", full_message("b"), t0 + 1s).value();
  const auto good = h.snapshot();
  ASSERT_TRUE(good.counters);
  auto bogus = *good.counters;
  bogus.last_sequence += 100;
  bogus.stats.accepted += 100;
  const journal::change_set bad{journal::message_changed{9999}, bogus};
  EXPECT_FALSE(s.apply(bad));
  // a counters-only change set (the clock moved) is kept as the newest
  auto clock_only = *good.counters;
  clock_only.last_now = t0 + 2s;
  ASSERT_TRUE(s.apply(journal::change_set{clock_only}));
  EXPECT_FALSE(s.apply(bad));
  ASSERT_TRUE(s.commit_group());
  auto expected = good;
  expected.counters = clock_only;
  EXPECT_EQ(s.load().value(), expected);
  // and outside a group every change set writes its counters at once
  bogus = clock_only;
  bogus.last_now = t0 + 3s;
  ASSERT_TRUE(s.apply(journal::change_set{bogus}));
  expected.counters = bogus;
  EXPECT_EQ(s.load().value(), expected);
}

TEST(sqlite_store, a_second_hub_on_the_same_file_is_refused) {
  temp_dir dir;
  auto a = sqlite_store::open(dir.file("hub.db"), test_options()).value();
  auto b = sqlite_store::open(dir.file("hub.db"), test_options());
  ASSERT_FALSE(b);
  EXPECT_EQ(b.code(), errc::server_busy);
  EXPECT_NE(b.error().message.find("another process"), std::string::npos) << b.error().message;
}

TEST(sqlite_store, refuses_a_newer_schema_version) {
  temp_dir dir;
  const auto path = dir.file("hub.db");
  { auto s = sqlite_store::open(path, test_options()).value(); }
  exec_sql(path, "PRAGMA user_version = 7");
  auto r = sqlite_store::open(path, test_options());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::not_supported);
  EXPECT_NE(r.error().message.find("schema version 7, newer than this devicebound understands (" +
                                   std::to_string(sqlite_store::schema_version) + ")"),
            std::string::npos)
      << r.error().message;
}

TEST(sqlite_store, refuses_a_database_that_is_not_a_devicebound_store) {
  temp_dir dir;
  const auto path = dir.file("other.db");
  exec_sql(path, "CREATE TABLE customers (id INTEGER PRIMARY KEY)");
  auto r = sqlite_store::open(path, test_options());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::malformed);
  EXPECT_NE(r.error().message.find("not a devicebound store"), std::string::npos)
      << r.error().message;
  exec_sql(dir.file("app.db"), "PRAGMA application_id = 42");
  r = sqlite_store::open(dir.file("app.db"), test_options());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("application_id 42"), std::string::npos) << r.error().message;
}

TEST(sqlite_store, refuses_a_file_that_is_not_a_database) {
  temp_dir dir;
  const auto path = dir.file("hub.db");
  {
    std::ofstream f(path, std::ios::binary);
    std::mt19937 rng(5);
    for (int i = 0; i < 10000; ++i)
      f.put(static_cast<char>(rng()));
  }
  auto r = sqlite_store::open(path, test_options());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::malformed);
  EXPECT_NE(r.error().message.find("not an SQLite database"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
}

/// A store with some hundred messages, checkpointed into the main file and closed.
std::string populated_store(const temp_dir& dir) {
  const auto path = dir.file("hub.db");
  auto s = sqlite_store::open(path, test_options()).value();
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  for (int d = 0; d < 10; ++d) {
    const auto id = "device-" + std::to_string(d);
    h.add_device(id).value();
    for (int i = 0; i < 20; ++i)
      h.enqueue(id, full_message(id + "-" + std::to_string(i)), t0).value();
  }
  return path;  // closing the last connection checkpoints the WAL into the file
}

/// Opening the store and a hub on it fails with 400005, and does not crash.
void expect_damaged(const std::string& path, const std::string& what) {
  auto s = sqlite_store::open(path, test_options());
  if (s) {
    auto h = hub::open(*s);
    ASSERT_FALSE(h) << what << ": a damaged store opened";
    EXPECT_EQ(h.code(), errc::malformed) << what << ": " << h.error().message;
  } else {
    EXPECT_EQ(s.code(), errc::malformed) << what << ": " << s.error().message;
    const auto& msg = s.error().message;
    EXPECT_TRUE(msg.find("damaged") != std::string::npos ||
                msg.find("not an SQLite database") != std::string::npos)
        << what << ": " << msg;
  }
}

TEST(sqlite_store, refuses_a_truncated_file) {
  temp_dir dir;
  const auto path = populated_store(dir);
  ASSERT_FALSE(fs::exists(path + "-wal"));
  const auto full = fs::file_size(path);
  ASSERT_GT(full, 8 * 4096u);
  for (auto size : {std::uintmax_t{50}, std::uintmax_t{100}, std::uintmax_t{4096},
                    std::uintmax_t{4096 + 100}, full / 2, full - 4096, full - 1}) {
    const auto copy = dir.file("truncated-" + std::to_string(size) + ".db");
    fs::copy_file(path, copy);
    fs::resize_file(copy, size);
    expect_damaged(
        copy, "truncated to " + std::to_string(size) + " of " + std::to_string(full) + " bytes");
  }
}

TEST(sqlite_store, refuses_a_file_with_damaged_pages) {
  temp_dir dir;
  const auto path = populated_store(dir);
  const auto pages = fs::file_size(path) / 4096;
  for (std::uintmax_t page = 1; page < pages; page += 3) {
    const auto copy = dir.file("damaged-" + std::to_string(page) + ".db");
    fs::copy_file(path, copy);
    {
      std::fstream f(copy, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(page * 4096));
      for (int i = 0; i < 16; ++i)
        f.put('\xA5');  // the b-tree page header and cell pointers
    }
    expect_damaged(copy, "page " + std::to_string(page) + " overwritten");
  }
}

TEST(sqlite_store, refuses_rows_devicebound_cannot_have_written) {
  temp_dir dir;
  const auto path = populated_store(dir);
  struct edit {
    const char* sql;
    const char* words;
  };
  for (const auto& e :
       {edit{"UPDATE messages SET state = 7 WHERE seq = 3", "CHECK constraint failed in messages"},
        edit{"UPDATE messages SET content = 'text' WHERE seq = 4", "column content is not a blob"},
        edit{"UPDATE messages SET content = x'01' WHERE seq = 5", "damaged content"},
        edit{"UPDATE messages SET lock_token = x'0102' WHERE seq = 6", "16-byte lock token"},
        edit{"UPDATE messages SET device_id = 'nobody' WHERE seq = 7", "unknown device 'nobody'"},
        edit{"UPDATE config SET value = 'often' WHERE key = 'delivery_count'",
             "delivery_count is 'often'"},
        edit{"UPDATE config SET value = 0 WHERE key = 'max_queue_depth'", "max_queue_depth"},
        edit{"UPDATE hub_state SET last_sequence = 'x'", "last_sequence is not an integer"}}) {
    const auto copy = dir.file("edited.db");
    fs::copy_file(path, copy, fs::copy_options::overwrite_existing);
    exec_sql(copy, std::string("PRAGMA ignore_check_constraints = 1; ") + e.sql);
    // refused at open (PRAGMA quick_check checks CHECK constraints) or when the hub reads it
    {
      auto s = sqlite_store::open(copy, test_options());
      auto h = s ? hub::open(*s) : result<hub>(s.error());
      ASSERT_FALSE(h) << e.sql;
      EXPECT_EQ(h.code(), errc::malformed) << e.sql;
      EXPECT_NE(h.error().message.find(e.words), std::string::npos)
          << e.sql << ": " << h.error().message;
    }
    // without the check at open, the loader still refuses it
    auto unchecked = sqlite_store::open(copy, [] {
      auto o = test_options();
      o.verify_on_open = false;
      return o;
    }());
    ASSERT_TRUE(unchecked) << e.sql;
    EXPECT_EQ(hub::open(*unchecked).code(), errc::malformed) << e.sql;
  }
}

/// Every byte of a file, and the names of the files beside it.
struct file_image {
  std::string bytes;
  std::set<std::string> beside;
  friend bool operator==(const file_image&, const file_image&) = default;
};

file_image image_of(const std::string& path) {
  file_image i;
  std::ifstream f(path, std::ios::binary);
  std::ostringstream all;
  all << f.rdbuf();
  i.bytes = all.str();
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path()))
    i.beside.insert(e.path().filename().string());
  return i;
}

TEST(sqlite_store, a_refused_file_is_left_byte_for_byte_unchanged) {
  temp_dir dir;
  const auto ours = populated_store(dir);
  struct refused {
    std::string what;
    std::function<void(const std::string&)> make;
  };
  const std::vector<refused> files = {
      {"a foreign database in rollback-journal mode",
       [](const std::string& p) {
         exec_sql(p,
                  "CREATE TABLE customers (id INTEGER PRIMARY KEY); "
                  "INSERT INTO customers VALUES (1), (2)");
       }},
      {"a foreign database tagged with another application_id",
       [](const std::string& p) {
         exec_sql(p, "PRAGMA application_id = 42");
       }},
      {"a foreign database in WAL mode",
       [](const std::string& p) {
         exec_sql(p, "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1)");
       }},
      {"a newer schema version",
       [&](const std::string& p) {
         fs::copy_file(ours, p);
         exec_sql(p, "PRAGMA user_version = 7");
       }},
      {"a file that is not a database",
       [](const std::string& p) {
         std::ofstream f(p, std::ios::binary);
         std::mt19937 rng(5);
         for (int i = 0; i < 10000; ++i)
           f.put(static_cast<char>(rng()));
       }},
      {"a truncated store",
       [&](const std::string& p) {
         fs::copy_file(ours, p);
         fs::resize_file(p, fs::file_size(ours) / 2 + 100);
       }},
      {"a store with a damaged page",
       [&](const std::string& p) {
         fs::copy_file(ours, p);
         std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
         f.seekp(4 * 4096);
         for (int i = 0; i < 16; ++i)
           f.put('\xA5');
       }},
  };
  int n = 0;
  for (const auto& f : files) {
    // each file alone in its own folder, so files left beside it show
    const auto folder = dir.file("case-" + std::to_string(n++));
    fs::create_directory(folder);
    const auto path = (fs::path(folder) / "hub.db").string();
    f.make(path);
    const auto before = image_of(path);
    for (bool verify : {true, false}) {
      auto o = test_options(sqlite_sync::full);
      o.verify_on_open = verify;
      bool refused = false;
      {
        auto s = sqlite_store::open(path, o);
        // a damaged page may pass the store's checks and be refused by the hub's load
        auto h = s ? hub::open(*s) : result<hub>(s.error());
        refused = !h;
      }
      // without quick_check a damaged page nobody reads goes unnoticed: not a refusal
      if (verify) {
        ASSERT_TRUE(refused) << f.what << ": opened";
      }
      if (refused) {
        EXPECT_TRUE(image_of(path) == before)
            << f.what << (verify ? "" : " (no quick_check)") << ": the refused file was changed";
      }
    }
  }
}

TEST(sqlite_store, a_failed_commit_refuses_the_hub_until_it_is_reopened) {
  temp_dir dir;
  auto s = sqlite_store::open(dir.file("hub.db"), test_options()).value();
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  h.add_device("d").value();
  ASSERT_EQ(sqlite3_exec(s.handle(), "DROP TABLE messages", nullptr, nullptr, nullptr), SQLITE_OK);
  auto r = h.enqueue("d", message{}, t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::server_error);
  EXPECT_NE(r.error().message.find("no such table"), std::string::npos) << r.error().message;
  EXPECT_EQ(h.receive("d", t0).code(), errc::server_error);
}

// --- kill -9 ---------------------------------------------------------------------

/// The child: a hub on `path` that sends, receives and settles until it is
/// killed. After each acknowledged send it writes "A <seq> <message id>" to
/// `out` (the sender's acknowledgement); the parent kills it at a random point.
[[noreturn]] void sending_child(const std::string& path, int out, sqlite_sync sync,
                                std::uint32_t seed) {
  auto s = sqlite_store::open(path, test_options(sync));
  if (!s)
    _exit(10);
  hub_config cfg;
  cfg.max_queue_depth = 10000;
  auto h = hub::open(cfg, *s, seeded_token_source(seed));
  if (!h)
    _exit(11);
  const char* devices[] = {"d0", "d1", "d2", "d3"};
  for (auto d : devices)
    if (!h->add_device(d))
      _exit(12);
  std::mt19937 rng(seed);
  time_point now = t0;
  for (std::uint32_t i = 0; i < 100000; ++i) {
    now += duration{static_cast<std::int64_t>(rng() % 20)};
    const char* d = devices[rng() % 4];
    const std::string id = "m" + std::to_string(i);
    message m;
    m.message_id = id;
    m.ack = ack_mode::full;  // every outcome leaves a feedback record
    m.body = std::string(rng() % 200, 'b');
    auto r = h->enqueue(d, std::move(m), now);
    if (!r)
      _exit(13);
    char line[64];
    const int n = std::snprintf(line, sizeof line, "A %llu %s\n",
                                static_cast<unsigned long long>(r->sequence_number), id.c_str());
    if (write(out, line, static_cast<std::size_t>(n)) != n)
      _exit(14);
    if (rng() % 3 == 0) {
      const char* from = devices[rng() % 4];
      auto got = h->receive(from, now);
      if (!got)
        _exit(15);
      if (*got && rng() % 4 != 0) {  // some stay locked
        const auto how = static_cast<disposition>(rng() % 3);
        if (!h->settle(from, *(*got)->lock_token, how, now))
          _exit(16);
      }
    }
  }
  _exit(0);
}

TEST(sqlite_store, kill_9_at_any_instant_loses_no_acknowledged_send) {
  for (std::uint32_t round = 0; round < 8; ++round) {
    temp_dir dir;
    const auto path = dir.file("hub.db");
    const auto sync = round % 2 ? sqlite_sync::normal : sqlite_sync::full;
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      sending_child(path, fds[1], sync, round + 1);
    }
    close(fds[1]);
    std::mt19937 rng(round);
    const std::size_t kill_after = 20 + rng() % 300;
    std::map<std::string, std::uint64_t> acked;  // message id -> sequence number
    std::string buffer;
    bool killed = false;
    char chunk[4096];
    for (;;) {
      const auto n = read(fds[0], chunk, sizeof chunk);
      if (n <= 0)
        break;  // the child is gone and its acknowledgements read
      buffer.append(chunk, static_cast<std::size_t>(n));
      std::size_t eol;
      while ((eol = buffer.find('\n')) != std::string::npos) {
        std::istringstream line(buffer.substr(0, eol));
        buffer.erase(0, eol + 1);
        char tag;
        std::uint64_t seq;
        std::string id;
        line >> tag >> seq >> id;
        acked[id] = seq;
      }
      if (!killed && acked.size() >= kill_after) {
        kill(pid, SIGKILL);  // mid-operation, wherever the child is
        killed = true;
      }
    }
    close(fds[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the child ended by itself (exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1)
        << ")";

    auto s = sqlite_store::open(path, test_options());
    ASSERT_TRUE(s) << s.error().message;
    auto h = hub::open(*s, seeded_token_source(999));
    ASSERT_TRUE(h) << h.error().message;
    const auto snap = h->snapshot();
    // every acknowledged send is queued, or terminal with its feedback record still due
    std::set<std::string> queued, reported;
    std::uint64_t max_seq = 0;
    for (const auto& m : snap.messages) {
      auto p = detail::packed_message::from_bytes(m.content);
      ASSERT_TRUE(p);
      queued.insert(std::string(p->message_id().value_or("")));
      if (m.state == message_state::invisible) {
        EXPECT_FALSE(m.token.is_nil());
      }
    }
    for (const auto& r : snap.pending)
      reported.insert(r.record.original_message_id);
    for (const auto& b : snap.batches)
      for (const auto& r : b.records)
        reported.insert(r.original_message_id);
    for (const auto& [id, seq] : acked) {
      EXPECT_TRUE(queued.count(id) + reported.count(id) == 1)
          << "round " << round << ": acknowledged send " << id << " (seq " << seq << ") is "
          << (queued.count(id) + reported.count(id) == 0 ? "lost" : "both queued and reported");
      max_seq = std::max(max_seq, seq);
    }
    EXPECT_GE(h->stats().accepted, acked.size());
    // sequence numbers never repeat
    EXPECT_GT(h->enqueue("d0", message{}, h->last_now()).value().sequence_number, max_seq);
    // restored locks still settle with the token the device holds
    for (const auto& m : snap.messages)
      if (m.state == message_state::invisible && m.locked_until > h->last_now()) {
        EXPECT_TRUE(h->complete(m.device_id, m.token, h->last_now()));
        break;
      }
  }
}

// --- the identity registry in the stores ------------------------------------------

auth::shared_access_key key_of(char fill, std::size_t n = 32) {
  return auth::shared_access_key::from_bytes(std::string(n, fill));
}

/// A registry with every kind of record: sas, selfSigned, disabled, a policy.
registry sample_registry() {
  registry r;
  char next = 'a';
  key_source keys = [&next] {
    return key_of(next++);
  };
  auto gen = [](std::string_view) -> result<std::string> {
    return std::string("123456789012345678");
  };
  device_identity_update u;
  u.device_id = "dev-sas";
  EXPECT_TRUE(r.put(u, std::nullopt, gen, t0, keys));
  u.device_id = "dev-x509";
  u.auth = auth_type::self_signed;
  u.primary_thumbprint = std::string(40, 'A');
  u.status = device_status::disabled;
  u.status_reason = "stolen";
  u.iot_edge = true;
  EXPECT_TRUE(r.put(
      u, std::nullopt,
      [](std::string_view) -> result<std::string> { return std::string("not-a-number"); }, t0 + 1s,
      keys));
  EXPECT_TRUE(
      r.put_policy({"service", key_of('p'), key_of('q'), auth::access_rights::service_connect}));
  EXPECT_TRUE(r.put_policy({"gone", key_of('r'), key_of('s'), auth::access_rights::all}));
  EXPECT_TRUE(r.remove_policy("gone"));
  u = {};
  u.device_id = "dev-gone";
  EXPECT_TRUE(r.put(u, std::nullopt, gen, t0, keys));
  EXPECT_TRUE(r.remove("dev-gone", std::string("*")));
  return r;
}

template <class Store>
void expect_registry_round_trip(Store& store) {
  registry r = sample_registry();
  ASSERT_TRUE(store.apply(r.take_changes()));
  auto snap = store.load().value();
  std::vector<device_identity> want;
  r.for_each([&](const device_identity& d) { want.push_back(d); });
  EXPECT_EQ(snap.identities, want);
  EXPECT_EQ(snap.policies, r.policies());
  auto only = store.load_identities().value();
  EXPECT_EQ(only.identities, want);
  EXPECT_EQ(only.policies, r.policies());
  registry back;
  ASSERT_TRUE(back.restore(snap.identities, snap.policies));
  EXPECT_EQ(back.list(), r.list());
  EXPECT_EQ(back.policies(), r.policies());
}

TEST(memory_store, stores_identities_and_policies) {
  memory_store store;
  expect_registry_round_trip(store);
  // removing what is not stored is a hub bug: refused
  EXPECT_FALSE(store.apply({journal::identity_removed{"nobody"}}));
  EXPECT_FALSE(store.apply({journal::policy_removed{"nobody"}}));
}

TEST(sqlite_store, stores_identities_and_policies_across_a_reopen) {
  temp_dir dir;
  const auto path = dir.file("hub.db");
  {
    auto s = sqlite_store::open(path, test_options()).value();
    expect_registry_round_trip(s);
    EXPECT_FALSE(s.apply({journal::identity_removed{"nobody"}}));
  }
  auto s = sqlite_store::open(path, test_options()).value();
  auto snap = s.load().value();
  ASSERT_EQ(snap.identities.size(), 2u);
  EXPECT_EQ(snap.identities[0].device_id, "dev-sas");
  EXPECT_EQ(snap.identities[1].generation_id, "not-a-number");
  EXPECT_EQ(snap.identities[1].status, device_status::disabled);
  // the columns the broker plugin reads, by their names (plan: schema v2)
  sqlite3_stmt* raw = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(s.handle(),
                               "SELECT primary_key, secondary_key, status, auth_type FROM "
                               "identities WHERE device_id='dev-sas'",
                               -1, &raw, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(raw), SQLITE_ROW);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(sqlite3_column_text(raw, 0))),
            snap.identities[0].primary_key.to_base64());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(sqlite3_column_text(raw, 2))), "enabled");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(sqlite3_column_text(raw, 3))), "sas");
  sqlite3_finalize(raw);
  ASSERT_EQ(sqlite3_prepare_v2(s.handle(),
                               "SELECT primary_key, secondary_key, rights FROM policies WHERE "
                               "name='service'",
                               -1, &raw, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(raw), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(raw, 2), 4);
  sqlite3_finalize(raw);
}

TEST(sqlite_store, migrates_a_version_1_file_to_version_2) {
  temp_dir dir;
  const auto path = dir.file("v1.db");
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const std::string v1 = std::string("PRAGMA journal_mode=WAL; BEGIN;") +
                           sqlite_migrations[0].sql +
                           "INSERT INTO devices(id, generation_id) VALUES('old', '111');"
                           "PRAGMA user_version=1; PRAGMA application_id=" +
                           std::to_string(sqlite_store::application_id) + "; COMMIT;";
    ASSERT_EQ(sqlite3_exec(db, v1.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  auto s = sqlite_store::open(path, test_options()).value();
  EXPECT_EQ(s.stored_schema_version().value(), 2);
  auto snap = s.load().value();
  ASSERT_EQ(snap.devices.size(), 1u);
  EXPECT_EQ(snap.devices[0].device_id, "old");
  EXPECT_TRUE(snap.identities.empty());  // the hub seeds them at start
  EXPECT_TRUE(snap.policies.empty());
  registry r = sample_registry();
  ASSERT_TRUE(s.apply(r.take_changes()));
  EXPECT_EQ(s.load().value().identities.size(), 2u);
}

TEST(sqlite_store, refuses_identity_rows_devicebound_cannot_have_written) {
  temp_dir dir;
  const auto path = dir.file("hub.db");
  {
    auto s = sqlite_store::open(path, test_options()).value();
    registry r = sample_registry();
    ASSERT_TRUE(s.apply(r.take_changes()));
  }
  exec_sql(path, "UPDATE identities SET status = 'maybe' WHERE device_id = 'dev-sas'");
  auto s = sqlite_store::open(path, test_options()).value();
  auto snap = s.load();
  ASSERT_FALSE(snap);
  EXPECT_EQ(snap.code(), errc::malformed);
  EXPECT_NE(snap.error().message.find("identities"), std::string::npos) << snap.error().message;
}

}  // namespace
