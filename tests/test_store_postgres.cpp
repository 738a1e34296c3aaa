// The PostgreSQL store (include/devicebound/store/postgres.hpp) against a real
// PostgreSQL server this binary starts once for all its tests
// (tests/support/postgres.hpp): round trips of every change kind, reopening,
// partitions, refusals, the lease rows with epoch fencing (claim, renew,
// expiry by the database's clock, release, a stale owner refused), a real
// kill -9 of a sending process, and the random crash-and-reopen property
// against the model, as tests/test_store_model.cpp runs it for SQLite.
//   RC_PARAMS="max_success=2000" ./test_store_postgres
// Without the PostgreSQL server binaries every test skips, naming them
// (fails under DEVICEBOUND_REQUIRE_ALL=1).
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <rapidcheck/state.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <devicebound/hub.hpp>
#include <devicebound/registry.hpp>
#include <devicebound/store/postgres.hpp>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/hub_model.hpp"
#include "support/hub_model_gen.hpp"
#include "support/postgres.hpp"
#include "support/required.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
using test_support::postgres_server;

// rapidcheck reads RC_PARAMS once, on first use, after static initialisation.
[[maybe_unused]] const bool default_max_success = [] {
  const char* given = std::getenv("RC_PARAMS");
  std::string params = given ? given : "";
  if (params.find("max_success") == std::string::npos) {
    params += params.empty() ? "max_success=200" : " max_success=200";
    ::setenv("RC_PARAMS", params.c_str(), 1);
  }
  return true;
}();

// --- the one server of this binary ------------------------------------------------

std::unique_ptr<postgres_server>& server_slot() {
  static std::unique_ptr<postgres_server> s;
  return s;
}
std::string& server_failure() {
  static std::string why;
  return why;
}

/// The server, started on first use; nullptr if it cannot run (the reason in
/// `server_failure()`).
postgres_server* server() {
  auto& s = server_slot();
  if (!s && server_failure().empty()) {
    if (auto missing = postgres_server::missing(); !missing.empty()) {
      server_failure() = missing;
    } else {
      try {
        s = std::make_unique<postgres_server>();
      } catch (const std::exception& e) {
        server_failure() = std::string("cannot start PostgreSQL: ") + e.what();
      }
    }
  }
  return s.get();
}

/// Stops the server (by its PID) once every test has run.
class server_environment : public ::testing::Environment {
 public:
  void TearDown() override { server_slot().reset(); }
};
[[maybe_unused]] auto* const environment =
    ::testing::AddGlobalTestEnvironment(new server_environment);

/// Skips (or fails, under DEVICEBOUND_REQUIRE_ALL=1) without the binaries;
/// fails if they are there but the server does not start.
#define NEED_POSTGRES()                           \
  do {                                            \
    if (!server()) {                              \
      if (postgres_server::missing().empty())     \
        GTEST_FAIL() << server_failure();         \
      DEVICEBOUND_MISSING_PART(server_failure()); \
    }                                             \
  } while (0)

/// A schema of its own for each test (and each property case).
std::string fresh_schema(const std::string& stem) {
  static int n = 0;
  return "t_" + stem + "_" + std::to_string(++n);
}

postgres_options options_for(const std::string& schema, std::uint32_t partition = 0,
                             std::uint32_t partitions = 1) {
  postgres_options o;
  o.conninfo = server()->conninfo();
  o.schema = schema;
  o.partition = partition;
  o.partitions = partitions;
  return o;
}

postgres_store open_store(const std::string& schema, std::uint32_t partition = 0,
                          std::uint32_t partitions = 1) {
  return postgres_store::open(options_for(schema, partition, partitions)).value();
}

/// A store that holds its partition's lease as `owner`.
postgres_store claimed_store(const std::string& schema, const std::string& owner = "hub-a",
                             std::uint32_t partition = 0, std::uint32_t partitions = 1) {
  auto s = open_store(schema, partition, partitions);
  s.claim(partition, owner, 60s).value();
  return s;
}

/// Makes the lease of `partition` expire now, as if its TTL had run out.
void expire_lease(const std::string& schema, std::uint32_t partition) {
  server()->exec("UPDATE \"" + schema +
                 "\".partition_lease SET lease_until = now() - interval '1 millisecond' "
                 "WHERE partition = " +
                 std::to_string(partition));
}

// --- a workload with every kind of state (as tests/test_store.cpp) ------------------

constexpr time_point t0{duration{1704067200000}};  // 2024-01-01T00:00:00Z

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

struct workload_result {
  lock_token locked;  ///< a lock still held on d1
  lock_token feedback_lock;
};
/// Queued, locked, abandoned, rejected, pending feedback, a locked feedback
/// batch, a removed device: every change record but batch_removed.
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
  h.complete("d0", *m->lock_token, t0 + 1s).value();
  m = h.receive("d0", t0 + 2s).value();
  h.abandon("d0", *m->lock_token, t0 + 2s).value();
  m = h.receive("d1", t0 + 3s).value();
  h.reject("d1", *m->lock_token, t0 + 3s).value();
  auto fb = h.receive_feedback(t0 + 4s).value();
  EXPECT_TRUE(fb.has_value());
  if (fb)
    out.feedback_lock = fb->lock_token;
  m = h.receive("d1", t0 + 5s).value();
  out.locked = *m->lock_token;
  h.remove_device("gone", std::nullopt, t0 + 5s).value();
  return out;
}

// --- the store ---------------------------------------------------------------------

