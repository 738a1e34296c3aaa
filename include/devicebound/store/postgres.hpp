/// \file store/postgres.hpp
/// A `hub_store` on PostgreSQL (libpq), for partitioned hubs (docs/scale-out.md,
/// "The PostgreSQL store"). Link `devicebound::postgres` (libpq). Nothing else in
/// devicebound includes this header: SQLite (store/sqlite.hpp) stays the
/// embedded default.
///
/// One `postgres_store` is partition k of K of one hub: every row of the queues,
/// locks, feedback, counters and configuration carries the partition number,
/// and `load()` reads only partition k. The identity registry (device
/// identities and shared access policies) is hub-wide: the `identities` and
/// `policies` tables have no partition column, every instance reads all of
/// them, and `load()` / `load_identities()` return all of them.
///
/// Who may write partition k is decided by a lease row in `partition_lease`
/// (partition, owner, epoch, lease_until): `claim` takes a free or expired
/// lease and bumps its epoch, `renew` extends it, `release` gives it up. Every
/// `apply` is one transaction that first reads the lease row `FOR SHARE` and
/// refuses, changing nothing, unless this store's (owner, epoch) still holds
/// it: a zombie owner whose lease was taken over never commits again. Lease
/// expiry uses the database's clock (`now()`), so instances need no
/// synchronised clocks. Lease rows, not advisory locks: a hung instance keeps
/// a session's advisory lock for as long as its connection lives.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../errors.hpp"
#include "../hub_config.hpp"
#include "../journal.hpp"

namespace devicebound {

/// Settings of a `postgres_store`.
struct postgres_options {
  /// A libpq connection string (`host=127.0.0.1 port=5432 dbname=hub user=hub`)
  /// or URI (`postgresql://...`).
  std::string conninfo;
  /// The PostgreSQL schema that holds devicebound's tables (created if missing).
  /// Every instance of one hub names the same schema.
  std::string schema = "devicebound";
  /// This store is partition `partition` of `partitions` (0 <= partition < partitions).
  /// The first store opened on a schema records `partitions`; a store opened
  /// with another count is refused (devices would move between partitions).
  std::uint32_t partition = 0;
  std::uint32_t partitions = 1;
  /// The server ends this store's session when it stalls this long inside a
  /// transaction (`idle_in_transaction_session_timeout`). An instance that
  /// hangs in the middle of `apply` holds a share lock on its lease row, which
  /// would block a takeover for as long as it hangs; the server cuts it off
  /// instead, rolling its transaction back. Zero leaves the server's setting.
  std::chrono::milliseconds stalled_transaction_timeout{5000};
  /// How long a statement waits for a row lock (`lock_timeout`) before it fails
  /// with 503001. Zero waits for ever.
  std::chrono::milliseconds lock_timeout{10000};
};

/// A lease row as stored (`postgres_store::lease`).
struct partition_lease {
  std::uint32_t partition = 0;
  /// The holder, or nullopt once released.
  std::optional<std::string> owner;
  /// Bumped by every claim: a write under an older epoch is refused.
  std::uint64_t epoch = 0;
  /// Whether the lease is live now by the database's clock.
  bool live = false;
  /// Until the lease expires, by the database's clock (negative once expired).
  std::chrono::milliseconds remaining{0};
  friend bool operator==(const partition_lease&, const partition_lease&) = default;
};

/// The text every refusal for a lost lease contains. Such an error has code
/// 500001 (`errc::server_error`, like every store failure: the hub stops and
/// must be reopened); `is_lease_lost` tells it apart from other store failures,
/// also after the hub wrapped it in its own message.
inline constexpr std::string_view postgres_lease_lost_tag = "lease lost";

/// Whether `e` is a refusal because this instance no longer holds its
/// partition's lease (it must step down), rather than a database failure.
inline bool is_lease_lost(const error& e) {
  return e.code == errc::server_error &&
         e.message.find(postgres_lease_lost_tag) != std::string::npos;
}

namespace detail {

/// Parameters of one libpq statement: text for numbers and strings, binary for bytea.
class pg_params {
 public:
  pg_params& i64(std::int64_t v) { return text_owned(std::to_string(v)); }
  pg_params& u64(std::uint64_t v) { return i64(static_cast<std::int64_t>(v)); }
  pg_params& time(time_point t) { return i64(t.time_since_epoch().count()); }
  pg_params& time(std::optional<time_point> t) { return t ? time(*t) : null(); }
  pg_params& text(std::string_view v) { return text_owned(std::string(v)); }
  pg_params& bytes(std::string_view v) {
    storage_.emplace_back(v);
    values_.push_back(storage_.back().data());
    lengths_.push_back(static_cast<int>(v.size()));
    formats_.push_back(1);
    return *this;
  }
  /// A lock token: 16 bytes, or NULL for the nil token.
  pg_params& token(const lock_token& t) {
    if (t.is_nil())
      return null();
    return bytes(std::string_view(reinterpret_cast<const char*>(t.bytes.data()), 16));
  }
  pg_params& null() {
    values_.push_back(nullptr);
    lengths_.push_back(0);
    formats_.push_back(0);
    return *this;
  }

  int size() const noexcept { return static_cast<int>(values_.size()); }
  const char* const* values() const noexcept { return values_.data(); }
  const int* lengths() const noexcept { return lengths_.data(); }
  const int* formats() const noexcept { return formats_.data(); }

 private:
  pg_params& text_owned(std::string v) {
    storage_.push_back(std::move(v));
    values_.push_back(storage_.back().c_str());
    lengths_.push_back(0);
    formats_.push_back(0);
    return *this;
  }
  std::deque<std::string> storage_;  // stable addresses
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
};

/// A `PGresult`, cleared on destruction.
struct pg_result_free {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using pg_result = std::unique_ptr<PGresult, pg_result_free>;

struct pg_conn_close {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};

/// Reads typed columns of a binary-format result row; notes the first problem in `why`.
struct pg_reader {
  const PGresult* res;
  int row;
  std::string why;

  // PostgreSQL type oids (pg_type.dat): fixed since forever
  static constexpr Oid bool_oid = 16, bytea_oid = 17, int8_oid = 20, int2_oid = 21, int4_oid = 23,
                       text_oid = 25;

