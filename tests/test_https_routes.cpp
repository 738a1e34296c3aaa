// The HTTPS door's routing and replies without sockets (apps/devicebound-hub/
// https_routes.hpp): each endpoint of SPEC 11 and 12, each error, the device
// JSON codec and the token checks.
#include <gtest/gtest.h>

#include <devicebound/auth/signature.hpp>
#include <devicebound/codec/device_json.hpp>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "https_routes.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
using namespace devicebound::hubd::https;
using namespace std::chrono_literals;

const std::string token_text = "0f8fad5b-d9cb-469f-a165-70867728950e";
const lock_token token = *lock_token::parse(token_text);

struct call {
  std::string method;
  std::string target;
  header_fields headers;
  std::string body;

  http_request view() const { return {method, target, &headers, body}; }
};

route_result go(const std::string& method, const std::string& target, std::string body = {},
                header_fields headers = {}) {
  call c{method, target, std::move(headers), std::move(body)};
  return route(c.view());
}

routed ok(const route_result& r) {
  if (const auto* e = std::get_if<http_response>(&r))
    ADD_FAILURE() << "refused: " << e->status << " " << e->body;
  const auto* x = std::get_if<routed>(&r);
  return x ? *x : routed{};
}

http_response refused(const route_result& r) {
  const auto* x = std::get_if<http_response>(&r);
  EXPECT_NE(x, nullptr) << "routed, expected an error";
  return x ? *x : http_response{0, {}, {}};
}

std::string header(const http_response& r, std::string_view name) {
  const std::string* v = r.header(name);
  return v ? *v : std::string("<absent>");
}

/// The SPEC 11.6.2 shape: status, iothub-errorcode, Message and ExceptionMessage.
void expect_error(const http_response& r, unsigned status, std::string_view name) {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_EQ(header(r, "iothub-errorcode"), name);
  EXPECT_EQ(header(r, "Content-Type"), "application/json; charset=utf-8");
  const auto j = nlohmann::json::parse(r.body);
  EXPECT_TRUE(j["Message"].get<std::string>().starts_with("ErrorCode:" + std::string(name) + ";"))
      << r.body;
  EXPECT_TRUE(j["ExceptionMessage"].get<std::string>().starts_with("Tracking ID:")) << r.body;
  EXPECT_NE(j["ExceptionMessage"].get<std::string>().find("-TimeStamp:"), std::string::npos);
}

// --- shared access policies (devicebound's admin API) -----------------------------------------

TEST(https_routes, PolicyRoutesMapToTheirRequests) {
  routed r = ok(go("GET", "/devicebound/policies?api-version=2021-04-12"));
  EXPECT_EQ(r.op, operation::policy_list);
  EXPECT_EQ(r.needed, auth::access_rights::all);
  EXPECT_TRUE(r.device.empty());
  EXPECT_TRUE(std::holds_alternative<policy_list_request>(r.what));
  EXPECT_EQ(ok(go("GET", "/DeviceBound/Policies/")).op, operation::policy_list);

  r = ok(go("GET", "/devicebound/policies/iothubowner"));
  EXPECT_EQ(r.op, operation::policy_get);
  EXPECT_EQ(std::get<policy_get_request>(r.what).name, "iothubowner");

  r = ok(go("DELETE", "/devicebound/policies/my.policy-1_x?api-version=x"));
  EXPECT_EQ(r.op, operation::policy_delete);
  EXPECT_EQ(r.needed, auth::access_rights::all);
  EXPECT_EQ(std::get<policy_delete_request>(r.what).name, "my.policy-1_x");

  r = ok(go("POST", "/devicebound/policies/service/renew-key", R"({"renewKey":"Secondary"})"));
  EXPECT_EQ(r.op, operation::policy_renew);
  EXPECT_EQ(std::get<policy_renew_request>(r.what).which, renew_key::secondary);
  EXPECT_EQ(
      std::get<policy_renew_request>(
          ok(go("POST", "/devicebound/policies/service/renew-key", R"({"renewKey":"swap"})")).what)
          .which,
      renew_key::swap);
  EXPECT_EQ(std::get<policy_renew_request>(ok(go("POST", "/devicebound/policies/service/renew-key",
                                                 R"({"renewKey":"primary"})"))
                                               .what)
                .which,
            renew_key::primary);
}

TEST(https_routes, PolicyPutDecodesTheRule) {
  const std::string key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
  routed r =
      ok(go("PUT", "/devicebound/policies/backend",
            R"({"keyName":"backend","rights":"RegistryRead, ServiceConnect","primaryKey":")" + key +
                R"(","secondaryKey":null,"extra":1})"));
  EXPECT_EQ(r.op, operation::policy_put);
  EXPECT_EQ(r.needed, auth::access_rights::all);
  auto p = std::get<policy_put_request>(r.what);
  EXPECT_EQ(p.policy.name, "backend");
  EXPECT_EQ(p.policy.rights,
            auth::access_rights::registry_read | auth::access_rights::service_connect);
  EXPECT_EQ(p.policy.primary_key.to_base64(), key);
  EXPECT_TRUE(p.policy.secondary_key.empty());
  EXPECT_FALSE(p.create_only);
  // rights as an array; If-None-Match: * creates only
  r = ok(go("PUT", "/devicebound/policies/b2", R"({"rights":["DeviceConnect","RegistryWrite"]})",
            {{"if-none-match", "*"}}));
  p = std::get<policy_put_request>(r.what);
  EXPECT_EQ(p.policy.rights,
            auth::access_rights::device_connect | auth::access_rights::registry_write);
  EXPECT_TRUE(p.policy.primary_key.empty());
  EXPECT_TRUE(p.create_only);
}