TEST(postgres_store, creates_a_versioned_schema_and_an_empty_partition) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("create");
  auto s = open_store(schema);
  EXPECT_EQ(s.stored_schema_version().value(), postgres_store::schema_version);
  const auto empty = s.load().value();
  EXPECT_FALSE(empty.config);
  EXPECT_FALSE(empty.counters);
  EXPECT_TRUE(empty.devices.empty());
  // a second instance opens the same schema as it is
  auto again = open_store(schema);
  EXPECT_EQ(again.stored_schema_version().value(), postgres_store::schema_version);
}

TEST(postgres_store, holds_exactly_the_hub_state_and_a_reopen_gives_the_same_hub) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("reopen");
  journal::snapshot before;
  workload_result w;
  {
    auto s = claimed_store(schema);
    auto h = hub::open(small_config(), s, seeded_token_source(1)).value();
    w = run_workload(h);
    before = h.snapshot();
    EXPECT_EQ(s.load().value(), before);
    EXPECT_FALSE(h.store_failure());
    ASSERT_TRUE(s.release());
  }
  auto s = claimed_store(schema, "hub-b");
  EXPECT_EQ(s.epoch(), 2u);
  auto h = hub::open(s, seeded_token_source(2)).value();  // the stored configuration
  EXPECT_EQ(h.config(), small_config());
  EXPECT_EQ(h.snapshot(), before);
  EXPECT_EQ(h.pending_feedback_records(), 1u);
  // the locks handed out before still settle: a message, and a feedback batch (batch_removed)
  EXPECT_TRUE(h.complete("d1", w.locked, t0 + 6s));
  EXPECT_TRUE(h.complete_feedback(w.feedback_lock, t0 + 6s));
  auto m = h.receive("d0", t0 + 6s).value();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->body, full_message("a1").body);
  EXPECT_EQ(m->app_properties, full_message("a1").app_properties);
  EXPECT_EQ(m->delivery_count, 1u);
  EXPECT_EQ(s.load().value(), h.snapshot());
  // sequence numbers go on from the high-water mark
  EXPECT_EQ(h.enqueue("d1", message{}, t0 + 7s).value().sequence_number, 9u);
}

TEST(postgres_store, one_transaction_per_operation_visible_to_every_connection) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("txn");
  auto s = claimed_store(schema);
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  auto reader = open_store(schema);  // another instance: no lease needed to read
  const auto base = s.commits();
  h.add_device("d").value();
  h.enqueue("d", full_message("m"), t0).value();
  auto m = h.receive("d", t0).value();
  h.complete("d", *m->lock_token, t0).value();
  EXPECT_EQ(s.commits(), base + 4);
  EXPECT_EQ(reader.load().value(), h.snapshot());
}

TEST(postgres_store, grouped_commits_are_durable_only_once_the_group_commits) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("group");
  auto s = claimed_store(schema);
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  h.add_device("d").value();
  const auto committed = h.snapshot();
  const auto base = s.commits();
  auto other = open_store(schema);
  ASSERT_TRUE(s.begin_group());
  EXPECT_TRUE(s.in_group());
  EXPECT_EQ(s.begin_group().code(), errc::invalid_operation);
  for (int i = 0; i < 10; ++i)
    h.enqueue("d", full_message(std::to_string(i)), t0).value();
  const auto grouped = h.snapshot();
  // a change set that does not fit is undone alone; the group goes on
  EXPECT_FALSE(s.apply({journal::device_added{"e", "1"}, journal::device_added{"d", "2"}}));
  EXPECT_EQ(s.load().value(), grouped);        // the group's own view
  EXPECT_EQ(other.load().value(), committed);  // nobody else sees it before the commit
  ASSERT_TRUE(s.commit_group());
  EXPECT_FALSE(s.in_group());
  EXPECT_EQ(s.commits(), base + 1);
  EXPECT_EQ(other.load().value(), grouped);
  EXPECT_EQ(s.commit_group().code(), errc::invalid_operation);
  // a group is refused at its start once the lease is gone
  expire_lease(schema, 0);
  ASSERT_EQ(other.claim(0, "hub-b", 30s).value(), 2u);
  auto r = s.begin_group();
  ASSERT_FALSE(r);
  EXPECT_TRUE(is_lease_lost(r.error())) << r.error().message;
  EXPECT_FALSE(s.in_group());
}

TEST(postgres_store, a_change_that_does_not_fit_is_refused_and_nothing_of_the_set_applied) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("fit");
  auto s = claimed_store(schema);
  ASSERT_TRUE(s.apply({journal::device_added{"d", "1"}}));
  const auto before = s.load().value();
  const auto commits = s.commits();
  struct bad_set {
    const char* what;
    journal::change_set changes;
  };
  const bad_set sets[] = {
      {"message_removed", {journal::device_added{"e", "2"}, journal::message_removed{99}}},
      {"message_changed", {journal::device_added{"e", "2"}, journal::message_changed{99}}},
      {"device_added", {journal::device_added{"e", "2"}, journal::device_added{"d", "3"}}},
      {"device_removed", {journal::device_added{"e", "2"}, journal::device_removed{"nobody"}}},
      {"batch_changed", {journal::device_added{"e", "2"}, journal::batch_changed{5}}},
      {"batch_removed", {journal::device_added{"e", "2"}, journal::batch_removed{5}}},
      {"identity_removed", {journal::device_added{"e", "2"}, journal::identity_removed{"nobody"}}},
      {"policy_removed", {journal::device_added{"e", "2"}, journal::policy_removed{"nobody"}}},
  };
  for (const auto& b : sets) {
    auto r = s.apply(b.changes);
    ASSERT_FALSE(r) << b.what;
    EXPECT_EQ(r.code(), errc::server_error) << b.what;
    EXPECT_NE(r.error().message.find(b.what), std::string::npos) << r.error().message;
    EXPECT_FALSE(is_lease_lost(r.error())) << r.error().message;
    EXPECT_EQ(s.load().value(), before) << b.what << ": part of the set was applied";
  }
  EXPECT_EQ(s.commits(), commits);
  EXPECT_FALSE(s.lease_lost());
  // the store is still usable
  EXPECT_TRUE(s.apply({journal::device_added{"e", "2"}}));
}

