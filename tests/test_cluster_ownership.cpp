// Partition ownership (cluster/ownership.hpp, docs/scale-out.md, "Partitions and ownership"):
// controllers of two or three hub instances share one in-memory lease table that keeps the
// rules of store/postgres.hpp's lease rows (claim only a free, released or expired lease and
// bump its epoch; renew only at the holder's epoch, reviving an expired lease nobody claimed;
// release at the holder's epoch) and a manual clock. Crashes are controllers that stop
// ticking (or are destroyed), zombies are controllers that stop ticking and resume.
//
// The property runs random interleavings of ticks, suspensions, resumptions, crashes,
// restarts and clean shutdowns of 3 instances and checks, at every lease call and after every
// tick, that no two instances believe they hold a partition with a valid lease, that a belief
// always matches the table's live row, that events alternate and epochs grow, that a tick's
// `lost` events precede its `claimed` ones, that an instance never suspended never loses a
// partition, and that every partition is owned within the documented bound once an instance
// has been live long enough.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <devicebound/clock.hpp>
#include <devicebound/cluster/ownership.hpp>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

using namespace devicebound;
using namespace std::chrono_literals;
namespace cl = devicebound::cluster;

namespace {

/// The lease rows, by the rules of store/postgres.hpp, timed by a manual clock.
struct fake_lease_table {
  struct row {
    std::optional<std::string> owner;  // nullopt once released
    std::uint64_t epoch = 0;
    time_point until{};
  };
  manual_clock clock;
  std::map<std::uint32_t, row> rows;
  /// Each call first advances the clock by this (the call reaches the table later
  /// than it was sent).
  duration latency{0};
  /// While set, every call fails as an unreachable database would (503001).
  bool down = false;
  /// Runs at the start of every call (the property's invariant checks).
  std::function<void()> on_call;
  std::size_t calls = 0;

  result<void> enter() {
    ++calls;
    if (on_call)
      on_call();
    clock.advance(latency);
    if (down)
      return make_error(errc::server_busy, "fake lease table: cannot connect");
    return {};
  }
  bool live(const row& r) const { return r.owner && clock.now() < r.until; }
  static error lost(std::uint32_t k, std::string_view what) {
    return make_error(errc::server_error,
                      "lease lost: " + std::string(what) + " partition " + std::to_string(k));
  }