TEST(https_routes, PolicyErrorsAre400NamingTheField) {
  const auto bad = [](const std::string& method, const std::string& target, const std::string& body,
                      std::string_view names) {
    const auto res = refused(go(method, target, body));
    expect_error(res, 400, "ArgumentInvalid");
    EXPECT_NE(res.body.find(names), std::string::npos) << target << " " << body << ": " << res.body;
  };
  const std::string put = "/devicebound/policies/p";
  bad("PUT", put, "not json", "not JSON");
  bad("PUT", put, "[1]", "not a JSON object");
  bad("PUT", put, "{}", "rights: missing");
  bad("PUT", put, R"({"rights":"ServiceConnect, Root"})", "rights: unknown right");
  bad("PUT", put, R"({"rights":"None"})", "rights: a policy needs at least one right");
  bad("PUT", put, R"({"rights":[]})", "rights: a string or a non-empty array");
  bad("PUT", put, R"({"rights":[4]})", "rights: an entry is not a string");
  bad("PUT", put, R"({"rights":4})", "rights:");
  bad("PUT", put, R"({"rights":"ServiceConnect","primaryKey":"!!"})", "primaryKey: not base64");
  bad("PUT", put, R"({"rights":"ServiceConnect","secondaryKey":"AAEC"})",
      "secondaryKey: a key is base64 of 16 to 64 bytes");
  bad("PUT", put, R"({"rights":"ServiceConnect","primaryKey":7})", "primaryKey: not a string");
  bad("PUT", put,
      R"({"rights":"ServiceConnect","primaryKey":"AAECAwQFBgcICQoLDA0ODw==","secondaryKey":"AAECAwQFBgcICQoLDA0ODw=="})",
      "secondaryKey: the same as primaryKey");
  bad("PUT", put, R"({"rights":"ServiceConnect","keyName":"other"})", "keyName");
  bad("PUT", "/devicebound/policies/bad%20name", R"({"rights":"ServiceConnect"})", "policy name");
  bad("GET", "/devicebound/policies/" + std::string(65, 'a'), "", "1 to 64 characters");
  const std::string renew = "/devicebound/policies/p/renew-key";
  bad("POST", renew, "", "not JSON");
  bad("POST", renew, "{}", "renewKey: missing");
  bad("POST", renew, R"({"renewKey":"tertiary"})", "renewKey 'tertiary'");
  bad("POST", renew, R"({"renewKey":1})", "renewKey: missing or not a string");
  // wrong methods
  expect_error(refused(go("POST", "/devicebound/policies")), 405, "MethodNotAllowed");
  expect_error(refused(go("POST", "/devicebound/policies/p")), 405, "MethodNotAllowed");
  expect_error(refused(go("GET", renew)), 405, "MethodNotAllowed");
  expect_error(refused(go("GET", "/devicebound/policies/p/other")), 400, "ArgumentInvalid");
}

TEST(https_routes, PolicyRepliesAreArmRulesAndTypedErrors) {
  auth::shared_access_policy p{
      "svc", auth::shared_access_key::from_bytes(std::string(16, 'a')),
      auth::shared_access_key::from_bytes(std::string(16, 'b')),
      auth::access_rights::service_connect | auth::access_rights::registry_write};
  const routed get = ok(go("GET", "/devicebound/policies/svc"));
  auto res = respond(get, policy_reply{p, false}, {});
  EXPECT_EQ(res.status, 200u);
  EXPECT_EQ(header(res, "Content-Type"), "application/json; charset=utf-8");
  auto j = nlohmann::json::parse(res.body);
  EXPECT_EQ(j["keyName"], "svc");
  EXPECT_EQ(j["primaryKey"], p.primary_key.to_base64());
  EXPECT_EQ(j["secondaryKey"], p.secondary_key.to_base64());
  EXPECT_EQ(j["rights"], "RegistryWrite, ServiceConnect");

  const routed put = ok(go("PUT", "/devicebound/policies/svc", R"({"rights":"ServiceConnect"})"));
  EXPECT_EQ(respond(put, policy_reply{p, true}, {}).status, 201u);
  EXPECT_EQ(respond(put, policy_reply{p, false}, {}).status, 200u);

  const routed list = ok(go("GET", "/devicebound/policies"));
  res = respond(list, policies_reply{{p, p}}, {});
  EXPECT_EQ(res.status, 200u);
  j = nlohmann::json::parse(res.body);
  ASSERT_EQ(j["value"].size(), 2u);
  EXPECT_EQ(j["value"][1]["keyName"], "svc");

  const routed del = ok(go("DELETE", "/devicebound/policies/svc"));
  EXPECT_EQ(respond(del, done_reply{}, {}).status, 204u);
  expect_error(respond(del, make_error(errc::device_not_found, "no policy 'svc'"), {}), 404,
               "PolicyNotFound");
  expect_error(respond(del, make_error(errc::invalid_operation, "the last policy ..."), {}), 409,
               "InvalidOperation");
  // a reply of the wrong kind is a 500, not a crash
  EXPECT_EQ(respond(get, done_reply{}, {}).status, 500u);
}