  bool is_null(int col) const { return PQgetisnull(res, row, col) != 0; }
  std::int64_t i64(int col, const char* name) {
    if (is_null(col)) {
      note(name, "is NULL");
      return 0;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(PQgetvalue(res, row, col));
    const int len = PQgetlength(res, row, col);
    const Oid type = PQftype(res, col);
    const int want = type == int8_oid ? 8 : type == int4_oid ? 4 : type == int2_oid ? 2 : 0;
    if (want == 0 || len != want) {
      note(name, "is not an integer");
      return 0;
    }
    std::uint64_t v = 0;
    for (int i = 0; i < len; ++i)
      v = (v << 8) | p[i];
    if (len < 8 && (p[0] & 0x80))  // sign-extend int2 / int4
      v |= ~std::uint64_t{0} << (8 * len);
    return static_cast<std::int64_t>(v);
  }
  std::uint64_t u64(int col, const char* name) {
    return static_cast<std::uint64_t>(i64(col, name));
  }
  std::uint32_t u32(int col, const char* name, std::int64_t max = 0xFFFFFFFF) {
    const auto v = i64(col, name);
    if (v < 0 || v > max)
      note(name, "is out of range");
    return static_cast<std::uint32_t>(v);
  }
  time_point time(int col, const char* name) { return time_point{duration{i64(col, name)}}; }
  bool boolean(int col, const char* name) {
    if (is_null(col) || PQftype(res, col) != bool_oid || PQgetlength(res, row, col) != 1) {
      note(name, "is not a boolean");
      return false;
    }
    return PQgetvalue(res, row, col)[0] != 0;
  }
  std::string raw(int col, const char* name, Oid type, const char* what) {
    if (is_null(col)) {
      note(name, "is NULL");
      return {};
    }
    if (PQftype(res, col) != type)
      note(name, what);
    return std::string(PQgetvalue(res, row, col),
                       static_cast<std::size_t>(PQgetlength(res, row, col)));
  }
  std::string text(int col, const char* name) { return raw(col, name, text_oid, "is not text"); }
  std::string bytes(int col, const char* name) { return raw(col, name, bytea_oid, "is not bytea"); }
  lock_token token(int col, const char* name) {
    lock_token t;
    if (is_null(col))
      return t;
    const auto b = bytes(col, name);
    if (b.size() != 16)
      note(name, "is not a 16-byte lock token");
    else
      std::memcpy(t.bytes.data(), b.data(), 16);
    return t;
  }
  message_state state(int col, const char* name) {
    const auto v = u32(col, name, 1);  // only Enqueued (0) and Invisible (1) are stored
    return v == 1 ? message_state::invisible : message_state::enqueued;
  }
  void note(const char* name, const char* what) {
    if (why.empty())
      why = std::string("column ") + name + " " + what;
  }
};

}  // namespace detail

/// Every schema version, oldest first: the SQL that takes a schema from
/// `to_version - 1` to `to_version`. Unqualified names: `open` runs them with
/// the store's schema as the search path. A new version appends one (never
/// edits a released one) and bumps `postgres_store::schema_version`.
struct postgres_migration {
  int to_version;
  const char* sql;
};
// clang-format off
inline constexpr postgres_migration postgres_migrations[] = {
  {1, R"sql(
    CREATE TABLE partition_lease (
      partition   integer PRIMARY KEY CHECK (partition >= 0),
      owner       text,
      epoch       bigint NOT NULL CHECK (epoch > 0),
      lease_until timestamptz NOT NULL
    );
    CREATE TABLE hub_config (
      partition                   integer PRIMARY KEY,
      name                        text NOT NULL,
      default_ttl_ms              bigint NOT NULL,
      expiry_over_cap             text NOT NULL,
      max_delivery_count          bigint NOT NULL,
      delivery_count              text NOT NULL,
      lock_duration_ms            bigint NOT NULL,
      max_queue_depth             bigint NOT NULL,
      max_message_size            bigint NOT NULL,
      feedback_ttl_ms             bigint NOT NULL,
      feedback_max_delivery_count bigint NOT NULL,
      feedback_lock_duration_ms   bigint NOT NULL,
      feedback_batch_size         bigint NOT NULL,
      feedback_batch_interval_ms  bigint NOT NULL,
      purge_feedback_for          text NOT NULL
    );
    CREATE TABLE hub_state (
      partition                integer PRIMARY KEY,
      last_sequence            bigint NOT NULL,
      last_now_ms              bigint NOT NULL,
      last_flush_ms            bigint,
      next_record_id           bigint NOT NULL,
      next_batch_id            bigint NOT NULL,
      accepted                 bigint NOT NULL,
      completed                bigint NOT NULL,
      rejected                 bigint NOT NULL,
      expired                  bigint NOT NULL,
      delivery_count_exceeded  bigint NOT NULL,
      purged                   bigint NOT NULL,
      removed_with_device      bigint NOT NULL,
      feedback_records         bigint NOT NULL,
      feedback_records_dropped bigint NOT NULL,
      feedback_batches         bigint NOT NULL,
      feedback_batches_dropped bigint NOT NULL
    );
    CREATE TABLE devices (
      partition     integer NOT NULL,
      id            text NOT NULL,
      generation_id text NOT NULL,
      PRIMARY KEY (partition, id)
    );
    CREATE TABLE messages (
      partition       integer NOT NULL,
      seq             bigint NOT NULL,
      device_id       text NOT NULL,
      content         bytea NOT NULL,
      enqueued_ms     bigint NOT NULL,
      expires_ms      bigint NOT NULL,
      ack             smallint NOT NULL CHECK (ack BETWEEN 0 AND 3),
      state           smallint NOT NULL CHECK (state IN (0, 1)),
      delivery_count  bigint NOT NULL,
      lock_token      bytea,
      locked_until_ms bigint NOT NULL,
      PRIMARY KEY (partition, seq)
    );
    CREATE INDEX messages_by_device ON messages (partition, device_id);
    CREATE TABLE feedback_batches (
      partition       integer NOT NULL,
      id              bigint NOT NULL,
      enqueued_ms     bigint NOT NULL,
      expires_ms      bigint NOT NULL,
      user_id         text NOT NULL,
      state           smallint NOT NULL CHECK (state IN (0, 1)),
      delivery_count  bigint NOT NULL,
      lock_token      bytea,
      locked_until_ms bigint NOT NULL,
      PRIMARY KEY (partition, id)
    );
    CREATE TABLE feedback_records (
      partition           integer NOT NULL,
      id                  bigint NOT NULL,
      batch_id            bigint,
      original_message_id text NOT NULL,
      at_ms               bigint NOT NULL,
      status              smallint NOT NULL CHECK (status BETWEEN 0 AND 4),
      description         text NOT NULL,
      device_id           text NOT NULL,
      generation_id       text NOT NULL,
      PRIMARY KEY (partition, id)
    );
    CREATE INDEX feedback_records_by_batch ON feedback_records (partition, batch_id, id);
    CREATE TABLE identities (
      device_id            text PRIMARY KEY,
      generation_id        text NOT NULL,
      version              bigint NOT NULL,
      status               text NOT NULL,
      status_reason        text NOT NULL,
      status_updated_ms    bigint NOT NULL,
      auth_type            text NOT NULL,
      primary_key          text NOT NULL,
      secondary_key        text NOT NULL,
      primary_thumbprint   text NOT NULL,
      secondary_thumbprint text NOT NULL,
      iot_edge             boolean NOT NULL
    );
    CREATE TABLE policies (
      name          text PRIMARY KEY,
      primary_key   text NOT NULL,
      secondary_key text NOT NULL,
      rights        integer NOT NULL
    );
  )sql"},
  // the registry's change counter: every statement that writes identities or
  // policies (devicebound's or anyone's) bumps it in the same transaction, so
  // an instance learns that its copy of the registry is stale by reading it.
  // One row per writing partition (the session's `devicebound.partition`, -1
  // for other writers): partitions whose transactions are open at once (one
  // instance's batch) never wait for each other on it. The counter is the sum.
  {2, R"sql(
    CREATE TABLE registry_version (
      partition integer PRIMARY KEY,
      version   bigint NOT NULL
    );
    CREATE FUNCTION bump_registry_version() RETURNS trigger LANGUAGE plpgsql
      SET search_path FROM CURRENT AS $$
    DECLARE
      p integer := coalesce(nullif(current_setting('devicebound.partition', true), ''), '-1')::integer;
    BEGIN
      INSERT INTO registry_version(partition, version) VALUES (p, 1)
        ON CONFLICT (partition) DO UPDATE SET version = registry_version.version + 1;
      RETURN NULL;
    END $$;
    CREATE TRIGGER identities_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON identities
      FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
    CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON policies
      FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
  )sql"},
};
// clang-format on

/// The PostgreSQL store: `hub_store` for partition k of K of a hub. Open it,
/// `claim` (or `adopt`) its partition's lease, then open the hub on it. The
/// store must outlive the hub and stay where it is (the hub keeps its address).
/// Single-threaded, like the hub: one connection, one operation at a time.
class postgres_store {
 public:
  /// The schema this build writes; `open` migrates older ones up to it.
  static constexpr int schema_version = 2;
  /// What `devicebound_schema.application` holds in a devicebound schema.
  static constexpr std::string_view application = "devicebound";

  /// Connects, creates or migrates the schema, and checks the partition count.
  /// Errors: 400004 a partition out of range or a count that differs from the
  /// stored one; 400005 a schema that is not devicebound's; 405001 a newer
  /// schema version; 503001 the server cannot be reached; 500001 any other failure.
  static result<postgres_store> open(postgres_options options) {
    postgres_store s;
    s.options_ = std::move(options);
    if (auto r = s.connect(); !r)
      return r.error();
    return s;
  }

  postgres_store(postgres_store&&) noexcept = default;
  postgres_store& operator=(postgres_store&&) noexcept = default;
  ~postgres_store() = default;