  result<std::uint64_t> claim(std::uint32_t k, std::string_view owner, duration ttl) {
    if (auto r = enter(); !r)
      return r.error();
    row& r = rows[k];
    if (live(r))
      return make_error(errc::server_busy,
                        "partition " + std::to_string(k) + " is held by '" + *r.owner + "'");
    r.owner = std::string(owner);
    r.epoch += 1;
    r.until = clock.now() + ttl;
    return r.epoch;
  }
  result<void> renew(std::uint32_t k, std::string_view owner, std::uint64_t epoch, duration ttl) {
    if (auto r = enter(); !r)
      return r;
    auto it = rows.find(k);
    if (it == rows.end() || it->second.owner != owner || it->second.epoch != epoch)
      return lost(k, "cannot renew");
    it->second.until = clock.now() + ttl;
    return {};
  }
  result<void> release(std::uint32_t k, std::string_view owner, std::uint64_t epoch) {
    if (auto r = enter(); !r)
      return r;
    auto it = rows.find(k);
    if (it == rows.end() || it->second.owner != owner || it->second.epoch != epoch)
      return lost(k, "cannot release");
    it->second.owner.reset();
    return {};
  }
};

/// What a controller is given: a handle on the shared table.
struct fake_leases {
  fake_lease_table* table;
  result<std::uint64_t> claim(std::uint32_t k, std::string_view owner, duration ttl) {
    return table->claim(k, owner, ttl);
  }
  result<void> renew(std::uint32_t k, std::string_view owner, std::uint64_t epoch, duration ttl) {
    return table->renew(k, owner, epoch, ttl);
  }
  result<void> release(std::uint32_t k, std::string_view owner, std::uint64_t epoch) {
    return table->release(k, owner, epoch);
  }
  bool is_lease_lost(const error& e) const {
    return e.code == errc::server_error && e.message.find("lease lost") != std::string::npos;
  }
};
static_assert(cl::lease_table<fake_leases>);
static_assert(cl::time_source<manual_clock>);
static_assert(cl::time_source<system_clock>);

using controller = cl::ownership_controller<fake_leases, manual_clock>;
using kind = cl::ownership_event_kind;

cl::ownership_options options(std::string owner, std::uint32_t k,
                              std::optional<std::uint32_t> expected = std::nullopt) {
  cl::ownership_options o;
  o.owner = std::move(owner);
  o.partitions = k;
  o.expected_instances = expected;
  return o;
}

controller make(fake_lease_table& t, cl::ownership_options o) {
  return controller::create(std::move(o), fake_leases{&t}, t.clock).value();
}

std::vector<cl::ownership_event> tick(controller& c) {
  return c.tick().value();
}

std::vector<std::uint32_t> partitions_of(const std::vector<cl::ownership_event>& es, kind k) {
  std::vector<std::uint32_t> out;
  for (const auto& e : es)
    if (e.kind == k)
      out.push_back(e.partition);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::uint32_t> all(std::uint32_t k) {
  std::vector<std::uint32_t> out(k);
  for (std::uint32_t i = 0; i < k; ++i)
    out[i] = i;
  return out;
}

/// Ticks `cs` every renew_interval (1 s) until `t` (inclusive), collecting events per controller.
void tick_until(fake_lease_table& t, std::vector<controller*> cs, time_point until,
                std::vector<std::vector<cl::ownership_event>>* out = nullptr) {
  while (t.clock.now() < until) {
    t.clock.advance(std::min<duration>(1s, until - t.clock.now()));
    for (std::size_t i = 0; i < cs.size(); ++i) {
      auto es = tick(*cs[i]);
      if (out)
        out->at(i).insert(out->at(i).end(), es.begin(), es.end());
    }
  }
}

}  // namespace

TEST(ClusterOwnership, OptionsAreRangeChecked) {
  fake_lease_table t;
  auto refused = [&](cl::ownership_options o, std::string_view names) {
    auto c = controller::create(std::move(o), fake_leases{&t}, t.clock);
    ASSERT_FALSE(c.has_value());
    EXPECT_EQ(c.code(), errc::argument_invalid);
    EXPECT_NE(c.error().message.find(names), std::string::npos) << c.error().message;
  };
  EXPECT_TRUE(controller::create(options("a", 16), fake_leases{&t}, t.clock));
  refused(options("", 4), "owner name is empty");
  refused(options(std::string(201, 'x'), 4), "owner name is 201 bytes");
  refused(options("a", 0), "partition count is 0");
  refused(options("a", cl::max_partitions + 1), "partition count 1025");
  auto o = options("a", 4);
  o.renew_interval = 5ms;
  refused(o, "renew_interval 5 ms");
  o = options("a", 4);
  o.renew_interval = 61s;
  o.ttl = 200s;
  refused(o, "renew_interval 61000 ms");
  o = options("a", 4);
  o.ttl = 2s;  // not more than twice 1 s
  refused(o, "ttl 2000 ms must be more than twice renew_interval");
  o.ttl = 11min;
  refused(o, "ttl 660000 ms");
  refused(options("a", 4, 0), "expected_instances is 0");
  o = options("a", 4);
  o.overflow_after = 500ms;
  refused(o, "overflow_after 500 ms");
  o.ttl = 2001ms;
  o.overflow_after = 1s;
  EXPECT_TRUE(controller::create(o, fake_leases{&t}, t.clock));
  o.startup_grace = 999ms;  // less than renew_interval
  refused(o, "startup_grace 999 ms");
  o.startup_grace = 11min;
  refused(o, "startup_grace 660000 ms");
  o.startup_grace = 2s;
  EXPECT_TRUE(controller::create(o, fake_leases{&t}, t.clock));

  auto c = make(t, options("a", 4, 2));
  auto r = c.set_expected_instances(0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
  EXPECT_EQ(c.options().expected_instances, std::optional<std::uint32_t>(2));  // unchanged
}

TEST(ClusterOwnership, OneInstanceClaimsEveryPartitionAndRenewsEverySecond) {
  fake_lease_table t;
  auto a = make(t, options("a", 4));
  EXPECT_EQ(a.next_tick_at(), t.clock.now());
  auto es = tick(a);
  ASSERT_EQ(es.size(), 4u);
  EXPECT_EQ(partitions_of(es, kind::claimed), all(4));
  for (const auto& e : es) {
    EXPECT_EQ(e.epoch, 1u);
    EXPECT_FALSE(e.why);
  }
  const time_point t0 = t.clock.now();
  for (std::uint32_t k = 0; k < 4; ++k) {
    EXPECT_TRUE(a.owns(k));
    EXPECT_EQ(a.valid_until(k), t0 + 5s);
    EXPECT_EQ(t.rows[k].until, t0 + 5s);
  }
  EXPECT_EQ(a.next_tick_at(), t0 + 1s);

  // not due yet: no call
  const auto calls = t.calls;
  t.clock.advance(999ms);
  EXPECT_TRUE(tick(a).empty());
  EXPECT_EQ(t.calls, calls);
  t.clock.advance(1ms);
  EXPECT_TRUE(tick(a).empty());
  EXPECT_EQ(t.calls, calls + 4);
  for (std::uint32_t k = 0; k < 4; ++k) {
    EXPECT_EQ(t.rows[k].until, t0 + 6s);
    EXPECT_EQ(a.valid_until(k), t0 + 6s);
    EXPECT_EQ(a.epoch(k), std::optional<std::uint64_t>(1));
  }
  // an hour of ticks: held throughout, no events
  std::vector<std::vector<cl::ownership_event>> out(1);
  tick_until(t, {&a}, t.clock.now() + 1h, &out);
  EXPECT_TRUE(out[0].empty());
  EXPECT_EQ(a.held(), all(4));
}

TEST(ClusterOwnership, TwoExpectedInstancesSplitThePartitions) {
  fake_lease_table t;
  auto a = make(t, options("host-a:1", 8, 2));
  auto b = make(t, options("host-b:1", 8, 2));
  EXPECT_EQ(a.fair_share(), 4u);
  auto ea = tick(a);
  auto eb = tick(b);
  EXPECT_EQ(ea.size(), 4u);
  EXPECT_EQ(eb.size(), 4u);
  auto ha = a.held(), hb = b.held();
  std::vector<std::uint32_t> both;
  std::set_union(ha.begin(), ha.end(), hb.begin(), hb.end(), std::back_inserter(both));
  EXPECT_EQ(both, all(8));  // disjoint and complete
  // overflow rounds find nothing free
  std::vector<std::vector<cl::ownership_event>> out(2);
  tick_until(t, {&a, &b}, t.clock.now() + 30s, &out);
  EXPECT_TRUE(out[0].empty());
  EXPECT_TRUE(out[1].empty());
  EXPECT_EQ(a.held(), ha);
  EXPECT_EQ(b.held(), hb);
}

TEST(ClusterOwnership, WithoutAnExpectedCountTheFirstTakesAllAndTheSecondStandsBy) {
  fake_lease_table t;
  auto a = make(t, options("a", 8));
  auto b = make(t, options("b", 8));
  EXPECT_EQ(tick(a).size(), 8u);
  EXPECT_TRUE(tick(b).empty());
  EXPECT_TRUE(b.held().empty());
}

TEST(ClusterOwnership, AnExpectedPeerThatNeverStartsIsCoveredAfterOverflowAfter) {
  fake_lease_table t;
  auto a = make(t, options("a", 8, 2));
  const time_point t0 = t.clock.now();
  EXPECT_EQ(tick(a).size(), 4u);
  std::vector<std::vector<cl::ownership_event>> out(1);
  tick_until(t, {&a}, t0 + 4s, &out);
  EXPECT_TRUE(out[0].empty());
  EXPECT_EQ(a.held().size(), 4u);
  tick_until(t, {&a}, t0 + 5s, &out);  // overflow_after (5 s) after the first tick
  EXPECT_EQ(out[0].size(), 4u);
  EXPECT_EQ(a.held(), all(8));
}

TEST(ClusterOwnership, TheFirstOverflowRoundComesAfterTheStartupGraceThenEveryOverflowAfter) {
  fake_lease_table t;
  auto o = options("a", 8, 2);
  o.overflow_after = 1s;
  o.startup_grace = 3s;
  auto a = make(t, o);
  const time_point t0 = t.clock.now();
  EXPECT_EQ(tick(a).size(), 4u);
  std::vector<std::vector<cl::ownership_event>> out(1);
  tick_until(t, {&a}, t0 + 2900ms, &out);  // past overflow_after, within the grace
  EXPECT_TRUE(out[0].empty());
  EXPECT_EQ(a.held().size(), 4u);
  tick_until(t, {&a}, t0 + 3s, &out);  // the grace is over
  EXPECT_EQ(out[0].size(), 4u);
  EXPECT_EQ(a.held(), all(8));
}

// A crash: one instance stops ticking. The other takes its partitions once their leases run
// out, never before, within ttl + renew_interval (+ overflow_after with an expected count).
TEST(ClusterOwnership, ACrashedInstancesPartitionsAreTakenAfterTheirTtl) {
  for (std::optional<std::uint32_t> expected :
       {std::optional<std::uint32_t>(), std::optional<std::uint32_t>(2)}) {
    SCOPED_TRACE(expected ? "expected 2" : "no expected count");
    fake_lease_table t;
    auto a = make(t, options("a", 6, expected));
    auto b = make(t, options("b", 6, expected));
    tick(a);
    tick(b);
    const auto lost_by_a = a.held();
    ASSERT_FALSE(lost_by_a.empty());
    tick_until(t, {&a, &b}, t.clock.now() + 10s);  // both live, A renewing
    const time_point crash = t.clock.now();
    time_point until{};
    for (auto k : lost_by_a)
      until = std::max(until, t.rows[k].until);
    EXPECT_LE(until, crash + 5s);

    std::vector<std::vector<cl::ownership_event>> out(1);
    // B alone now; each second, check B takes none of A's while A's lease runs
    while (t.clock.now() < crash + 20s) {
      t.clock.advance(1s);
      auto es = tick(b);
      for (const auto& e : es) {
        ASSERT_EQ(e.kind, kind::claimed);
        EXPECT_GE(t.clock.now(), crash + 5s) << "claimed " << e.partition << " before the ttl";
        EXPECT_EQ(e.epoch, 2u);  // A's epoch 1, bumped
      }
      out[0].insert(out[0].end(), es.begin(), es.end());
      if (b.held().size() == 6)
        break;
    }
    EXPECT_EQ(partitions_of(out[0], kind::claimed), lost_by_a);
    EXPECT_EQ(b.held(), all(6));
    const auto bound = crash + 5s + 1s + (expected ? 5s : 0s);
    EXPECT_LE(t.clock.now(), bound);
    // A's stale beliefs ran out with its lease
    for (auto k : lost_by_a)
      EXPECT_FALSE(a.owns(k));
  }
}

// A zombie stops ticking past its ttl (SIGSTOP) and resumes after another instance took its
// partitions: its renewals are refused, it says `lost` for each of them before anything else,
// and it claims none of them while the other holds them.
TEST(ClusterOwnership, AZombieFindsItsRenewalsRefusedAndStepsDown) {
  fake_lease_table t;
  auto a = make(t, options("a", 4));
  auto b = make(t, options("b", 4));
  EXPECT_EQ(tick(a).size(), 4u);
  tick(b);
  const time_point stop = t.clock.now();
  std::vector<std::vector<cl::ownership_event>> out(1);
  tick_until(t, {&b}, stop + 8s, &out);  // A stopped, B takes over at ttl
  EXPECT_EQ(partitions_of(out[0], kind::claimed), all(4));
  for (std::uint32_t k = 0; k < 4; ++k) {
    EXPECT_EQ(a.state_of(k), cl::partition_state::held);  // A has not noticed ...
    EXPECT_FALSE(a.owns(k));                              // ... but believes nothing valid
    EXPECT_TRUE(b.owns(k));
  }

  auto es = tick(a);  // SIGCONT
  ASSERT_EQ(es.size(), 4u);
  for (const auto& e : es) {
    EXPECT_EQ(e.kind, kind::lost);
    EXPECT_EQ(e.epoch, 1u);
    ASSERT_TRUE(e.why);
    EXPECT_NE(e.why->message.find("lease lost"), std::string::npos);
  }
  EXPECT_TRUE(a.held().empty());
  std::vector<std::vector<cl::ownership_event>> later(2);
  tick_until(t, {&a, &b}, t.clock.now() + 30s, &later);
  EXPECT_TRUE(later[0].empty());  // never re-claims while B holds them
  EXPECT_TRUE(later[1].empty());
  EXPECT_EQ(b.held(), all(4));
}

// A zombie whose partitions were taken and then released (the other instance shut down),
// while others are free: in the tick it resumes in, it says `lost` for its own first (their
// epochs are gone), then claims free ones, but not those it just lost.
TEST(ClusterOwnership, AZombieSaysLostBeforeItClaimsAnything) {
  fake_lease_table t;
  auto a = make(t, options("a", 4, 2));  // share 2 of 4
  EXPECT_EQ(tick(a).size(), 2u);
  const auto mine = a.held();
  t.clock.advance(6s);  // A stopped past its ttl
  auto b = make(t, options("b", 4));
  EXPECT_EQ(tick(b).size(), 4u);
  EXPECT_EQ(b.shutdown().size(), 4u);
  auto es = tick(a);
  ASSERT_EQ(es.size(), 4u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(es[i].kind, kind::lost);
    EXPECT_EQ(es[i].epoch, 1u);
  }
  EXPECT_EQ(partitions_of(es, kind::lost), mine);
  for (std::size_t i = 2; i < 4; ++i) {
    EXPECT_EQ(es[i].kind, kind::claimed);
    EXPECT_EQ(es[i].epoch, 2u);  // 1 (b), 2 (a)
    EXPECT_EQ(std::count(mine.begin(), mine.end(), es[i].partition), 0);
  }
  // the next tick may take the ones it lost, now free, at newer epochs (an overflow round is
  // due: the first tick was more than overflow_after ago)
  auto next = tick(a);
  EXPECT_EQ(partitions_of(next, kind::claimed), mine);
  for (const auto& e : next)
    EXPECT_EQ(e.epoch, 3u);  // 1 (a), 2 (b), 3 (a again)
}

// A pause past the ttl that nobody used: the renewal revives the lease at the same epoch (no
// write can have happened under another), and the instance keeps its partitions.
TEST(ClusterOwnership, APauseNobodyUsedIsRenewedAtTheSameEpoch) {
  fake_lease_table t;
  auto a = make(t, options("a", 2));
  tick(a);
  t.clock.advance(9s);
  EXPECT_FALSE(a.owns(0));
  EXPECT_TRUE(tick(a).empty());
  EXPECT_TRUE(a.owns(0));
  EXPECT_EQ(a.epoch(0), std::optional<std::uint64_t>(1));
}

TEST(ClusterOwnership, ACleanShutdownLetsTheOtherClaimAtOnce) {
  fake_lease_table t;
  auto a = make(t, options("a", 5));
  auto b = make(t, options("b", 5));
  tick(a);
  EXPECT_TRUE(tick(b).empty());
  auto es = a.shutdown();
  ASSERT_EQ(es.size(), 5u);
  EXPECT_EQ(partitions_of(es, kind::released), all(5));
  for (const auto& e : es)
    EXPECT_FALSE(e.why);
  EXPECT_EQ(a.state(), cl::controller_state::stopped);
  EXPECT_TRUE(a.held().empty());
  EXPECT_EQ(a.next_tick_at(), time_point::max());
  auto eb = tick(b);  // same instant: no ttl to wait for
  EXPECT_EQ(partitions_of(eb, kind::claimed), all(5));
  for (const auto& e : eb)
    EXPECT_EQ(e.epoch, 2u);

  auto r = a.tick();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::invalid_operation);
  EXPECT_NE(r.error().message.find("after shutdown"), std::string::npos);
  EXPECT_TRUE(a.shutdown().empty());
  EXPECT_FALSE(a.report_lost(0, 1, make_error(errc::server_error, "x")));
}

TEST(ClusterOwnership, AShutdownWhoseReleaseFailsSaysSoAndTheLeaseEndsByItsTtl) {
  fake_lease_table t;
  auto a = make(t, options("a", 2));
  tick(a);
  t.down = true;
  auto es = a.shutdown();
  ASSERT_EQ(es.size(), 2u);
  for (const auto& e : es) {
    EXPECT_EQ(e.kind, kind::released);
    ASSERT_TRUE(e.why);
    EXPECT_NE(e.why->message.find("ends when its ttl runs out"), std::string::npos);
  }
  t.down = false;
  auto b = make(t, options("b", 2));
  EXPECT_TRUE(tick(b).empty());
  t.clock.advance(5s);
  EXPECT_EQ(tick(b).size(), 2u);
}

TEST(ClusterOwnership, AShutdownWhoseLeaseWasTakenSaysLostFirst) {
  fake_lease_table t;
  auto a = make(t, options("a", 2));
  tick(a);
  t.clock.advance(6s);
  auto b = make(t, options("b", 2));
  // B takes partition 1 only (its share of 2 with 2 expected, rotated to start at 1 or 0)
  ASSERT_TRUE(b.set_expected_instances(2));
  auto eb = tick(b);
  ASSERT_EQ(eb.size(), 1u);
  const auto taken = eb[0].partition;
  auto es = a.shutdown();  // A revives nothing: shutdown only releases
  ASSERT_EQ(es.size(), 2u);
  EXPECT_EQ(es[0].kind, kind::lost);
  EXPECT_EQ(es[0].partition, taken);
  EXPECT_EQ(es[1].kind, kind::released);
  EXPECT_EQ(es[1].partition, 1 - taken);
}

// A database outage shorter than the ttl costs nothing; one that outlasts the belief makes the
// instance step down when its lease runs out, naming why.
TEST(ClusterOwnership, RenewalFailuresAreRetriedUntilTheLeaseRunsOut) {
  fake_lease_table t;
  auto a = make(t, options("a", 2));
  tick(a);
  const time_point t0 = t.clock.now();
  t.down = true;
  std::vector<std::vector<cl::ownership_event>> out(1);
  tick_until(t, {&a}, t0 + 3s, &out);
  EXPECT_TRUE(out[0].empty());
  EXPECT_TRUE(a.owns(0));
  ASSERT_TRUE(a.last_error());
  EXPECT_EQ(a.last_error()->code, errc::server_busy);
  t.down = false;
  tick_until(t, {&a}, t0 + 4s, &out);
  EXPECT_TRUE(out[0].empty());
  EXPECT_EQ(a.valid_until(0), t0 + 4s + 5s);  // renewed at 4 s

  t.down = true;
  tick_until(t, {&a}, t0 + 8s, &out);
  EXPECT_TRUE(out[0].empty());  // valid until 9 s
  tick_until(t, {&a}, t0 + 9s, &out);
  ASSERT_EQ(out[0].size(), 2u);
  for (const auto& e : out[0]) {
    EXPECT_EQ(e.kind, kind::lost);
    ASSERT_TRUE(e.why);
    EXPECT_EQ(e.why->code, errc::server_busy);
    EXPECT_NE(e.why->message.find("ran out without a renewal"), std::string::npos);
  }
  EXPECT_TRUE(a.held().empty());
  t.down = false;
  out[0].clear();
  tick_until(t, {&a}, t0 + 10s, &out);  // the rows are expired, not taken: claimed again
  EXPECT_EQ(partitions_of(out[0], kind::claimed), all(2));
  for (const auto& e : out[0])
    EXPECT_EQ(e.epoch, 2u);
}

TEST(ClusterOwnership, ReportLostStepsDownOnlyAtThatEpoch) {
  fake_lease_table t;
  auto a = make(t, options("a", 3));
  tick(a);
  auto stale = a.report_lost(1, 7, make_error(errc::server_error, "lease lost: stale"));
  ASSERT_TRUE(stale);
  EXPECT_TRUE(stale->empty());
  EXPECT_TRUE(a.owns(1));
  auto es = a.report_lost(1, 1, make_error(errc::server_error, "lease lost: commit refused"));
  ASSERT_TRUE(es);
  ASSERT_EQ(es->size(), 1u);
  EXPECT_EQ((*es)[0],
            (cl::ownership_event{kind::lost, 1, 1,
                                 make_error(errc::server_error, "lease lost: commit refused")}));
  EXPECT_FALSE(a.owns(1));
  EXPECT_TRUE(a.report_lost(1, 1, make_error(errc::server_error, "again"))->empty());
  auto bad = a.report_lost(3, 1, make_error(errc::server_error, "x"));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.code(), errc::argument_invalid);
  EXPECT_NE(bad.error().message.find("partition 3 is out of range"), std::string::npos);
}