TEST(https_routes, OperationAndRenewKeySpellingsRoundTrip) {
  std::set<std::string_view> seen;
  for (int i = 0; i <= static_cast<int>(operation::policy_delete); ++i) {
    const auto op = static_cast<operation>(i);
    const std::string_view s = to_string(op);
    EXPECT_TRUE(seen.insert(s).second) << s;
    EXPECT_EQ(parse_operation(s), op) << s;
    EXPECT_FALSE(parse_operation(std::string(s) + "x"));
  }
  EXPECT_FALSE(parse_operation("unknown"));
  for (auto k : {renew_key::primary, renew_key::secondary, renew_key::swap})
    EXPECT_EQ(parse_renew_key(to_string(k)), k);
  EXPECT_EQ(parse_renew_key("SWAP"), renew_key::swap);
  EXPECT_FALSE(parse_renew_key("primaryx"));
  EXPECT_FALSE(parse_renew_key(""));
}

// --- device C2D (SPEC 11.2, 11.3) ----------------------------------------------------------

TEST(https_routes, ReceiveMatchesEverySdksPathCaseAndAnyApiVersion) {
  for (const char* target :
       {"/devices/dev1/messages/deviceBound?api-version=2020-09-30&iothub-messagelocktimeout=60",
        "/devices/dev1/messages/devicebound?api-version=2021-04-12",
        "/devices/dev1/messages/devicebound?api-version=2016-11-14",
        "/DEVICES/dev1/Messages/DEVICEBOUND", "/devices/dev1/messages/devicebound/"}) {
    const routed r = ok(go("GET", target));
    EXPECT_EQ(r.op, operation::device_receive) << target;
    EXPECT_EQ(r.needed, auth::access_rights::device_connect);
    EXPECT_EQ(r.device, "dev1");
    ASSERT_TRUE(std::holds_alternative<receive_request>(r.what));
    EXPECT_EQ(std::get<receive_request>(r.what).device, "dev1");
  }
}

TEST(https_routes, DeviceIdsArePercentDecodedAndCaseSensitive) {
  const routed r = ok(go("GET", "/devices/My%3ADevice%40x/messages/devicebound"));
  EXPECT_EQ(std::get<receive_request>(r.what).device, "My:Device@x");
  expect_error(refused(go("GET", "/devices/a%2Fb/messages/devicebound")), 400, "ArgumentInvalid");
  expect_error(refused(go("GET", "/devices/bad%zz/messages/devicebound")), 400, "ArgumentInvalid");
  expect_error(refused(go("GET", "/devices//messages/devicebound")), 400, "ArgumentInvalid");
}

TEST(https_routes, CompleteRejectAbandonTakeTheLockTokenFromThePath) {
  const std::string base = "/devices/dev1/messages/deviceBound/";
  const auto settle = [](const route_result& r) {
    const routed x = ok(r);
    EXPECT_EQ(x.op, operation::device_settle);
    EXPECT_EQ(x.needed, auth::access_rights::device_connect);
    return std::get<settle_request>(x.what);
  };
  auto c = settle(go("DELETE", base + token_text + "?api-version=2021-04-12"));
  EXPECT_EQ(c.how, disposition::complete);
  EXPECT_EQ(c.token, token);
  EXPECT_EQ(c.device, "dev1");
  EXPECT_EQ(settle(go("DELETE", base + token_text + "?api-version=2021-04-12&reject")).how,
            disposition::reject);
  EXPECT_EQ(settle(go("DELETE", base + token_text + "?reject")).how, disposition::reject);
  EXPECT_EQ(settle(go("DELETE", base + token_text + "?reject=true&api-version=x")).how,
            disposition::reject);
  EXPECT_EQ(settle(go("POST", base + token_text + "/abandon?api-version=2016-11-14")).how,
            disposition::abandon);
  // Quoted (the ETag verbatim) and in upper case; If-Match is ignored (C# sends `IfMatch`).
  EXPECT_EQ(settle(go("DELETE", base + "%22" + token_text + "%22")).token, token);
  EXPECT_EQ(settle(go("POST", base + "0F8FAD5B-D9CB-469F-A165-70867728950E/Abandon", {},
                      {{"ifmatch", "\"whatever\""}}))
                .token,
            token);
}

TEST(https_routes, ALockTokenThatIsNoneOfOursIsLockLost) {
  expect_error(refused(go("DELETE", "/devices/dev1/messages/devicebound/not-a-token")), 412,
               "DeviceMessageLockLost");
  expect_error(refused(go("POST", "/devices/dev1/messages/devicebound/1234/abandon")), 412,
               "DeviceMessageLockLost");
  expect_error(refused(go("DELETE", "/messages/serviceBound/feedback/xyz")), 412,
               "DeviceMessageLockLost");
}