  const postgres_options& options() const noexcept { return options_; }
  std::uint32_t partition() const noexcept { return options_.partition; }
  /// The open connection (for inspection and tests).
  PGconn* handle() const noexcept { return conn_.get(); }
  /// Transactions committed by `apply` so far.
  std::uint64_t commits() const noexcept { return commits_; }

  // --- leases ----------------------------------------------------------------------

  /// Takes the lease of `partition` for `owner` for `ttl` (by the database's
  /// clock) if it is free (never claimed, or released) or expired, and bumps
  /// its epoch; returns the new epoch. A lease someone holds, `owner` itself
  /// included, is refused with 503001 naming the holder, its epoch and how long
  /// it still runs. Claiming this store's own partition makes the store write
  /// under that (owner, epoch) from now on.
  result<std::uint64_t> claim(std::uint32_t partition, std::string_view owner,
                              std::chrono::milliseconds ttl) {
    if (auto r = check_lease_args(partition, owner, ttl); !r)
      return r.error();
    // A live lease is refused from a plain read: probing a held partition must
    // not take its row lock, which would make the holder's writes wait.
    auto before = lease(partition);
    if (!before)
      return before.error();
    if (*before && (*before)->owner && (*before)->live)
      return held_by(partition, **before, owner);
    auto res = exec("claim", detail::pg_params().i64(partition).text(owner).i64(ttl.count()),
                    "claiming the lease of partition " + std::to_string(partition));
    if (!res)
      return res.error();
    if (PQntuples(res->get()) != 1) {  // claimed by another since the read
      auto held = lease(partition);
      if (!held)
        return held.error();
      if (!*held)
        return make_error(errc::server_busy, where() + "partition " + std::to_string(partition) +
                                                 " is taken: not claimed for '" +
                                                 std::string(owner) + "'");
      return held_by(partition, **held, owner);
    }
    detail::pg_reader rd{res->get(), 0, {}};
    const auto epoch = rd.u64(0, "epoch");
    if (!rd.why.empty())
      return malformed("partition_lease", rd.why);
    if (partition == options_.partition)
      fence_ = fence{std::string(owner), epoch};
    return epoch;
  }

  /// Extends the lease `owner` holds at `epoch` to `ttl` from now (database
  /// clock). Also revives a lease that expired but nobody claimed since (the
  /// epoch is unchanged, so nothing else wrote). A lease claimed by another
  /// since, or released, is refused: a lease-lost error (`is_lease_lost`).
  result<void> renew(std::uint32_t partition, std::string_view owner, std::uint64_t epoch,
                     std::chrono::milliseconds ttl) {
    if (auto r = check_lease_args(partition, owner, ttl); !r)
      return r.error();
    auto res =
        exec("renew", detail::pg_params().i64(partition).text(owner).u64(epoch).i64(ttl.count()),
             "renewing the lease of partition " + std::to_string(partition));
    if (!res)
      return res.error();
    if (PQntuples(res->get()) != 1)
      return lost(partition, owner, epoch, "cannot renew");
    return {};
  }
  /// `renew` for this store's own lease.
  result<void> renew(std::chrono::milliseconds ttl) {
    if (!fence_)
      return no_lease("renew");
    return renew(options_.partition, fence_->owner, fence_->epoch, ttl);
  }

  /// Gives the lease up at once (clean shutdown): the partition is free for
  /// the next claim, which bumps the epoch. Refused (lease lost) unless `owner`
  /// still holds it at `epoch`. Releasing this store's own lease ends its writes.
  result<void> release(std::uint32_t partition, std::string_view owner, std::uint64_t epoch) {
    auto res = exec("release", detail::pg_params().i64(partition).text(owner).u64(epoch),
                    "releasing the lease of partition " + std::to_string(partition));
    if (!res)
      return res.error();
    if (PQntuples(res->get()) != 1)
      return lost(partition, owner, epoch, "cannot release");
    if (fence_ && partition == options_.partition && fence_->owner == owner &&
        fence_->epoch == epoch)
      fence_.reset();
    return {};
  }
  /// `release` for this store's own lease.
  result<void> release() {
    if (!fence_)
      return no_lease("release");
    return release(options_.partition, fence_->owner, fence_->epoch);
  }

  /// The lease row of `partition` now, or nullopt if it was never claimed.
  result<std::optional<partition_lease>> lease(std::uint32_t partition) {
    auto res = exec("lease_of", detail::pg_params().i64(partition),
                    "reading the lease of partition " + std::to_string(partition));
    if (!res)
      return res.error();
    if (PQntuples(res->get()) == 0)
      return std::optional<partition_lease>();
    detail::pg_reader rd{res->get(), 0, {}};
    partition_lease l;
    l.partition = partition;
    if (!rd.is_null(0))
      l.owner = rd.text(0, "owner");
    l.epoch = rd.u64(1, "epoch");
    l.live = rd.boolean(2, "live");
    l.remaining = std::chrono::milliseconds(rd.i64(3, "remaining"));
    if (!rd.why.empty())
      return malformed("partition_lease", rd.why);
    return std::optional<partition_lease>(std::move(l));
  }

  /// Makes this store write under (`owner`, `epoch`): a lease of its partition
  /// claimed on another connection (an instance's lease manager). Checks
  /// nothing here: every `apply` checks it.
  void adopt(std::string owner, std::uint64_t epoch) { fence_ = fence{std::move(owner), epoch}; }
  /// The epoch this store writes under, if any.
  std::optional<std::uint64_t> epoch() const noexcept {
    return fence_ ? std::optional<std::uint64_t>(fence_->epoch) : std::nullopt;
  }
  /// Whether an `apply` or `renew` of this store's own lease was refused
  /// because the lease is gone: this instance must step down.
  bool lease_lost() const noexcept { return lease_lost_; }

  // --- hub_store -------------------------------------------------------------------

  /// Applies one change set as one transaction that first checks, with the
  /// lease row read `FOR SHARE` (a concurrent claim waits for this
  /// transaction), that this store's owner still holds its partition at its
  /// epoch. All of it or nothing: a change that does not fit the stored rows
  /// is refused with 500001 naming it; a lost lease is refused with 500001
  /// that `is_lease_lost` recognises. Inside a commit group, one savepoint of
  /// the group's transaction instead (the lease was checked at `begin_group`).
  result<void> apply(const journal::change_set& changes) {
    if (!conn_)
      return make_error(errc::server_error, where() + "is closed");
    if (!fence_)
      return no_lease("apply a change set");
    if (in_group_) {
      if (auto r = command("savepoint", detail::pg_params(), "starting a savepoint"); !r)
        return r;
    } else if (auto r = begin_checked("refused a change set"); !r) {
      return r;
    }
    for (const auto& c : changes) {
      if (auto r = std::visit([this](const auto& x) { return write(x); }, c); !r) {
        if (in_group_)
          (void)exec_sql("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op", "rolling back");
        else
          rollback();
        return make_error(errc::server_error,
                          where() + "applying " + journal::name_of(c) + ": " + r.error().message);
      }
    }
    if (in_group_)
      return command("release_savepoint", detail::pg_params(), "releasing a savepoint");
    if (auto r = command("commit", detail::pg_params(), "committing"); !r) {
      rollback();
      return r;
    }
    ++commits_;
    return {};
  }

  /// Grouped commits, as `sqlite_store` has them: from `begin_group` to
  /// `commit_group`, change sets share one transaction and one commit. The
  /// lease is checked once, at `begin_group`, and its row stays share-locked
  /// until the group ends, so no takeover can come between. An operation made
  /// inside a group is not durable until `commit_group` succeeds: its caller
  /// must not acknowledge it before then. If `commit_group` fails, nothing of
  /// the group is stored: reopen the hub.
  result<void> begin_group() {
    if (in_group_)
      return make_error(errc::invalid_operation, "a commit group is already open");
    if (!conn_)
      return make_error(errc::server_error, where() + "is closed");
    if (!fence_)
      return no_lease("begin a commit group");
    if (auto r = begin_checked("cannot begin a commit group"); !r)
      return r;
    in_group_ = true;
    return {};
  }
  result<void> commit_group() {
    if (!in_group_)
      return make_error(errc::invalid_operation, "no commit group is open");
    in_group_ = false;
    if (auto r = command("commit", detail::pg_params(), "committing a group"); !r) {
      rollback();
      return r;
    }
    ++commits_;
    return {};
  }
  bool in_group() const noexcept { return in_group_; }

