// SAS tokens, connection strings, policies and rights (include/devicebound/auth/, SPEC 12).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "devicebound/auth/authenticate.hpp"
#include "devicebound/auth/base64.hpp"
#include "devicebound/auth/connection_string.hpp"
#include "devicebound/auth/policy.hpp"
#include "devicebound/auth/rights.hpp"
#include "devicebound/auth/sas_token.hpp"
#include "devicebound/auth/signature.hpp"
#include "devicebound/auth/url.hpp"

namespace auth = devicebound::auth;
using auth::access_rights;
using auth::auth_failure;
using devicebound::errc;
using devicebound::time_point;

namespace {

// Bytes 0x00..0x1f. The expected signatures below were computed once with
//   printf '<sr>\n<se>' | openssl dgst -sha256 -mac HMAC -macopt hexkey:000102…1f -binary | base64
constexpr const char* key_a = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr const char* host = "myhub.azure-devices.net";

auth::shared_access_key key(std::string_view b64) {
  return auth::shared_access_key::from_base64(b64).value();
}
auth::shared_access_key key_of(char fill) {
  return auth::shared_access_key::from_bytes(std::string(32, fill));
}

time_point at_seconds(std::int64_t s) {
  return time_point(std::chrono::seconds(s));
}

std::optional<auth_failure> failure(const devicebound::error& e) {
  return auth::auth_failure_of(e);
}

// A hub with the default policies (keys 'A'+i / 'a'+i) and three devices.
struct auth_hub : ::testing::Test {
  std::vector<auth::shared_access_policy> policies;
  std::map<std::string, auth::device_credentials, std::less<>> devices;
  auth::device_key_lookup lookup =
      [this](std::string_view id) -> std::optional<auth::device_credentials> {
    const auto it = devices.find(id);
    if (it == devices.end())
      return std::nullopt;
    return it->second;
  };
  time_point now = at_seconds(1'700'000'000);

  auth_hub() {
    char fill = 'A';
    policies = auth::make_default_policies([&fill] { return key_of(fill++); });
    devices["dev1"] = {key(key_a), key_of('s'), true};
    devices["dev2"] = {key_of('2'), key_of('3'), true};
    devices["off"] = {key_of('o'), key_of('p'), false};
  }

  const auth::shared_access_policy& policy(std::string_view name) const {
    return *auth::find_policy(policies, name);
  }
  std::string device_token(std::string_view id, const auth::shared_access_key& k,
                           std::int64_t ttl = 3600) const {
    return to_string(auth::generate_sas_token(std::string(host) + "/devices/" + std::string(id), k,
                                              auth::sas_expiry(now, std::chrono::seconds(ttl))));
  }
  std::string policy_token(std::string_view name, std::int64_t ttl = 3600,
                           bool secondary = false) const {
    const auto& p = policy(name);
    return to_string(auth::generate_sas_token(host, secondary ? p.secondary_key : p.primary_key,
                                              auth::sas_expiry(now, std::chrono::seconds(ttl)),
                                              std::string(name)));
  }
  devicebound::result<auth::principal> check(std::string_view token, time_point when) const {
    return auth::authenticate(token, host, policies, lookup, when);
  }
  devicebound::result<auth::principal> check(std::string_view token) const {
    return check(token, now);
  }
};

}  // namespace

// --- base64 and URL encoding --------------------------------------------------

TEST(AuthBase64, RoundTripsAndKnownValues) {
  EXPECT_EQ(auth::base64_encode(""), "");
  EXPECT_EQ(auth::base64_encode("f"), "Zg==");
  EXPECT_EQ(auth::base64_encode("fo"), "Zm8=");
  EXPECT_EQ(auth::base64_encode("foo"), "Zm9v");
  EXPECT_EQ(auth::base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(auth::base64_decode("Zm9vYg==").value(), "foob");
  EXPECT_EQ(auth::base64_decode("Zm9vYmE=").value(), "fooba");
}

TEST(AuthBase64, RejectsNonCanonicalText) {
  EXPECT_EQ(auth::base64_decode("Zm9").code(), errc::malformed);       // not a multiple of 4
  EXPECT_EQ(auth::base64_decode("Zm9v!A==").code(), errc::malformed);  // outside the alphabet
  EXPECT_EQ(auth::base64_decode("Zh==").code(), errc::malformed);      // unused bits set
  EXPECT_EQ(auth::base64_decode("Zm=v").code(), errc::malformed);      // '=' inside
  EXPECT_EQ(auth::base64_decode("=Zm9").code(), errc::malformed);
}

RC_GTEST_PROP(AuthBase64, DecodeInvertsEncode, (const std::string& bytes)) {
  RC_ASSERT(auth::base64_decode(auth::base64_encode(bytes)).value() == bytes);
}

TEST(AuthUrl, EncodesLikeTheSdksWithUppercaseHex) {
  EXPECT_EQ(auth::url_encode("myhub.azure-devices.net/devices/dev1"),
            "myhub.azure-devices.net%2Fdevices%2Fdev1");
  EXPECT_EQ(auth::url_encode("a+b/c=d ~_-."), "a%2Bb%2Fc%3Dd%20~_-.");
  EXPECT_EQ(auth::url_encode("!'()*"), "%21%27%28%29%2A");
  EXPECT_EQ(auth::url_decode("a%2fb%2Fc+d").value(), "a/b/c+d");  // '+' stays '+'
  EXPECT_EQ(auth::url_decode("%4").code(), errc::malformed);
  EXPECT_EQ(auth::url_decode("%zz").code(), errc::malformed);
}

RC_GTEST_PROP(AuthUrl, DecodeInvertsEncode, (const std::string& bytes)) {
  RC_ASSERT(auth::url_decode(auth::url_encode(bytes)).value() == bytes);
}

// --- rights and policies (SPEC 12.9) ------------------------------------------

TEST(AuthRights, ValuesAreIotHubs) {
  EXPECT_EQ(static_cast<int>(access_rights::registry_read), 1);
  EXPECT_EQ(static_cast<int>(access_rights::registry_write), 3);  // write implies read
  EXPECT_EQ(static_cast<int>(access_rights::service_connect), 4);
  EXPECT_EQ(static_cast<int>(access_rights::device_connect), 8);
  EXPECT_TRUE(auth::includes(access_rights::registry_write, access_rights::registry_read));
  EXPECT_FALSE(auth::includes(access_rights::registry_read, access_rights::registry_write));
}

TEST(AuthRights, PrintAndParse) {
  EXPECT_EQ(auth::to_string(access_rights::all), "RegistryWrite, ServiceConnect, DeviceConnect");
  EXPECT_EQ(auth::to_string(access_rights::registry_read), "RegistryRead");
  EXPECT_EQ(auth::to_string(access_rights::none), "None");
  EXPECT_EQ(auth::parse_access_rights("RegistryRead, RegistryWrite,ServiceConnect , deviceconnect")
                .value(),
            access_rights::all);
  EXPECT_EQ(auth::parse_access_rights("None").value(), access_rights::none);
  const auto unknown = auth::parse_access_rights("ServiceConnect, Owner");
  EXPECT_EQ(unknown.code(), errc::argument_invalid);
  EXPECT_NE(unknown.error().message.find("unknown right 'Owner'"), std::string::npos);
  EXPECT_NE(auth::parse_access_rights("ServiceConnect,,").error().message.find("empty entry"),
            std::string::npos);
  for (int bits = 0; bits < 16; ++bits) {
    if ((bits & 2) && !(bits & 1))
      continue;  // "write without read" is not a value IoT Hub has
    const auto r = static_cast<access_rights>(bits);
    EXPECT_EQ(auth::parse_access_rights(auth::to_string(r)).value(), r) << bits;
  }
}

TEST(AuthPolicies, DefaultPoliciesHaveIotHubsRights) {
  std::map<std::string, access_rights> expected = {
      {"iothubowner", access_rights::registry_write | access_rights::service_connect |
                          access_rights::device_connect},
      {"service", access_rights::service_connect},
      {"device", access_rights::device_connect},
      {"registryRead", access_rights::registry_read},
      {"registryReadWrite", access_rights::registry_read | access_rights::registry_write},
  };
  int calls = 0;
  const auto policies =
      auth::make_default_policies([&calls] { return key_of(static_cast<char>('a' + calls++)); });
  ASSERT_EQ(policies.size(), expected.size());
  EXPECT_EQ(calls, 10);
  for (const auto& p : policies) {
    EXPECT_EQ(p.rights, expected.at(p.name)) << p.name;
    EXPECT_NE(p.primary_key, p.secondary_key);
  }
  EXPECT_EQ(auth::find_policy(policies, "IotHubOwner"), nullptr);  // names are exact
}

// --- token text (SPEC 5.1, 12.6, 12.7.1) ---------------------------------------

TEST(AuthSasToken, KnownAnswerDeviceToken) {
  const auto t =
      auth::generate_sas_token("myhub.azure-devices.net/devices/dev1", key(key_a), 1'700'000'000);
  EXPECT_EQ(t.resource, "myhub.azure-devices.net%2Fdevices%2Fdev1");
  EXPECT_EQ(t.signature, "i+YmMcSSZc4KzBi6ejz3l0iL+2sN0CE3q6vSm837h2g=");
  EXPECT_EQ(to_string(t),
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1"
            "&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&se=1700000000");
}

TEST(AuthSasToken, KnownAnswerPolicyToken) {
  const auto t = auth::generate_sas_token(host, key(key_a), 1'700'003'600, "service");
  EXPECT_EQ(t.signature, "z2GsBnDbkPF5ILfrd9UgHrn3tqxZXTLBEN85EQUGBb0=");
  EXPECT_EQ(to_string(t),
            "SharedAccessSignature sr=myhub.azure-devices.net"
            "&sig=z2GsBnDbkPF5ILfrd9UgHrn3tqxZXTLBEN85EQUGBb0%3D&se=1700003600&skn=service");
}

TEST(AuthSasToken, FieldOrderAndNameCaseAreFree) {
  const auto a = auth::parse_sas_token(
      "SharedAccessSignature "
      "sr=h%2Fdevices%2Fd&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&skn=p&se=17");
  const auto b = auth::parse_sas_token(
      "SharedAccessSignature "
      "SE=17&SKN=p&Sig=i+YmMcSSZc4KzBi6ejz3l0iL+2sN0CE3q6vSm837h2g=&sR=h%2Fdevices%2Fd");
  ASSERT_TRUE(a) << a.error().message;
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->resource, "h%2Fdevices%2Fd");  // kept as received: it is what was signed
  EXPECT_EQ(a->expiry, 17u);
  EXPECT_EQ(a->key_name, "p");
}

TEST(AuthSasToken, PythonQuoteLeavesSlashInSig) {
  // urllib.parse.quote keeps '/' (SPEC 12.6.4).
  const auto t = auth::parse_sas_token("SharedAccessSignature sr=h&sig=ab/%2BcA%3D%3D&se=1");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->signature, "ab/+cA==");
}

TEST(AuthSasToken, ParseErrorsNameTheProblem) {
  const std::string sig = "&sig=AAAA";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "does not start with 'SharedAccessSignature '"},
      {"sharedaccesssignature sr=h" + sig + "&se=1", "does not start with"},
      {"SharedAccessSignature", "does not start with"},
      {"SharedAccessSignature ", "has no fields"},
      {"SharedAccessSignature  sr=h" + sig + "&se=1", "not printable ASCII"},
      {"SharedAccessSignature sr=h" + sig + "&se=1&", "empty field"},
      {"SharedAccessSignature sr=h&&sig=AAAA&se=1", "empty field"},
      {"SharedAccessSignature sr=h" + sig + "&se=1&sr=h", "field 'sr' appears twice"},
      {"SharedAccessSignature sr=h" + sig + "&SIG=AAAA&se=1", "field 'SIG' appears twice"},
      {"SharedAccessSignature sig=AAAA&se=1", "has no sr"},
      {"SharedAccessSignature sr=h&se=1", "has no sig"},
      {"SharedAccessSignature sr=h" + sig, "has no se"},
      {"SharedAccessSignature sr=h" + sig + "&se=1&foo=bar", "unknown field 'foo'"},
      {"SharedAccessSignature sr=h" + sig + "&se", "field 'se' has no '='"},
      {"SharedAccessSignature sr=" + sig + "&se=1", "field 'sr' is empty"},
      {"SharedAccessSignature sr=h" + sig + "&se=1&skn=", "field 'skn' is empty"},
      {"SharedAccessSignature sr=h" + sig + "&se=-1", "not a decimal number"},
      {"SharedAccessSignature sr=h" + sig + "&se=1.5", "not a decimal number"},
      {"SharedAccessSignature sr=h" + sig + "&se=0017", "leading zero"},
      {"SharedAccessSignature sr=h" + sig + "&se=99999999999999999999", "too large"},
      {"SharedAccessSignature sr=h&sig=A%3&se=1", "sig: bad percent escape"},
      {"SharedAccessSignature sr=h%G1" + sig + "&se=1", "sr: bad percent escape"},
      {"SharedAccessSignature sr=h&sig=not-base64!&se=1", "sig is not base64"},
      {"SharedAccessSignature sr=h&sig=AAA&se=1", "sig is not base64"},
      {"SharedAccessSignature sr=h" + sig + "&se=1 ", "not printable ASCII"},
      {"SharedAccessSignature sr=h\n" + sig + "&se=1", "not printable ASCII"},
      {"SharedAccessSignature sr=h" + sig + "&se=1&skn=%zz", "skn: bad percent escape"},
  };
  for (const auto& [text, expected] : cases) {
    const auto t = auth::parse_sas_token(text);
    ASSERT_FALSE(t) << text;
    EXPECT_EQ(t.code(), errc::malformed) << text;
    EXPECT_NE(t.error().message.find(expected), std::string::npos)
        << text << " -> " << t.error().message;
  }
  EXPECT_EQ(
      auth::parse_sas_token("SharedAccessSignature sr=" + std::string(5000, 'h') + sig + "&se=1")
          .code(),
      errc::malformed);
}