TEST(https_routes, WrongMethodsAre405WithAllow) {
  const auto r = refused(go("POST", "/devices/dev1/messages/devicebound"));
  expect_error(r, 405, "MethodNotAllowed");
  EXPECT_EQ(header(r, "Allow"), "GET");
  EXPECT_EQ(header(refused(go("GET", "/devices/dev1/messages/devicebound/" + token_text)), "Allow"),
            "DELETE");
  EXPECT_EQ(
      header(refused(go("DELETE", "/devices/dev1/messages/devicebound/" + token_text + "/abandon")),
             "Allow"),
      "POST");
  EXPECT_EQ(header(refused(go("GET", "/devices/dev1/commands")), "Allow"), "DELETE");
  EXPECT_EQ(header(refused(go("POST", "/devices/dev1")), "Allow"), "GET, PUT, DELETE");
  EXPECT_EQ(header(refused(go("PUT", "/devices")), "Allow"), "GET");
  EXPECT_EQ(header(refused(go("POST", "/messages/serviceBound/feedback")), "Allow"), "GET");
  EXPECT_EQ(header(refused(go("GET", "/messages/serviceBound/feedback/" + token_text)), "Allow"),
            "DELETE");
  EXPECT_EQ(header(refused(go("patch", "/devices/dev1")), "Allow"), "GET, PUT, DELETE");
}

TEST(https_routes, UnknownRoutesAre400) {
  for (const char* t : {"/", "/twins/dev1", "/devices/dev1/messages/events",
                        "/devices/dev1/messages/devicebound/"
                        "0f8fad5b-d9cb-469f-a165-70867728950e/x",
                        "/messages/serviceBound", "devices/dev1", "/devices/dev1/commands/x"}) {
    expect_error(refused(go("GET", t)), 400, "ArgumentInvalid");
  }
}

// --- feedback and purge (SPEC 11.4, 11.5) ----------------------------------------------------

TEST(https_routes, FeedbackReceiveCompleteAbandon) {
  const routed g = ok(go("GET", "/messages/serviceBound/feedback?api-version=2021-04-12"));
  EXPECT_EQ(g.op, operation::feedback_receive);
  EXPECT_EQ(g.needed, auth::access_rights::service_connect);
  EXPECT_TRUE(g.device.empty());
  const routed c = ok(go("DELETE", "/messages/servicebound/feedback/" + token_text));
  EXPECT_EQ(c.op, operation::feedback_settle);
  EXPECT_TRUE(std::get<feedback_settle_request>(c.what).complete);
  EXPECT_EQ(std::get<feedback_settle_request>(c.what).token, token);
  const routed a = ok(go("POST", "/messages/serviceBound/feedback/" + token_text + "/abandon"));
  EXPECT_FALSE(std::get<feedback_settle_request>(a.what).complete);
}

TEST(https_routes, PurgeIsAServiceOperation) {
  const routed p = ok(go("DELETE", "/devices/dev1/commands?api-version=2021-04-12"));
  EXPECT_EQ(p.op, operation::purge);
  EXPECT_EQ(p.needed, auth::access_rights::service_connect);
  EXPECT_TRUE(p.device.empty());
  EXPECT_EQ(std::get<purge_request>(p.what).device, "dev1");
}

// --- the registry (SPEC 12.1-12.3) -----------------------------------------------------------

TEST(https_routes, RegistryListTop) {
  const auto top = [](const std::string& target) {
    const routed r = ok(go("GET", target));
    EXPECT_EQ(r.op, operation::registry_list);
    EXPECT_EQ(r.needed, auth::access_rights::registry_read);
    return std::get<registry_list_request>(r.what).top;
  };
  EXPECT_EQ(top("/devices"), 1000u);
  EXPECT_EQ(top("/devices/?api-version=2021-04-12"), 1000u);
  EXPECT_EQ(top("/devices?top=5&api-version=2021-04-12"), 5u);
  EXPECT_EQ(top("/devices/?top=1000"), 1000u);
  EXPECT_EQ(top("/devices?top=0"), 1000u);
  EXPECT_EQ(top("/devices?top=1001"), 1000u);
  EXPECT_EQ(top("/devices?top=-3"), 1000u);
  EXPECT_EQ(top("/devices?top=abc"), 1000u);
}

TEST(https_routes, RegistryGetAndDeleteWithIfMatch) {
  const routed g = ok(go("GET", "/devices/dev1?api-version=2021-04-12"));
  EXPECT_EQ(g.op, operation::registry_get);
  EXPECT_EQ(std::get<registry_get_request>(g.what).device, "dev1");
  const auto del = [](header_fields h) {
    const routed r = ok(go("DELETE", "/devices/dev1", {}, std::move(h)));
    EXPECT_EQ(r.op, operation::registry_delete);
    EXPECT_EQ(r.needed, auth::access_rights::registry_write);
    return std::get<registry_delete_request>(r.what).if_match;
  };
  EXPECT_EQ(del({}), std::nullopt);
  EXPECT_EQ(del({{"if-match", "\"*\""}}), "*");
  EXPECT_EQ(del({{"if-match", "*"}}), "*");
  EXPECT_EQ(del({{"if-match", "\"7\""}}), "7");
  EXPECT_EQ(del({{"if-match", "7"}}), "7");
}

