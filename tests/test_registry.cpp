// The identity registry (include/devicebound/registry.hpp): PUT create/update
// rules, If-Match, keys, typed errors that change nothing, journal records, and
// a property test of the registry against a tiny std::map model.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <devicebound/registry.hpp>
#include <devicebound/store/store.hpp>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace devicebound;
using namespace std::chrono_literals;

constexpr time_point t0{duration{1704067200000}};  // 2024-01-01T00:00:00Z

auth::shared_access_key key_of(char fill, std::size_t n = 32) {
  return auth::shared_access_key::from_bytes(std::string(n, fill));
}

/// Keys 'a', 'b', ... (32 bytes each), and generation ids 100000000000000001, ...
struct fixture {
  registry reg;
  char next_key = 'a';
  std::uint64_t next_gen = 100000000000000000ull;
  int generations_asked = 0;
  key_source keys = [this] {
    return key_of(next_key++);
  };
  generation_source gens = [this](std::string_view) -> result<std::string> {
    ++generations_asked;
    return std::to_string(++next_gen);
  };

  result<put_result> put(device_identity_update u, std::optional<std::string> if_match = {},
                         time_point now = t0) {
    return reg.put(u, if_match, gens, now, keys);
  }
  static device_identity_update sas(std::string id) {
    device_identity_update u;
    u.device_id = std::move(id);
    return u;
  }
};

TEST(registry, create_generates_keys_and_starts_at_etag_1) {
  fixture f;
  auto r = f.put(fixture::sas("dev1"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->created);
  EXPECT_EQ(r->device.device_id, "dev1");
  EXPECT_EQ(etag_of(r->device), "1");
  EXPECT_EQ(r->device.generation_id, "100000000000000001");
  EXPECT_EQ(r->device.primary_key, key_of('a'));
  EXPECT_EQ(r->device.secondary_key, key_of('b'));
  EXPECT_EQ(r->device.status, device_status::enabled);
  EXPECT_EQ(r->device.status_updated, t0);
  EXPECT_EQ(f.reg.get("dev1").value(), r->device);
  const auto changes = f.reg.take_changes();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(std::get<journal::identity_put>(changes[0]).identity, r->device);
  EXPECT_FALSE(f.reg.has_changes());
}

TEST(registry, given_keys_are_kept_and_must_be_base64_of_16_to_64_bytes) {
  fixture f;
  auto u = fixture::sas("dev1");
  u.primary_key = key_of('x', 16).to_base64();
  u.secondary_key = key_of('y', 64).to_base64();
  auto r = f.put(u);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->device.primary_key, key_of('x', 16));
  EXPECT_EQ(r->device.secondary_key, key_of('y', 64));

  for (std::string bad :
       {key_of('x', 15).to_base64(), key_of('x', 65).to_base64(), std::string("not base64!")}) {
    auto v = fixture::sas("dev2");
    v.secondary_key = bad;
    auto e = f.put(v);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.code(), errc::argument_invalid);
    EXPECT_NE(e.error().message.find("secondaryKey"), std::string::npos) << e.error().message;
  }
  EXPECT_FALSE(f.reg.contains("dev2"));
  EXPECT_EQ(f.generations_asked, 1);  // refused PUTs never reach the engine
}

TEST(registry, put_without_if_match_on_an_existing_device_is_409) {
  fixture f;
  ASSERT_TRUE(f.put(fixture::sas("dev1")));
  (void)f.reg.take_changes();
  auto e = f.put(fixture::sas("dev1"));
  ASSERT_FALSE(e);
  EXPECT_EQ(e.code(), errc::device_already_exists);
  EXPECT_FALSE(f.reg.has_changes());
  EXPECT_EQ(etag_of(f.reg.get("dev1").value()), "1");
}

TEST(registry, if_match_star_or_the_current_etag_updates_and_bumps_the_etag) {
  fixture f;
  ASSERT_TRUE(f.put(fixture::sas("dev1")));
  auto u = fixture::sas("dev1");
  u.status = device_status::disabled;
  u.status_reason = "maintenance";
  auto r = f.put(u, std::string("*"), t0 + 5s);
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->created);
  EXPECT_EQ(etag_of(r->device), "2");
  EXPECT_EQ(r->device.status, device_status::disabled);
  EXPECT_EQ(r->device.status_updated, t0 + 5s);
  EXPECT_EQ(r->device.primary_key, key_of('a'));  // empty keys on update: kept
  EXPECT_EQ(r->device.generation_id, "100000000000000001");
  u.status_reason = "still";
  r = f.put(u, std::string("2"), t0 + 9s);
  ASSERT_TRUE(r);
  EXPECT_EQ(etag_of(r->device), "3");
  EXPECT_EQ(r->device.status_updated, t0 + 5s);  // status unchanged
  EXPECT_EQ(r->device.status_reason, "still");
}