// Found by sas_token_fuzz: a 4012-byte token whose sig holds many raw '+' parsed, but its
// printed form (each '+' as %2B) passed the 4096-byte limit, so it did not parse again.
// Such a token is refused, and anything that parses prints to a text that parses.
TEST(AuthSasToken, ATokenThatWouldPrintPastTheLimitIsRefused) {
  const std::string sig(1600, '+');  // base64 of 1200 bytes 0xFB: 4800 bytes as %2B
  const std::string text = "SharedAccessSignature sr=h.example&se=1&sig=" + sig + "AAAA";
  ASSERT_LE(text.size(), auth::max_sas_token_length);
  const auto t = auth::parse_sas_token(text);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("once its sig and skn are URL-encoded"), std::string::npos)
      << t.error().message;
  // Just under the limit once printed: parsed, printed, parsed again alike.
  const std::string fits = "SharedAccessSignature sr=h.example&se=1&sig=" + std::string(400, '+');
  const auto u = auth::parse_sas_token(fits);
  ASSERT_TRUE(u) << u.error().message;
  EXPECT_EQ(auth::printed_length(*u), to_string(*u).size());
  const auto again = auth::parse_sas_token(to_string(*u));
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *u);
}

RC_GTEST_PROP(AuthSasToken, PrintThenParseGivesTheToken,
              (const std::string& device, const std::string& policy, std::uint64_t se,
               bool with_skn)) {
  const auto t =
      auth::generate_sas_token("h.example/devices/" + device, key(key_a), se,
                               with_skn && !policy.empty() ? std::optional(policy) : std::nullopt);
  const auto back = auth::parse_sas_token(to_string(t));
  RC_ASSERT(back.has_value());
  RC_ASSERT(*back == t);
  RC_ASSERT(auth::signature_matches(*back, key(key_a)));
}