// The belief starts when the request was sent, the row's lease when it ran: a slow table makes
// the belief shorter, never longer.
TEST(ClusterOwnership, ABeliefNeverOutlastsTheRowUnderLatency) {
  fake_lease_table t;
  t.latency = 300ms;
  auto a = make(t, options("a", 3));
  const time_point sent = t.clock.now();
  EXPECT_EQ(tick(a).size(), 3u);
  for (std::uint32_t k = 0; k < 3; ++k) {
    EXPECT_GE(*a.valid_until(k), sent + 5s);
    EXPECT_EQ(*a.valid_until(k), t.rows[k].until - 300ms);  // sent 300 ms before it ran
  }
  std::vector<std::vector<cl::ownership_event>> out(1);
  tick_until(t, {&a}, t.clock.now() + 20s, &out);
  EXPECT_TRUE(out[0].empty());
  for (std::uint32_t k = 0; k < 3; ++k)
    EXPECT_LE(*a.valid_until(k), t.rows[k].until);
}

namespace {
/// A clock a test can set anywhere, backwards included.
struct settable_clock {
  std::shared_ptr<time_point> t = std::make_shared<time_point>(manual_clock::default_start);
  time_point now() const { return *t; }
};
}  // namespace

// A clock that steps back is read as standing still: no renewal becomes due early or late by
// it, and no belief is stretched.
TEST(ClusterOwnership, AClockThatStepsBackIsReadAsStandingStill) {
  fake_lease_table t;
  settable_clock c;
  auto a = cl::ownership_controller<fake_leases, settable_clock>::create(options("a", 2),
                                                                         fake_leases{&t}, c)
               .value();
  const time_point t0 = *c.t;
  EXPECT_EQ(a.tick().value().size(), 2u);
  const auto calls = t.calls;
  *c.t = t0 - 10s;
  EXPECT_TRUE(a.tick().value().empty());
  EXPECT_EQ(t.calls, calls);  // nothing due at the clamped time t0
  *c.t = t0 + 1s;
  EXPECT_TRUE(a.tick().value().empty());
  EXPECT_EQ(t.calls, calls + 2);  // renewed, as due
  EXPECT_EQ(a.valid_until(0), t0 + 1s + 5s);
}