TEST(https_routes, RegistryPutDecodesTheDeviceJson) {
  const std::string key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
  const std::string body = R"({"deviceId":"dev1","status":"disabled","statusReason":"lab",
      "etag":"3","generationId":"ignored","connectionState":"Connected",
      "authentication":{"type":"sas","symmetricKey":{"primaryKey":")" +
                           key + R"(","secondaryKey":""},
      "x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null}},
      "capabilities":{"iotEdge":true}})";
  const routed r = ok(go("PUT", "/devices/dev1?api-version=2021-04-12", body,
                         {{"if-match", "\"3\""}, {"content-type", "application/json"}}));
  EXPECT_EQ(r.op, operation::registry_put);
  EXPECT_EQ(r.needed, auth::access_rights::registry_write);
  const auto& p = std::get<registry_put_request>(r.what);
  EXPECT_EQ(p.if_match, "3");
  EXPECT_EQ(p.update.device_id, "dev1");
  EXPECT_EQ(p.update.status, device_status::disabled);
  EXPECT_EQ(p.update.status_reason, "lab");
  EXPECT_EQ(p.update.primary_key, key);
  EXPECT_EQ(p.update.secondary_key, "");
  EXPECT_TRUE(p.update.iot_edge);

  // What Node's Registry.create sends when no keys are given (SPEC 12.2.3).
  const routed n = ok(go(
      "PUT", "/devices/dev2",
      R"({"deviceId":"dev2","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}})"));
  const auto& u = std::get<registry_put_request>(n.what).update;
  EXPECT_EQ(u.status, device_status::enabled);
  EXPECT_EQ(u.auth, auth_type::sas);
  EXPECT_TRUE(u.primary_key.empty());
  EXPECT_EQ(std::get<registry_put_request>(n.what).if_match, std::nullopt);
}

TEST(https_routes, RegistryPutErrorsNameTheField) {
  const auto put = [](const std::string& body) {
    const auto r = refused(go("PUT", "/devices/dev1", body));
    EXPECT_EQ(r.status, 400u) << body;
    EXPECT_EQ(header(r, "iothub-errorcode"), "ArgumentInvalid");
    return nlohmann::json::parse(r.body)["Message"].get<std::string>();
  };
  EXPECT_NE(put("{\"deviceId\":").find("is not valid JSON at byte"), std::string::npos);
  EXPECT_NE(put("").find("is not valid JSON"), std::string::npos);
  EXPECT_NE(put("[1]").find("expected an object"), std::string::npos);
  EXPECT_NE(put("{}").find("deviceId: is missing"), std::string::npos);
  EXPECT_NE(put(R"({"deviceId":7})").find("deviceId: is a number"), std::string::npos);
  EXPECT_NE(put(R"({"deviceId":"other"})").find("is not the device 'dev1'"), std::string::npos);
  EXPECT_NE(put(R"({"deviceId":"dev1","status":"Enabled"})").find("status:"), std::string::npos);
  EXPECT_NE(
      put(R"({"deviceId":"dev1","authentication":{"type":"x509"}})").find("authentication.type:"),
      std::string::npos);
  EXPECT_NE(put(R"({"deviceId":"dev1","authentication":{"symmetricKey":{"primaryKey":"!!"}}})")
                .find("authentication.symmetricKey.primaryKey: is not base64"),
            std::string::npos);
  EXPECT_NE(put(R"({"deviceId":"dev1","authentication":{"symmetricKey":{"secondaryKey":"AAAA"}}})")
                .find("authentication.symmetricKey.secondaryKey: decodes to 3 bytes"),
            std::string::npos);
  EXPECT_NE(put(R"({"deviceId":"dev1","capabilities":{"iotEdge":"yes"}})")
                .find("capabilities.iotEdge: is a string, expected a boolean"),
            std::string::npos);
  EXPECT_NE(put(R"({"deviceId":"dev1","authentication":[]})").find("authentication: is a array"),
            std::string::npos);
}

// --- replies -------------------------------------------------------------------------------

message locked_message() {
  message m;
  m.body = std::string("hello\0world", 11);
  m.message_id = "m1";
  m.correlation_id = "c1";
  m.user_id = "svc";
  m.to = "/devices/dev1/messages/devicebound";
  m.expiry_time_utc = time_point{} + 1'700'000'000'000ms;
  m.enqueued_time_utc = time_point{} + 1'600'000'000'123ms;
  m.ack = ack_mode::full;
  m.content_type = "text/plain";
  m.content_encoding = "utf-8";
  m.app_properties = {{"color", "blue"}, {"n", ""}};
  m.sequence_number = 42;
  m.delivery_count = 2;
  m.lock_token = token;
  return m;
}

