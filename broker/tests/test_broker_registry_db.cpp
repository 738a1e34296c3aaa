// The plugin's read-only view of the hub's identity registry
// (broker/plugin/registry_db.hpp), against a file written the way the hub
// writes it: schema v2 of plan step 9, WAL, a separate writer connection.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "../plugin/registry_db.hpp"

namespace {

using devicebound::errc;
using devicebound::auth::access_rights;
using devicebound::broker::registry_db;
using devicebound::broker::registry_open;
using namespace std::chrono_literals;

constexpr const char* schema_v2 = R"(
CREATE TABLE identities (
  device_id TEXT PRIMARY KEY, generation_id TEXT NOT NULL, version INTEGER NOT NULL,
  status TEXT NOT NULL, status_reason TEXT NOT NULL, status_updated_ms INTEGER NOT NULL,
  auth_type TEXT NOT NULL, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
  primary_thumbprint TEXT NOT NULL, secondary_thumbprint TEXT NOT NULL, iot_edge INTEGER NOT NULL);
CREATE TABLE policies (
  name TEXT PRIMARY KEY, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
  rights INTEGER NOT NULL);
)";

// base64 of 32 bytes 0..31, and of 16 bytes 0xff.
constexpr const char* key_a = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr const char* key_b = "/////////////////////w==";

// The hub's side: one read-write connection.
class writer {
 public:
  explicit writer(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
    exec("PRAGMA journal_mode=WAL");
  }
  ~writer() { sqlite3_close(db_); }
  writer(const writer&) = delete;
  writer& operator=(const writer&) = delete;

  void exec(const std::string& sql) {
    char* err = nullptr;
    ASSERT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK)
        << (err ? err : "") << " in " << sql;
  }
  void migrate() { exec(std::string("BEGIN;") + schema_v2 + "PRAGMA user_version=2; COMMIT;"); }

 private:
  sqlite3* db_ = nullptr;
};

class registry_db_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("devicebound-registry-db-" +
            std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "hub.db").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
  std::string path_;
  std::string why_;
};