TEST(ClusterOwnership, EventKindsHaveNames) {
  EXPECT_EQ(cl::to_string(kind::claimed), "claimed");
  EXPECT_EQ(cl::to_string(kind::lost), "lost");
  EXPECT_EQ(cl::to_string(kind::released), "released");
}

// --- the property ----------------------------------------------------------------------------
//
// Runs 1000 sequences by default (a few hundred milliseconds). RC_PARAMS overrides it, e.g.
//   RC_PARAMS="max_success=20000" ./test_cluster_ownership
//   RC_PARAMS="reproduce=..."      (the string rapidcheck prints on failure)

namespace {

// rapidcheck reads RC_PARAMS once, on first use, after static initialisation.
[[maybe_unused]] const bool default_max_success = [] {
  const char* given = std::getenv("RC_PARAMS");
  std::string params = given ? given : "";
  if (params.find("max_success") == std::string::npos) {
    params += params.empty() ? "max_success=1000" : " max_success=1000";
    ::setenv("RC_PARAMS", params.c_str(), 1);
  }
  return true;
}();

enum class act : std::uint8_t { advance, suspend, resume, crash, restart, shutdown };

struct step {
  act what = act::advance;
  std::uint32_t who = 0;  ///< instance 0..2 (for advance: the first to tick)
  duration by{};          ///< for advance: 1..1000 ms
};

struct instance {
  std::unique_ptr<controller> c;
  std::uint32_t generation = 0;
  bool suspended = false;
  bool ever_suspended = false;  ///< since this incarnation started
  std::optional<time_point> live_since;
  std::map<std::uint32_t, std::uint64_t> held;  ///< from its events: partition -> epoch
};

struct world {
  fake_lease_table table;
  std::uint32_t K = 1;
  std::optional<std::uint32_t> expected;
  duration overflow{5s};
  std::vector<instance> in = std::vector<instance>(3);
  std::vector<std::uint64_t> last_epoch;  ///< per partition, the last claimed epoch seen
  std::vector<time_point> last_owned;     ///< per partition, the last check that found it owned
  std::string failure;