TEST(postgres_store, partitions_keep_their_own_rows_and_share_the_registry) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("parts");
  auto p0 = claimed_store(schema, "hub-a", 0, 2);
  auto p1 = claimed_store(schema, "hub-b", 1, 2);
  auto h0 = hub::open(small_config(), p0, seeded_token_source(1)).value();
  auto h1 = hub::open(hub_config{}, p1, seeded_token_source(2)).value();
  run_workload(h0);
  h1.add_device("d0").value();  // the same id in another partition: other rows
  h1.enqueue("d0", message{}, t0).value();
  EXPECT_EQ(p0.load().value(), h0.snapshot());
  EXPECT_EQ(p1.load().value(), h1.snapshot());
  EXPECT_EQ(p1.load().value().messages.size(), 1u);
  EXPECT_EQ(p1.load().value().messages[0].sequence_number, 1u);  // sequence numbers per partition

  registry r;
  auth::shared_access_key k = auth::shared_access_key::from_bytes(std::string(32, 'k'));
  EXPECT_TRUE(r.put_policy({"service", k, k, auth::access_rights::service_connect}));
  ASSERT_TRUE(p0.apply(r.take_changes()));
  EXPECT_EQ(p1.load_identities().value().policies, r.policies());
  EXPECT_EQ(p1.load().value().policies, r.policies());

  // the owner of partition 0 cannot write through partition 1
  auto other = open_store(schema, 1, 2);
  other.adopt("hub-a", 1);
  auto refused = other.apply({journal::device_added{"x", "1"}});
  ASSERT_FALSE(refused);
  EXPECT_TRUE(is_lease_lost(refused.error())) << refused.error().message;
}

TEST(postgres_store, refuses_what_it_cannot_open) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("refuse");
  { (void)open_store(schema, 0, 4); }
  // another partition count: devices would move
  auto r = postgres_store::open(options_for(schema, 0, 8));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
  EXPECT_NE(r.error().message.find("4 partitions"), std::string::npos) << r.error().message;
  // a partition out of range
  r = postgres_store::open(options_for(schema, 4, 4));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
  // a newer schema version
  server()->exec("UPDATE \"" + schema + "\".devicebound_schema SET version = 99");
  r = postgres_store::open(options_for(schema, 0, 4));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::not_supported);
  EXPECT_NE(r.error().message.find("99"), std::string::npos) << r.error().message;
  // a schema holding someone else's tables
  const auto foreign = fresh_schema("foreign");
  server()->exec("CREATE SCHEMA \"" + foreign + "\"; CREATE TABLE \"" + foreign +
                 "\".orders (id int)");
  r = postgres_store::open(options_for(foreign));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::malformed);
  EXPECT_NE(r.error().message.find("not a devicebound store"), std::string::npos)
      << r.error().message;
  // no server there: 503001
  auto o = options_for(schema);
  o.conninfo = "host=127.0.0.1 port=1 dbname=x connect_timeout=5";
  r = postgres_store::open(o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::server_busy);
}

TEST(postgres_store, refuses_rows_devicebound_cannot_have_written) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("rows");
  auto s = claimed_store(schema);
  auto h = hub::open(small_config(), s, seeded_token_source(1)).value();
  run_workload(h);
  server()->exec("UPDATE \"" + schema +
                 "\".messages SET state = 1, lock_token = '\\x0102' "
                 "WHERE seq = 2");
  auto snap = s.load();
  ASSERT_FALSE(snap);
  EXPECT_EQ(snap.code(), errc::malformed);
  EXPECT_NE(snap.error().message.find("messages"), std::string::npos) << snap.error().message;
  EXPECT_NE(snap.error().message.find("lock_token"), std::string::npos) << snap.error().message;
}

TEST(postgres_store, a_failed_commit_refuses_the_hub_until_it_is_reopened) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("failed");
  auto s = claimed_store(schema);
  auto h = hub::open(hub_config{}, s, seeded_token_source(1)).value();
  h.add_device("d").value();
  server()->exec("DROP TABLE \"" + schema + "\".messages");
  auto r = h.enqueue("d", message{}, t0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::server_error);
  EXPECT_NE(r.error().message.find("messages"), std::string::npos) << r.error().message;
  EXPECT_FALSE(is_lease_lost(r.error()));
  EXPECT_EQ(h.receive("d", t0).code(), errc::server_error);
}

// --- the identity registry ---------------------------------------------------------

auth::shared_access_key key_of(char fill) {
  return auth::shared_access_key::from_bytes(std::string(32, fill));
}

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
  EXPECT_TRUE(r.put(u, std::nullopt, gen, t0 + 1s, keys));
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