TEST(https_routes, ReceiveRepliesWithEveryPropertyAsSpec1123) {
  const routed r = ok(go("GET", "/devices/dev1/messages/devicebound"));
  const auto res = respond(r, message_reply{locked_message()}, {});
  EXPECT_EQ(res.status, 200u);
  EXPECT_EQ(res.body, std::string("hello\0world", 11));
  EXPECT_EQ(header(res, "ETag"), "\"" + token_text + "\"");
  EXPECT_EQ(header(res, "iothub-messageid"), "m1");
  EXPECT_EQ(header(res, "iothub-correlationid"), "c1");
  EXPECT_EQ(header(res, "iothub-to"), "/devices/dev1/messages/devicebound");
  EXPECT_EQ(header(res, "iothub-expiry"), "2023-11-14T22:13:20.000Z");
  EXPECT_EQ(header(res, "iothub-enqueuedtime"), "2020-09-13T12:26:40.123Z");
  EXPECT_EQ(header(res, "iothub-sequencenumber"), "42");
  EXPECT_EQ(header(res, "iothub-deliverycount"), "2");
  EXPECT_EQ(header(res, "iothub-userid"), "svc");
  EXPECT_EQ(header(res, "iothub-ack"), "full");
  EXPECT_EQ(header(res, "iothub-app-color"), "blue");
  EXPECT_EQ(header(res, "iothub-app-n"), "");
  // Exact case for the C SDK's strncmp.
  bool content_type = false, content_encoding = false;
  for (const auto& [n, v] : res.headers) {
    content_type |= n == "ContentType" && v == "text/plain";
    content_encoding |= n == "ContentEncoding" && v == "utf-8";
  }
  EXPECT_TRUE(content_type);
  EXPECT_TRUE(content_encoding);
}

TEST(https_routes, EmptyQueuesAre204) {
  EXPECT_EQ(
      respond(ok(go("GET", "/devices/dev1/messages/devicebound")), message_reply{}, {}).status,
      204u);
  EXPECT_EQ(respond(ok(go("GET", "/messages/serviceBound/feedback")), feedback_reply{}, {}).status,
            204u);
}

TEST(https_routes, SettlementsAre204AndTheirErrorsCarryIotHubCodes) {
  const routed r = ok(go("DELETE", "/devices/dev1/messages/devicebound/" + token_text));
  EXPECT_EQ(respond(r, done_reply{}, {}).status, 204u);
  EXPECT_TRUE(respond(r, done_reply{}, {}).body.empty());
  expect_error(respond(r, make_error(errc::device_message_lock_lost, "stale"), {}), 412,
               "DeviceMessageLockLost");
  expect_error(respond(r, make_error(errc::device_not_found, "no dev1"), {}), 404,
               "DeviceNotFound");
  expect_error(respond(r, make_error(errc::unauthorized, "x"), {}), 401,
               "IotHubUnauthorizedAccess");
  expect_error(respond(r, make_error(errc::not_supported, "later"), {}), 501, "NotSupported");
  expect_error(respond(r, make_error(errc::device_already_exists, "x"), {}), 409,
               "DeviceAlreadyExists");
  expect_error(respond(r, make_error(errc::precondition_failed, "x"), {}), 412,
               "PreconditionFailed");
  expect_error(respond(r, make_error(errc::server_busy, "x"), {}), 503, "ServiceUnavailable");
  expect_error(respond(r, sent_reply{}, {}), 500, "ServerError");
}

TEST(https_routes, ErrorBodiesAreTheSpec1162Shape) {
  response_context ctx{"11111111-2222-3333-4444-555555555555", time_point{} + 1'600'000'000'000ms};
  const auto r =
      error_response(make_error(errc::device_not_found, "device 'x' is not registered"), ctx);
  EXPECT_EQ(r.body,
            R"({"Message":"ErrorCode:DeviceNotFound;device 'x' is not registered",)"
            R"("ExceptionMessage":"Tracking ID:11111111-2222-3333-4444-555555555555-TimeStamp:)"
            R"(2020-09-13T12:26:40.000Z"})");
}

TEST(https_routes, FeedbackReplyIsTheJsonArrayWithAQuotedLockToken) {
  feedback_batch b;
  b.lock_token = token;
  b.user_id = "testhub";
  feedback_record rec;
  rec.original_message_id = "m1";
  rec.status_code = feedback_status::rejected;
  rec.description = "Message rejected";
  rec.device_id = "dev1";
  rec.device_generation_id = "g1";
  b.records.push_back(rec);
  const auto res = respond(ok(go("GET", "/messages/serviceBound/feedback")), feedback_reply{b}, {});
  EXPECT_EQ(res.status, 200u);
  EXPECT_EQ(header(res, "ETag"), "\"" + token_text + "\"");
  auto back = codec::decode_feedback_json(res.body);
  ASSERT_TRUE(back) << back.error().message;
  ASSERT_EQ(back->size(), 1u);
  EXPECT_EQ((*back)[0].status_code, feedback_status::rejected);
  EXPECT_EQ((*back)[0].device_id, "dev1");
}

TEST(https_routes, PurgeReplyNamesTheCountAndTheDevice) {
  const auto res = respond(ok(go("DELETE", "/devices/dev1/commands")), count_reply{3}, {});
  EXPECT_EQ(res.status, 200u);
  const auto j = nlohmann::json::parse(res.body);
  EXPECT_EQ(j["totalMessagesPurged"], 3);
  EXPECT_EQ(j["deviceId"], "dev1");
}

device_view sample_view() {
  device_view v;
  v.identity.device_id = "dev1";
  v.identity.generation_id = "638000000000000001";
  v.identity.version = 4;
  v.identity.status = device_status::disabled;
  v.identity.status_reason = "maintenance";
  v.identity.status_updated = time_point{} + 1'600'000'000'000ms;
  v.identity.primary_key =
      auth::shared_access_key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").value();
  v.identity.secondary_key =
      auth::shared_access_key::from_base64("ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==").value();
  v.connected = true;
  v.cloud_to_device_count = 5;
  v.last_activity = time_point{} + 1'600'000'100'000ms;
  return v;
}