  void fail(std::string why) {
    if (failure.empty())
      failure = std::move(why);
  }

  cl::ownership_options opts(std::uint32_t i) const {
    auto o = options("i" + std::to_string(i) + "/" + std::to_string(in[i].generation), K, expected);
    o.overflow_after = overflow;
    return o;
  }
  void start(std::uint32_t i) {
    in[i].generation += 1;
    in[i].c = std::make_unique<controller>(make(table, opts(i)));
    in[i].suspended = in[i].ever_suspended = false;
    in[i].live_since = table.clock.now();
    in[i].held.clear();
  }
  bool running(std::uint32_t i) const { return in[i].c && !in[i].suspended; }

  /// Safety at this instant, and the liveness clock.
  void check() {
    const time_point now = table.clock.now();
    for (std::uint32_t k = 0; k < K; ++k) {
      int owners = 0;
      for (std::uint32_t i = 0; i < 3; ++i) {
        if (!in[i].c || !in[i].c->owns(k, now))
          continue;
        ++owners;
        const auto& row = table.rows[k];
        if (row.owner != in[i].c->options().owner || row.epoch != *in[i].c->epoch(k) ||
            !(now < row.until))
          fail("instance " + std::to_string(i) + " believes it holds partition " +
               std::to_string(k) + " but the row is not its live lease");
      }
      if (owners > 1)
        fail(std::to_string(owners) + " instances believe they hold partition " +
             std::to_string(k));
      if (owners > 0)
        last_owned[k] = now;
    }
  }