  /// Reads this partition's state and the hub-wide identity registry. Values
  /// that cannot be what devicebound wrote give 400005 naming the table and row.
  result<journal::snapshot> load() {
    if (!conn_)
      return make_error(errc::server_error, where() + "is closed");
    journal::snapshot s;
    if (in_group_) {  // inside the group's transaction: what the group wrote so far
      if (auto r = load_all(s); !r)
        return r.error();
      return s;
    }
    // one read-only snapshot of the database for all the tables
    if (auto r = command("begin_read", detail::pg_params(), "starting a read"); !r)
      return r.error();
    auto r = load_all(s);
    rollback();
    if (!r)
      return r.error();
    return s;
  }

  /// Reads only the identity registry (identities and policies, hub-wide).
  result<journal::snapshot> load_identities() {
    if (!conn_)
      return make_error(errc::server_error, where() + "is closed");
    journal::snapshot s;
    if (in_group_) {
      if (auto r = load_registry(s); !r)
        return r.error();
      return s;
    }
    if (auto r = command("begin_read", detail::pg_params(), "starting a read"); !r)
      return r.error();
    auto r = load_registry(s);
    rollback();
    if (!r)
      return r.error();
    return s;
  }

  /// The registry's change counter: it moves with every committed write of an
  /// identity or a policy, by any instance (a trigger bumps it in the writing
  /// transaction). Reading it is one row; an instance that keeps the registry
  /// in memory reloads it (`load_identities`) when the counter moved.
  result<std::uint64_t> registry_version() {
    if (!conn_)
      return make_error(errc::server_error, where() + "is closed");
    auto res = exec_sql("SELECT coalesce(sum(version), 0) FROM registry_version",
                        "reading the registry version");
    if (!res)
      return res.error();
    if (PQntuples(res->get()) != 1)
      return make_error(errc::malformed, where() + "the registry version has no value");
    return static_cast<std::uint64_t>(std::strtoull(PQgetvalue(res->get(), 0, 0), nullptr, 10));
  }

  /// The schema version stored in the schema.
  result<int> stored_schema_version() {
    auto res = exec_sql("SELECT version FROM devicebound_schema", "reading the schema version");
    if (!res)
      return res.error();
    if (PQntuples(res->get()) != 1)
      return make_error(errc::malformed, where() + "devicebound_schema has no row");
    return std::atoi(PQgetvalue(res->get(), 0, 0));
  }

 private:
  struct fence {
    std::string owner;
    std::uint64_t epoch = 0;
  };

  postgres_store() = default;

  std::string where() const {
    return "postgres store (schema " + options_.schema + ", partition " +
           std::to_string(options_.partition) + " of " + std::to_string(options_.partitions) +
           "): ";
  }
  error malformed(const char* table, const std::string& why) const {
    return make_error(errc::malformed,
                      where() + "table " + table + ": " + why +
                          " (not what devicebound writes: the database was edited)");
  }
  error no_lease(const char* what) {
    return make_error(errc::server_error,
                      where() + std::string(postgres_lease_lost_tag) + ": cannot " + what +
                          " without a lease of the partition (claim or adopt one first)");
  }
  static std::string describe(const partition_lease& l) {
    if (!l.owner)
      return "free (released at epoch " + std::to_string(l.epoch) + ")";
    return std::string(l.live ? "held" : "expired, last held") + " by '" + *l.owner + "' (epoch " +
           std::to_string(l.epoch) + ", " +
           (l.live ? "for another " + std::to_string(l.remaining.count()) + " ms"
                   : "expired " + std::to_string(-l.remaining.count()) + " ms ago") +
           ")";
  }
  /// Starts a transaction and checks, holding the lease row FOR SHARE until
  /// the transaction ends, that this store's (owner, epoch) still holds its
  /// partition; otherwise rolls back and refuses (lease lost).
  result<void> begin_checked(const char* what) {
    if (auto r = command("begin", detail::pg_params(), "starting a transaction"); !r)
      return r;
    auto res =
        exec("check_epoch", detail::pg_params().i64(options_.partition), "checking the lease");
    if (!res) {
      rollback();
      return res.error();
    }
    if (PQntuples(res->get()) == 1) {
      detail::pg_reader rd{res->get(), 0, {}};
      std::optional<std::string> owner;
      if (!rd.is_null(0))
        owner = rd.text(0, "owner");
      const auto epoch = rd.u64(1, "epoch");
      if (owner == fence_->owner && epoch == fence_->epoch && rd.why.empty())
        return {};
    }
    rollback();
    return lost(options_.partition, fence_->owner, fence_->epoch, what);
  }
  error held_by(std::uint32_t partition, const partition_lease& l, std::string_view owner) const {
    return make_error(errc::server_busy, where() + "partition " + std::to_string(partition) +
                                             " is " + describe(l) + ": not claimed for '" +
                                             std::string(owner) + "'");
  }
  /// A lease-lost refusal naming who holds the partition now.
  error lost(std::uint32_t partition, std::string_view owner, std::uint64_t epoch,
             const char* what) {
    if (partition == options_.partition && fence_ && fence_->owner == owner &&
        fence_->epoch == epoch)
      lease_lost_ = true;
    std::string now = "never claimed";
    if (auto l = lease(partition); l && *l)
      now = describe(**l);
    else if (!l)
      now = "unknown (" + l.error().message + ")";
    return make_error(errc::server_error, where() + std::string(postgres_lease_lost_tag) + ": " +
                                              what + ": '" + std::string(owner) +
                                              "' no longer holds partition " +
                                              std::to_string(partition) + " at epoch " +
                                              std::to_string(epoch) + "; it is now " + now);
  }
  result<void> check_lease_args(std::uint32_t partition, std::string_view owner,
                                std::chrono::milliseconds ttl) const {
    if (partition >= options_.partitions)
      return make_error(errc::argument_invalid, where() + "partition " + std::to_string(partition) +
                                                    " is out of range (0.." +
                                                    std::to_string(options_.partitions - 1) + ")");
    if (owner.empty())
      return make_error(errc::argument_invalid, where() + "a lease owner must have a name");
    if (ttl <= std::chrono::milliseconds::zero())
      return make_error(errc::argument_invalid, where() +
                                                    "a lease needs a positive time to live, not " +
                                                    std::to_string(ttl.count()) + " ms");
    return {};
  }

  // --- connecting ------------------------------------------------------------------

  result<void> connect() {
    if (options_.partitions == 0 || options_.partition >= options_.partitions)
      return make_error(errc::argument_invalid,
                        where() + "the partition must be below the partition count");
    if (options_.schema.empty())
      return make_error(errc::argument_invalid, where() + "the schema must have a name");
    conn_.reset(PQconnectdb(options_.conninfo.c_str()));
    if (!conn_)
      return make_error(errc::server_error, where() + "out of memory connecting");
    if (PQstatus(conn_.get()) != CONNECTION_OK) {
      auto e = make_error(errc::server_busy,
                          where() + "cannot connect: " + trimmed(PQerrorMessage(conn_.get())));
      conn_.reset();
      return e;
    }
    // NOTICEs (CREATE ... IF NOT EXISTS) are not errors: keep them off stderr
    PQsetNoticeProcessor(
        conn_.get(), [](void*, const char*) {}, nullptr);
    std::unique_ptr<char, decltype(&PQfreemem)> quoted(
        PQescapeIdentifier(conn_.get(), options_.schema.data(), options_.schema.size()),
        &PQfreemem);
    if (!quoted)
      return make_error(errc::argument_invalid, where() + "the schema name cannot be quoted: " +
                                                    trimmed(PQerrorMessage(conn_.get())));
    schema_quoted_ = quoted.get();
    if (options_.stalled_transaction_timeout.count() < 0 || options_.lock_timeout.count() < 0)
      return make_error(errc::argument_invalid, where() + "a timeout cannot be negative");
    std::string setup = "SET client_min_messages = warning; SET search_path TO " + schema_quoted_ +
                        "; SET TIME ZONE 'UTC'; SET devicebound.partition = '" +
                        std::to_string(options_.partition) +
                        "'; SET lock_timeout = " + std::to_string(options_.lock_timeout.count());
    if (options_.stalled_transaction_timeout.count() > 0)
      setup += "; SET idle_in_transaction_session_timeout = " +
               std::to_string(options_.stalled_transaction_timeout.count());
    if (auto r = exec_sql(setup.c_str(), "setting up the session"); !r)
      return r.error();
    if (auto r = migrate(); !r)
      return r;
    return prepare_all();
  }

