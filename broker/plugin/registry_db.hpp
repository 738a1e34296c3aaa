// The hub's identity registry as the broker plugin reads it: the `identities`
// and `policies` tables of devicebound-hub's SQLite store (schema v2), opened
// read-only (docs/architecture.md, "Identity channel to the broker plugin").
//
// The hub is the only writer and replies to a registry call only after its
// commit, so a device created over REST is found here by the time its owner
// learns it exists. `changed()` tells the plugin when to look again at who is
// connected. Not thread-safe: mosquitto calls the plugin on one thread.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <devicebound/auth/policy.hpp>
#include <devicebound/errors.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace devicebound::broker {

/// A registered device, as authentication needs it.
struct registry_device {
  auth::device_credentials credentials;  ///< empty keys when auth_type is not "sas"
  std::string auth_type;                 ///< "sas", "selfSigned", "certificateAuthority", "none"
};

/// Why `registry_db::open` did not give a usable registry.
enum class registry_open {
  ready,         ///< the tables are there: the registry is the source of truth
  absent,        ///< no file yet (the hub has not started)
  not_migrated,  ///< the file has no identity tables yet (schema before v2)
  failed,        ///< not a database, unreadable, locked past the busy timeout
};

class registry_db {
 public:
  /// The schema version that added `identities` and `policies`.
  static constexpr int first_schema_version = 2;

  registry_db() = default;

  /// Opens `path` read-only. A busy file is waited for at most `busy_timeout`
  /// (mosquitto's one thread waits with it). `why` explains anything but `ready`.
  registry_open open(const std::string& path, std::chrono::milliseconds busy_timeout,
                     std::string& why);
  bool is_open() const noexcept { return db_ != nullptr; }
  /// How long later reads wait for a busy file.
  void set_busy_timeout(std::chrono::milliseconds t) noexcept {
    if (db_)
      sqlite3_busy_timeout(db_.get(), static_cast<int>(t.count()));
  }
  void close() noexcept;

  /// The device `id`, `std::nullopt` if it is not registered. Errors
  /// (`server_busy`, `server_error`): the file could not be read.
  result<std::optional<registry_device>> device(std::string_view id);
  /// The shared access policy `name`, `std::nullopt` if there is none.
  result<std::optional<auth::shared_access_policy>> policy(std::string_view name);
  /// Whether another connection (the hub) committed since the previous call
  /// (`PRAGMA data_version`); the first call after `open` answers false.
  result<bool> changed();

 private:
  struct db_closer {
    void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
  };
  struct stmt_closer {
    void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
  };
  using stmt_ptr = std::unique_ptr<sqlite3_stmt, stmt_closer>;

  result<stmt_ptr> prepare(const char* sql);
  devicebound::error failure(int rc, std::string_view what) const;

  std::unique_ptr<sqlite3, db_closer> db_;
  stmt_ptr device_stmt_, policy_stmt_, version_stmt_;
  std::string path_;
  std::optional<std::int64_t> data_version_;
};

}  // namespace devicebound::broker