  /// Every partition owned within the bound once an instance has been live that long.
  void check_liveness() {
    std::optional<time_point> live;
    for (std::uint32_t i = 0; i < 3; ++i)
      if (running(i) && (!live || *in[i].live_since < *live))
        live = in[i].live_since;
    if (!live)
      return;
    // ttl + renew_interval (+ overflow_after), plus one step of the schedule (ticks happen
    // at most 1 s apart) and the latency of the calls in it
    const duration bound = 5s + 1s + (expected ? overflow : 0s) + 1s + 500ms;
    const time_point now = table.clock.now();
    for (std::uint32_t k = 0; k < K; ++k)
      if (now - std::max(*live, last_owned[k]) > bound)
        fail("partition " + std::to_string(k) + " unowned for " +
             std::to_string((now - std::max(*live, last_owned[k])).count()) +
             " ms with an instance live");
  }

  void record(std::uint32_t i, const std::vector<cl::ownership_event>& es) {
    bool claimed_seen = false;
    for (const auto& e : es) {
      auto& mine = in[i].held;
      switch (e.kind) {
        case kind::claimed:
          claimed_seen = true;
          if (mine.count(e.partition))
            fail("claimed twice without a loss");
          if (e.epoch <= last_epoch[e.partition])
            fail("epoch of partition " + std::to_string(e.partition) + " did not grow");
          if (table.rows[e.partition].epoch != e.epoch)
            fail("claimed epoch is not the row's");
          last_epoch[e.partition] = e.epoch;
          mine[e.partition] = e.epoch;
          break;
        case kind::lost:
        case kind::released:
          if (e.kind == kind::lost && claimed_seen)
            fail("lost after claimed in one tick");
          if (e.kind == kind::lost && !in[i].ever_suspended)
            fail("instance " + std::to_string(i) + " never suspended lost partition " +
                 std::to_string(e.partition));
          if (!mine.count(e.partition) || mine[e.partition] != e.epoch)
            fail("lost or released a partition not held at that epoch");
          mine.erase(e.partition);
          break;
      }
    }
  }