  /// Creates the schema or brings it to `schema_version`, in one transaction
  /// that several instances starting at once serialise on (a transaction-scoped
  /// advisory lock, released at commit: not a lease).
  result<void> migrate() {
    const std::string begin =
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('devicebound schema ' || " +
        literal(options_.schema) + ")); CREATE SCHEMA IF NOT EXISTS " + schema_quoted_ +
        "; CREATE TABLE IF NOT EXISTS devicebound_schema (id integer PRIMARY KEY CHECK (id = "
        "1), application text NOT NULL, version integer NOT NULL, partitions integer NOT NULL)";
    if (auto r = exec_sql(begin.c_str(), "creating the schema"); !r) {
      rollback();
      return r.error();
    }
    auto res = exec_sql("SELECT application, version, partitions FROM devicebound_schema",
                        "reading the schema version");
    if (!res) {
      rollback();
      return res.error();
    }
    int version = 0;
    if (PQntuples(res->get()) == 1) {
      const std::string app = PQgetvalue(res->get(), 0, 0);
      version = std::atoi(PQgetvalue(res->get(), 0, 1));
      const long stored_partitions = std::atol(PQgetvalue(res->get(), 0, 2));
      std::optional<error> refuse;
      if (app != application)
        refuse = make_error(errc::malformed, where() + "schema '" + options_.schema +
                                                 "' is not a devicebound store (application '" +
                                                 app + "')");
      else if (version > schema_version)
        refuse =
            make_error(errc::not_supported, where() + "schema version " + std::to_string(version) +
                                                " is newer than this devicebound understands (" +
                                                std::to_string(schema_version) + ")");
      else if (stored_partitions != static_cast<long>(options_.partitions))
        refuse = make_error(errc::argument_invalid,
                            where() + "the hub has " + std::to_string(stored_partitions) +
                                " partitions, not " + std::to_string(options_.partitions) +
                                " (changing the count would move devices between partitions)");
      if (refuse) {
        rollback();
        return *refuse;
      }
    } else {
      // a fresh schema: refuse one that already holds tables of someone else
      auto tables = exec_sql(("SELECT count(*) FROM pg_tables WHERE schemaname = " +
                              literal(options_.schema) + " AND tablename <> 'devicebound_schema'")
                                 .c_str(),
                             "reading the schema");
      if (!tables) {
        rollback();
        return tables.error();
      }
      if (std::atol(PQgetvalue(tables->get(), 0, 0)) != 0) {
        rollback();
        return make_error(errc::malformed, where() + "schema '" + options_.schema +
                                               "' holds tables but is not a devicebound store");
      }
    }
    for (const auto& m : postgres_migrations) {
      if (m.to_version <= version)
        continue;
      if (auto r =
              exec_sql(m.sql, "migrating the schema to version " + std::to_string(m.to_version));
          !r) {
        rollback();
        return r.error();
      }
    }
    const std::string tag =
        "INSERT INTO devicebound_schema(id, application, version, partitions) "
        "VALUES (1, " +
        literal(std::string(application)) + ", " + std::to_string(schema_version) + ", " +
        std::to_string(options_.partitions) +
        ") ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version; COMMIT";
    if (auto r = exec_sql(tag.c_str(), "migrating the schema"); !r) {
      rollback();
      return r.error();
    }
    return {};
  }

  std::string literal(const std::string& s) const {
    std::unique_ptr<char, decltype(&PQfreemem)> q(PQescapeLiteral(conn_.get(), s.data(), s.size()),
                                                  &PQfreemem);
    return q ? std::string(q.get()) : std::string("''");
  }

  result<void> prepare_all() {
    struct item {
      const char* name;
      const char* sql;
    };
    // $1 is the partition wherever a statement touches partitioned rows
    static constexpr item items[] = {
        {"begin", "BEGIN"},
        {"begin_read", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"},
        {"commit", "COMMIT"},
        {"savepoint", "SAVEPOINT op"},
        {"release_savepoint", "RELEASE SAVEPOINT op"},
        {"claim",
         "INSERT INTO partition_lease AS l (partition, owner, epoch, lease_until) "
         "VALUES ($1, $2, 1, now() + $3::bigint * interval '1 millisecond') "
         "ON CONFLICT (partition) DO UPDATE SET owner = EXCLUDED.owner, epoch = l.epoch + 1, "
         "lease_until = EXCLUDED.lease_until WHERE l.owner IS NULL OR l.lease_until <= now() "
         "RETURNING l.epoch"},
        {"renew",
         "UPDATE partition_lease SET lease_until = now() + $4::bigint * interval '1 millisecond' "
         "WHERE partition = $1 AND owner = $2 AND epoch = $3 RETURNING epoch"},
        {"release",
         "UPDATE partition_lease SET owner = NULL, lease_until = now() "
         "WHERE partition = $1 AND owner = $2 AND epoch = $3 RETURNING epoch"},
        {"lease_of",
         "SELECT owner, epoch, lease_until > now(), "
         "(extract(epoch FROM lease_until - now()) * 1000)::bigint "
         "FROM partition_lease WHERE partition = $1"},
        {"check_epoch", "SELECT owner, epoch FROM partition_lease WHERE partition = $1 FOR SHARE"},
        {"device_insert", "INSERT INTO devices(partition, id, generation_id) VALUES ($1, $2, $3)"},
        {"device_delete", "DELETE FROM devices WHERE partition = $1 AND id = $2"},
        {"device_messages_delete", "DELETE FROM messages WHERE partition = $1 AND device_id = $2"},
        {"device_records_delete",
         "DELETE FROM feedback_records WHERE partition = $1 AND batch_id IS NULL AND device_id = "
         "$2"},
        {"message_insert",
         "INSERT INTO messages(partition, seq, device_id, content, enqueued_ms, expires_ms, ack, "
         "state, delivery_count, lock_token, locked_until_ms) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, NULL, 0)"},
        {"message_update",
         "UPDATE messages SET state = $3, delivery_count = $4, lock_token = $5, locked_until_ms = "
         "$6 WHERE partition = $1 AND seq = $2"},
        {"message_delete", "DELETE FROM messages WHERE partition = $1 AND seq = $2"},
        {"record_insert",
         "INSERT INTO feedback_records(partition, id, batch_id, original_message_id, at_ms, "
         "status, description, device_id, generation_id) "
         "VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $8)"},
        {"batch_insert",
         "INSERT INTO feedback_batches(partition, id, enqueued_ms, expires_ms, user_id, state, "
         "delivery_count, lock_token, locked_until_ms) VALUES ($1, $2, $3, $4, $5, 0, 0, NULL, 0)"},
        {"batch_take_records",
         "UPDATE feedback_records SET batch_id = $2 "
         "WHERE partition = $1 AND batch_id IS NULL AND id <= $3"},
        {"batch_update",
         "UPDATE feedback_batches SET state = $3, delivery_count = $4, lock_token = $5, "
         "locked_until_ms = $6 WHERE partition = $1 AND id = $2"},
        {"batch_records_delete",
         "DELETE FROM feedback_records WHERE partition = $1 AND batch_id = $2"},
        {"batch_delete", "DELETE FROM feedback_batches WHERE partition = $1 AND id = $2"},
        {"state_upsert",
         "INSERT INTO hub_state(partition, last_sequence, last_now_ms, last_flush_ms, "
         "next_record_id, next_batch_id, accepted, completed, rejected, expired, "
         "delivery_count_exceeded, purged, removed_with_device, feedback_records, "
         "feedback_records_dropped, feedback_batches, feedback_batches_dropped) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) "
         "ON CONFLICT (partition) DO UPDATE SET last_sequence = EXCLUDED.last_sequence, "
         "last_now_ms = EXCLUDED.last_now_ms, last_flush_ms = EXCLUDED.last_flush_ms, "
         "next_record_id = EXCLUDED.next_record_id, next_batch_id = EXCLUDED.next_batch_id, "
         "accepted = EXCLUDED.accepted, completed = EXCLUDED.completed, "
         "rejected = EXCLUDED.rejected, expired = EXCLUDED.expired, "
         "delivery_count_exceeded = EXCLUDED.delivery_count_exceeded, "
         "purged = EXCLUDED.purged, removed_with_device = EXCLUDED.removed_with_device, "
         "feedback_records = EXCLUDED.feedback_records, "
         "feedback_records_dropped = EXCLUDED.feedback_records_dropped, "
         "feedback_batches = EXCLUDED.feedback_batches, "
         "feedback_batches_dropped = EXCLUDED.feedback_batches_dropped"},
        {"config_upsert",
         "INSERT INTO hub_config(partition, name, default_ttl_ms, expiry_over_cap, "
         "max_delivery_count, delivery_count, lock_duration_ms, max_queue_depth, "
         "max_message_size, feedback_ttl_ms, feedback_max_delivery_count, "
         "feedback_lock_duration_ms, feedback_batch_size, feedback_batch_interval_ms, "
         "purge_feedback_for) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
         "ON CONFLICT (partition) DO UPDATE SET name = EXCLUDED.name, "
         "default_ttl_ms = EXCLUDED.default_ttl_ms, expiry_over_cap = EXCLUDED.expiry_over_cap, "
         "max_delivery_count = EXCLUDED.max_delivery_count, "
         "delivery_count = EXCLUDED.delivery_count, lock_duration_ms = EXCLUDED.lock_duration_ms, "
         "max_queue_depth = EXCLUDED.max_queue_depth, "
         "max_message_size = EXCLUDED.max_message_size, "
         "feedback_ttl_ms = EXCLUDED.feedback_ttl_ms, "
         "feedback_max_delivery_count = EXCLUDED.feedback_max_delivery_count, "
         "feedback_lock_duration_ms = EXCLUDED.feedback_lock_duration_ms, "
         "feedback_batch_size = EXCLUDED.feedback_batch_size, "
         "feedback_batch_interval_ms = EXCLUDED.feedback_batch_interval_ms, "
         "purge_feedback_for = EXCLUDED.purge_feedback_for"},
        {"identity_upsert",
         "INSERT INTO identities(device_id, generation_id, version, status, status_reason, "
         "status_updated_ms, auth_type, primary_key, secondary_key, primary_thumbprint, "
         "secondary_thumbprint, iot_edge) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
         "ON CONFLICT (device_id) DO UPDATE SET generation_id = EXCLUDED.generation_id, "
         "version = EXCLUDED.version, status = EXCLUDED.status, "
         "status_reason = EXCLUDED.status_reason, "
         "status_updated_ms = EXCLUDED.status_updated_ms, auth_type = EXCLUDED.auth_type, "
         "primary_key = EXCLUDED.primary_key, secondary_key = EXCLUDED.secondary_key, "
         "primary_thumbprint = EXCLUDED.primary_thumbprint, "
         "secondary_thumbprint = EXCLUDED.secondary_thumbprint, iot_edge = EXCLUDED.iot_edge"},
        {"identity_delete", "DELETE FROM identities WHERE device_id = $1"},
        {"policy_upsert",
         "INSERT INTO policies(name, primary_key, secondary_key, rights) "
         "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET "
         "primary_key = EXCLUDED.primary_key, secondary_key = EXCLUDED.secondary_key, "
         "rights = EXCLUDED.rights"},
        {"policy_delete", "DELETE FROM policies WHERE name = $1"},
    };
    for (const auto& it : items) {
      detail::pg_result res(PQprepare(conn_.get(), it.name, it.sql, 0, nullptr));
      if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK)
        return failure(res.get(), std::string("preparing statement ") + it.name);
    }
    return {};
  }

  // --- running statements ----------------------------------------------------------

  static std::string trimmed(const char* s) {
    std::string out = s ? s : "";
    while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
      out.pop_back();
    return out;
  }

  /// The error of a failed statement: 503001 when the connection is gone, else 500001.
  error failure(const PGresult* res, const std::string& doing) const {
    std::string msg = res ? trimmed(PQresultErrorMessage(res)) : std::string();
    if (msg.empty())
      msg = trimmed(PQerrorMessage(conn_.get()));
    const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    std::string text = where() + msg;
    if (state)
      text += std::string(" (SQLSTATE ") + state + ")";
    text += ", while " + doing;
    if (PQstatus(conn_.get()) != CONNECTION_OK)
      return make_error(errc::server_busy, text + ": the connection to the database is lost");
    if (state && std::string_view(state) == "55P03")  // lock_not_available
      return make_error(errc::server_busy, text + ": a row lock was not granted in time");
    return make_error(errc::server_error, text);
  }

  /// Runs a prepared statement; its rows come back in binary format.
  result<detail::pg_result> exec(const char* name, const detail::pg_params& p,
                                 const std::string& doing) {
    if (!conn_)
      return make_error(errc::server_error, where() + "is closed");
    detail::pg_result res(
        PQexecPrepared(conn_.get(), name, p.size(), p.values(), p.lengths(), p.formats(), 1));
    const auto st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
      return failure(res.get(), doing);
    return res;
  }
  result<void> command(const char* name, const detail::pg_params& p, const std::string& doing) {
    auto r = exec(name, p, doing);
    if (!r)
      return r.error();
    return {};
  }
  /// Runs SQL text (several statements allowed; text-format rows of the last).
  result<detail::pg_result> exec_sql(const char* sql, const std::string& doing) {
    detail::pg_result res(PQexec(conn_.get(), sql));
    const auto st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
      return failure(res.get(), doing);
    return res;
  }
  void rollback() {
    if (conn_ && PQtransactionStatus(conn_.get()) != PQTRANS_IDLE)
      detail::pg_result(PQexec(conn_.get(), "ROLLBACK"));
  }

  /// A statement that must change exactly one row.
  result<void> one_row(const char* name, const detail::pg_params& p, const char* what) {
    auto r = exec(name, p, what);
    if (!r)
      return r.error();
    if (std::string_view(PQcmdTuples(r->get())) != "1")
      return make_error(errc::server_error,
                        std::string(what) + ": the change does not match the stored rows");
    return {};
  }

  // --- writing: one function per change record -------------------------------------

  detail::pg_params params() const {
    detail::pg_params p;
    p.i64(options_.partition);
    return p;
  }

  result<void> write(const journal::device_added& c) {
    return command("device_insert", params().text(c.device_id).text(c.generation_id),
                   "device '" + c.device_id + "'");
  }
  result<void> write(const journal::device_removed& c) {
    for (const char* name : {"device_messages_delete", "device_records_delete"})
      if (auto r = command(name, params().text(c.device_id), "device '" + c.device_id + "'"); !r)
        return r;
    return one_row("device_delete", params().text(c.device_id), "removing the device");
  }
  result<void> write(const journal::message_accepted& c) {
    return command("message_insert",
                   params()
                       .u64(c.sequence_number)
                       .text(c.device_id)
                       .bytes(c.content)
                       .time(c.enqueued_time)
                       .time(c.expires_at)
                       .i64(static_cast<std::int64_t>(c.ack)),
                   "message " + std::to_string(c.sequence_number));
  }
  result<void> write(const journal::message_changed& c) {
    return one_row("message_update",
                   params()
                       .u64(c.sequence_number)
                       .i64(static_cast<std::int64_t>(c.state))
                       .i64(c.delivery_count)
                       .token(c.token)
                       .time(c.locked_until),
                   "changing a message");
  }
  result<void> write(const journal::message_removed& c) {
    return one_row("message_delete", params().u64(c.sequence_number), "removing a message");
  }
  result<void> write(const journal::feedback_pending& c) {
    const auto& r = c.record;
    return command("record_insert",
                   params()
                       .u64(c.record_id)
                       .text(r.original_message_id)
                       .time(r.enqueued_time_utc)
                       .i64(static_cast<std::int64_t>(r.status_code))
                       .text(r.description)
                       .text(r.device_id)
                       .text(r.device_generation_id),
                   "feedback record " + std::to_string(c.record_id));
  }
  result<void> write(const journal::feedback_batched& c) {
    if (auto r = command(
            "batch_insert",
            params().u64(c.batch_id).time(c.enqueued_time).time(c.expires_at).text(c.user_id),
            "feedback batch " + std::to_string(c.batch_id));
        !r)
      return r;
    return command("batch_take_records", params().u64(c.batch_id).u64(c.last_record_id),
                   "feedback batch " + std::to_string(c.batch_id));
  }
  result<void> write(const journal::batch_changed& c) {
    return one_row("batch_update",
                   params()
                       .u64(c.batch_id)
                       .i64(static_cast<std::int64_t>(c.state))
                       .i64(c.delivery_count)
                       .token(c.token)
                       .time(c.locked_until),
                   "changing a feedback batch");
  }
  result<void> write(const journal::batch_removed& c) {
    if (auto r = command("batch_records_delete", params().u64(c.batch_id),
                         "feedback batch " + std::to_string(c.batch_id));
        !r)
      return r;
    return one_row("batch_delete", params().u64(c.batch_id), "removing a feedback batch");
  }
  result<void> write(const journal::counters& c) {
    auto p = params();
    const auto& s = c.stats;
    p.u64(c.last_sequence)
        .time(c.last_now)
        .time(c.last_flush)
        .u64(c.next_record_id)
        .u64(c.next_batch_id);
    for (auto v : {s.accepted, s.completed, s.rejected, s.expired, s.delivery_count_exceeded,
                   s.purged, s.removed_with_device, s.feedback_records, s.feedback_records_dropped,
                   s.feedback_batches, c.feedback_batches_dropped})
      p.u64(v);
    return command("state_upsert", p, "the counters");
  }
  result<void> write(const journal::config_changed& c) {
    const auto& k = c.config;
    return command("config_upsert",
                   params()
                       .text(k.name)
                       .i64(k.default_ttl.count())
                       .text(to_string(k.expiry_over_cap))
                       .i64(k.max_delivery_count)
                       .text(to_string(k.delivery_count))
                       .i64(k.lock_duration.count())
                       .i64(k.max_queue_depth)
                       .i64(static_cast<std::int64_t>(k.max_message_size))
                       .i64(k.feedback_ttl.count())
                       .i64(k.feedback_max_delivery_count)
                       .i64(k.feedback_lock_duration.count())
                       .i64(k.feedback_batch_size)
                       .i64(k.feedback_batch_interval.count())
                       .text(to_string(k.purge_feedback_for)),
                   "the configuration");
  }
  result<void> write(const journal::identity_put& c) {
    const auto& d = c.identity;
    return command("identity_upsert",
                   detail::pg_params()
                       .text(d.device_id)
                       .text(d.generation_id)
                       .u64(d.version)
                       .text(to_string(d.status))
                       .text(d.status_reason)
                       .time(d.status_updated)
                       .text(to_string(d.auth))
                       .text(d.primary_key.empty() ? std::string() : d.primary_key.to_base64())
                       .text(d.secondary_key.empty() ? std::string() : d.secondary_key.to_base64())
                       .text(d.primary_thumbprint)
                       .text(d.secondary_thumbprint)
                       .text(d.iot_edge ? "true" : "false"),
                   "identity '" + d.device_id + "'");
  }
  result<void> write(const journal::identity_removed& c) {
    return one_row("identity_delete", detail::pg_params().text(c.device_id),
                   "removing an identity");
  }
  result<void> write(const journal::policy_put& c) {
    const auto& p = c.policy;
    return command("policy_upsert",
                   detail::pg_params()
                       .text(p.name)
                       .text(p.primary_key.to_base64())
                       .text(p.secondary_key.to_base64())
                       .i64(static_cast<std::int64_t>(p.rights)),
                   "policy '" + p.name + "'");
  }
  result<void> write(const journal::policy_removed& c) {
    return one_row("policy_delete", detail::pg_params().text(c.name), "removing a policy");
  }

  // --- reading ---------------------------------------------------------------------

  /// Runs `sql` (binary rows, $1 = this partition unless `partitioned` is false)
  /// and calls `row(reader)` for each row; `row` returns "" or a problem.
  template <class Row>
  result<void> each_row(const char* sql, const char* table, bool partitioned, Row&& row) {
    detail::pg_params p;
    if (partitioned)
      p.i64(options_.partition);
    detail::pg_result res(
        PQexecParams(conn_.get(), sql, p.size(), nullptr, p.values(), p.lengths(), p.formats(), 1));
    if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK)
      return failure(res.get(), std::string("reading ") + table);
    for (int i = 0, n = PQntuples(res.get()); i < n; ++i) {
      detail::pg_reader rd{res.get(), i, {}};
      if (std::string problem = row(rd); !problem.empty())
        return malformed(table, problem);
    }
    return {};
  }