TEST(postgres_store, stores_identities_and_policies_across_a_reopen) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("registry");
  registry r = sample_registry();
  std::vector<device_identity> want;
  r.for_each([&](const device_identity& d) { want.push_back(d); });
  {
    auto s = claimed_store(schema);
    ASSERT_TRUE(s.apply(r.take_changes()));
    auto snap = s.load().value();
    EXPECT_EQ(snap.identities, want);
    EXPECT_EQ(snap.policies, r.policies());
  }
  auto s = open_store(schema);  // any instance reads the registry
  auto only = s.load_identities().value();
  EXPECT_EQ(only.identities, want);
  EXPECT_EQ(only.policies, r.policies());
  registry back;
  ASSERT_TRUE(back.restore(only.identities, only.policies));
  EXPECT_EQ(back.list(), r.list());
  // a value devicebound cannot have written is refused, naming the table
  server()->exec("UPDATE \"" + schema +
                 "\".identities SET status = 'maybe' WHERE device_id = 'dev-sas'");
  auto bad = s.load_identities();
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.code(), errc::malformed);
  EXPECT_NE(bad.error().message.find("identities"), std::string::npos) << bad.error().message;
}

TEST(postgres_store, the_registry_version_moves_with_every_registry_write_and_only_then) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("regver");
  auto a = claimed_store(schema);
  auto b = open_store(schema);  // another connection (an instance) reads the counter
  const std::uint64_t v0 = b.registry_version().value();
  // queue work does not move it
  ASSERT_TRUE(a.apply({journal::device_added{"d0", "g0"}}));
  EXPECT_EQ(b.registry_version().value(), v0);
  // an identity or policy write does, once committed
  registry r = sample_registry();
  ASSERT_TRUE(a.apply(r.take_changes()));
  const std::uint64_t v1 = b.registry_version().value();
  EXPECT_GT(v1, v0);
  ASSERT_TRUE(a.begin_group());
  ASSERT_TRUE(a.apply({journal::identity_removed{"dev-x509"}}));
  EXPECT_EQ(b.registry_version().value(), v1) << "an uncommitted write is not seen";
  ASSERT_TRUE(a.commit_group());
  const std::uint64_t v2 = b.registry_version().value();
  EXPECT_GT(v2, v1);
  // a refused change set moves nothing
  EXPECT_FALSE(a.apply({journal::policy_removed{"no-such-policy"}}));
  EXPECT_EQ(b.registry_version().value(), v2);
  // a write made outside devicebound (an operator's SQL) moves it too
  server()->exec("UPDATE \"" + schema + "\".policies SET rights = rights");
  EXPECT_GT(b.registry_version().value(), v2);
}

TEST(postgres_store, partitions_write_the_registry_in_open_transactions_without_waiting) {
  // One instance's batch keeps a transaction open per partition until it
  // commits them all: two partitions registering devices in the same batch
  // must not wait for each other on the registry's change counter.
  NEED_POSTGRES();
  const auto schema = fresh_schema("regpar");
  auto a = claimed_store(schema, "hub-a", 0, 2);
  auto b = claimed_store(schema, "hub-b", 1, 2);
  auto reader = open_store(schema, 0, 2);
  const std::uint64_t v0 = reader.registry_version().value();
  ASSERT_TRUE(a.begin_group());
  ASSERT_TRUE(b.begin_group());
  registry ra, rb;
  char next = 'a';
  key_source keys = [&next] {
    return key_of(next++);
  };
  ASSERT_TRUE(ra.add("dev-a", "123456789012345678", t0, keys));
  ASSERT_TRUE(rb.add("dev-b", "123456789012345679", t0, keys));
  ASSERT_TRUE(a.apply(ra.take_changes()));
  const auto before = std::chrono::steady_clock::now();
  auto r = b.apply(rb.take_changes());  // a's transaction is still open
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_LT(std::chrono::steady_clock::now() - before, 1s) << "b waited for a's transaction";
  ASSERT_TRUE(b.commit_group());
  ASSERT_TRUE(a.commit_group());
  EXPECT_GT(reader.registry_version().value(), v0);
  EXPECT_EQ(reader.load_identities().value().identities.size(), 2u);
}

TEST(postgres_store, a_version_1_schema_is_migrated_and_gets_the_registry_counter) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("migrate");
  {
    auto s = claimed_store(schema);
    ASSERT_TRUE(s.apply(sample_registry().take_changes()));
  }
  // take the schema back to what version 1 created
  server()->exec("SET client_min_messages = warning; SET search_path TO \"" + schema +
                 "\"; DROP TABLE registry_version; DROP FUNCTION bump_registry_version() CASCADE; "
                 "UPDATE devicebound_schema SET version = 1");
  auto s = open_store(schema);
  EXPECT_EQ(s.stored_schema_version().value(), postgres_store::schema_version);
  const std::uint64_t v = s.registry_version().value();
  EXPECT_EQ(s.load_identities().value().identities.size(), 2u) << "the rows survive the migration";
  server()->exec("DELETE FROM \"" + schema + "\".identities WHERE device_id = 'dev-sas'");
  EXPECT_GT(s.registry_version().value(), v);
}

// --- leases and fencing ------------------------------------------------------------