TEST(registry, if_match_on_a_missing_device_or_a_stale_etag_is_412) {
  fixture f;
  auto e = f.put(fixture::sas("dev1"), std::string("*"));
  ASSERT_FALSE(e);
  EXPECT_EQ(e.code(), errc::precondition_failed);
  ASSERT_TRUE(f.put(fixture::sas("dev1")));
  e = f.put(fixture::sas("dev1"), std::string("7"));
  ASSERT_FALSE(e);
  EXPECT_EQ(e.code(), errc::precondition_failed);
  EXPECT_EQ(etag_of(f.reg.get("dev1").value()), "1");
}

TEST(registry, validation_names_the_field_and_changes_nothing) {
  fixture f;
  auto u = fixture::sas("bad id/");
  auto e = f.put(u);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.code(), errc::argument_invalid);
  EXPECT_NE(e.error().message.find("deviceId"), std::string::npos);
  u = fixture::sas("dev1");
  u.status_reason = std::string(129, 'r');
  e = f.put(u);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("statusReason"), std::string::npos);
  u = fixture::sas("dev1");
  u.auth = auth_type::self_signed;
  e = f.put(u);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("primaryThumbprint"), std::string::npos);
  u.primary_thumbprint = "xyz";
  e = f.put(u);
  ASSERT_FALSE(e);
  EXPECT_EQ(f.reg.size(), 0u);
  EXPECT_FALSE(f.reg.has_changes());
  EXPECT_EQ(f.generations_asked, 0);
}

TEST(registry, a_generation_error_refuses_the_put) {
  fixture f;
  auto e = f.reg.put(
      fixture::sas("dev1"), std::nullopt,
      [](std::string_view) -> result<std::string> {
        return make_error(errc::device_already_exists, "engine says no");
      },
      t0, f.keys);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.code(), errc::device_already_exists);
  EXPECT_FALSE(f.reg.contains("dev1"));
  EXPECT_FALSE(f.reg.has_changes());
}

TEST(registry, self_signed_devices_keep_thumbprints_and_no_keys) {
  fixture f;
  auto u = fixture::sas("cam");
  u.auth = auth_type::self_signed;
  u.primary_thumbprint = std::string(64, 'f');
  u.primary_key = key_of('k').to_base64();
  auto r = f.put(u);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->device.primary_key.empty());
  EXPECT_EQ(r->device.primary_thumbprint, std::string(64, 'f'));
  // a switch to sas generates keys
  auto v = fixture::sas("cam");
  r = f.put(v, std::string("*"));
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->device.primary_key.empty());
  EXPECT_TRUE(r->device.primary_thumbprint.empty());
}

TEST(registry, list_is_by_device_id_and_top_clamps) {
  fixture f;
  for (auto id : {"c", "a", "b", "d"})
    ASSERT_TRUE(f.put(fixture::sas(id)));
  auto all = f.reg.list();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].device_id, "a");
  EXPECT_EQ(all[3].device_id, "d");
  EXPECT_EQ(f.reg.list(2).size(), 2u);
  EXPECT_EQ(f.reg.list(0).size(), 4u);
  EXPECT_EQ(f.reg.list(2, "b")[0].device_id, "c");
}

TEST(registry, remove_honours_if_match_and_reports_404) {
  fixture f;
  ASSERT_TRUE(f.put(fixture::sas("dev1")));
  (void)f.reg.take_changes();
  EXPECT_EQ(f.reg.remove("dev1", std::string("9")).code(), errc::precondition_failed);
  EXPECT_EQ(f.reg.remove("nobody", std::nullopt).code(), errc::device_not_found);
  EXPECT_FALSE(f.reg.has_changes());
  EXPECT_TRUE(f.reg.remove("dev1", std::string("1")));
  EXPECT_EQ(f.reg.get("dev1").code(), errc::device_not_found);
  const auto c = f.reg.take_changes();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(std::get<journal::identity_removed>(c[0]).device_id, "dev1");
}

