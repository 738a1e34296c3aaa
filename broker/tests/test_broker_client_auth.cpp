// The plugin's admission and re-verification decisions
// (broker/plugin/client_auth.hpp), without a broker: which connected client a
// change of keys, policies or devices disconnects, and which it leaves alone.
// python/tests/test_broker_registry.py checks the same through mosquitto.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "../plugin/client_auth.hpp"

namespace {

namespace auth = devicebound::auth;
using namespace devicebound::broker;
using devicebound::time_point;
using rights = auth::access_rights;

constexpr std::string_view host = "hub.example.net";

auth::shared_access_key key(char fill) {
  return auth::shared_access_key::from_bytes(std::string(32, fill));
}

// 2026-01-01T00:00:00Z; tokens expire an hour later.
const time_point t0{std::chrono::seconds(1767225600)};
constexpr std::uint64_t se = 1767225600 + 3600;

auth::shared_access_policy policy(std::string name, char primary, char secondary, rights r) {
  return {std::move(name), key(primary), key(secondary), r};
}

auth::device_credentials device_row(char primary, char secondary, bool enabled = true) {
  return {key(primary), key(secondary), enabled};
}

auth::sas_token device_token(std::string_view id, char signer) {
  return auth::generate_sas_token(std::string(host) + "/devices/" + std::string(id), key(signer),
                                  se);
}

auth::sas_token policy_token(std::string_view resource, std::string name, char signer) {
  return auth::generate_sas_token(resource, key(signer), se, std::move(name));
}

// A client as the plugin keeps it after a successful CONNECT at t0.
admitted_client connected(std::string_view id, auth::sas_token token, bool device,
                          credential_rows rows) {
  std::span<const auth::shared_access_policy> policies;
  if (rows.policy)
    policies = {&*rows.policy, 1};
  const auto lookup = [&](std::string_view d) -> std::optional<auth::device_credentials> {
    return d == id ? rows.device : std::nullopt;
  };
  auto who = admit(id, token, host, device, policies, lookup, t0);
  EXPECT_TRUE(who.has_value()) << (who ? "" : who.error().message);
  const rights granted = who ? who->rights : rights::none;
  return {std::move(token), std::string(host), device, t0, std::move(rows), granted};
}

TEST(broker_client_auth, admit_matches_the_connect_rules) {
  const auto svc = policy("service", 'a', 'b', rights::service_connect);
  const auto reader = policy("registryRead", 'c', 'd', rights::registry_read);
  const auto dev_policy = policy("device", 'e', 'f', rights::device_connect);
  const auto lookup = [](std::string_view d) -> std::optional<auth::device_credentials> {
    if (d == "dev1")
      return device_row('1', '2');
    if (d == "off")
      return device_row('3', '4', false);
    return std::nullopt;
  };
  const auto one = [](const auth::shared_access_policy& p) {
    return std::span<const auth::shared_access_policy>(&p, 1);
  };
  EXPECT_TRUE(admit("be", policy_token(host, "service", 'a'), host, false, one(svc), lookup, t0));
  EXPECT_TRUE(admit("be", policy_token(host, "service", 'b'), host, false, one(svc), lookup, t0));
  auto refused =
      admit("be", policy_token(host, "registryRead", 'c'), host, false, one(reader), lookup, t0);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("neither ServiceConnect nor DeviceConnect"),
            std::string::npos);
  EXPECT_FALSE(admit("be", device_token("dev1", '1'), host, false, {}, lookup, t0));
  EXPECT_FALSE(admit("be", policy_token(std::string(host) + "/x", "service", 'a'), host, false,
                     one(svc), lookup, t0));

  EXPECT_TRUE(admit("dev1", device_token("dev1", '1'), host, true, {}, lookup, t0));
  EXPECT_TRUE(admit("dev1", device_token("dev1", '2'), host, true, {}, lookup, t0));
  EXPECT_FALSE(admit("dev1", device_token("dev1", '3'), host, true, {}, lookup, t0));
  EXPECT_TRUE(
      admit("dev1", policy_token(host, "device", 'e'), host, true, one(dev_policy), lookup, t0));
  EXPECT_FALSE(admit("dev1", policy_token(host, "service", 'a'), host, true, one(svc), lookup, t0));
  auto unknown =
      admit("nobody", policy_token(host, "device", 'e'), host, true, one(dev_policy), lookup, t0);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(auth::auth_failure_of(unknown.error()), auth::auth_failure::unknown_device);
  auto off =
      admit("off", policy_token(host, "device", 'e'), host, true, one(dev_policy), lookup, t0);
  ASSERT_FALSE(off);
  EXPECT_EQ(auth::auth_failure_of(off.error()), auth::auth_failure::device_disabled);
  // Expired at the instant given.
  auto late =
      admit("dev1", device_token("dev1", '1'), host, true, {}, lookup, t0 + std::chrono::hours(2));
  ASSERT_FALSE(late);
  EXPECT_EQ(auth::auth_failure_of(late.error()), auth::auth_failure::expired);
}