TEST(https_routes, RegistryRepliesAreDeviceJsonWithAQuotedEtag) {
  const auto put = respond(ok(go("PUT", "/devices/dev1", R"({"deviceId":"dev1"})")),
                           device_reply{sample_view()}, {});
  EXPECT_EQ(put.status, 200u);
  EXPECT_EQ(header(put, "ETag"), "\"4\"");
  const auto j = nlohmann::json::parse(put.body);
  EXPECT_EQ(j["deviceId"], "dev1");
  EXPECT_EQ(j["etag"], "4");
  EXPECT_EQ(j["status"], "disabled");
  EXPECT_EQ(j["connectionState"], "Connected");
  EXPECT_EQ(j["cloudToDeviceMessageCount"], 5);
  EXPECT_EQ(j["authentication"]["type"], "sas");
  EXPECT_EQ(j["authentication"]["symmetricKey"]["primaryKey"],
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
  EXPECT_TRUE(j["authentication"]["x509Thumbprint"]["primaryThumbprint"].is_null());
  EXPECT_EQ(j["capabilities"]["iotEdge"], false);
  EXPECT_EQ(j["connectionStateUpdatedTime"], "0001-01-01T00:00:00.000Z");

  EXPECT_EQ(respond(ok(go("GET", "/devices/dev1")), device_reply{sample_view()}, {}).status, 200u);
  const auto list =
      respond(ok(go("GET", "/devices")), devices_reply{{sample_view(), sample_view()}}, {});
  EXPECT_EQ(list.status, 200u);
  EXPECT_EQ(nlohmann::json::parse(list.body).size(), 2u);
  EXPECT_EQ(respond(ok(go("DELETE", "/devices/dev1")), done_reply{}, {}).status, 204u);
  expect_error(
      respond(ok(go("GET", "/devices/dev1")),
              make_error(errc::not_supported, "the identity registry is not available"), {}),
      501, "NotSupported");
}

TEST(device_json, RoundTripsAView) {
  const device_view v = sample_view();
  auto back = codec::decode_device_view(codec::encode_device_json(v));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->identity, v.identity);
  EXPECT_EQ(back->connected, v.connected);
  EXPECT_EQ(back->cloud_to_device_count, v.cloud_to_device_count);
  EXPECT_EQ(back->last_activity, v.last_activity);
  EXPECT_EQ(back->connection_state_updated, v.connection_state_updated);
}

// --- tokens (SPEC 12.7-12.9) -----------------------------------------------------------------

constexpr const char* hub_host = "testhub.example";
const auto device_key =
    auth::shared_access_key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").value();
const auto policy_key =
    auth::shared_access_key::from_base64("ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==").value();

class https_auth : public ::testing::Test {
 protected:
  void SetUp() override {
    ids_.set_policies({{"service", policy_key, {}, auth::access_rights::service_connect},
                       {"registryRead", policy_key, {}, auth::access_rights::registry_read},
                       {"iothubowner", policy_key, {}, auth::access_rights::all}});
    device_identity d;
    d.device_id = "dev1";
    d.primary_key = device_key;
    ids_.put_device(d);
    d.device_id = "dev2";
    ids_.put_device(d);
  }

  std::string service(const std::string& policy, std::uint64_t se = 4'000'000'000) {
    return to_string(auth::generate_sas_token(hub_host, policy_key, se, policy));
  }
  std::string device(const std::string& id, std::uint64_t se = 4'000'000'000) {
    return to_string(
        auth::generate_sas_token(std::string(hub_host) + "/devices/" + id, device_key, se));
  }

  /// The caller's name, or the refusal's iothub-errorcode and status.
  std::string check(const std::string& method, const std::string& target,
                    std::optional<std::string> token) {
    call c{method, target, {}, {}};
    if (token)
      c.headers.emplace_back("authorization", *token);
    auto r = route(c.view());
    const routed x = ok(r);
    response_context ctx;
    ctx.now = time_point{} + 1'700'000'000'000ms;
    auto who = authorize(x, c.view(), ids_, hub_host, ctx);
    if (auto* name = std::get_if<std::string>(&who))
      return *name;
    const auto& res = std::get<http_response>(who);
    expect_error(res, 401, "IotHubUnauthorizedAccess");
    return "401";
  }

  identity_view ids_{true};
};

TEST_F(https_auth, TestModeAcceptsEverything) {
  identity_view open(false);
  call c{"GET", "/devices/dev1/messages/devicebound", {}, {}};
  auto r = route(c.view());
  auto who = authorize(std::get<routed>(r), c.view(), open, hub_host, {});
  EXPECT_EQ(std::get<std::string>(who), "test");
}