  void run(const step& s) {
    auto& x = in[s.who];
    switch (s.what) {
      case act::advance:
        table.clock.advance(s.by);
        check();
        for (std::uint32_t j = 0; j < 3; ++j) {
          const std::uint32_t i = (s.who + j) % 3;
          if (!running(i))
            continue;
          auto es = in[i].c->tick();
          if (!es) {
            fail("tick refused: " + es.error().message);
            continue;
          }
          record(i, *es);
          check();
        }
        check_liveness();
        break;
      case act::suspend:
        if (running(s.who)) {
          x.suspended = x.ever_suspended = true;
          x.live_since.reset();
        }
        break;
      case act::resume:
        if (x.c && x.suspended) {
          x.suspended = false;
          x.live_since = table.clock.now();
        }
        break;
      case act::crash:
        x.c.reset();
        x.suspended = false;
        x.live_since.reset();
        x.held.clear();
        break;
      case act::restart:
        if (!x.c)
          start(s.who);
        break;
      case act::shutdown:
        if (running(s.who)) {
          record(s.who, x.c->shutdown());
          if (!x.held.empty())
            fail("shutdown left partitions held");
          check();
          x.c.reset();
          x.live_since.reset();
        }
        break;
    }
  }
};

rc::Gen<step> gen_step() {
  return rc::gen::apply(
      [](int what, std::uint32_t who, int ms) {
        step s;
        // advance most of the time
        s.what = what < 12 ? act::advance : static_cast<act>(what - 11);
        s.who = who;
        s.by = duration(ms);
        return s;
      },
      rc::gen::inRange(0, 17), rc::gen::inRange<std::uint32_t>(0, 3),
      // any step up to renew_interval, often one that lands on a lease's edge
      rc::gen::oneOf(rc::gen::inRange(1, 1001), rc::gen::elementOf(std::vector<int>{1, 5, 1000})));
}

}  // namespace