TEST_F(registry_db_test, no_file_is_absent_and_creates_nothing) {
  registry_db r;
  EXPECT_EQ(r.open(path_, 0ms, why_), registry_open::absent);
  EXPECT_NE(why_.find("no file"), std::string::npos) << why_;
  EXPECT_FALSE(r.is_open());
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(registry_db_test, a_store_before_v2_is_not_migrated) {
  writer w(path_);
  w.exec("PRAGMA user_version=1");
  registry_db r;
  EXPECT_EQ(r.open(path_, 0ms, why_), registry_open::not_migrated);
  EXPECT_NE(why_.find("schema version 1"), std::string::npos) << why_;
  w.migrate();
  EXPECT_EQ(r.open(path_, 0ms, why_), registry_open::ready) << why_;
}

TEST_F(registry_db_test, a_file_that_is_not_a_database_fails) {
  std::FILE* f = std::fopen(path_.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fputs("this is not an SQLite database, but it is long enough to have a header.....", f);
  std::fclose(f);
  registry_db r;
  EXPECT_EQ(r.open(path_, 0ms, why_), registry_open::failed);
  EXPECT_FALSE(r.is_open());
}

TEST_F(registry_db_test, devices_and_policies_are_read_as_committed) {
  writer w(path_);
  w.migrate();
  registry_db r;
  ASSERT_EQ(r.open(path_, 250ms, why_), registry_open::ready) << why_;

  auto missing = r.device("dev1");
  ASSERT_TRUE(missing);
  EXPECT_FALSE(missing->has_value());

  w.exec(std::string("INSERT INTO identities VALUES ('dev1','g',1,'enabled','',0,'sas','") + key_a +
         "','" + key_b + "','','',0)");
  auto d = r.device("dev1");
  ASSERT_TRUE(d) << d.error().message;
  ASSERT_TRUE(d->has_value());
  EXPECT_TRUE((*d)->credentials.enabled);
  EXPECT_EQ((*d)->auth_type, "sas");
  EXPECT_EQ((*d)->credentials.primary_key.to_base64(), key_a);
  EXPECT_EQ((*d)->credentials.secondary_key.to_base64(), key_b);
  EXPECT_FALSE(r.device("DEV1")->has_value());  // ids are case-sensitive

  w.exec("UPDATE identities SET status='disabled', secondary_key='' WHERE device_id='dev1'");
  d = r.device("dev1");
  ASSERT_TRUE(d);
  EXPECT_FALSE((*d)->credentials.enabled);
  EXPECT_TRUE((*d)->credentials.secondary_key.empty());

  // A device without SAS keys (X.509) has no key to sign with.
  w.exec(std::string("INSERT INTO identities VALUES ('x509','g',1,'enabled','',0,'selfSigned','") +
         key_a + "','','ab','cd',0)");
  d = r.device("x509");
  ASSERT_TRUE(d);
  EXPECT_TRUE((*d)->credentials.primary_key.empty());

  w.exec(std::string("INSERT INTO policies VALUES ('service','") + key_a + "','', 4)");
  w.exec(std::string("INSERT INTO policies VALUES ('owner','") + key_a + "','" + key_b + "', 15)");
  w.exec(std::string("INSERT INTO policies VALUES ('future','") + key_a + "','', 4 | 64)");
  auto p = r.policy("service");
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->has_value());
  EXPECT_EQ((*p)->name, "service");
  EXPECT_EQ((*p)->rights, access_rights::service_connect);
  EXPECT_EQ(r.policy("owner")->value().rights, access_rights::all);
  EXPECT_EQ(r.policy("future")->value().rights, access_rights::service_connect);  // unknown bits
  EXPECT_FALSE(r.policy("nobody")->has_value());
}

TEST_F(registry_db_test, a_malformed_key_is_an_error_that_names_no_key) {
  writer w(path_);
  w.migrate();
  w.exec(
      "INSERT INTO identities VALUES ('dev1','g',1,'enabled','',0,'sas','not*base64','','','',0)");
  registry_db r;
  ASSERT_EQ(r.open(path_, 0ms, why_), registry_open::ready) << why_;
  auto d = r.device("dev1");
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::server_error);
  EXPECT_NE(d.error().message.find("device dev1 primary_key"), std::string::npos);
  EXPECT_EQ(d.error().message.find("not*base64"), std::string::npos);
}

TEST_F(registry_db_test, changed_sees_the_writers_commits_only) {
  writer w(path_);
  w.migrate();
  registry_db r;
  ASSERT_EQ(r.open(path_, 0ms, why_), registry_open::ready) << why_;
  EXPECT_FALSE(r.changed().value());
  EXPECT_FALSE(r.changed().value());
  w.exec(std::string("INSERT INTO policies VALUES ('p','") + key_a + "','',4)");
  EXPECT_TRUE(r.changed().value());
  EXPECT_FALSE(r.changed().value());
  (void)r.device("dev1");  // the reader's own reads change nothing
  EXPECT_FALSE(r.changed().value());
  w.exec("DELETE FROM policies");
  EXPECT_TRUE(r.changed().value());
}

TEST_F(registry_db_test, a_writer_that_keeps_readers_out_is_a_bounded_busy_error) {
  writer w(path_);
  w.exec("PRAGMA journal_mode=DELETE");
  w.migrate();
  registry_db r;
  ASSERT_EQ(r.open(path_, 50ms, why_), registry_open::ready) << why_;
  w.exec("BEGIN EXCLUSIVE");
  w.exec("DELETE FROM identities");
  const auto start = std::chrono::steady_clock::now();
  auto d = r.device("dev1");
  const auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::server_busy) << d.error().message;
  EXPECT_GE(waited, 40ms);
  EXPECT_LT(waited, 5s);
  w.exec("COMMIT");
  EXPECT_TRUE(r.device("dev1"));
}

TEST_F(registry_db_test, close_forgets_everything) {
  writer w(path_);
  w.migrate();
  registry_db r;
  ASSERT_EQ(r.open(path_, 0ms, why_), registry_open::ready) << why_;
  r.close();
  EXPECT_FALSE(r.is_open());
  EXPECT_FALSE(r.device("dev1"));
  EXPECT_FALSE(r.policy("p"));
  EXPECT_FALSE(r.changed());
}

}  // namespace