  result<void> load_all(journal::snapshot& s) {
    for (auto step : {&postgres_store::load_config, &postgres_store::load_state,
                      &postgres_store::load_devices, &postgres_store::load_messages,
                      &postgres_store::load_feedback, &postgres_store::load_registry})
      if (auto r = (this->*step)(s); !r)
        return r;
    return {};
  }

  result<void> load_config(journal::snapshot& s) {
    return each_row(
        "SELECT name, default_ttl_ms, expiry_over_cap, max_delivery_count, delivery_count, "
        "lock_duration_ms, max_queue_depth, max_message_size, feedback_ttl_ms, "
        "feedback_max_delivery_count, feedback_lock_duration_ms, feedback_batch_size, "
        "feedback_batch_interval_ms, purge_feedback_for FROM hub_config WHERE partition = $1",
        "hub_config", true, [&](detail::pg_reader& rd) -> std::string {
          hub_config c;
          c.name = rd.text(0, "name");
          c.default_ttl = duration{rd.i64(1, "default_ttl_ms")};
          auto spelled = [&](int col, const char* name, auto parse, auto& field) {
            const auto v = rd.text(col, name);
            if (auto e = parse(v))
              field = *e;
            else
              rd.note(name, "is not a known spelling");
          };
          spelled(2, "expiry_over_cap", parse_expiry_cap_policy, c.expiry_over_cap);
          c.max_delivery_count = rd.u32(3, "max_delivery_count");
          spelled(4, "delivery_count", parse_delivery_count_rule, c.delivery_count);
          c.lock_duration = duration{rd.i64(5, "lock_duration_ms")};
          c.max_queue_depth = rd.u32(6, "max_queue_depth");
          c.max_message_size = static_cast<std::size_t>(rd.u64(7, "max_message_size"));
          c.feedback_ttl = duration{rd.i64(8, "feedback_ttl_ms")};
          c.feedback_max_delivery_count = rd.u32(9, "feedback_max_delivery_count");
          c.feedback_lock_duration = duration{rd.i64(10, "feedback_lock_duration_ms")};
          c.feedback_batch_size = rd.u32(11, "feedback_batch_size");
          c.feedback_batch_interval = duration{rd.i64(12, "feedback_batch_interval_ms")};
          spelled(13, "purge_feedback_for", parse_purge_feedback, c.purge_feedback_for);
          if (!rd.why.empty())
            return rd.why;
          if (auto v = c.validate(); !v)
            return "the stored configuration is invalid: " + v.error().message;
          s.config = std::move(c);
          return {};
        });
  }