RC_GTEST_PROP(ClusterOwnershipProperty, NoTwoOwnersAndEveryPartitionOwnedInTime, ()) {
  world w;
  w.K = *rc::gen::inRange<std::uint32_t>(1, 13);
  const auto expected = *rc::gen::inRange<std::uint32_t>(0, 4);
  if (expected > 0)
    w.expected = expected;
  w.overflow = duration(*rc::gen::inRange(1000, 5001));
  w.table.latency = duration(*rc::gen::inRange(0, 6));
  w.last_epoch.assign(w.K, 0);
  w.last_owned.assign(w.K, w.table.clock.now());
  w.table.on_call = [&w] {
    w.check();
  };
  const auto starters = *rc::gen::inRange(1, 4);
  for (int i = 0; i < starters; ++i)
    w.start(static_cast<std::uint32_t>(i));
  const auto steps = *rc::gen::container<std::vector<step>>(gen_step());
  RC_CLASSIFY(steps.size() >= 50, "50+ steps");
  RC_CLASSIFY(w.expected.has_value(), "expected count");
  for (const auto& s : steps) {
    w.run(s);
    if (!w.failure.empty())
      RC_FAIL(w.failure);
  }
  // then every instance back and live for a while: all partitions owned, split if expected
  for (std::uint32_t i = 0; i < 3; ++i) {
    w.run({act::restart, i, {}});
    w.run({act::resume, i, {}});
  }
  for (int i = 0; i < 20; ++i)
    w.run({act::advance, static_cast<std::uint32_t>(i % 3), 1s});
  if (!w.failure.empty())
    RC_FAIL(w.failure);
  std::size_t held = 0;
  for (const auto& x : w.in)
    held += x.c->held().size();
  RC_ASSERT(held == w.K);
}