TEST_F(https_auth, EachEndpointNeedsItsRight) {
  const std::string recv = "/devices/dev1/messages/devicebound";
  EXPECT_EQ(check("GET", recv, device("dev1")), "device:dev1");
  EXPECT_EQ(check("GET", recv, std::nullopt), "401");  // no token
  EXPECT_EQ(check("GET", recv, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
            "401");                                                     // a raw key
  EXPECT_EQ(check("GET", recv, device("dev1", 1'600'000'000)), "401");  // expired
  EXPECT_EQ(check("GET", recv, device("dev2")), "401");                 // another device's token
  EXPECT_EQ(check("GET", recv, service("service")), "401");             // no DeviceConnect
  EXPECT_EQ(check("GET", recv, service("iothubowner")), "iothubowner");

  const std::string fb = "/messages/serviceBound/feedback";
  EXPECT_EQ(check("GET", fb, service("service")), "service");
  EXPECT_EQ(check("GET", fb, device("dev1")), "401");  // a device token on a service route
  EXPECT_EQ(check("GET", fb, service("registryRead")), "401");
  EXPECT_EQ(check("DELETE", "/devices/dev1/commands", service("service")), "service");
  EXPECT_EQ(check("DELETE", "/devices/dev1/commands", device("dev1")), "401");

  EXPECT_EQ(check("GET", "/devices/dev1", service("registryRead")), "registryRead");
  EXPECT_EQ(check("GET", "/devices", service("registryRead")), "registryRead");
  EXPECT_EQ(check("DELETE", "/devices/dev1", service("registryRead")), "401");
  EXPECT_EQ(check("DELETE", "/devices/dev1", service("iothubowner")), "iothubowner");
  EXPECT_EQ(check("GET", "/devices/dev1", device("dev1")), "401");
}

TEST_F(https_auth, PolicyRoutesNeedEveryRight) {
  ids_.set_policies({{"service", policy_key, {}, auth::access_rights::service_connect},
                     {"registryReadWrite", policy_key, {}, auth::access_rights::registry_write},
                     {"device", policy_key, {}, auth::access_rights::device_connect},
                     {"almost",
                      policy_key,
                      {},
                      auth::access_rights::registry_write | auth::access_rights::service_connect},
                     {"iothubowner", policy_key, {}, auth::access_rights::all}});
  const std::string body = R"({"rights":"ServiceConnect"})";
  const auto check_body = [&](const std::string& method, const std::string& target,
                              const std::string& b, const std::string& token) {
    call c{method, target, {{"authorization", token}}, b};
    const routed x = ok(route(c.view()));
    response_context ctx;
    ctx.now = time_point{} + 1'700'000'000'000ms;
    auto who = authorize(x, c.view(), ids_, hub_host, ctx);
    if (auto* name = std::get_if<std::string>(&who))
      return *name;
    expect_error(std::get<http_response>(who), 401, "IotHubUnauthorizedAccess");
    return std::string("401");
  };
  const std::vector<std::tuple<std::string, std::string, std::string>> ops = {
      {"GET", "/devicebound/policies", ""},
      {"GET", "/devicebound/policies/service", ""},
      {"PUT", "/devicebound/policies/p2", body},
      {"POST", "/devicebound/policies/service/renew-key", R"({"renewKey":"primary"})"},
      {"DELETE", "/devicebound/policies/service", ""}};
  for (const auto& [method, target, b] : ops) {
    EXPECT_EQ(check_body(method, target, b, service("iothubowner")), "iothubowner") << target;
    for (const char* weak : {"service", "registryReadWrite", "device", "almost"})
      EXPECT_EQ(check_body(method, target, b, service(weak)), "401") << method << target << weak;
    EXPECT_EQ(check_body(method, target, b, device("dev1")), "401") << target;
  }
  // a policy token scoped to a device cannot administer the hub either
  const auto scoped = to_string(auth::generate_sas_token(std::string(hub_host) + "/devices/dev1",
                                                         policy_key, 4'000'000'000, "iothubowner"));
  EXPECT_EQ(check_body("GET", "/devicebound/policies", "", scoped), "401");
}

TEST_F(https_auth, ARenewedKeyIsRefusedOnTheNextRequest) {
  // HTTPS keeps nothing between requests: each one is verified against the view of the moment
  const auto other =
      auth::shared_access_key::from_base64("b3RoZXIta2V5LW9mLWF0LWxlYXN0LTE2LWJ5dGVzISE=").value();
  const std::string old_primary = service("service");  // signed with policy_key
  EXPECT_EQ(check("GET", "/messages/serviceBound/feedback", old_primary), "service");
  // renew-key primary: policy_key is gone, `other` is the new primary
  ids_.set_policies({{"service", other, {}, auth::access_rights::service_connect}});
  EXPECT_EQ(check("GET", "/messages/serviceBound/feedback", old_primary), "401");
  const std::string fresh =
      to_string(auth::generate_sas_token(hub_host, other, 4'000'000'000, "service"));
  EXPECT_EQ(check("GET", "/messages/serviceBound/feedback", fresh), "service");
  // deleted: refused
  ids_.set_policies({});
  EXPECT_EQ(check("GET", "/messages/serviceBound/feedback", fresh), "401");
}

TEST(https_routes, StampCallerNamesWhoAsked) {
  request r = purge_request{{}, "dev1"};
  stamp_caller(r, "service");
  EXPECT_EQ(std::get<purge_request>(r).service, "service");
  request p = registry_delete_request{{}, "dev1", std::nullopt};
  stamp_caller(p, "iothubowner");
  EXPECT_EQ(std::get<registry_delete_request>(p).admin, "iothubowner");
}

}  // namespace