  result<void> load_state(journal::snapshot& s) {
    return each_row(
        "SELECT last_sequence, last_now_ms, last_flush_ms, next_record_id, next_batch_id, "
        "accepted, completed, rejected, expired, delivery_count_exceeded, purged, "
        "removed_with_device, feedback_records, feedback_records_dropped, feedback_batches, "
        "feedback_batches_dropped FROM hub_state WHERE partition = $1",
        "hub_state", true, [&](detail::pg_reader& rd) {
          journal::counters c;
          c.last_sequence = rd.u64(0, "last_sequence");
          c.last_now = rd.time(1, "last_now_ms");
          if (!rd.is_null(2))
            c.last_flush = rd.time(2, "last_flush_ms");
          c.next_record_id = rd.u64(3, "next_record_id");
          c.next_batch_id = rd.u64(4, "next_batch_id");
          std::uint64_t* fields[] = {&c.stats.accepted,
                                     &c.stats.completed,
                                     &c.stats.rejected,
                                     &c.stats.expired,
                                     &c.stats.delivery_count_exceeded,
                                     &c.stats.purged,
                                     &c.stats.removed_with_device,
                                     &c.stats.feedback_records,
                                     &c.stats.feedback_records_dropped,
                                     &c.stats.feedback_batches,
                                     &c.feedback_batches_dropped};
          int col = 5;
          for (auto* f : fields)
            *f = rd.u64(col++, "counter");
          s.counters = c;
          return rd.why;
        });
  }