// --- authenticate (SPEC 12.7, 12.8) --------------------------------------------

TEST_F(auth_hub, DeviceTokenFromItsPrimaryOrSecondaryKey) {
  for (const auto* k : {&devices["dev1"].primary_key, &devices["dev1"].secondary_key}) {
    const auto p = check(device_token("dev1", *k));
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_TRUE(p->is_device());
    EXPECT_EQ(p->device_id, "dev1");
    EXPECT_EQ(p->rights, access_rights::device_connect);
    EXPECT_EQ(p->scope, "/devices/dev1");
    EXPECT_TRUE(auth::authorize(*p, access_rights::device_connect, "dev1"));
  }
}

TEST_F(auth_hub, KnownAnswerTokenVerifies) {
  const std::string t =
      "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1"
      "&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&se=1700000000";
  EXPECT_TRUE(check(t, at_seconds(1'700'000'000)));
}

TEST_F(auth_hub, ExpiryEdgeWithClockSkew) {
  const std::string t = device_token("dev1", devices["dev1"].primary_key, 60);  // se = now + 60 s
  const auto se = now + std::chrono::seconds(60);
  const auto skew = std::chrono::minutes(5);
  EXPECT_TRUE(check(t, se));
  EXPECT_TRUE(check(t, se + skew));  // the last accepted instant
  const auto late = check(t, se + skew + std::chrono::milliseconds(1));
  ASSERT_FALSE(late);
  EXPECT_EQ(late.code(), errc::unauthorized);
  EXPECT_EQ(failure(late.error()), auth_failure::expired);
  EXPECT_EQ(check(t)->valid_until, se + skew);

  const auto token = auth::parse_sas_token(t).value();
  const auto strict =
      auth::authenticate(token, host, policies, lookup, se + std::chrono::seconds(1),
                         auth::verify_options{std::chrono::seconds(0)});
  EXPECT_EQ(failure(strict.error()), auth_failure::expired);
  // The skew is bounded: asking for a day still gives max_clock_skew.
  const auto lenient = auth::verify_options{std::chrono::hours(24)};
  EXPECT_TRUE(
      auth::authenticate(token, host, policies, lookup, se + auth::max_clock_skew, lenient));
  EXPECT_FALSE(auth::authenticate(token, host, policies, lookup,
                                  se + auth::max_clock_skew + std::chrono::seconds(1), lenient));
}

TEST_F(auth_hub, FarFutureExpiryDoesNotOverflow) {
  const auto t = auth::generate_sas_token(std::string(host) + "/devices/dev1",
                                          devices["dev1"].primary_key, UINT64_MAX);
  EXPECT_TRUE(auth::authenticate(t, host, policies, lookup, now));
}

TEST_F(auth_hub, WrongHost) {
  const auto t = to_string(auth::generate_sas_token("otherhub.azure-devices.net/devices/dev1",
                                                    devices["dev1"].primary_key, 1'800'000'000));
  const auto p = check(t);
  EXPECT_EQ(failure(p.error()), auth_failure::wrong_host);
  // A host that merely starts with ours is another host.
  const auto prefix = to_string(auth::generate_sas_token(
      std::string(host) + ".evil/devices/dev1", devices["dev1"].primary_key, 1'800'000'000));
  EXPECT_EQ(failure(check(prefix).error()), auth_failure::wrong_host);
}

TEST_F(auth_hub, HostIsCaseInsensitiveWithOrWithoutPortOrScheme) {
  for (const std::string sr :
       {"MyHub.Azure-Devices.NET/devices/dev1", "myhub.azure-devices.net:8883/devices/dev1",
        "amqps://myhub.azure-devices.net/devices/dev1/", "myhub.azure-devices.net/DEVICES/dev1"}) {
    const auto t = auth::generate_sas_token(sr, devices["dev1"].primary_key, 1'800'000'000);
    const auto p = auth::authenticate(t, "myhub.azure-devices.net:5671", policies, lookup, now);
    ASSERT_TRUE(p) << sr << ": " << p.error().message;
    EXPECT_EQ(p->scope, "/devices/dev1") << sr;
  }
}

TEST_F(auth_hub, SignatureOverSrAsReceived) {
  // Lower-case escapes (as a D-SAS sample writes them) and a raw, unencoded
  // sr (Node and Python service tokens) verify because the HMAC covers the
  // text as received (SPEC 12.7.2).
  for (const std::string sr :
       {"myhub.azure-devices.net%2fdevices%2fdev1", "myhub.azure-devices.net/devices/dev1"}) {
    auth::sas_token t;
    t.resource = sr;
    t.expiry = 1'800'000'000;
    t.signature = auth::sas_signature(devices["dev1"].primary_key, sr, t.expiry);
    EXPECT_TRUE(auth::authenticate(t, host, policies, lookup, now)) << sr;
    // Re-encoding sr changes what was signed.
    t.resource = auth::url_encode(auth::url_decode(sr).value());
    if (t.resource != sr) {
      EXPECT_EQ(failure(auth::authenticate(t, host, policies, lookup, now).error()),
                auth_failure::bad_signature);
    }
  }
}

TEST_F(auth_hub, BadSignature) {
  const auto p = check(device_token("dev1", key_of('x')));
  EXPECT_EQ(p.code(), errc::unauthorized);
  EXPECT_EQ(failure(p.error()), auth_failure::bad_signature);
  // Another device's key does not sign for dev1.
  EXPECT_EQ(failure(check(device_token("dev1", devices["dev2"].primary_key)).error()),
            auth_failure::bad_signature);
  // A tampered se breaks the signature.
  auto t = auth::parse_sas_token(device_token("dev1", devices["dev1"].primary_key)).value();
  t.expiry += 1;
  EXPECT_EQ(failure(auth::authenticate(t, host, policies, lookup, now).error()),
            auth_failure::bad_signature);
}

TEST_F(auth_hub, EmptyKeyNeverSigns) {
  devices["nokey"] = {auth::shared_access_key{}, auth::shared_access_key{}, true};
  EXPECT_EQ(failure(check(device_token("nokey", auth::shared_access_key{})).error()),
            auth_failure::bad_signature);
}

TEST_F(auth_hub, UnknownAndDisabledDevices) {
  EXPECT_EQ(failure(check(device_token("ghost", key_of('g'))).error()),
            auth_failure::unknown_device);
  EXPECT_EQ(failure(check(device_token("off", devices["off"].primary_key)).error()),
            auth_failure::device_disabled);
  // Ids are case-sensitive: dev1's token re-scoped to DEV1 names no device.
  EXPECT_EQ(failure(check(device_token("DEV1", devices["dev1"].primary_key)).error()),
            auth_failure::unknown_device);
}

TEST_F(auth_hub, DeviceTokenActsOnlyForItsOwnDevice) {
  const auto p = check(device_token("dev1", devices["dev1"].primary_key)).value();
  const auto other = auth::authorize(p, access_rights::device_connect, "dev2");
  EXPECT_EQ(failure(other.error()), auth_failure::wrong_device);
  EXPECT_EQ(failure(auth::authorize(p, access_rights::device_connect, "dev10").error()),
            auth_failure::wrong_device);
  EXPECT_EQ(failure(auth::authorize(p, access_rights::device_connect, "dev").error()),
            auth_failure::wrong_device);
  // A device key grants DeviceConnect only: no service or registry calls.
  EXPECT_EQ(failure(auth::authorize(p, access_rights::service_connect).error()),
            auth_failure::insufficient_rights);
  EXPECT_EQ(failure(auth::authorize(p, access_rights::registry_read).error()),
            auth_failure::insufficient_rights);
}

TEST_F(auth_hub, PolicyTokensPrimaryAndSecondaryKey) {
  for (const bool secondary : {false, true}) {
    const auto p = check(policy_token("service", 3600, secondary));
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_EQ(p->policy, "service");
    EXPECT_EQ(p->rights, access_rights::service_connect);
    EXPECT_EQ(p->scope, "");
    EXPECT_TRUE(auth::authorize(*p, access_rights::service_connect));
  }
}

TEST_F(auth_hub, RightsOfEachDefaultPolicyPerOperation) {
  struct row {
    const char* policy;
    bool service, registry_read, registry_write, device;
  };
  const row rows[] = {
      {"iothubowner", true, true, true, true},         {"service", true, false, false, false},
      {"device", false, false, false, true},           {"registryRead", false, true, false, false},
      {"registryReadWrite", false, true, true, false},
  };
  for (const auto& r : rows) {
    const auto p = check(policy_token(r.policy)).value();
    EXPECT_EQ(static_cast<bool>(auth::authorize(p, access_rights::service_connect)), r.service)
        << r.policy;
    EXPECT_EQ(static_cast<bool>(auth::authorize(p, access_rights::registry_read)), r.registry_read)
        << r.policy;
    EXPECT_EQ(static_cast<bool>(auth::authorize(p, access_rights::registry_write)),
              r.registry_write)
        << r.policy;
    EXPECT_EQ(static_cast<bool>(auth::authorize(p, access_rights::device_connect, "dev2")),
              r.device)
        << r.policy;
  }
}

TEST_F(auth_hub, UnknownPolicyAndHubTokenWithoutPolicy) {
  const auto t = to_string(auth::generate_sas_token(host, key_of('A'), 1'800'000'000, "nobody"));
  EXPECT_EQ(failure(check(t).error()), auth_failure::unknown_policy);
  const auto no_skn = to_string(auth::generate_sas_token(host, key_of('A'), 1'800'000'000));
  EXPECT_EQ(failure(check(no_skn).error()), auth_failure::hub_token_without_policy);
  // A policy's key signs only under its own name.
  const auto swapped = to_string(
      auth::generate_sas_token(host, policy("device").primary_key, 1'800'000'000, "iothubowner"));
  EXPECT_EQ(failure(check(swapped).error()), auth_failure::bad_signature);
}

TEST_F(auth_hub, PolicyTokenScopedToADevice) {
  // "Use a shared access policy to access on behalf of a device" (SPEC 12.7.4).
  const auto& dev = policy("device");
  const auto t = to_string(auth::generate_sas_token(std::string(host) + "/devices/dev2",
                                                    dev.primary_key, 1'800'000'000, "device"));
  const auto p = check(t).value();
  EXPECT_FALSE(p.is_device());
  EXPECT_EQ(p.device_id, "dev2");
  EXPECT_TRUE(auth::authorize(p, access_rights::device_connect, "dev2"));
  EXPECT_EQ(failure(auth::authorize(p, access_rights::device_connect, "dev1").error()),
            auth_failure::wrong_device);
  // An owner token scoped to a device cannot act on the hub as a whole.
  const auto owner = to_string(auth::generate_sas_token(std::string(host) + "/devices/dev2",
                                                        policy("iothubowner").primary_key,
                                                        1'800'000'000, "iothubowner"));
  EXPECT_EQ(failure(auth::authorize(check(owner).value(), access_rights::service_connect).error()),
            auth_failure::out_of_scope);
  // A policy token for a disabled device is refused too.
  const auto off = to_string(auth::generate_sas_token(std::string(host) + "/devices/off",
                                                      dev.primary_key, 1'800'000'000, "device"));
  EXPECT_EQ(failure(check(off).error()), auth_failure::device_disabled);
}

TEST_F(auth_hub, ModuleTokensWithoutPolicyAreRefused) {
  const auto t = to_string(auth::generate_sas_token(std::string(host) + "/devices/dev1/modules/m1",
                                                    devices["dev1"].primary_key, 1'800'000'000));
  EXPECT_EQ(failure(check(t).error()), auth_failure::module_not_supported);
}

TEST_F(auth_hub, RawKeyIsNeverAToken) {
  const auto p = check(key_a);
  EXPECT_EQ(p.code(), errc::unauthorized);
  EXPECT_EQ(failure(p.error()), auth_failure::not_a_token);
  EXPECT_NE(p.error().message.find("raw key"), std::string::npos);
  EXPECT_EQ(failure(check(policy("service").primary_key.to_base64()).error()),
            auth_failure::not_a_token);
  EXPECT_EQ(failure(check("").error()), auth_failure::not_a_token);
  EXPECT_EQ(failure(check("SharedAccessSignature sr=x").error()), auth_failure::malformed_token);
}

TEST(AuthScope, SegmentWisePrefix) {
  EXPECT_TRUE(auth::covers("", "/devices/a"));
  EXPECT_TRUE(auth::covers("/devices/a", "/devices/a"));
  EXPECT_TRUE(auth::covers("/devices/a", "/devices/a/messages/devicebound"));
  EXPECT_FALSE(auth::covers("/devices/a", "/devices/ab"));
  EXPECT_FALSE(auth::covers("/devices/a", ""));
  const auto s =
      auth::parse_sas_resource("https%3A%2F%2FHub.Example%3A443%2FDevices%2FMy-Dev%2Fmodules%2Fm")
          .value();
  EXPECT_EQ(s.host, "hub.example");
  EXPECT_EQ(s.path, "/devices/My-Dev/modules/m");
  EXPECT_EQ(s.device_id, "My-Dev");
  EXPECT_EQ(s.module_id, "m");
  EXPECT_EQ(auth::parse_sas_resource("h//devices").code(), errc::malformed);
  EXPECT_EQ(auth::parse_sas_resource("%2Fdevices%2Fd").code(), errc::malformed);
}

// --- connection strings (SPEC 12.5) --------------------------------------------

TEST(AuthConnectionString, ServiceAndDeviceForms) {
  const std::string svc =
      std::string("HostName=myhub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=") +
      key_a;
  const auto s = auth::parse_connection_string(svc).value();
  EXPECT_EQ(s.kind(), auth::connection_string_kind::service);
  EXPECT_EQ(s.host_name, host);
  EXPECT_EQ(s.shared_access_key_name, "service");
  EXPECT_EQ(s.shared_access_key, key(key_a));
  EXPECT_EQ(to_string(s), svc);

  const std::string dev =
      std::string("HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=") + key_a;
  const auto d = auth::parse_connection_string(dev).value();
  EXPECT_EQ(d.kind(), auth::connection_string_kind::device);
  EXPECT_EQ(d.device_id, "dev1");
  EXPECT_EQ(to_string(d), dev);
  // The token a device client makes is the known-answer token.
  const auto t = auth::generate_sas_token(d, 1'700'000'000).value();
  EXPECT_EQ(t.signature, "i+YmMcSSZc4KzBi6ejz3l0iL+2sN0CE3q6vSm837h2g=");
  EXPECT_EQ(auth::sas_resource_uri(d), "myhub.azure-devices.net/devices/dev1");

  const std::string mod = std::string("HostName=h:8883;DeviceId=d;ModuleId=m;SharedAccessKey=") +
                          key_a + ";GatewayHostName=edge.local";
  const auto m = auth::parse_connection_string(mod).value();
  EXPECT_EQ(m.kind(), auth::connection_string_kind::module);
  EXPECT_EQ(m.gateway_host_name, "edge.local");
  EXPECT_EQ(auth::sas_resource_uri(m), "h:8883/devices/d/modules/m");  // HostName, not the gateway
  EXPECT_EQ(to_string(m), mod);

  const std::string sas =
      "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h%2Fdevices%2Fd"
      "&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&se=1700000000";
  const auto withsas = auth::parse_connection_string(sas).value();
  ASSERT_TRUE(withsas.shared_access_signature);
  EXPECT_EQ(withsas.shared_access_signature->expiry, 1'700'000'000u);
  EXPECT_EQ(to_string(withsas), sas);
  EXPECT_EQ(auth::generate_sas_token(withsas, 1).value(), *withsas.shared_access_signature);

  const auto x509 = auth::parse_connection_string("HostName=h;DeviceId=d;x509=True").value();
  EXPECT_TRUE(x509.x509);
  EXPECT_EQ(to_string(x509), "HostName=h;DeviceId=d;x509=true");
  EXPECT_EQ(auth::generate_sas_token(x509, 1).code(), errc::argument_invalid);
}

TEST(AuthConnectionString, KeysAreCaseInsensitiveAndEmptySegmentsSkipped) {
  const auto c = auth::parse_connection_string(
      std::string("hostname=h;deviceid=d;sharedaccesskey=") + key_a + ";");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(to_string(*c), std::string("HostName=h;DeviceId=d;SharedAccessKey=") + key_a);
}

TEST(AuthConnectionString, ErrorsNameTheProblem) {
  const std::string k = std::string(";SharedAccessKey=") + key_a;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "HostName is missing"},
      {"DeviceId=d" + k, "HostName is missing"},
      {"HostName=h;DeviceId=d", "no credential"},
      {"HostName=h;SharedAccessKeyName=service", "no credential"},
      {"HostName=h" + k, "SharedAccessKeyName is missing"},
      {"HostName=h;DeviceId=d;DeviceId=e" + k, "key DeviceId appears twice"},
      {"HostName=h;hostname=h;DeviceId=d" + k, "key HostName appears twice"},
      {"HostName=h;DeviceId=" + k, "key DeviceId has an empty value"},
      {"HostName=h;DeviceId" + k, "segment 'DeviceId' has no '='"},
      {"HostName=h;DeviceId=d;Colour=blue" + k, "unknown key 'Colour'"},
      {"HostName=h;DeviceId=d;SharedAccessKey=not base64!",
       "SharedAccessKey: the shared access key is not base64"},
      {"HostName=h;DeviceId=d;SharedAccessKey=AAA", "not base64"},
      {"HostName=h/x;DeviceId=d" + k, "may hold only letters"},
      {"HostName=h:0;DeviceId=d" + k, "bad port"},
      {"HostName=h:70000;DeviceId=d" + k, "bad port"},
      {"HostName=h;DeviceId=a/b" + k, "DeviceId:"},
      {"HostName=h;ModuleId=m;SharedAccessKeyName=s" + k, "ModuleId needs a DeviceId"},
      {"HostName=h;GatewayHostName=g;SharedAccessKeyName=s" + k, "GatewayHostName is for device"},
      {"HostName=h;SharedAccessKeyName=s;x509=true", "x509=true is for device"},
      {"HostName=h;DeviceId=d;x509=yes", "x509 must be 'true'"},
      {"HostName=h;DeviceId=d;x509=true" + k, "more than one credential"},
      {"HostName=h;DeviceId=d;SharedAccessSignature=sr=h&sig=AAAA&se=1",
       "SharedAccessSignature: SAS token"},
  };
  for (const auto& [text, expected] : cases) {
    const auto c = auth::parse_connection_string(text);
    ASSERT_FALSE(c) << text;
    EXPECT_EQ(c.code(), errc::argument_invalid) << text;
    EXPECT_NE(c.error().message.find(expected), std::string::npos)
        << text << " -> " << c.error().message;
    EXPECT_EQ(c.error().message.find(key_a), std::string::npos)
        << "a key leaked into: " << c.error().message;
  }
}

RC_GTEST_PROP(AuthConnectionString, PrintThenParseGivesTheSameValue,
              (bool device, bool module, bool gateway)) {
  const auto id =
      *rc::gen::container<std::string>(rc::gen::elementOf(std::string("abcXYZ019-._:=@$'()!*?,%")))
           .as("id");
  RC_PRE(!id.empty() && id.size() <= 128);
  auth::connection_string cs;
  cs.host_name = "hub.example:8883";
  if (device) {
    cs.device_id = id;
    if (module)
      cs.module_id = id;
    if (gateway)
      cs.gateway_host_name = "gw.local";
  } else {
    cs.shared_access_key_name = "service";
  }
  cs.shared_access_key = auth::shared_access_key::from_bytes(*rc::gen::arbitrary<std::string>());
  RC_PRE(!cs.shared_access_key->empty());
  const auto back = auth::parse_connection_string(to_string(cs));
  RC_ASSERT(back.has_value());
  RC_ASSERT(*back == cs);
}
