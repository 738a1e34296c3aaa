// Partition ownership (cluster/ownership.hpp) on real lease rows: two controllers, each on its
// own PostgreSQL connection through cluster/postgres_leases.hpp, against a PostgreSQL 15 this
// binary starts (tests/support/postgres.hpp). Leases expire by the database's clock, so the
// controllers run on real time with short leases (ttl 1.5 s, renewed every 150 ms); each loop
// ticks when `next_tick_at()` says, as the daemon does, and is bounded by a deadline. Without
// the PostgreSQL server binaries the test skips (fails under DEVICEBOUND_REQUIRE_ALL=1).
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <devicebound/clock.hpp>
#include <devicebound/cluster/ownership.hpp>
#include <devicebound/cluster/postgres_leases.hpp>
#include <devicebound/store/postgres.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "support/postgres.hpp"
#include "support/required.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
namespace cl = devicebound::cluster;
using test_support::postgres_server;
using controller = cl::ownership_controller<cl::postgres_leases, system_clock>;
using kind = cl::ownership_event_kind;

constexpr std::uint32_t K = 4;

postgres_store open_store(const postgres_server& pg) {
  postgres_options o;
  o.conninfo = pg.conninfo();
  o.schema = "cluster_ownership";
  o.partition = 0;
  o.partitions = K;
  return postgres_store::open(o).value();
}

controller make(postgres_store& s, std::string owner) {
  cl::ownership_options o;
  o.owner = std::move(owner);
  o.partitions = K;
  o.ttl = 1500ms;
  o.renew_interval = 150ms;
  return controller::create(o, cl::postgres_leases(s), system_clock{}).value();
}

/// Ticks `cs` as their schedules say until `done()` or `limit` of real time; returns the
/// events per controller.
template <class Done>
std::vector<std::vector<cl::ownership_event>> run(std::vector<controller*> cs, Done done,
                                                  std::chrono::milliseconds limit) {
  std::vector<std::vector<cl::ownership_event>> out(cs.size());
  const system_clock clock;
  const time_point deadline = clock.now() + limit;
  std::mutex m;
  std::condition_variable_any cv;
  while (!done() && clock.now() < deadline) {
    time_point next = deadline;
    for (std::size_t i = 0; i < cs.size(); ++i) {
      if (cs[i]->next_tick_at() <= clock.now()) {
        auto es = cs[i]->tick().value();
        out[i].insert(out[i].end(), es.begin(), es.end());
      }
      next = std::min(next, cs[i]->next_tick_at());
    }
    std::unique_lock<std::mutex> lock(m);
    clock.wait_until(lock, cv, next);  // the tick schedule, not a synchronisation
  }
  return out;
}

}  // namespace

TEST(ClusterOwnershipPostgres, CrashZombieAndCleanShutdownOnRealLeaseRows) {
  if (auto missing = postgres_server::missing(); !missing.empty())
    DEVICEBOUND_MISSING_PART(missing);
  postgres_server pg;
  auto store_a = open_store(pg);
  auto store_b = open_store(pg);
  auto a = make(store_a, "host-a:1");
  auto b = make(store_b, "host-b:1");

  // A takes every partition; B stands by
  auto first = a.tick().value();
  ASSERT_EQ(first.size(), K);
  for (const auto& e : first) {
    EXPECT_EQ(e.kind, kind::claimed);
    EXPECT_EQ(e.epoch, 1u);
  }
  EXPECT_TRUE(b.tick().value().empty());
  // both keep ticking for a while (several ttls): A keeps them
  auto steady = run(
      {&a, &b}, [] { return false; }, 1500ms);
  EXPECT_TRUE(steady[0].empty());
  EXPECT_TRUE(steady[1].empty());
  EXPECT_EQ(a.held().size(), K);

  // A stops ticking (crash or SIGSTOP): B takes over once the rows expire by the database's clock
  auto takeover = run(
      {&b}, [&] { return b.held().size() == K; }, 10s);
  ASSERT_EQ(b.held().size(), K);
  EXPECT_EQ(takeover[0].size(), K);
  for (std::uint32_t k = 0; k < K; ++k) {
    EXPECT_EQ(b.epoch(k), std::optional<std::uint64_t>(2));
    auto row = store_b.lease(k).value();
    ASSERT_TRUE(row);
    EXPECT_EQ(row->owner, std::optional<std::string>("host-b:1"));
    EXPECT_TRUE(row->live);
  }

  // A resumes: a zombie. Its renewals are refused as lease lost, it says so, and claims nothing.
  auto zombie = a.tick().value();
  ASSERT_EQ(zombie.size(), K);
  for (const auto& e : zombie) {
    EXPECT_EQ(e.kind, kind::lost);
    ASSERT_TRUE(e.why);
    EXPECT_TRUE(is_lease_lost(*e.why)) << e.why->message;
  }
  auto after = run(
      {&a, &b}, [] { return false; }, 1000ms);
  EXPECT_TRUE(after[0].empty());
  EXPECT_TRUE(after[1].empty());
  EXPECT_TRUE(a.held().empty());

  // B shuts down cleanly: A claims at once, at the next epoch
  auto released = b.shutdown();
  ASSERT_EQ(released.size(), K);
  for (const auto& e : released) {
    EXPECT_EQ(e.kind, kind::released);
    EXPECT_FALSE(e.why);
  }
  auto reclaimed = a.tick().value();
  ASSERT_EQ(reclaimed.size(), K);
  for (const auto& e : reclaimed) {
    EXPECT_EQ(e.kind, kind::claimed);
    EXPECT_EQ(e.epoch, 3u);
  }
  EXPECT_EQ(a.shutdown().size(), K);
}