  result<void> load_devices(journal::snapshot& s) {
    return each_row(
        "SELECT id, generation_id FROM devices WHERE partition = $1 ORDER BY id COLLATE \"C\"",
        "devices", true, [&](detail::pg_reader& rd) {
          journal::device_added d;
          d.device_id = rd.text(0, "id");
          d.generation_id = rd.text(1, "generation_id");
          s.devices.push_back(std::move(d));
          return rd.why;
        });
  }

  result<void> load_messages(journal::snapshot& s) {
    return each_row(
        "SELECT seq, device_id, content, enqueued_ms, expires_ms, ack, state, delivery_count, "
        "lock_token, locked_until_ms FROM messages WHERE partition = $1 ORDER BY seq",
        "messages", true, [&](detail::pg_reader& rd) {
          journal::stored_message m;
          m.sequence_number = rd.u64(0, "seq");
          m.device_id = rd.text(1, "device_id");
          m.content = rd.bytes(2, "content");
          m.enqueued_time = rd.time(3, "enqueued_ms");
          m.expires_at = rd.time(4, "expires_ms");
          m.ack = static_cast<ack_mode>(rd.u32(5, "ack", 3));
          m.state = rd.state(6, "state");
          m.delivery_count = rd.u32(7, "delivery_count");
          m.token = rd.token(8, "lock_token");
          m.locked_until = rd.time(9, "locked_until_ms");
          const auto seq = m.sequence_number;
          s.messages.push_back(std::move(m));
          return rd.why.empty() ? rd.why : "message " + std::to_string(seq) + ": " + rd.why;
        });
  }

  result<void> load_feedback(journal::snapshot& s) {
    auto r = each_row(
        "SELECT id, enqueued_ms, expires_ms, user_id, state, delivery_count, lock_token, "
        "locked_until_ms FROM feedback_batches WHERE partition = $1 ORDER BY id",
        "feedback_batches", true, [&](detail::pg_reader& rd) {
          journal::stored_batch b;
          b.batch_id = rd.u64(0, "id");
          b.enqueued_time = rd.time(1, "enqueued_ms");
          b.expires_at = rd.time(2, "expires_ms");
          b.user_id = rd.text(3, "user_id");
          b.state = rd.state(4, "state");
          b.delivery_count = rd.u32(5, "delivery_count");
          b.token = rd.token(6, "lock_token");
          b.locked_until = rd.time(7, "locked_until_ms");
          s.batches.push_back(std::move(b));
          return rd.why;
        });
    if (!r)
      return r.error();
    std::map<std::uint64_t, std::size_t> batch_at;
    for (std::size_t i = 0; i < s.batches.size(); ++i)
      batch_at[s.batches[i].batch_id] = i;
    return each_row(
        "SELECT id, batch_id, original_message_id, at_ms, status, description, device_id, "
        "generation_id FROM feedback_records WHERE partition = $1 "
        "ORDER BY batch_id IS NOT NULL, batch_id, id",
        "feedback_records", true, [&](detail::pg_reader& rd) -> std::string {
          const auto id = rd.u64(0, "id");
          feedback_record rec;
          rec.original_message_id = rd.text(2, "original_message_id");
          rec.enqueued_time_utc = rd.time(3, "at_ms");
          rec.status_code = static_cast<feedback_status>(rd.u32(4, "status", 4));
          rec.description = rd.text(5, "description");
          rec.device_id = rd.text(6, "device_id");
          rec.device_generation_id = rd.text(7, "generation_id");
          if (!rd.why.empty())
            return "record " + std::to_string(id) + ": " + rd.why;
          if (rd.is_null(1)) {
            s.pending.push_back({id, std::move(rec)});
            return {};
          }
          const auto batch = rd.u64(1, "batch_id");
          auto it = batch_at.find(batch);
          if (it == batch_at.end())
            return "record " + std::to_string(id) + " belongs to missing batch " +
                   std::to_string(batch);
          s.batches[it->second].records.push_back(std::move(rec));
          return rd.why;
        });
  }

  result<void> load_registry(journal::snapshot& s) {
    auto key = [](detail::pg_reader& rd, int col, const char* name) {
      const auto text = rd.text(col, name);
      if (text.empty())
        return auth::shared_access_key{};
      auto k = auth::shared_access_key::from_base64(text);
      if (!k) {
        rd.note(name, "is not base64");
        return auth::shared_access_key{};
      }
      return std::move(*k);
    };
    auto r = each_row(
        "SELECT device_id, generation_id, version, status, status_reason, status_updated_ms, "
        "auth_type, primary_key, secondary_key, primary_thumbprint, secondary_thumbprint, "
        "iot_edge FROM identities ORDER BY device_id COLLATE \"C\"",
        "identities", false, [&](detail::pg_reader& rd) -> std::string {
          device_identity d;
          d.device_id = rd.text(0, "device_id");
          d.generation_id = rd.text(1, "generation_id");
          d.version = rd.u64(2, "version");
          const auto status = parse_device_status(rd.text(3, "status"));
          if (!status)
            rd.note("status", "is not 'enabled' or 'disabled'");
          d.status = status.value_or(device_status::disabled);
          d.status_reason = rd.text(4, "status_reason");
          d.status_updated = rd.time(5, "status_updated_ms");
          const auto type = parse_auth_type(rd.text(6, "auth_type"));
          if (!type)
            rd.note("auth_type", "is not an authentication type");
          d.auth = type.value_or(auth_type::none);
          d.primary_key = key(rd, 7, "primary_key");
          d.secondary_key = key(rd, 8, "secondary_key");
          d.primary_thumbprint = rd.text(9, "primary_thumbprint");
          d.secondary_thumbprint = rd.text(10, "secondary_thumbprint");
          d.iot_edge = rd.boolean(11, "iot_edge");
          if (!rd.why.empty())
            return "device '" + d.device_id + "': " + rd.why;
          s.identities.push_back(std::move(d));
          return {};
        });
    if (!r)
      return r.error();
    return each_row(
        "SELECT name, primary_key, secondary_key, rights FROM policies ORDER BY name COLLATE "
        "\"C\"",
        "policies", false, [&](detail::pg_reader& rd) -> std::string {
          auth::shared_access_policy p;
          p.name = rd.text(0, "name");
          p.primary_key = key(rd, 1, "primary_key");
          p.secondary_key = key(rd, 2, "secondary_key");
          p.rights = static_cast<auth::access_rights>(
              rd.u32(3, "rights", static_cast<std::uint8_t>(auth::access_rights::all)));
          if (!rd.why.empty())
            return "policy '" + p.name + "': " + rd.why;
          s.policies.push_back(std::move(p));
          return {};
        });
  }

  std::unique_ptr<PGconn, detail::pg_conn_close> conn_;
  postgres_options options_;
  std::string schema_quoted_;
  std::optional<fence> fence_;
  std::uint64_t commits_ = 0;
  bool lease_lost_ = false;
  bool in_group_ = false;
};

static_assert(hub_store<postgres_store>);

}  // namespace devicebound