TEST(postgres_lease, a_free_partition_is_claimed_at_epoch_1_and_a_held_one_is_refused) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("claim");
  auto a = open_store(schema, 0, 3);
  auto b = open_store(schema, 0, 3);
  EXPECT_FALSE(a.lease(0).value());
  EXPECT_EQ(a.claim(0, "hub-a", 30s).value(), 1u);
  EXPECT_EQ(a.epoch(), 1u);
  auto held = b.claim(0, "hub-b", 30s);
  ASSERT_FALSE(held);
  EXPECT_EQ(held.code(), errc::server_busy);
  EXPECT_NE(held.error().message.find("held by 'hub-a' (epoch 1"), std::string::npos)
      << held.error().message;
  EXPECT_FALSE(b.epoch());
  // its holder cannot claim it twice either (another incarnation with the same name)
  EXPECT_EQ(a.claim(0, "hub-a", 30s).code(), errc::server_busy);
  const auto l = b.lease(0).value();
  ASSERT_TRUE(l);
  EXPECT_EQ(l->owner, "hub-a");
  EXPECT_EQ(l->epoch, 1u);
  EXPECT_TRUE(l->live);
  EXPECT_GT(l->remaining, 20s);
  EXPECT_LE(l->remaining, 30s);
  // other partitions are independent; their claims do not fence this store
  EXPECT_EQ(b.claim(2, "hub-b", 30s).value(), 1u);
  EXPECT_FALSE(b.epoch());
  // bad arguments
  EXPECT_EQ(b.claim(3, "hub-b", 30s).code(), errc::argument_invalid);
  EXPECT_EQ(b.claim(1, "", 30s).code(), errc::argument_invalid);
  EXPECT_EQ(b.claim(1, "hub-b", 0ms).code(), errc::argument_invalid);
}

TEST(postgres_lease, renewal_extends_and_expiry_by_the_database_clock_frees_the_partition) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("expiry");
  auto a = open_store(schema);
  auto b = open_store(schema);
  ASSERT_EQ(a.claim(0, "hub-a", 300ms).value(), 1u);
  ASSERT_TRUE(a.renew(30s));
  EXPECT_GT(b.lease(0).value()->remaining, 20s);
  ASSERT_TRUE(a.renew(0, "hub-a", 1, 300ms));
  // expiry is the server's now(): poll until it says so (bounded)
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  bool expired = false;
  while (!expired && std::chrono::steady_clock::now() < deadline) {
    expired = !b.lease(0).value()->live;
    if (!expired)
      std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(expired) << "the 300 ms lease did not expire within 10 s";
  EXPECT_EQ(b.claim(0, "hub-b", 30s).value(), 2u);
  // the old holder can neither renew nor release any more, and knows it
  auto r = a.renew(30s);
  ASSERT_FALSE(r);
  EXPECT_TRUE(is_lease_lost(r.error())) << r.error().message;
  EXPECT_NE(r.error().message.find("held by 'hub-b' (epoch 2"), std::string::npos)
      << r.error().message;
  EXPECT_TRUE(a.lease_lost());
  EXPECT_TRUE(is_lease_lost(a.release().error()));
  EXPECT_EQ(b.lease(0).value()->owner, "hub-b");
}

TEST(postgres_lease, an_expired_lease_nobody_claimed_is_revived_by_its_owner) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("revive");
  auto a = claimed_store(schema);
  ASSERT_TRUE(a.apply({journal::device_added{"d", "1"}}));
  expire_lease(schema, 0);
  EXPECT_FALSE(a.lease(0).value()->live);
  // the epoch is unchanged: nobody else can have written, so the writes go on
  ASSERT_TRUE(a.apply({journal::device_added{"e", "1"}}));
  ASSERT_TRUE(a.renew(30s));
  EXPECT_TRUE(a.lease(0).value()->live);
  EXPECT_EQ(a.epoch(), 1u);
}

TEST(postgres_lease, a_stale_owner_is_refused_and_changes_nothing) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("stale");
  auto a = claimed_store(schema, "hub-a");
  std::optional<hub> ha(hub::open(small_config(), a, seeded_token_source(1)).value());
  ha->add_device("d").value();
  ha->enqueue("d", full_message("acked"), t0).value();
  const auto committed = ha->snapshot();

  // hub-a hangs past its lease; hub-b takes the partition over
  expire_lease(schema, 0);
  auto b = open_store(schema);
  ASSERT_EQ(b.claim(0, "hub-b", 30s).value(), 2u);
  auto hb = hub::open(b, seeded_token_source(2)).value();
  EXPECT_EQ(hb.snapshot(), committed);

  // the zombie wakes up: its next commit is refused, nothing of it stored
  auto r = ha->enqueue("d", full_message("zombie"), t0 + 1s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::server_error);
  EXPECT_TRUE(is_lease_lost(r.error())) << r.error().message;
  ASSERT_TRUE(ha->store_failure());
  EXPECT_TRUE(is_lease_lost(*ha->store_failure()));
  EXPECT_NE(ha->store_failure()->message.find("held by 'hub-b' (epoch 2"), std::string::npos)
      << ha->store_failure()->message;
  EXPECT_TRUE(a.lease_lost());
  EXPECT_EQ(b.load().value(), committed);
  EXPECT_EQ(ha->add_device("e").code(), errc::server_error);  // it stays down
  // a raw change set from the zombie: refused too
  EXPECT_TRUE(is_lease_lost(a.apply({journal::device_added{"z", "1"}}).error()));
  EXPECT_EQ(b.load().value(), committed);
  // the new owner goes on
  EXPECT_EQ(hb.enqueue("d", full_message("new"), t0 + 1s).value().sequence_number, 2u);
}

TEST(postgres_lease, release_then_claim_by_another_owner_bumps_the_epoch) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("release");
  auto a = claimed_store(schema, "hub-a");
  ASSERT_TRUE(a.apply({journal::device_added{"d", "1"}}));
  ASSERT_TRUE(a.release());
  const auto l = a.lease(0).value();
  ASSERT_TRUE(l);
  EXPECT_FALSE(l->owner);
  EXPECT_EQ(l->epoch, 1u);
  EXPECT_FALSE(a.epoch());
  // without a lease, a store writes nothing
  auto r = a.apply({journal::device_added{"e", "1"}});
  ASSERT_FALSE(r);
  EXPECT_TRUE(is_lease_lost(r.error())) << r.error().message;
  auto b = open_store(schema);
  EXPECT_EQ(b.claim(0, "hub-b", 30s).value(), 2u);
  EXPECT_TRUE(b.apply({journal::device_added{"e", "1"}}));
  EXPECT_EQ(b.load().value().devices.size(), 2u);
  // a release with the old epoch is refused
  EXPECT_TRUE(is_lease_lost(a.release(0, "hub-a", 1).error()));
  EXPECT_EQ(b.lease(0).value()->owner, "hub-b");
}