TEST(registry, policies_put_get_remove) {
  fixture f;
  EXPECT_TRUE(f.reg.put_policy(
      {"service", key_of('p'), key_of('q'), auth::access_rights::service_connect}));
  EXPECT_EQ(f.reg.get_policy("service").value().rights, auth::access_rights::service_connect);
  EXPECT_EQ(f.reg.put_policy({"", key_of('p'), key_of('q'), auth::access_rights::all}).code(),
            errc::argument_invalid);
  EXPECT_EQ(
      f.reg.put_policy({"short", key_of('p', 8), key_of('q'), auth::access_rights::all}).code(),
      errc::argument_invalid);
  EXPECT_TRUE(f.reg.remove_policy("service"));
  EXPECT_FALSE(f.reg.get_policy("service"));
  EXPECT_EQ(f.reg.take_changes().size(), 2u);
}

TEST(registry, restore_rebuilds_from_a_store) {
  fixture f;
  ASSERT_TRUE(f.put(fixture::sas("dev1")));
  auto u = fixture::sas("dev2");
  u.status = device_status::disabled;
  ASSERT_TRUE(f.put(u));
  ASSERT_TRUE(f.reg.put_policy({"owner", key_of('o'), key_of('p'), auth::access_rights::all}));
  memory_store s;
  ASSERT_TRUE(s.apply(f.reg.take_changes()));
  auto snap = s.load().value();
  registry back;
  ASSERT_TRUE(back.restore(snap.identities, snap.policies));
  EXPECT_EQ(back.list(), f.reg.list());
  EXPECT_EQ(back.policies(), f.reg.policies());
  snap.identities.push_back(snap.identities[0]);
  EXPECT_EQ(back.restore(snap.identities, snap.policies).code(), errc::malformed);
  EXPECT_EQ(back.size(), 0u);
}

TEST(registry, keys_from_a_token_source_are_32_bytes) {
  auto keys = keys_from(seeded_token_source(3));
  const auto a = keys(), b = keys();
  EXPECT_EQ(a.bytes().size(), 32u);
  EXPECT_NE(a, b);
}

// --- property: the registry against a std::map model ---------------------------------

struct model_device {
  std::uint64_t version = 1;
  device_status status = device_status::enabled;
};

RC_GTEST_PROP(registry_property, agrees_with_a_map_model_and_its_journal_replays, ()) {
  fixture f;
  std::map<std::string, model_device> model;
  memory_store store;
  const std::vector<std::string> ids = {"a", "b", "c"};
  const auto steps = *rc::gen::inRange(1, 60);
  for (int i = 0; i < steps; ++i) {
    const auto id = ids[static_cast<std::size_t>(*rc::gen::inRange(0, 3))];
    // If-Match: none, "*", or an etag 1..4 (current or stale)
    const int im = *rc::gen::inRange(0, 6);
    std::optional<std::string> if_match;
    if (im == 1)
      if_match = "*";
    else if (im >= 2)
      if_match = std::to_string(im - 1);
    auto it = model.find(id);
    const bool exists = it != model.end();
    const bool etag_ok = !if_match || *if_match == "*" ||
                         (exists && *if_match == std::to_string(it->second.version));
    if (*rc::gen::inRange(0, 3) == 0) {  // remove
      auto r = f.reg.remove(id, if_match);
      if (!exists) {
        RC_ASSERT(r.code() == errc::device_not_found);
      } else if (!etag_ok) {
        RC_ASSERT(r.code() == errc::precondition_failed);
      } else {
        RC_ASSERT(bool(r));
        model.erase(it);
      }
    } else {  // put
      auto u = fixture::sas(id);
      u.status = *rc::gen::element(device_status::enabled, device_status::disabled);
      auto r = f.put(u, if_match);
      if (!if_match && exists) {
        RC_ASSERT(r.code() == errc::device_already_exists);
      } else if (if_match && (!exists || !etag_ok)) {
        RC_ASSERT(r.code() == errc::precondition_failed);
      } else {
        RC_ASSERT(bool(r));
        RC_ASSERT(r->created == !exists);
        auto& m = model[id];
        m.version = exists ? m.version + 1 : 1;
        m.status = u.status;
      }
    }
    RC_ASSERT(store.apply(f.reg.take_changes()).has_value());
    // the registry equals the model
    const auto list = f.reg.list();
    RC_ASSERT(list.size() == model.size());
    auto mi = model.begin();
    for (const auto& d : list) {
      RC_ASSERT(d.device_id == mi->first);
      RC_ASSERT(d.version == mi->second.version);
      RC_ASSERT(d.status == mi->second.status);
      RC_ASSERT(!d.primary_key.empty());
      ++mi;
    }
  }
  // what the journal stored rebuilds the same registry
  auto snap = store.load().value();
  registry back;
  RC_ASSERT(back.restore(snap.identities, snap.policies).has_value());
  RC_ASSERT(back.list() == f.reg.list());
}

}  // namespace
