#include "registry_db.hpp"

#include <filesystem>
#include <utility>

namespace devicebound::broker {

namespace {

std::string_view column_text(sqlite3_stmt* s, int column) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(s, column));
  if (text == nullptr)
    return {};
  return {text, static_cast<std::size_t>(sqlite3_column_bytes(s, column))};
}

// A key column: '' is no key (it signs nothing); anything else must be base64.
result<auth::shared_access_key> key_of(std::string_view text, std::string_view whose) {
  if (text.empty())
    return auth::shared_access_key{};
  auto key = auth::shared_access_key::from_base64(text);
  if (!key)
    return make_error(errc::server_error, std::string(whose) + ": " + key.error().message);
  return std::move(*key);
}

// Resets a statement when the lookup ends, however it ends.
struct reset_on_exit {
  sqlite3_stmt* stmt;
  ~reset_on_exit() {
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
  }
};

}  // namespace

void registry_db::close() noexcept {
  device_stmt_.reset();
  policy_stmt_.reset();
  version_stmt_.reset();
  db_.reset();
  data_version_.reset();
}

devicebound::error registry_db::failure(int rc, std::string_view what) const {
  const bool busy = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
  std::string message = "registry_db " + path_ + ": " + std::string(what) + ": " +
                        (db_ ? sqlite3_errmsg(db_.get()) : sqlite3_errstr(rc));
  return make_error(busy ? errc::server_busy : errc::server_error, std::move(message));
}

result<registry_db::stmt_ptr> registry_db::prepare(const char* sql) {
  sqlite3_stmt* raw = nullptr;
  const int rc = sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  stmt_ptr s(raw);
  if (rc != SQLITE_OK)
    return failure(rc, "preparing");
  return s;
}

registry_open registry_db::open(const std::string& path, std::chrono::milliseconds busy_timeout,
                                std::string& why) {
  close();
  path_ = path;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    why = "no file " + path + " (the hub has not created its store yet)";
    return registry_open::absent;
  }
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) {
    why = failure(rc, "opening read-only").message;
    close();
    return registry_open::failed;
  }
  sqlite3_extended_result_codes(db_.get(), 1);
  sqlite3_busy_timeout(db_.get(), static_cast<int>(busy_timeout.count()));

  // user_version is read in a transaction of its own; a migration is one
  // commit, so the tables and the version appear together.
  auto version = prepare("PRAGMA user_version");
  if (!version) {
    why = version.error().message;
    close();
    return registry_open::failed;
  }
  rc = sqlite3_step(version->get());
  if (rc != SQLITE_ROW) {
    why = failure(rc, "reading the schema version").message;
    close();
    return registry_open::failed;
  }
  const auto schema = sqlite3_column_int64(version->get(), 0);
  version->reset();
  if (schema < first_schema_version) {
    why = path + " has schema version " + std::to_string(schema) +
          ", without the identity tables (they come with version " +
          std::to_string(first_schema_version) + ")";
    close();
    return registry_open::not_migrated;
  }
  auto device = prepare(
      "SELECT primary_key, secondary_key, status, auth_type FROM identities WHERE device_id=?");
  auto policy = prepare("SELECT primary_key, secondary_key, rights FROM policies WHERE name=?");
  auto data_version = prepare("PRAGMA data_version");
  for (const auto* r : {&device, &policy, &data_version}) {
    if (!*r) {
      why = r->error().message;
      close();
      return registry_open::not_migrated;
    }
  }
  device_stmt_ = std::move(*device);
  policy_stmt_ = std::move(*policy);
  version_stmt_ = std::move(*data_version);
  if (auto first = changed(); !first) {
    why = first.error().message;
    close();
    return registry_open::failed;
  }
  return registry_open::ready;
}

result<std::optional<registry_device>> registry_db::device(std::string_view id) {
  sqlite3_stmt* s = device_stmt_.get();
  if (s == nullptr)
    return make_error(errc::server_error, "registry_db is not open");
  reset_on_exit reset{s};
  sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE)
    return std::optional<registry_device>{};
  if (rc != SQLITE_ROW)
    return failure(rc, "reading device");
  registry_device d;
  d.auth_type = std::string(column_text(s, 3));
  d.credentials.enabled = column_text(s, 2) == "enabled";
  if (d.auth_type == "sas") {
    const std::string whose = "device " + std::string(id);
    auto primary = key_of(column_text(s, 0), whose + " primary_key");
    if (!primary)
      return primary.error();
    auto secondary = key_of(column_text(s, 1), whose + " secondary_key");
    if (!secondary)
      return secondary.error();
    d.credentials.primary_key = std::move(*primary);
    d.credentials.secondary_key = std::move(*secondary);
  }
  return std::optional<registry_device>(std::move(d));
}

result<std::optional<auth::shared_access_policy>> registry_db::policy(std::string_view name) {
  sqlite3_stmt* s = policy_stmt_.get();
  if (s == nullptr)
    return make_error(errc::server_error, "registry_db is not open");
  reset_on_exit reset{s};
  sqlite3_bind_text(s, 1, name.data(), static_cast<int>(name.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE)
    return std::optional<auth::shared_access_policy>{};
  if (rc != SQLITE_ROW)
    return failure(rc, "reading policy");
  auth::shared_access_policy p;
  p.name = std::string(name);
  const std::string whose = "policy " + p.name;
  auto primary = key_of(column_text(s, 0), whose + " primary_key");
  if (!primary)
    return primary.error();
  auto secondary = key_of(column_text(s, 1), whose + " secondary_key");
  if (!secondary)
    return secondary.error();
  p.primary_key = std::move(*primary);
  p.secondary_key = std::move(*secondary);
  // SPEC 12.9.2 flags; bits this build does not know are ignored.
  p.rights = static_cast<auth::access_rights>(sqlite3_column_int64(s, 2) &
                                              static_cast<std::int64_t>(auth::access_rights::all));
  return std::optional<auth::shared_access_policy>(std::move(p));
}

result<bool> registry_db::changed() {
  sqlite3_stmt* s = version_stmt_.get();
  if (s == nullptr)
    return make_error(errc::server_error, "registry_db is not open");
  reset_on_exit reset{s};
  const int rc = sqlite3_step(s);
  if (rc != SQLITE_ROW)
    return failure(rc, "reading data_version");
  const std::int64_t now = sqlite3_column_int64(s, 0);
  const bool differs = data_version_.has_value() && *data_version_ != now;
  data_version_ = now;
  return differs;
}

}  // namespace devicebound::broker