TEST(postgres_lease, racing_claims_of_a_free_partition_give_it_to_exactly_one) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("race");
  constexpr int contenders = 4;
  std::vector<postgres_store> stores;
  for (int i = 0; i < contenders; ++i)
    stores.push_back(open_store(schema, 0, 8));
  for (std::uint32_t partition = 0; partition < 8; ++partition) {
    std::atomic<int> go{0};
    std::vector<result<std::uint64_t>> got(contenders, make_error(errc::timeout, "not run"));
    std::vector<std::thread> threads;
    for (int i = 0; i < contenders; ++i)
      threads.emplace_back([&, i] {
        go.fetch_add(1);
        while (go.load() < contenders) {
        }
        got[static_cast<std::size_t>(i)] =
            stores[static_cast<std::size_t>(i)].claim(partition, "hub-" + std::to_string(i), 30s);
      });
    for (auto& t : threads)
      t.join();
    int winners = 0;
    for (const auto& g : got) {
      if (g) {
        ++winners;
        EXPECT_EQ(*g, 1u);
      } else {
        EXPECT_EQ(g.code(), errc::server_busy) << g.error().message;
      }
    }
    EXPECT_EQ(winners, 1) << "partition " << partition;
  }
}

/// Runs SQL on a store's own connection, as if the store were in the middle of
/// `apply` (the hung instance of the tests below).
void on_connection(PGconn* c, const std::string& sql) {
  PGresult* r = PQexec(c, sql.c_str());
  const auto st = PQresultStatus(r);
  EXPECT_TRUE(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
      << sql << ": " << PQresultErrorMessage(r);
  PQclear(r);
}

/// Puts a store's connection where `apply` is after its lease check: in a
/// transaction that has run the store's own prepared check (`check_epoch`) and
/// written a device `id`, not committed.
void mid_apply(postgres_store& s, const std::string& id) {
  on_connection(s.handle(), "BEGIN");
  const std::string partition = std::to_string(s.partition());
  const char* values[] = {partition.c_str()};
  PGresult* r = PQexecPrepared(s.handle(), "check_epoch", 1, values, nullptr, nullptr, 0);
  EXPECT_EQ(PQresultStatus(r), PGRES_TUPLES_OK) << PQresultErrorMessage(r);
  PQclear(r);
  on_connection(s.handle(), "INSERT INTO devices(partition, id, generation_id) VALUES (" +
                                partition + ", '" + id + "', '1')");
}

/// Server backends waiting for a lock now (from a connection of its own).
int backends_waiting_for_a_lock() {
  PGconn* c = PQconnectdb(server()->conninfo().c_str());
  PGresult* r = PQexec(c, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'");
  const int n = PQresultStatus(r) == PGRES_TUPLES_OK ? std::atoi(PQgetvalue(r, 0, 0)) : -1;
  PQclear(r);
  PQfinish(c);
  return n;
}

// An apply that has checked the epoch holds the lease row FOR SHARE until it
// commits: a takeover waits for it, and the new owner sees what it committed.
TEST(postgres_lease, a_takeover_waits_for_a_write_that_checked_the_epoch) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("order");
  auto a = claimed_store(schema, "hub-a");
  auto b = open_store(schema);
  // probing a live lease does not wait for the holder's write in flight
  mid_apply(a, "first");
  EXPECT_EQ(b.claim(0, "hub-b", 30s).code(), errc::server_busy);
  on_connection(a.handle(), "COMMIT");

  expire_lease(schema, 0);
  mid_apply(a, "in-flight");  // epoch checked, row written, not committed
  std::atomic<bool> claimed{false};
  result<std::uint64_t> got = make_error(errc::timeout, "not run");
  std::thread taker([&] {
    got = b.claim(0, "hub-b", 30s);
    claimed = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (backends_waiting_for_a_lock() < 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);  // bounded poll of the server's view
  EXPECT_GE(backends_waiting_for_a_lock(), 1) << "the claim did not wait for the lease row";
  EXPECT_FALSE(claimed.load()) << "the claim went past a write that had checked the epoch";
  on_connection(a.handle(), "COMMIT");
  taker.join();
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(*got, 2u);
  const auto devices = b.load().value().devices;
  ASSERT_EQ(devices.size(), 2u);  // the new owner sees the old owner's last commit
  EXPECT_EQ(devices[1].device_id, "in-flight");
  EXPECT_TRUE(is_lease_lost(a.apply({journal::device_added{"late", "1"}}).error()));
}

// An owner that hangs inside `apply` (holding the lease row FOR SHARE) would
// block a takeover for as long as it hangs: the server ends its session after
// `stalled_transaction_timeout`, rolls it back, and the takeover goes on.
TEST(postgres_lease, an_owner_stalled_inside_a_write_is_cut_off_and_commits_nothing) {
  NEED_POSTGRES();
  const auto schema = fresh_schema("stall");
  auto o = options_for(schema);
  o.stalled_transaction_timeout = 300ms;
  auto a = postgres_store::open(o).value();
  ASSERT_EQ(a.claim(0, "hub-a", 30s).value(), 1u);
  ASSERT_TRUE(a.apply({journal::device_added{"d", "1"}}));
  expire_lease(schema, 0);
  mid_apply(a, "stalled");
  // hub-a is stopped here (SIGSTOP): hub-b's claim waits, then goes through
  auto b = open_store(schema);
  const auto start = std::chrono::steady_clock::now();
  auto got = b.claim(0, "hub-b", 30s);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(*got, 2u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 8s);
  // hub-a resumes: its session is gone, nothing of it was committed
  auto r = a.apply({journal::device_added{"zombie", "1"}});
  EXPECT_FALSE(r);
  const auto devices = b.load().value().devices;
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(devices[0].device_id, "d");
  // the setting is what the option says
  postgres_options bad = options_for(schema);
  bad.lock_timeout = -1ms;
  EXPECT_EQ(postgres_store::open(bad).code(), errc::argument_invalid);
}

// --- kill -9 of a sending process --------------------------------------------------

/// The child: claims the partition, opens a hub and sends, receives and settles
/// until killed; after each acknowledged send it writes "<message id>\n" to `out`.
[[noreturn]] void sending_child(const std::string& conninfo, const std::string& schema, int out,
                                std::uint32_t seed) {
  postgres_options o;
  o.conninfo = conninfo;
  o.schema = schema;
  auto s = postgres_store::open(o);
  if (!s)
    _exit(10);
  if (!s->claim(0, "child", 500ms))
    _exit(11);
  hub_config cfg;
  cfg.max_queue_depth = 10000;
  auto h = hub::open(cfg, *s, seeded_token_source(seed));
  if (!h)
    _exit(12);
  const char* devices[] = {"d0", "d1", "d2"};
  for (auto d : devices)
    if (!h->add_device(d))
      _exit(13);
  std::mt19937 rng(seed);
  time_point now = t0;
  for (std::uint32_t i = 0; i < 100000; ++i) {
    if (i % 50 == 0 && !s->renew(500ms))
      _exit(14);
    now += duration{static_cast<std::int64_t>(rng() % 20)};
    const char* d = devices[rng() % 3];
    const std::string id = "m" + std::to_string(i);
    message m;
    m.message_id = id;
    m.ack = ack_mode::full;
    m.body = std::string(rng() % 200, 'b');
    if (!h->enqueue(d, std::move(m), now))
      _exit(15);
    const std::string line = id + "\n";
    if (write(out, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
      _exit(16);
    if (rng() % 3 == 0) {
      const char* from = devices[rng() % 3];
      auto got = h->receive(from, now);
      if (!got)
        _exit(17);
      if (*got && rng() % 4 != 0)
        if (!h->settle(from, *(*got)->lock_token, static_cast<disposition>(rng() % 3), now))
          _exit(18);
    }
  }
  _exit(0);
}

TEST(postgres_store, kill_9_at_any_instant_loses_no_acknowledged_send) {
  NEED_POSTGRES();
  for (std::uint32_t round = 0; round < 3; ++round) {
    const auto schema = fresh_schema("kill");
    { (void)open_store(schema); }  // the schema exists before the child starts
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      sending_child(server()->conninfo(), schema, fds[1], round + 1);
    }
    close(fds[1]);
    std::mt19937 rng(round);
    const std::size_t kill_after = 20 + rng() % 200;
    std::set<std::string> acked;
    std::string buffer;
    bool killed = false;
    char chunk[4096];
    for (;;) {
      const auto n = read(fds[0], chunk, sizeof chunk);
      if (n <= 0)
        break;
      buffer.append(chunk, static_cast<std::size_t>(n));
      std::size_t eol;
      while ((eol = buffer.find('\n')) != std::string::npos) {
        acked.insert(buffer.substr(0, eol));
        buffer.erase(0, eol + 1);
      }
      if (!killed && acked.size() >= kill_after) {
        kill(pid, SIGKILL);
        killed = true;
      }
    }
    close(fds[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the child ended by itself (exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1)
        << ")";

    // the successor waits out the dead child's lease (database clock, bounded)
    auto s = open_store(schema);
    std::optional<std::uint64_t> epoch;
    const auto deadline = std::chrono::steady_clock::now() + 15s;
    while (!epoch && std::chrono::steady_clock::now() < deadline) {
      auto c = s.claim(0, "successor", 30s);
      if (c)
        epoch = *c;
      else
        std::this_thread::sleep_for(50ms);
    }
    ASSERT_TRUE(epoch) << "the child's 500 ms lease did not expire within 15 s";
    EXPECT_EQ(*epoch, 2u);
    auto h = hub::open(s, seeded_token_source(999));
    ASSERT_TRUE(h) << h.error().message;
    const auto snap = h->snapshot();
    std::set<std::string> queued, reported;
    for (const auto& m : snap.messages) {
      auto p = detail::packed_message::from_bytes(m.content);
      ASSERT_TRUE(p);
      queued.insert(std::string(p->message_id().value_or("")));
    }
    for (const auto& r : snap.pending)
      reported.insert(r.record.original_message_id);
    for (const auto& b : snap.batches)
      for (const auto& r : b.records)
        reported.insert(r.original_message_id);
    for (const auto& id : acked)
      EXPECT_EQ(queued.count(id) + reported.count(id), 1u)
          << "round " << round << ": acknowledged send " << id << " is "
          << (queued.count(id) + reported.count(id) == 0 ? "lost" : "both queued and reported");
    EXPECT_GE(h->stats().accepted, acked.size());
  }
}

// --- the crash-and-reopen property against the model -------------------------------

/// A crash of a hub process on a `postgres_store`: what it committed is in the
/// database. Its successor opens a new connection, takes the partition over
/// (waiting out the lease, simulated by expiring it; or after a clean
/// release) with a bumped epoch, and checks that the dead one's connection,
/// were it a zombie, could commit nothing more.
class crashing_postgres {
 public:
  crashing_postgres(std::string schema, std::uint32_t partition)
      : schema_(std::move(schema)), partition_(partition) {
    store_.emplace(open_store(schema_, partition_, model_partitions));
    store_->claim(partition_, owner(), 60s).value();
  }

  /// Partitions of the model's schema: each property case uses a fresh one.
  static constexpr std::uint32_t model_partitions = 1000000;

  result<hub> open(const hub_config& c, token_source t) {
    if (opened_) {
      auto zombie = std::move(*store_);
      store_.reset();
      const auto old_epoch = zombie.epoch().value_or(0);
      ++generation_;
      auto s = postgres_store::open(options_for(schema_, partition_, model_partitions));
      if (!s)
        return s.error();
      if (generation_ % 2)
        expire_lease(schema_, partition_);
      else if (auto r = zombie.release(); !r)
        return r.error();
      auto epoch = s->claim(partition_, owner(), 60s);
      if (!epoch)
        return epoch.error();
      if (*epoch != old_epoch + 1)
        return make_error(errc::server_error, "the takeover's epoch is " + std::to_string(*epoch) +
                                                  ", not " + std::to_string(old_epoch + 1));
      if (auto z = zombie.apply({journal::device_added{"zombie", "1"}});
          z || !is_lease_lost(z.error()))
        return make_error(errc::server_error, "the dead owner could still commit");
      store_.emplace(std::move(*s));
    }
    opened_ = true;
    return hub::open(c, *store_, std::move(t));
  }
  result<journal::snapshot> load() { return store_->load(); }

 private:
  std::string owner() const { return "incarnation-" + std::to_string(generation_); }

  std::string schema_;
  std::uint32_t partition_;
  std::optional<postgres_store> store_;
  int generation_ = 0;
  bool opened_ = false;
};

const std::string& model_schema() {
  static const std::string s = fresh_schema("model");
  return s;
}
std::uint32_t next_model_partition() {
  static std::uint32_t n = 0;
  return n++ % crashing_postgres::model_partitions;
}

/// About one operation in 12 is a crash.
using step = model::gen::step<12>;

TEST(postgres_store_model, crash_and_reopen_is_invisible_postgres_store) {
  NEED_POSTGRES();
  EXPECT_TRUE(rc::check("crash and reopen is invisible (postgres_store)", [] {
    const hub_config cfg = model::gen::draw_config();
    const auto seed = *rc::gen::arbitrary<std::uint64_t>();
    RC_LOG() << model::describe(cfg) << '\n';
    crashing_postgres db(model_schema(), next_model_partition());
    model::durability d;
    d.open = [&db](const hub_config& c, token_source t) {
      return db.open(c, std::move(t));
    };
    d.load = [&db] {
      return db.load();
    };
    model::reference_hub initial(cfg);
    model::harness h(cfg, seed, std::move(d));
    const auto ops = *rc::gen::scale(
        1.5, rc::state::gen::commands(initial, rc::state::gen::execOneOfWithArgs<step>()));
    rc::state::runAll(ops, initial, h);
    RC_CLASSIFY(h.crashes() > 0, "crashed");
  }));
}

// A fixed sequence: a lock, an abandoned message, a record waiting for its
// batch and a locked feedback batch, each across a crash and a takeover.
TEST(postgres_store_model, fixed_sequence_survives_crashes) {
  NEED_POSTGRES();
  hub_config cfg;
  cfg.max_delivery_count = 2;
  cfg.lock_duration = std::chrono::seconds(5);
  cfg.feedback_batch_size = 2;
  crashing_postgres db(model_schema(), next_model_partition());
  model::durability d;
  d.open = [&db](const hub_config& c, token_source t) {
    return db.open(c, std::move(t));
  };
  d.load = [&db] {
    return db.load();
  };
  model::harness h(cfg, 7, std::move(d));
  auto run = [&](model::op o) {
    EXPECT_EQ(h.step(o), "");
  };
  model::op crash{model::op_kind::crash};
  run(model::op{model::op_kind::add_device});
  run(crash);
  model::op enq{model::op_kind::enqueue};
  enq.ack = ack_mode::full;
  enq.message_id = 1;
  run(enq);
  enq.id_number = 1;
  run(enq);
  run(model::op{model::op_kind::receive});
  run(crash);
  model::op complete{model::op_kind::settle};
  run(complete);
  run(model::op{model::op_kind::receive});
  model::op abandon{model::op_kind::settle};
  abandon.how = disposition::abandon;
  abandon.handle = 1;
  run(abandon);
  run(crash);
  run(model::op{model::op_kind::receive});
  abandon.handle = 2;
  run(abandon);
  run(crash);
  run(model::op{model::op_kind::receive_feedback});
  run(crash);
  model::op complete_fb{model::op_kind::complete_feedback};
  run(complete_fb);
  model::op tick{model::op_kind::tick};
  tick.delta_ms = 3 * 3600 * 1000;
  run(tick);
  run(crash);
  run(enq);
  EXPECT_EQ(h.crashes(), 6u);
  EXPECT_EQ(h.engine().stats().accepted, 3u);
  EXPECT_EQ(h.engine().stats().delivery_count_exceeded, 1u);
}

}  // namespace
