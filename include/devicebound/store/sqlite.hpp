/// \file store/sqlite.hpp
/// The default durable store: one SQLite file in WAL mode, one transaction per
/// hub operation (SPEC 1.2). Link `devicebound::sqlite` (SQLite::SQLite3).
///
/// The file's schema is versioned (`PRAGMA user_version`) and tagged
/// (`PRAGMA application_id`); `open` migrates an older devicebound schema
/// forward and refuses a newer or foreign one, and a damaged or truncated file,
/// with an error that says so. See docs/architecture.md, "Durability".
#pragma once

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "../errors.hpp"
#include "../hub_config.hpp"
#include "../journal.hpp"

namespace devicebound {

/// When a commit waits for the disk (SQLite's `PRAGMA synchronous`, in WAL mode).
enum class sqlite_sync : std::uint8_t {
  /// fsync the WAL at every commit: an acknowledged operation survives a kill -9
  /// of the hub, an OS crash and a power cut. The default.
  full,
  /// fsync only at checkpoints: an acknowledged operation survives a kill -9 of
  /// the hub (the OS has the bytes), but an OS crash or power cut may lose the
  /// last commits (never corrupts the file).
  normal,
  /// never fsync: for tests only.
  off,
};

/// `full`, `normal` or `off`: SQLite's own names, as the daemon's flags spell them.
constexpr std::string_view to_string(sqlite_sync s) noexcept {
  switch (s) {
    case sqlite_sync::full:
      return "full";
    case sqlite_sync::normal:
      return "normal";
    case sqlite_sync::off:
      return "off";
  }
  return "full";
}

/// Parses `full`, `normal` or `off` (exact spelling); nullopt otherwise.
constexpr std::optional<sqlite_sync> parse_sqlite_sync(std::string_view s) noexcept {
  for (auto v : {sqlite_sync::full, sqlite_sync::normal, sqlite_sync::off})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// Settings of a `sqlite_store`.
struct sqlite_options {
  sqlite_sync sync = sqlite_sync::full;
  /// Hold a lock for as long as the store is open, so a second hub on the same
  /// file is refused (503001) instead of corrupting both. The lock is an
  /// advisory `flock` on the database file (independent of SQLite's own
  /// `fcntl` locks), not SQLite's exclusive locking mode: readers such as the
  /// broker plugin, which reads the identity registry (docs/architecture.md),
  /// must still be able to open the file.
  bool exclusive = true;
  /// Run `PRAGMA quick_check` at open: a damaged file is refused before use.
  /// Reads the whole file once.
  bool verify_on_open = true;
  /// Copy the WAL back into the database once it holds this many pages
  /// (`PRAGMA wal_autocheckpoint`; SQLite's default is 1000, about 4 MB). A
  /// checkpoint fsyncs (unless `off`), so under `normal` it is most of the
  /// disk cost; a larger WAL costs disk space and a longer recovery at open.
  std::uint32_t checkpoint_pages = 1000;
};

/// One schema step: the SQL that takes a store from `to_version - 1` to `to_version`.
struct sqlite_migration {
  int to_version;
  const char* sql;
};

/// Every schema version, oldest first. A new version appends a migration here
/// (never edits a released one) and bumps `sqlite_store::schema_version`.
// clang-format off
inline constexpr sqlite_migration sqlite_migrations[] = {
  {1, R"sql(
    CREATE TABLE config (
      key   TEXT PRIMARY KEY NOT NULL,
      value NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE hub_state (
      id                       INTEGER PRIMARY KEY CHECK (id = 1),
      last_sequence            INTEGER NOT NULL,
      last_now_ms              INTEGER NOT NULL,
      last_flush_ms            INTEGER,
      next_record_id           INTEGER NOT NULL,
      next_batch_id            INTEGER NOT NULL,
      accepted                 INTEGER NOT NULL,
      completed                INTEGER NOT NULL,
      rejected                 INTEGER NOT NULL,
      expired                  INTEGER NOT NULL,
      delivery_count_exceeded  INTEGER NOT NULL,
      purged                   INTEGER NOT NULL,
      removed_with_device      INTEGER NOT NULL,
      feedback_records         INTEGER NOT NULL,
      feedback_records_dropped INTEGER NOT NULL,
      feedback_batches         INTEGER NOT NULL,
      feedback_batches_dropped INTEGER NOT NULL
    );
    CREATE TABLE devices (
      id            TEXT PRIMARY KEY NOT NULL,
      generation_id TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE messages (
      seq             INTEGER PRIMARY KEY,
      device_id       TEXT NOT NULL,
      content         BLOB NOT NULL,
      enqueued_ms     INTEGER NOT NULL,
      expires_ms      INTEGER NOT NULL,
      ack             INTEGER NOT NULL CHECK (ack BETWEEN 0 AND 3),
      state           INTEGER NOT NULL CHECK (state IN (0, 1)),
      delivery_count  INTEGER NOT NULL,
      lock_token      BLOB,
      locked_until_ms INTEGER NOT NULL
    );
    CREATE INDEX messages_by_device ON messages (device_id);
    CREATE TABLE feedback_batches (
      id              INTEGER PRIMARY KEY,
      enqueued_ms     INTEGER NOT NULL,
      expires_ms      INTEGER NOT NULL,
      user_id         TEXT NOT NULL,
      state           INTEGER NOT NULL CHECK (state IN (0, 1)),
      delivery_count  INTEGER NOT NULL,
      lock_token      BLOB,
      locked_until_ms INTEGER NOT NULL
    );
    CREATE TABLE feedback_records (
      id                  INTEGER PRIMARY KEY,
      batch_id            INTEGER,
      original_message_id TEXT NOT NULL,
      at_ms               INTEGER NOT NULL,
      status              INTEGER NOT NULL CHECK (status BETWEEN 0 AND 4),
      description         TEXT NOT NULL,
      device_id           TEXT NOT NULL,
      generation_id       TEXT NOT NULL
    );
    CREATE INDEX feedback_records_by_batch ON feedback_records (batch_id, id);
  )sql"},
  // the identity registry (registry.hpp). The broker plugin reads these two
  // tables read-only by these names: never rename a column.
  {2, R"sql(
    CREATE TABLE identities (
      device_id            TEXT PRIMARY KEY,
      generation_id        TEXT NOT NULL,
      version              INTEGER NOT NULL,
      status               TEXT NOT NULL,
      status_reason        TEXT NOT NULL,
      status_updated_ms    INTEGER NOT NULL,
      auth_type            TEXT NOT NULL,
      primary_key          TEXT NOT NULL,
      secondary_key        TEXT NOT NULL,
      primary_thumbprint   TEXT NOT NULL,
      secondary_thumbprint TEXT NOT NULL,
      iot_edge             INTEGER NOT NULL);
    CREATE TABLE policies (
      name          TEXT PRIMARY KEY,
      primary_key   TEXT NOT NULL,
      secondary_key TEXT NOT NULL,
      rights        INTEGER NOT NULL);
  )sql"},
};
// clang-format on

namespace detail {

/// A prepared statement, finalized on destruction.
class sqlite_stmt {
 public:
  sqlite_stmt() = default;
  explicit sqlite_stmt(sqlite3_stmt* s) noexcept : s_(s) {}
  sqlite_stmt(sqlite_stmt&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  sqlite_stmt& operator=(sqlite_stmt&& o) noexcept {
    std::swap(s_, o.s_);
    return *this;
  }
  ~sqlite_stmt() { sqlite3_finalize(s_); }

  sqlite3_stmt* get() const noexcept { return s_; }

  void bind(int i, std::int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void bind(int i, std::uint64_t v) { sqlite3_bind_int64(s_, i, static_cast<std::int64_t>(v)); }
  void bind(int i, std::uint32_t v) { sqlite3_bind_int64(s_, i, v); }
  void bind(int i, time_point t) { sqlite3_bind_int64(s_, i, t.time_since_epoch().count()); }
  void bind(int i, std::optional<time_point> t) {
    if (t)
      bind(i, *t);
    else
      sqlite3_bind_null(s_, i);
  }
  void bind_text(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data() ? v.data() : "", static_cast<int>(v.size()),
                      SQLITE_TRANSIENT);
  }
  void bind_blob(int i, std::string_view v) {
    if (v.empty())
      sqlite3_bind_zeroblob(s_, i, 0);
    else
      sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  /// A lock token: 16 bytes, or NULL for the nil token.
  void bind(int i, const lock_token& t) {
    if (t.is_nil())
      sqlite3_bind_null(s_, i);
    else
      sqlite3_bind_blob(s_, i, t.bytes.data(), 16, SQLITE_TRANSIENT);
  }

  /// Runs a statement that returns no rows; resets it either way.
  int run() {
    const int rc = sqlite3_step(s_);
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
    return rc == SQLITE_ROW ? SQLITE_DONE : rc;
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

}  // namespace detail

/// The SQLite store: `hub_store` over one file. Open it, then open the hub on
/// it (`hub::open(config, store)`); the store must outlive the hub and stay
/// where it is (the hub keeps its address). Single-threaded, like the hub.
class sqlite_store {
 public:
  /// The schema this build writes; `open` migrates older ones up to it.
  static constexpr int schema_version = 2;
  /// `PRAGMA application_id` of a devicebound store ("DBs1").
  static constexpr std::int32_t application_id = 0x44427331;

  /// Opens (or creates) the store at `path`. Errors name the file and the
  /// problem: 400005 not a database, damaged or truncated, or not devicebound's;
  /// 405001 written by a newer schema version; 503001 in use by another process
  /// (with `exclusive`); 500001 any other SQLite failure.
  static result<sqlite_store> open(const std::string& path, sqlite_options options = {}) {
    sqlite_store s;
    s.path_ = path;
    s.options_ = options;
    if (auto r = s.open_file(); !r)
      return r.error();
    return s;
  }

  sqlite_store(sqlite_store&&) noexcept = default;
  sqlite_store& operator=(sqlite_store&&) noexcept = default;
  ~sqlite_store() = default;

  const std::string& path() const noexcept { return path_; }
  const sqlite_options& options() const noexcept { return options_; }
  /// The open connection (for inspection and tests).
  sqlite3* handle() const noexcept { return db_.get(); }
  /// Transactions committed so far (grouped commits count once).
  std::uint64_t commits() const noexcept { return commits_; }

  /// Applies one change set as one transaction (or, inside a group, as one
  /// savepoint of the group's transaction). All of it or nothing.
  result<void> apply(const journal::change_set& changes) {
    if (!db_)
      return make_error(errc::server_error, "sqlite store '" + path_ + "' is closed");
    // a change set that only moves the clock is not worth an fsync: it goes out
    // with the next one that is (WAL keeps commits in order)
    const bool clock_only =
        changes.size() == 1 && std::holds_alternative<journal::counters>(changes[0]);
    const bool relax = clock_only && options_.sync == sqlite_sync::full && !in_group_;
    if (relax)
      if (auto r = exec("PRAGMA synchronous=NORMAL", "relaxing synchronous"); !r)
        return r;
    // Inside a group the hub-wide counters (the last record of every change
    // set, one row) are written once, at `commit_group`: the newest value is
    // all that is kept, so writing it for every operation only costs time.
    const journal::counters* deferred = nullptr;
    if (in_group_ && !changes.empty())
      deferred = std::get_if<journal::counters>(&changes.back());
    if (deferred && changes.size() == 1) {
      group_counters_ = *deferred;
      return {};
    }
    if (auto r = run(in_group_ ? st_.savepoint : st_.begin, "starting a transaction"); !r)
      return r;
    // the deferred counters (the last record) are left for `commit_group`
    const std::span<const journal::change> to_write(changes.data(),
                                                    changes.size() - (deferred ? 1 : 0));
    for (const auto& c : to_write) {
      const int rc = std::visit([this](const auto& x) { return write(x); }, c);
      if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        auto e = failure(rc, std::string("applying ") + journal::name_of(c));
        if (in_group_) {
          (void)exec("ROLLBACK TO op", "rolling back");
          (void)exec("RELEASE op", "rolling back");
        } else {
          rollback();
        }
        if (relax)
          (void)exec("PRAGMA synchronous=FULL", "restoring synchronous");
        return e;
      }
    }
    if (in_group_) {
      if (auto r = run(st_.release, "releasing a savepoint"); !r)
        return r;
      if (deferred)
        group_counters_ = *deferred;
      return {};
    }
    if (const int rc = step_once(st_.commit); rc != SQLITE_OK) {
      auto e = failure(rc, "committing");
      rollback();
      if (relax)
        (void)exec("PRAGMA synchronous=FULL", "restoring synchronous");
      return e;
    }
    ++commits_;
    if (relax)
      if (auto r = exec("PRAGMA synchronous=FULL", "restoring synchronous"); !r)
        return r;
    return {};
  }

  /// Grouped commits: from `begin_group` to `commit_group`, change sets share
  /// one transaction and one fsync. An operation made inside a group is not
  /// durable until `commit_group` succeeds: its caller must not acknowledge it
  /// before then (the daemon holds back the PUBACKs of a group). If
  /// `commit_group` fails, nothing of the group is stored: reopen the hub.
  result<void> begin_group() {
    if (in_group_)
      return make_error(errc::invalid_operation, "a commit group is already open");
    if (auto r = run(st_.begin, "starting a commit group"); !r)
      return r;
    in_group_ = true;
    group_counters_.reset();
    return {};
  }
  result<void> commit_group() {
    if (!in_group_)
      return make_error(errc::invalid_operation, "no commit group is open");
    in_group_ = false;
    if (group_counters_) {
      const int rc = write(*group_counters_);
      group_counters_.reset();
      if (rc != SQLITE_DONE) {
        auto e = failure(rc, "applying counters");
        rollback();
        return e;
      }
    }
    if (const int rc = step_once(st_.commit); rc != SQLITE_OK) {
      auto e = failure(rc, "committing a group");
      rollback();
      return e;
    }
    ++commits_;
    return {};
  }
  bool in_group() const noexcept { return in_group_; }

  /// Reads everything stored. Values that cannot be what devicebound wrote
  /// (wrong type, out of range) give 400005 naming the table and row.
  result<journal::snapshot> load() {
    if (!db_)
      return make_error(errc::server_error, "sqlite store '" + path_ + "' is closed");
    journal::snapshot s;
    if (auto r = load_config(s); !r)
      return r.error();
    if (auto r = load_state(s); !r)
      return r.error();
    if (auto r = load_devices(s); !r)
      return r.error();
    if (auto r = load_messages(s); !r)
      return r.error();
    if (auto r = load_feedback(s); !r)
      return r.error();
    if (auto r = load_registry(s); !r)
      return r.error();
    return s;
  }

  /// Reads only the identity registry (identities and policies): what a
  /// daemon needs beside `load()`'s engine state, without reading the queues again.
  result<journal::snapshot> load_identities() {
    if (!db_)
      return make_error(errc::server_error, "sqlite store '" + path_ + "' is closed");
    journal::snapshot s;
    if (auto r = load_registry(s); !r)
      return r.error();
    return s;
  }

  /// The schema version stored in the file (`PRAGMA user_version`).
  result<int> stored_schema_version() {
    auto v = pragma_int("user_version");
    if (!v)
      return v.error();
    return static_cast<int>(*v);
  }

 private:
  struct db_close {
    void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
  };
  /// The statements `apply` runs, prepared once.
  struct statements {
    detail::sqlite_stmt device_insert, device_delete, device_messages_delete, device_records_delete,
        message_insert, message_update, message_delete, record_insert, batch_insert,
        batch_take_records, batch_update, batch_records_delete, batch_delete, state_upsert,
        config_upsert, identity_upsert, identity_delete, policy_upsert, policy_delete;
    // Transaction control, run for every operation or group: prepared once rather
    // than parsed by sqlite3_exec each time (measurable in the daemon's engine
    // thread; docs/architecture.md, "The engine loop's costs").
    detail::sqlite_stmt begin, commit, savepoint, release;
  };

  sqlite_store() = default;

  // --- opening ---------------------------------------------------------------------

  result<void> open_file() {
    sqlite3* raw = nullptr;
    if (options_.exclusive && path_ != ":memory:")
      if (auto r = owner_.take(path_); !r)
        return make_error(errc::server_busy, "sqlite store '" + path_ + "': " + r.error().message);
    const int rc =
        sqlite3_open_v2(path_.c_str(), &raw,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    db_.reset(raw);
    if (rc != SQLITE_OK)
      return failure(rc, "opening");
    sqlite3_extended_result_codes(db_.get(), 1);
    // the first read of the file: a file that is not a database fails here
    if (auto r = exec("SELECT count(*) FROM sqlite_master", "reading the schema"); !r)
      return r;
    // Every reason to refuse the file is found before the first write (the
    // switch to WAL rewrites the header): a refused file is left as it was.
    if (auto r = check_size(); !r)
      return r;
    if (options_.verify_on_open)
      if (auto r = quick_check(); !r)
        return r;
    if (auto r = check_identity(); !r)
      return r;
    auto mode = pragma_text("journal_mode=WAL");
    if (!mode)
      return mode.error();
    if (*mode != "wal" && path_ != ":memory:")
      return make_error(
          errc::server_error,
          "sqlite store '" + path_ + "': cannot use WAL mode (journal_mode is " + *mode + ")");
    // a write transaction now: a file another writer holds is refused here
    if (auto r = exec("BEGIN IMMEDIATE", "taking the write lock"); !r)
      return r;
    if (auto r = exec("COMMIT", "taking the write lock"); !r)
      return r;
    if (auto r = migrate(); !r)
      return r;
    const char* sync = options_.sync == sqlite_sync::full     ? "PRAGMA synchronous=FULL"
                       : options_.sync == sqlite_sync::normal ? "PRAGMA synchronous=NORMAL"
                                                              : "PRAGMA synchronous=OFF";
    if (auto r = exec(sync, "setting synchronous"); !r)
      return r;
    const std::string checkpoint =
        "PRAGMA wal_autocheckpoint=" + std::to_string(options_.checkpoint_pages);
    if (auto r = exec(checkpoint.c_str(), "setting the checkpoint size"); !r)
      return r;
    return prepare_all();
  }

  /// SQLite writes whole pages: a file that ends inside a page was cut short.
  result<void> check_size() {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path_, ec);
    auto page = pragma_int("page_size");
    if (!page)
      return page.error();
    if (ec || *page <= 0 || size % static_cast<std::uintmax_t>(*page) == 0)
      return {};
    return make_error(errc::malformed,
                      "sqlite store '" + path_ + "' is damaged: " + std::to_string(size) +
                          " bytes is not a whole number of " + std::to_string(*page) +
                          "-byte pages (the file was truncated)");
  }

  result<void> quick_check() {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_.get(), "PRAGMA quick_check", -1, &raw, nullptr);
    detail::sqlite_stmt st(raw);
    if (rc != SQLITE_OK)
      return failure(rc, "checking the file");
    std::string problems;
    while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
      const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st.get(), 0));
      const std::string line = t ? t : "";
      if (line != "ok" && problems.size() < 400)
        problems += (problems.empty() ? "" : "; ") + line;
    }
    if (rc != SQLITE_DONE)
      return failure(rc, "checking the file");
    if (!problems.empty())
      return make_error(errc::malformed, "sqlite store '" + path_ +
                                             "' is damaged (PRAGMA quick_check: " + problems +
                                             "); restore it from a backup or move it aside");
    return {};
  }

  /// Refuses a file that is not ours or has a newer schema; reads only.
  result<void> check_identity() {
    auto version = pragma_int("user_version");
    if (!version)
      return version.error();
    auto app = pragma_int("application_id");
    if (!app)
      return app.error();
    auto tables = count("SELECT count(*) FROM sqlite_master");
    if (!tables)
      return tables.error();
    const std::string file = "sqlite store '" + path_ + "'";
    if (*app != 0 && *app != application_id)
      return make_error(errc::malformed, file + " is not a devicebound store (application_id " +
                                             std::to_string(*app) + ")");
    if (*version == 0 && *tables != 0)
      return make_error(errc::malformed, file + " is not a devicebound store: it holds " +
                                             std::to_string(*tables) +
                                             " schema objects but no devicebound schema version");
    if (*version != 0 && *app != application_id)
      return make_error(errc::malformed, file + " is not a devicebound store (schema version " +
                                             std::to_string(*version) +
                                             " without devicebound's application_id)");
    if (*version > schema_version)
      return make_error(errc::not_supported,
                        file + " has schema version " + std::to_string(*version) +
                            ", newer than this devicebound understands (" +
                            std::to_string(schema_version) +
                            "): open it with the devicebound that wrote it, or a newer one");
    if (*version < 0)
      return make_error(errc::malformed,
                        file + " has an invalid schema version " + std::to_string(*version));
    return {};
  }

  /// Brings the schema of a file `check_identity` accepted to `schema_version`.
  result<void> migrate() {
    auto version = pragma_int("user_version");
    if (!version)
      return version.error();
    if (*version == schema_version)
      return {};
    if (auto r = exec("BEGIN IMMEDIATE", "migrating the schema"); !r)
      return r;
    for (const auto& m : sqlite_migrations) {
      if (m.to_version <= *version)
        continue;
      if (auto r = exec(m.sql, "migrating the schema to version " + std::to_string(m.to_version));
          !r) {
        rollback();
        return r;
      }
    }
    const std::string tag = "PRAGMA user_version=" + std::to_string(schema_version) +
                            "; PRAGMA application_id=" + std::to_string(application_id);
    if (auto r = exec(tag.c_str(), "migrating the schema"); !r) {
      rollback();
      return r;
    }
    return exec("COMMIT", "migrating the schema");
  }

  result<void> prepare_all() {
    struct item {
      detail::sqlite_stmt* st;
      const char* sql;
    };
    auto& s = st_;
    const item items[] = {
        {&s.device_insert, "INSERT INTO devices(id, generation_id) VALUES(?1, ?2)"},
        {&s.device_delete, "DELETE FROM devices WHERE id = ?1"},
        {&s.device_messages_delete, "DELETE FROM messages WHERE device_id = ?1"},
        {&s.device_records_delete,
         "DELETE FROM feedback_records WHERE batch_id IS NULL AND device_id = ?1"},
        {&s.message_insert,
         "INSERT INTO messages(seq, device_id, content, enqueued_ms, expires_ms, ack, state, "
         "delivery_count, "
         "lock_token, locked_until_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0, 0, NULL, 0)"},
        {&s.message_update,
         "UPDATE messages SET state = ?2, delivery_count = ?3, lock_token = ?4, locked_until_ms = "
         "?5 "
         "WHERE seq = ?1"},
        {&s.message_delete, "DELETE FROM messages WHERE seq = ?1"},
        {&s.record_insert,
         "INSERT INTO feedback_records(id, batch_id, original_message_id, at_ms, status, "
         "description, device_id, "
         "generation_id) VALUES(?1, NULL, ?2, ?3, ?4, ?5, ?6, ?7)"},
        {&s.batch_insert,
         "INSERT INTO feedback_batches(id, enqueued_ms, expires_ms, user_id, state, "
         "delivery_count, lock_token, "
         "locked_until_ms) VALUES(?1, ?2, ?3, ?4, 0, 0, NULL, 0)"},
        {&s.batch_take_records,
         "UPDATE feedback_records SET batch_id = ?1 WHERE batch_id IS NULL AND id <= ?2"},
        {&s.batch_update,
         "UPDATE feedback_batches SET state = ?2, delivery_count = ?3, lock_token = ?4, "
         "locked_until_ms = ?5 "
         "WHERE id = ?1"},
        {&s.batch_records_delete, "DELETE FROM feedback_records WHERE batch_id = ?1"},
        {&s.batch_delete, "DELETE FROM feedback_batches WHERE id = ?1"},
        {&s.state_upsert,
         "INSERT OR REPLACE INTO hub_state(id, last_sequence, last_now_ms, last_flush_ms, "
         "next_record_id, "
         "next_batch_id, accepted, completed, rejected, expired, delivery_count_exceeded, purged, "
         "removed_with_device, feedback_records, feedback_records_dropped, feedback_batches, "
         "feedback_batches_dropped) VALUES(1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, "
         "?13, ?14, ?15, ?16)"},
        {&s.config_upsert, "INSERT OR REPLACE INTO config(key, value) VALUES(?1, ?2)"},
        {&s.identity_upsert,
         "INSERT OR REPLACE INTO identities(device_id, generation_id, version, status, "
         "status_reason, status_updated_ms, auth_type, primary_key, secondary_key, "
         "primary_thumbprint, secondary_thumbprint, iot_edge) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, "
         "?8, ?9, ?10, ?11, ?12)"},
        {&s.identity_delete, "DELETE FROM identities WHERE device_id = ?1"},
        {&s.policy_upsert,
         "INSERT OR REPLACE INTO policies(name, primary_key, secondary_key, rights) "
         "VALUES(?1, ?2, ?3, ?4)"},
        {&s.policy_delete, "DELETE FROM policies WHERE name = ?1"},
        {&s.begin, "BEGIN IMMEDIATE"},
        {&s.commit, "COMMIT"},
        {&s.savepoint, "SAVEPOINT op"},
        {&s.release, "RELEASE op"},
    };
    for (const auto& it : items) {
      sqlite3_stmt* raw = nullptr;
      if (const int rc =
              sqlite3_prepare_v3(db_.get(), it.sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
          rc != SQLITE_OK) {
        sqlite3_finalize(raw);
        return failure(rc, "preparing statements");
      }
      *it.st = detail::sqlite_stmt(raw);
    }
    return {};
  }

  // --- writing: one function per change record; each returns an SQLite code ------

  /// An UPDATE or DELETE must hit exactly one row; anything else means the
  /// change does not fit the stored state.
  int one_row(int rc) const {
    return rc == SQLITE_DONE && sqlite3_changes(db_.get()) != 1 ? SQLITE_NOTFOUND : rc;
  }

  int write(const journal::device_added& c) {
    st_.device_insert.bind_text(1, c.device_id);
    st_.device_insert.bind_text(2, c.generation_id);
    return st_.device_insert.run();
  }
  int write(const journal::device_removed& c) {
    for (auto* st : {&st_.device_messages_delete, &st_.device_records_delete}) {
      st->bind_text(1, c.device_id);
      if (const int rc = st->run(); rc != SQLITE_DONE)
        return rc;
    }
    st_.device_delete.bind_text(1, c.device_id);
    return one_row(st_.device_delete.run());
  }
  int write(const journal::message_accepted& c) {
    auto& st = st_.message_insert;
    st.bind(1, c.sequence_number);
    st.bind_text(2, c.device_id);
    st.bind_blob(3, c.content);
    st.bind(4, c.enqueued_time);
    st.bind(5, c.expires_at);
    st.bind(6, static_cast<std::uint32_t>(c.ack));
    return st.run();
  }
  int write(const journal::message_changed& c) {
    auto& st = st_.message_update;
    st.bind(1, c.sequence_number);
    st.bind(2, static_cast<std::uint32_t>(c.state));
    st.bind(3, c.delivery_count);
    st.bind(4, c.token);
    st.bind(5, c.locked_until);
    return one_row(st.run());
  }
  int write(const journal::message_removed& c) {
    st_.message_delete.bind(1, c.sequence_number);
    return one_row(st_.message_delete.run());
  }
  int write(const journal::feedback_pending& c) {
    auto& st = st_.record_insert;
    st.bind(1, c.record_id);
    st.bind_text(2, c.record.original_message_id);
    st.bind(3, c.record.enqueued_time_utc);
    st.bind(4, static_cast<std::uint32_t>(c.record.status_code));
    st.bind_text(5, c.record.description);
    st.bind_text(6, c.record.device_id);
    st.bind_text(7, c.record.device_generation_id);
    return st.run();
  }
  int write(const journal::feedback_batched& c) {
    auto& st = st_.batch_insert;
    st.bind(1, c.batch_id);
    st.bind(2, c.enqueued_time);
    st.bind(3, c.expires_at);
    st.bind_text(4, c.user_id);
    if (const int rc = st.run(); rc != SQLITE_DONE)
      return rc;
    st_.batch_take_records.bind(1, c.batch_id);
    st_.batch_take_records.bind(2, c.last_record_id);
    return st_.batch_take_records.run();
  }
  int write(const journal::batch_changed& c) {
    auto& st = st_.batch_update;
    st.bind(1, c.batch_id);
    st.bind(2, static_cast<std::uint32_t>(c.state));
    st.bind(3, c.delivery_count);
    st.bind(4, c.token);
    st.bind(5, c.locked_until);
    return one_row(st.run());
  }
  int write(const journal::batch_removed& c) {
    st_.batch_records_delete.bind(1, c.batch_id);
    if (const int rc = st_.batch_records_delete.run(); rc != SQLITE_DONE)
      return rc;
    st_.batch_delete.bind(1, c.batch_id);
    return one_row(st_.batch_delete.run());
  }
  int write(const journal::counters& c) {
    auto& st = st_.state_upsert;
    const auto& s = c.stats;
    st.bind(1, c.last_sequence);
    st.bind(2, c.last_now);
    st.bind(3, c.last_flush);
    st.bind(4, c.next_record_id);
    st.bind(5, c.next_batch_id);
    const std::uint64_t values[] = {s.accepted,
                                    s.completed,
                                    s.rejected,
                                    s.expired,
                                    s.delivery_count_exceeded,
                                    s.purged,
                                    s.removed_with_device,
                                    s.feedback_records,
                                    s.feedback_records_dropped,
                                    s.feedback_batches,
                                    c.feedback_batches_dropped};
    int i = 6;
    for (auto v : values)
      st.bind(i++, v);
    return st.run();
  }
  int write(const journal::config_changed& c) {
    auto put = [this](const char* key, auto value) {
      auto& st = st_.config_upsert;
      st.bind_text(1, key);
      if constexpr (std::is_convertible_v<decltype(value), std::string_view>)
        st.bind_text(2, value);
      else
        st.bind(2, static_cast<std::int64_t>(value));
      return st.run();
    };
    const auto& k = c.config;
    const int rcs[] = {
        put("name", std::string_view(k.name)),
        put("default_ttl_ms", k.default_ttl.count()),
        put("expiry_over_cap", to_string(k.expiry_over_cap)),
        put("max_delivery_count", k.max_delivery_count),
        put("delivery_count", to_string(k.delivery_count)),
        put("lock_duration_ms", k.lock_duration.count()),
        put("max_queue_depth", k.max_queue_depth),
        put("max_message_size", k.max_message_size),
        put("feedback_ttl_ms", k.feedback_ttl.count()),
        put("feedback_max_delivery_count", k.feedback_max_delivery_count),
        put("feedback_lock_duration_ms", k.feedback_lock_duration.count()),
        put("feedback_batch_size", k.feedback_batch_size),
        put("feedback_batch_interval_ms", k.feedback_batch_interval.count()),
        put("purge_feedback_for", to_string(k.purge_feedback_for)),
    };
    for (int rc : rcs)
      if (rc != SQLITE_DONE)
        return rc;
    return SQLITE_DONE;
  }

  int write(const journal::identity_put& c) {
    const auto& d = c.identity;
    auto& st = st_.identity_upsert;
    st.bind_text(1, d.device_id);
    st.bind_text(2, d.generation_id);
    st.bind(3, d.version);
    st.bind_text(4, to_string(d.status));
    st.bind_text(5, d.status_reason);
    st.bind(6, d.status_updated);
    st.bind_text(7, to_string(d.auth));
    st.bind_text(8, d.primary_key.empty() ? std::string() : d.primary_key.to_base64());
    st.bind_text(9, d.secondary_key.empty() ? std::string() : d.secondary_key.to_base64());
    st.bind_text(10, d.primary_thumbprint);
    st.bind_text(11, d.secondary_thumbprint);
    st.bind(12, static_cast<std::uint32_t>(d.iot_edge ? 1 : 0));
    return st.run();
  }
  int write(const journal::identity_removed& c) {
    st_.identity_delete.bind_text(1, c.device_id);
    return one_row(st_.identity_delete.run());
  }
  int write(const journal::policy_put& c) {
    const auto& p = c.policy;
    auto& st = st_.policy_upsert;
    st.bind_text(1, p.name);
    st.bind_text(2, p.primary_key.to_base64());
    st.bind_text(3, p.secondary_key.to_base64());
    st.bind(4, static_cast<std::uint32_t>(p.rights));
    return st.run();
  }
  int write(const journal::policy_removed& c) {
    st_.policy_delete.bind_text(1, c.name);
    return one_row(st_.policy_delete.run());
  }

  // --- reading ---------------------------------------------------------------------

  /// Steps through the rows of `sql`, calling `row(stmt)` for each; `row` returns an empty string
  /// or a problem.
  template <class Row>
  result<void> each_row(const char* sql, const char* table, Row&& row) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr);
    detail::sqlite_stmt st(raw);
    if (rc != SQLITE_OK)
      return failure(rc, std::string("reading ") + table);
    while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
      if (std::string problem = row(st.get()); !problem.empty())
        return make_error(errc::malformed,
                          "sqlite store '" + path_ + "', table " + table + ": " + problem +
                              " (not what devicebound writes: the file is damaged or was edited)");
    }
    if (rc != SQLITE_DONE)
      return failure(rc, std::string("reading ") + table);
    return {};
  }

  /// Column readers: they check the type and note the first problem in `why`.
  struct reader {
    sqlite3_stmt* st;
    std::string why;

    std::int64_t i64(int col, const char* name) {
      if (sqlite3_column_type(st, col) != SQLITE_INTEGER)
        note(name, "is not an integer");
      return sqlite3_column_int64(st, col);
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
    std::string text(int col, const char* name) {
      if (sqlite3_column_type(st, col) != SQLITE_TEXT)
        note(name, "is not text");
      const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, col));
      return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st, col)))
               : std::string();
    }
    std::string blob(int col, const char* name) {
      if (sqlite3_column_type(st, col) != SQLITE_BLOB)
        note(name, "is not a blob");
      const auto* p = static_cast<const char*>(sqlite3_column_blob(st, col));
      return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st, col)))
               : std::string();
    }
    lock_token token(int col, const char* name) {
      lock_token t;
      if (sqlite3_column_type(st, col) == SQLITE_NULL)
        return t;
      const auto b = blob(col, name);
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

  result<void> load_config(journal::snapshot& s) {
    std::map<std::string, std::pair<std::string, std::int64_t>, std::less<>> kv;
    auto r =
        each_row("SELECT key, value, typeof(value) FROM config", "config", [&](sqlite3_stmt* st) {
          reader rd{st, {}};
          auto key = rd.text(0, "key");
          const std::string type = reinterpret_cast<const char*>(sqlite3_column_text(st, 2));
          if (type == "integer")
            kv[key] = {std::string(), sqlite3_column_int64(st, 1)};
          else if (type == "text")
            kv[key] = {rd.text(1, "value"), 0};
          else
            rd.note("value", ("of key '" + key + "' has type " + type).c_str());
          return rd.why;
        });
    if (!r)
      return r.error();
    if (kv.empty())
      return {};
    hub_config c;
    std::string problem;
    auto num = [&](const char* key, auto& field) {
      if (auto it = kv.find(key); it != kv.end()) {
        if (!it->second.first.empty())
          problem = std::string("config ") + key + " is not a number";
        using F = std::remove_reference_t<decltype(field)>;
        if constexpr (std::is_same_v<F, duration>)
          field = duration{it->second.second};
        else
          field = static_cast<F>(it->second.second);
      }
    };
    auto text = [&](const char* key) -> std::optional<std::string> {
      if (auto it = kv.find(key); it != kv.end())
        return it->second.first;
      return std::nullopt;
    };
    if (auto v = text("name"))
      c.name = *v;
    num("default_ttl_ms", c.default_ttl);
    // an unknown spelling is a problem; the field keeps its default meanwhile
    auto spelled = [&](const char* key, auto parse, auto& field) {
      if (auto v = text(key)) {
        if (auto e = parse(*v))
          field = *e;
        else
          problem = std::string("config ") + key + " is '" + *v + "'";
      }
    };
    spelled("expiry_over_cap", parse_expiry_cap_policy, c.expiry_over_cap);
    num("max_delivery_count", c.max_delivery_count);
    spelled("delivery_count", parse_delivery_count_rule, c.delivery_count);
    num("lock_duration_ms", c.lock_duration);
    num("max_queue_depth", c.max_queue_depth);
    num("max_message_size", c.max_message_size);
    num("feedback_ttl_ms", c.feedback_ttl);
    num("feedback_max_delivery_count", c.feedback_max_delivery_count);
    num("feedback_lock_duration_ms", c.feedback_lock_duration);
    num("feedback_batch_size", c.feedback_batch_size);
    num("feedback_batch_interval_ms", c.feedback_batch_interval);
    spelled("purge_feedback_for", parse_purge_feedback, c.purge_feedback_for);
    if (problem.empty())
      if (auto v = c.validate(); !v)
        problem = "stored configuration is invalid: " + v.error().message;
    if (!problem.empty())
      return make_error(errc::malformed, "sqlite store '" + path_ + "': " + problem);
    s.config = std::move(c);
    return {};
  }

  result<void> load_state(journal::snapshot& s) {
    return each_row(
        "SELECT last_sequence, last_now_ms, last_flush_ms, next_record_id, next_batch_id, "
        "accepted, completed, "
        "rejected, expired, delivery_count_exceeded, purged, removed_with_device, "
        "feedback_records, "
        "feedback_records_dropped, feedback_batches, feedback_batches_dropped FROM hub_state WHERE "
        "id = 1",
        "hub_state", [&](sqlite3_stmt* st) {
          reader rd{st, {}};
          journal::counters c;
          c.last_sequence = rd.u64(0, "last_sequence");
          c.last_now = rd.time(1, "last_now_ms");
          if (sqlite3_column_type(st, 2) != SQLITE_NULL)
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
    return each_row("SELECT id, generation_id FROM devices ORDER BY id", "devices",
                    [&](sqlite3_stmt* st) {
                      reader rd{st, {}};
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
        "lock_token, "
        "locked_until_ms FROM messages ORDER BY seq",
        "messages", [&](sqlite3_stmt* st) {
          reader rd{st, {}};
          journal::stored_message m;
          m.sequence_number = rd.u64(0, "seq");
          m.device_id = rd.text(1, "device_id");
          m.content = rd.blob(2, "content");
          m.enqueued_time = rd.time(3, "enqueued_ms");
          m.expires_at = rd.time(4, "expires_ms");
          m.ack = static_cast<ack_mode>(rd.u32(5, "ack", 3));
          m.state = rd.state(6, "state");
          m.delivery_count = rd.u32(7, "delivery_count");
          m.token = rd.token(8, "lock_token");
          m.locked_until = rd.time(9, "locked_until_ms");
          s.messages.push_back(std::move(m));
          return rd.why.empty() ? rd.why
                                : "message " + std::to_string(m.sequence_number) + ": " + rd.why;
        });
  }

  result<void> load_feedback(journal::snapshot& s) {
    auto r = each_row(
        "SELECT id, enqueued_ms, expires_ms, user_id, state, delivery_count, lock_token, "
        "locked_until_ms "
        "FROM feedback_batches ORDER BY id",
        "feedback_batches", [&](sqlite3_stmt* st) {
          reader rd{st, {}};
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
        "generation_id "
        "FROM feedback_records ORDER BY batch_id IS NOT NULL, batch_id, id",
        "feedback_records", [&](sqlite3_stmt* st) -> std::string {
          reader rd{st, {}};
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
          if (sqlite3_column_type(st, 1) == SQLITE_NULL) {
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
    auto key = [](reader& rd, int col, const char* name) {
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
        "iot_edge FROM identities ORDER BY device_id",
        "identities", [&](sqlite3_stmt* st) -> std::string {
          reader rd{st, {}};
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
          d.iot_edge = rd.u32(11, "iot_edge", 1) != 0;
          if (!rd.why.empty())
            return "device '" + d.device_id + "': " + rd.why;
          s.identities.push_back(std::move(d));
          return {};
        });
    if (!r)
      return r.error();
    return each_row("SELECT name, primary_key, secondary_key, rights FROM policies ORDER BY name",
                    "policies", [&](sqlite3_stmt* st) -> std::string {
                      reader rd{st, {}};
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

  // --- helpers ---------------------------------------------------------------------

  /// An error for SQLite code `rc` while `doing`: 400005 for a damaged or foreign
  /// file, 503001 when another process holds it, 500001 otherwise.
  error failure(int rc, const std::string& doing) const {
    const int primary = rc & 0xFF;
    std::string msg = db_ ? sqlite3_errmsg(db_.get()) : sqlite3_errstr(rc);
    if (primary == SQLITE_NOTFOUND)
      msg = "the change does not match the stored rows";
    const std::string text = "sqlite store '" + path_ + "': " + msg + " (" + sqlite3_errstr(rc) +
                             ", while " + doing + ")";
    switch (primary) {
      case SQLITE_NOTADB:
        return make_error(errc::malformed, text + ": not an SQLite database");
      case SQLITE_CORRUPT:
        return make_error(errc::malformed, text + ": the file is damaged or truncated");
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        return make_error(errc::server_busy,
                          text + ": another process has this store open (one hub per store)");
      default:
        return make_error(errc::server_error, text);
    }
  }

  result<void> exec(const char* sql, const std::string& doing) {
    if (const int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr); rc != SQLITE_OK)
      return failure(rc, doing);
    return {};
  }

  /// Steps a prepared statement that returns no rows once and resets it, so it
  /// holds nothing open; SQLITE_OK or the step's error code.
  int step_once(detail::sqlite_stmt& st) {
    const int rc = sqlite3_step(st.get());
    sqlite3_reset(st.get());
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
  }
  result<void> run(detail::sqlite_stmt& st, const char* doing) {
    if (const int rc = step_once(st); rc != SQLITE_OK)
      return failure(rc, doing);
    return {};
  }

  void rollback() {
    if (db_ && !sqlite3_get_autocommit(db_.get()))
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }

  result<std::int64_t> count(const char* sql) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr);
    detail::sqlite_stmt st(raw);
    if (rc != SQLITE_OK)
      return failure(rc, "reading the schema");
    rc = sqlite3_step(st.get());
    if (rc != SQLITE_ROW)
      return failure(rc, "reading the schema");
    return sqlite3_column_int64(st.get(), 0);
  }
  result<std::int64_t> pragma_int(const char* name) {
    return count(("PRAGMA " + std::string(name)).c_str());
  }
  result<std::string> pragma_text(const char* name) {
    sqlite3_stmt* raw = nullptr;
    const std::string sql = "PRAGMA " + std::string(name);
    int rc = sqlite3_prepare_v2(db_.get(), sql.c_str(), -1, &raw, nullptr);
    detail::sqlite_stmt st(raw);
    if (rc != SQLITE_OK)
      return failure(rc, sql);
    rc = sqlite3_step(st.get());
    if (rc != SQLITE_ROW)
      return failure(rc, sql);
    const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st.get(), 0));
    return std::string(t ? t : "");
  }

  // declared after the connection, so the statements are finalized before it closes
  /// The one-hub-per-file lock (`sqlite_options::exclusive`): an advisory
  /// `flock` on the database file, held until the connection has closed (the
  /// descriptor is closed after SQLite's, so its `fcntl` locks are not dropped).
  class owner_lock {
   public:
    owner_lock() = default;
    owner_lock(owner_lock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    owner_lock& operator=(owner_lock&& o) noexcept {
      if (this != &o) {
        release();
        fd_ = std::exchange(o.fd_, -1);
      }
      return *this;
    }
    ~owner_lock() { release(); }
    result<void> take(const std::string& lock_path) {
      const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0)
        return make_error(errc::server_error,
                          "cannot open '" + lock_path + "': " + std::strerror(errno));
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int e = errno;
        ::close(fd);
        if (e == EWOULDBLOCK)
          return make_error(errc::server_busy,
                            "another process has this store open (one hub per store)");
        return make_error(errc::server_error,
                          "cannot lock '" + lock_path + "': " + std::strerror(e));
      }
      release();
      fd_ = fd;
      return {};
    }

   private:
    void release() noexcept {
      if (fd_ >= 0)
        ::close(fd_);
      fd_ = -1;
    }
    int fd_ = -1;
  };

  owner_lock owner_;  // declared before db_: destroyed after the connection closes
  std::unique_ptr<sqlite3, db_close> db_;
  statements st_;
  std::string path_;
  sqlite_options options_;
  std::uint64_t commits_ = 0;
  bool in_group_ = false;
  /// The newest counters of the open group, written at `commit_group`.
  std::optional<journal::counters> group_counters_;
};

static_assert(hub_store<sqlite_store>);

}  // namespace devicebound