TEST(broker_client_auth, regenerated_primary_key_revokes_only_the_primary_key_tokens) {
  const credential_rows before{device_row('1', '2'), std::nullopt};
  const auto on_primary = connected("dev1", device_token("dev1", '1'), true, before);
  const auto on_secondary = connected("dev1", device_token("dev1", '2'), true, before);
  const credential_rows after{device_row('9', '2'), std::nullopt};

  const auto kicked = recheck(on_primary, "dev1", after);
  EXPECT_EQ(kicked.verdict, recheck_verdict::revoked);
  EXPECT_EQ(kicked.reason.rfind("BadSignature:", 0), 0u) << kicked.reason;
  EXPECT_TRUE(kicked.verified);
  const auto kept = recheck(on_secondary, "dev1", after);
  EXPECT_EQ(kept.verdict, recheck_verdict::stays) << kept.reason;
  EXPECT_TRUE(kept.verified);
}

TEST(broker_client_auth, unchanged_rows_need_no_hmac) {
  const credential_rows rows{device_row('1', '2'), std::nullopt};
  const auto client = connected("dev1", device_token("dev1", '1'), true, rows);
  const auto r = recheck(client, "dev1", rows);
  EXPECT_EQ(r.verdict, recheck_verdict::stays);
  EXPECT_FALSE(r.verified);
  // A token long expired by now is not what ends the connection: the check is
  // made at the instant of the CONNECT.
  const credential_rows rotated_secondary{device_row('1', '7'), std::nullopt};
  const auto again = recheck(client, "dev1", rotated_secondary);
  EXPECT_EQ(again.verdict, recheck_verdict::stays) << again.reason;
  EXPECT_TRUE(again.verified);
}

TEST(broker_client_auth, deleted_or_disabled_devices_whatever_the_token) {
  const credential_rows rows{device_row('1', '2'), std::nullopt};
  const auto client = connected("dev1", device_token("dev1", '1'), true, rows);
  const auto gone = recheck(client, "dev1", {});
  EXPECT_EQ(gone.verdict, recheck_verdict::deleted);
  EXPECT_EQ(gone.reason, "it is no longer registered");
  const auto off = recheck(client, "dev1", {device_row('1', '2', false), std::nullopt});
  EXPECT_EQ(off.verdict, recheck_verdict::disabled);
  EXPECT_EQ(off.reason, "it is disabled");

  // Through a policy token too, and before the policy is looked at.
  const auto dev_policy = policy("device", 'e', 'f', rights::device_connect);
  const auto by_policy = connected("dev1", policy_token(host, "device", 'e'), true,
                                   {device_row('1', '2'), dev_policy});
  EXPECT_EQ(recheck(by_policy, "dev1", {std::nullopt, std::nullopt}).verdict,
            recheck_verdict::deleted);
}

