// Stateful property test of durability (SPEC 1.2): random sequences of hub
// operations on a hub opened on a store, with crashes at random points (drop
// the hub, reopen it from the store), against the reference model of
// tests/support/hub_model.hpp. A crash is invisible to the model: queues,
// locks (same tokens, same expiry), delivery counts, sequence numbers, pending
// feedback, feedback batches, statistics and the hub's clock all come back.
// After every operation the harness also checks that the store holds exactly
// the hub's state (`hub::snapshot()`), so a change the hub forgot to journal
// fails at the operation that made it, not at the next crash.
//
// Two stores: `memory_store`, and `sqlite_store` on a file where a crash
// copies the database and its WAL as they are (what kill -9 leaves) and
// reopens the copy. Runs 200 sequences each by default; RC_PARAMS overrides:
//   RC_PARAMS="max_success=2000" ./test_store_model
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <rapidcheck/state.h>

#include <cstdint>
#include <cstdlib>
#include <devicebound/store/sqlite.hpp>
#include <devicebound/store/store.hpp>
#include <filesystem>
#include <optional>
#include <string>

#include "support/hub_model.hpp"
#include "support/hub_model_gen.hpp"
#include "support/temp_dir.hpp"

namespace {

using namespace devicebound;
using model::reference_hub;
using model::gen::draw_config;

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

/// About one operation in 12 is a crash.
using step = model::gen::step<12>;

RC_GTEST_PROP(store_model, crash_and_reopen_is_invisible_memory_store, ()) {
  const hub_config cfg = draw_config();
  const auto seed = *rc::gen::arbitrary<std::uint64_t>();
  RC_LOG() << model::describe(cfg) << '\n';
  memory_store store;
  model::durability d;
  d.open = [&store](const hub_config& c, token_source t) {
    return hub::open(c, store, std::move(t));
  };
  d.load = [&store] {
    return store.load();
  };
  reference_hub initial(cfg);
  model::harness h(cfg, seed, std::move(d));
  const auto ops = *rc::gen::scale(
      5.0, rc::state::gen::commands(initial, rc::state::gen::execOneOfWithArgs<step>()));
  rc::state::runAll(ops, initial, h);
  RC_CLASSIFY(h.crashes() > 0, "crashed");
}

/// A crash of a process using a `sqlite_store`: the files as they are on disk
/// (the OS keeps what a killed process wrote), copied aside and reopened.
class crashing_sqlite {
 public:
  explicit crashing_sqlite(const test_support::temp_dir& dir) : dir_(dir) {
    store_.emplace(sqlite_store::open(file(0), options()).value());
  }

  result<hub> open(const hub_config& c, token_source t) {
    if (opened_) {
      // the hub is gone; copy the database and its WAL before the store closes
      // (closing would checkpoint: a crash does not)
      namespace fs = std::filesystem;
      const auto from = file(generation_), to = file(generation_ + 1);
      fs::copy_file(from, to);
      if (fs::exists(from + "-wal"))
        fs::copy_file(from + "-wal", to + "-wal");
      store_.reset();
      ++generation_;
      auto s = sqlite_store::open(to, options());
      if (!s)
        return s.error();
      store_.emplace(std::move(*s));
    }
    opened_ = true;
    return hub::open(c, *store_, std::move(t));
  }
  result<journal::snapshot> load() { return store_->load(); }

 private:
  static sqlite_options options() {
    sqlite_options o;
    o.sync =
        sqlite_sync::off;  // a killed process loses nothing the OS has: fsync is for power cuts
    return o;
  }
  std::string file(int generation) const {
    return dir_.file("hub-" + std::to_string(generation) + ".db");
  }

  const test_support::temp_dir& dir_;
  std::optional<sqlite_store> store_;
  int generation_ = 0;
  bool opened_ = false;
};

RC_GTEST_PROP(store_model, crash_and_reopen_is_invisible_sqlite_store, ()) {
  const hub_config cfg = draw_config();
  const auto seed = *rc::gen::arbitrary<std::uint64_t>();
  RC_LOG() << model::describe(cfg) << '\n';
  test_support::temp_dir dir("devicebound-store-model");
  crashing_sqlite files(dir);
  model::durability d;
  d.open = [&files](const hub_config& c, token_source t) {
    return files.open(c, std::move(t));
  };
  d.load = [&files] {
    return files.load();
  };
  reference_hub initial(cfg);
  model::harness h(cfg, seed, std::move(d));
  const auto ops = *rc::gen::scale(
      1.5, rc::state::gen::commands(initial, rc::state::gen::execOneOfWithArgs<step>()));
  rc::state::runAll(ops, initial, h);
  RC_CLASSIFY(h.crashes() > 0, "crashed");
}

// A fixed sequence: a lock, an abandoned message, a record waiting for its
// batch and a locked feedback batch, each across a crash.
TEST(store_model, fixed_sequence_survives_crashes) {
  hub_config cfg;
  cfg.max_delivery_count = 2;
  cfg.lock_duration = std::chrono::seconds(5);
  cfg.feedback_batch_size = 2;
  memory_store store;
  model::durability d;
  d.open = [&store](const hub_config& c, token_source t) {
    return hub::open(c, store, std::move(t));
  };
  d.load = [&store] {
    return store.load();
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
  run(crash);  // Invisible, lock restored
  model::op complete{model::op_kind::settle};
  run(complete);  // the token handed out before the crash still settles
  run(model::op{model::op_kind::receive});
  model::op abandon{model::op_kind::settle};
  abandon.how = disposition::abandon;
  abandon.handle = 1;
  run(abandon);
  run(crash);  // Enqueued again with delivery count 1
  run(model::op{model::op_kind::receive});
  abandon.handle = 2;
  run(abandon);  // DeliveryCountExceeded: its record waits 15 s for a batch
  run(crash);    // the pending record comes back
  run(model::op{model::op_kind::receive_feedback});
  run(crash);  // the batch stays locked
  model::op complete_fb{model::op_kind::complete_feedback};
  run(complete_fb);
  model::op tick{model::op_kind::tick};
  tick.delta_ms = 3 * 3600 * 1000;
  run(tick);  // the waiting record goes out in a second batch
  run(crash);
  run(enq);
  EXPECT_EQ(h.crashes(), 6u);
  EXPECT_EQ(h.engine().stats().accepted, 3u);
  EXPECT_EQ(h.engine().stats().delivery_count_exceeded, 1u);
}

}  // namespace