TEST(broker_client_auth, back_end_loses_its_connection_with_its_policy) {
  const auto svc = policy("service", 'a', 'b', rights::service_connect);
  const auto client = connected("be", policy_token(host, "service", 'a'), false, {{}, svc});
  const auto on_secondary = connected("be2", policy_token(host, "service", 'b'), false, {{}, svc});

  // Primary key renewed: the primary-key token is refused, the secondary one stays.
  const credential_rows renewed{std::nullopt, policy("service", 'z', 'b', rights::service_connect)};
  EXPECT_EQ(recheck(client, "be", renewed).verdict, recheck_verdict::revoked);
  EXPECT_EQ(recheck(on_secondary, "be2", renewed).verdict, recheck_verdict::stays);

  const auto deleted = recheck(client, "be", {});
  EXPECT_EQ(deleted.verdict, recheck_verdict::revoked);
  EXPECT_EQ(deleted.reason.rfind("UnknownPolicy:", 0), 0u) << deleted.reason;

  const auto no_connect =
      recheck(client, "be", {std::nullopt, policy("service", 'a', 'b', rights::registry_read)});
  EXPECT_EQ(no_connect.verdict, recheck_verdict::revoked);
  EXPECT_NE(no_connect.reason.find("neither ServiceConnect nor DeviceConnect"), std::string::npos);

  // DeviceConnect instead of ServiceConnect still opens a back-end connection
  // (the CONNECT rule); more rights change nothing.
  EXPECT_EQ(
      recheck(client, "be", {std::nullopt, policy("service", 'a', 'b', rights::device_connect)})
          .verdict,
      recheck_verdict::stays);
  EXPECT_EQ(recheck(client, "be",
                    {std::nullopt,
                     policy("service", 'a', 'b', rights::service_connect | rights::registry_write)})
                .verdict,
            recheck_verdict::stays);
}

// The rights a connection keeps follow its policy: the topic ACL reads them at
// every PUBLISH, SUBSCRIBE and delivery, so a right lost while connected is
// enforced at once (docs/security.md, "Revocation on the broker").
TEST(broker_client_auth, recheck_reports_the_rights_the_policy_grants_now) {
  const auto owner =
      policy("iothubowner", 'a', 'b',
             rights::service_connect | rights::device_connect | rights::registry_write);
  const auto client = connected("be", policy_token(host, "iothubowner", 'a'), false, {{}, owner});
  EXPECT_EQ(client.rights, rights::all);

  // Unchanged rows: nothing verified, the rights it has.
  const auto same = recheck(client, "be", client.verified_with);
  EXPECT_FALSE(same.verified);
  EXPECT_EQ(same.rights, rights::all);

  // DeviceConnect and RegistryWrite removed, ServiceConnect kept: it stays
  // connected with ServiceConnect alone.
  const auto narrowed = recheck(
      client, "be", {std::nullopt, policy("iothubowner", 'a', 'b', rights::service_connect)});
  EXPECT_EQ(narrowed.verdict, recheck_verdict::stays);
  EXPECT_TRUE(narrowed.verified);
  EXPECT_EQ(narrowed.rights, rights::service_connect);

  // Widened again: the new rights count too.
  const auto widened =
      recheck(client, "be",
              {std::nullopt,
               policy("iothubowner", 'a', 'b', rights::device_connect | rights::registry_write)});
  EXPECT_EQ(widened.verdict, recheck_verdict::stays);
  EXPECT_EQ(widened.rights, rights::device_connect | rights::registry_write);

  // A device's own key grants DeviceConnect.
  const auto dev = connected("dev1", device_token("dev1", '1'), true, {device_row('1', '2'), {}});
  EXPECT_EQ(dev.rights, rights::device_connect);
}

TEST(broker_client_auth, policy_token_device_needs_device_connect_still) {
  const auto dev_policy = policy("device", 'e', 'f', rights::device_connect);
  const credential_rows rows{device_row('1', '2'), dev_policy};
  const auto client = connected("dev1", policy_token(host, "device", 'e'), true, rows);
  const auto scoped = connected(
      "dev1", policy_token(std::string(host) + "/devices/dev1", "device", 'e'), true, rows);

  const credential_rows without{device_row('1', '2'),
                                policy("device", 'e', 'f', rights::service_connect)};
  for (const auto* c : {&client, &scoped}) {
    const auto r = recheck(*c, "dev1", without);
    EXPECT_EQ(r.verdict, recheck_verdict::revoked);
    EXPECT_EQ(r.reason.rfind("InsufficientRights:", 0), 0u) << r.reason;
  }
  EXPECT_EQ(recheck(client, "dev1", {device_row('1', '2'), std::nullopt}).verdict,
            recheck_verdict::revoked);
  EXPECT_EQ(recheck(client, "dev1",
                    {device_row('1', '2'), policy("device", 'q', 'f', rights::device_connect)})
                .verdict,
            recheck_verdict::revoked);
  // The device's own keys regenerated: a policy token does not rest on them.
  EXPECT_EQ(recheck(client, "dev1", {device_row('8', '9'), dev_policy}).verdict,
            recheck_verdict::stays);
}

}  // namespace
