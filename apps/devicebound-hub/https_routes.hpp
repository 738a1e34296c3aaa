// IoT Hub's REST surface (SPEC 5d, 11, 12) as pure functions: an HTTP
// request in, either a response right away (a bad route, a bad body, a token
// refused) or a typed router request with the right it needs; and a router
// reply out as status, headers and body. No sockets, no threads, no clock:
// the HTTPS door (https_door.cpp) does the I/O, and tests and the fuzzer call
// these directly. docs/https.md lists every endpoint.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <devicebound/auth/authenticate.hpp>
#include <devicebound/auth/rights.hpp>
#include <devicebound/auth/url.hpp>
#include <devicebound/codec/device_json.hpp>
#include <devicebound/codec/feedback_json.hpp>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/device_id.hpp>
#include <devicebound/registry.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "front_door.hpp"
#include "identity_view.hpp"

namespace devicebound::hubd::https {

/// Header fields, names lower-cased by the caller, in arrival order.
using header_fields = std::vector<std::pair<std::string, std::string>>;

/// A request as the door read it.
struct http_request {
  std::string_view method;  ///< `GET`, `PUT`, ... (case-sensitive, RFC 9110)
  std::string_view target;  ///< origin form: `/devices/d1/messages/deviceBound?api-version=...`
  const header_fields* headers = nullptr;
  std::string_view body;
};

/// What goes back on the wire. Header names are written exactly as here: the
/// C SDK matches `ContentType`/`ContentEncoding` case-sensitively (SPEC 11.2.3).
struct http_response {
  unsigned status = 200;
  header_fields headers;
  std::string body;

  /// The first header of that name (case-insensitive), or null.
  const std::string* header(std::string_view name) const {
    for (const auto& [n, v] : headers)
      if (auth::detail::iequals(n, name))
        return &v;
    return nullptr;
  }
};

/// Which endpoint a request is: how its reply is written.
enum class operation : std::uint8_t {
  device_receive,    ///< GET /devices/{id}/messages/deviceBound
  device_settle,     ///< DELETE .../{etag}[?reject], POST .../{etag}/abandon
  feedback_receive,  ///< GET /messages/serviceBound/feedback
  feedback_settle,   ///< DELETE .../{lockToken}, POST .../{lockToken}/abandon
  purge,             ///< DELETE /devices/{id}/commands
  registry_put,      ///< PUT /devices/{id}
  registry_get,      ///< GET /devices/{id}
  registry_list,     ///< GET /devices[/]
  registry_delete,   ///< DELETE /devices/{id}
  policy_list,       ///< GET /devicebound/policies (devicebound's admin API)
  policy_get,        ///< GET /devicebound/policies/{name}
  policy_put,        ///< PUT /devicebound/policies/{name}
  policy_renew,      ///< POST /devicebound/policies/{name}/renew-key
  policy_delete,     ///< DELETE /devicebound/policies/{name}
};

/// The endpoint's name for logs (`"policy_put"`).
constexpr std::string_view to_string(operation op) noexcept {
  switch (op) {
    case operation::device_receive:
      return "device_receive";
    case operation::device_settle:
      return "device_settle";
    case operation::feedback_receive:
      return "feedback_receive";
    case operation::feedback_settle:
      return "feedback_settle";
    case operation::purge:
      return "purge";
    case operation::registry_put:
      return "registry_put";
    case operation::registry_get:
      return "registry_get";
    case operation::registry_list:
      return "registry_list";
    case operation::registry_delete:
      return "registry_delete";
    case operation::policy_list:
      return "policy_list";
    case operation::policy_get:
      return "policy_get";
    case operation::policy_put:
      return "policy_put";
    case operation::policy_renew:
      return "policy_renew";
    case operation::policy_delete:
      return "policy_delete";
  }
  return "unknown";
}

/// The operation named `s` (exactly as `to_string` spells it); nullopt otherwise.
constexpr std::optional<operation> parse_operation(std::string_view s) noexcept {
  for (auto op : {operation::device_receive, operation::device_settle, operation::feedback_receive,
                  operation::feedback_settle, operation::purge, operation::registry_put,
                  operation::registry_get, operation::registry_list, operation::registry_delete,
                  operation::policy_list, operation::policy_get, operation::policy_put,
                  operation::policy_renew, operation::policy_delete})
    if (to_string(op) == s)
      return op;
  return std::nullopt;
}

/// What the policy admin API needs: all four rights (an `iothubowner`-like
/// policy). A caller can then never grant a right it lacks.
inline constexpr auth::access_rights policy_admin_rights = auth::access_rights::all;

/// A request that routed: what the router is asked, and what the caller's
/// token must allow (SPEC 12.9.3).
struct routed {
  operation op{};
  auth::access_rights needed = auth::access_rights::none;
  std::string device;  ///< the device the endpoint acts on; empty: the whole hub
  request what;
};

/// Where a request goes: an answer now, or a request for the router.
using route_result = std::variant<http_response, routed>;

/// Per-request text of error bodies (SPEC 11.6.2): a tracking id and the time.
struct response_context {
  std::string tracking_id = "00000000-0000-0000-0000-000000000000";
  time_point now{};
};

// --- errors (SPEC 11.6) ------------------------------------------------------------------

/// HTTP status of an engine error code (SPEC 11.3.1, 11.6.3). `not_supported`
/// is 501: the router's answer for what this hub does not implement.
constexpr unsigned status_of(errc e) noexcept {
  switch (e) {
    case errc::argument_invalid:
    case errc::malformed:
      return 400;
    case errc::unauthorized:
      return 401;
    case errc::iothub_quota_exceeded:
    case errc::device_maximum_queue_depth_exceeded:
      return 403;
    case errc::device_not_found:
      return 404;
    case errc::timeout:
      return 408;
    case errc::device_already_exists:
    case errc::invalid_operation:
      return 409;
    case errc::precondition_failed:
    case errc::device_message_lock_lost:
      return 412;
    case errc::message_too_large:
      return 413;
    case errc::throttling:
      return 429;
    case errc::server_error:
      return 500;
    case errc::not_supported:
      return 501;
    case errc::server_busy:
    case errc::not_connected:
      return 503;
  }
  return 500;
}

/// IoT Hub's error code name for `e` as the SDKs read it (`iothub-errorcode`).
constexpr std::string_view error_name(errc e) noexcept {
  switch (e) {
    case errc::unauthorized:
      return "IotHubUnauthorizedAccess";
    case errc::server_busy:
    case errc::not_connected:
      return "ServiceUnavailable";
    case errc::malformed:
      return "ArgumentInvalid";
    default:
      return to_string(e);
  }
}

/// An error response (SPEC 11.6.2): `iothub-errorcode: <name>` and
/// `{"Message":"ErrorCode:<name>;<text>","ExceptionMessage":"Tracking ID:<id>-TimeStamp:<utc>"}`,
/// which the Node, C# and Java service SDKs all parse.
inline http_response error_response(unsigned status, std::string_view name, std::string_view text,
                                    const response_context& ctx) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["Message"] = "ErrorCode:" + std::string(name) + ";" + std::string(text);
  j["ExceptionMessage"] =
      "Tracking ID:" + ctx.tracking_id + "-TimeStamp:" + codec::format_iso8601(ctx.now);
  http_response r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "application/json; charset=utf-8");
  r.headers.emplace_back("iothub-errorcode", std::string(name));
  r.body = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  return r;
}

inline http_response error_response(const error& e, const response_context& ctx) {
  return error_response(status_of(e.code), error_name(e.code), e.message, ctx);
}

// --- the target --------------------------------------------------------------------------

namespace detail {

using auth::detail::iequals;

/// A target split into percent-decoded path segments and its query.
struct parsed_target {
  std::vector<std::string> segments;
  std::vector<std::pair<std::string, std::string>> query;  ///< decoded; a bare key has ""
  bool trailing_slash = false;
};

inline result<std::string> decode_component(std::string_view s) {
  return auth::url_decode(s);
}

inline result<parsed_target> parse_target(std::string_view target) {
  parsed_target out;
  const std::size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
  if (const std::size_t hash = query.find('#'); hash != std::string_view::npos)
    query = query.substr(0, hash);
  if (!path.starts_with('/'))
    return make_error(errc::argument_invalid, "the request target must start with '/'");
  path.remove_prefix(1);
  if (path.ends_with('/')) {
    out.trailing_slash = true;
    path.remove_suffix(1);
  }
  while (!path.empty()) {
    const std::size_t slash = path.find('/');
    const std::string_view raw = path.substr(0, slash);
    auto seg = decode_component(raw);
    if (!seg)
      return make_error(errc::argument_invalid, "path: " + seg.error().message);
    out.segments.push_back(std::move(*seg));
    path = slash == std::string_view::npos ? std::string_view{} : path.substr(slash + 1);
    if (slash != std::string_view::npos && path.empty())
      out.segments.emplace_back();  // "a//" keeps its empty segment
  }
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (item.empty())
      continue;
    const std::size_t eq = item.find('=');
    auto key = decode_component(item.substr(0, eq));
    auto value =
        decode_component(eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1));
    if (!key || !value)
      return make_error(errc::argument_invalid,
                        "query: " + (key ? value.error().message : key.error().message));
    out.query.emplace_back(std::move(*key), std::move(*value));
  }
  return out;
}

inline const std::string* query_value(const parsed_target& t, std::string_view key) {
  for (const auto& [k, v] : t.query)
    if (iequals(k, key))
      return &v;
  return nullptr;
}

inline const std::string* header_value(const header_fields* h, std::string_view name) {
  if (!h)
    return nullptr;
  for (const auto& [n, v] : *h)
    if (iequals(n, name))
      return &v;
  return nullptr;
}

/// An etag as clients send it: `"x"`, `x`, `W/"x"`; quotes stripped.
inline std::string unquote(std::string_view s) {
  s = auth::detail::trim(s);
  if (s.starts_with("W/"))
    s.remove_prefix(2);
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"')
    s = s.substr(1, s.size() - 2);
  return std::string(s);
}

/// `If-Match` (or C#'s `IfMatch`, SPEC 11.3), quotes stripped; nullopt if absent.
inline std::optional<std::string> if_match(const header_fields* h) {
  const std::string* v = header_value(h, "if-match");
  if (!v)
    v = header_value(h, "ifmatch");
  if (!v)
    return std::nullopt;
  return unquote(*v);
}

}  // namespace detail

namespace detail {

inline http_response method_not_allowed(std::string_view method, std::string_view allowed,
                                        const response_context& ctx) {
  auto r = error_response(405, "MethodNotAllowed",
                          "method " + auth::detail::printable(method) +
                              " is not allowed here (allowed: " + std::string(allowed) + ")",
                          ctx);
  r.headers.emplace_back("Allow", std::string(allowed));
  return r;
}

inline http_response bad_request(std::string text, const response_context& ctx) {
  return error_response(400, "ArgumentInvalid", text, ctx);
}

/// A lock token from the path (SPEC 11.2.4): the GUID, quotes tolerated. A
/// token that is not one of ours can never be locked: 412 lock lost.
inline result<lock_token> path_lock_token(std::string_view segment) {
  const std::string t = unquote(segment);
  auto token = lock_token::parse(t);
  if (!token)
    return make_error(errc::device_message_lock_lost,
                      "lock token " + auth::detail::printable(t) + " is not a lock this hub gave");
  return *token;
}

/// A policy name as the registry takes it: 1 to 64 letters, digits, `-`, `_`, `.`.
inline result<std::string> policy_name(std::string_view name) {
  if (name.empty() || name.size() > 64)
    return make_error(errc::argument_invalid,
                      "policy name " + auth::detail::printable(name) + ": 1 to 64 characters");
  for (char c : name)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
          c == '_' || c == '.'))
      return make_error(errc::argument_invalid, "policy name " + auth::detail::printable(name) +
                                                    ": only letters, digits, - _ and .");
  return std::string(name);
}

/// The body of `PUT /devicebound/policies/{name}` (ARM's
/// SharedAccessAuthorizationRule): `rights` (required; `"RegistryRead,
/// ServiceConnect"` or an array of names), `primaryKey` and `secondaryKey`
/// (optional base64 of 16 to 64 bytes; absent, null or empty: generated on a
/// create, kept on a replace), `keyName` (optional; must be the path's). Other
/// fields are ignored. Errors (400) name the field.
inline result<auth::shared_access_policy> decode_policy(std::string_view body,
                                                        const std::string& name) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception&) {
    return make_error(errc::argument_invalid,
                      "the body is not JSON (expected {\"rights\": \"ServiceConnect\", ...})");
  }
  if (!j.is_object())
    return make_error(errc::argument_invalid, "the body is not a JSON object");
  auth::shared_access_policy p;
  p.name = name;
  if (auto it = j.find("keyName"); it != j.end() && !it->is_null()) {
    if (!it->is_string())
      return make_error(errc::argument_invalid, "keyName: not a string");
    if (it->get<std::string>() != name)
      return make_error(errc::argument_invalid,
                        "keyName " + auth::detail::printable(it->get<std::string>()) +
                            " in the body is not the policy " + auth::detail::printable(name) +
                            " of the path");
  }
  auto r = j.find("rights");
  if (r == j.end() || r->is_null())
    return make_error(errc::argument_invalid,
                      "rights: missing (e.g. \"RegistryRead, ServiceConnect\")");
  std::string text;
  if (r->is_string()) {
    text = r->get<std::string>();
  } else if (r->is_array() && !r->empty()) {
    for (const auto& x : *r) {
      if (!x.is_string())
        return make_error(errc::argument_invalid, "rights: an entry is not a string");
      if (!text.empty())
        text += ',';
      text += x.get<std::string>();
    }
  } else {
    return make_error(errc::argument_invalid, "rights: a string or a non-empty array of names");
  }
  auto rights = auth::parse_access_rights(text);
  if (!rights)
    return make_error(errc::argument_invalid, "rights: " + rights.error().message);
  if (*rights == auth::access_rights::none)
    return make_error(errc::argument_invalid, "rights: a policy needs at least one right");
  p.rights = *rights;
  for (const auto& [field, key] :
       {std::pair{"primaryKey", &p.primary_key}, std::pair{"secondaryKey", &p.secondary_key}}) {
    auto it = j.find(field);
    if (it == j.end() || it->is_null())
      continue;
    if (!it->is_string())
      return make_error(errc::argument_invalid, std::string(field) + ": not a string");
    auto k = registry::parse_key(it->get<std::string>(), field);
    if (!k)
      return k.error();
    *key = std::move(*k);
  }
  if (!p.primary_key.empty() && p.primary_key == p.secondary_key)
    return make_error(errc::argument_invalid,
                      "secondaryKey: the same as primaryKey (the two keys must differ)");
  return p;
}

/// The body of `POST /devicebound/policies/{name}/renew-key`:
/// `{"renewKey": "primary" | "secondary" | "swap"}` (case-insensitive).
inline result<renew_key> decode_renew(std::string_view body) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception&) {
    return make_error(errc::argument_invalid,
                      "the body is not JSON (expected {\"renewKey\": \"primary\"})");
  }
  auto it = j.is_object() ? j.find("renewKey") : j.end();
  if (!j.is_object() || it == j.end() || !it->is_string())
    return make_error(errc::argument_invalid,
                      "renewKey: missing or not a string (primary, secondary or swap)");
  const std::string v = it->get<std::string>();
  if (auto k = parse_renew_key(v))
    return *k;
  return make_error(errc::argument_invalid, "renewKey " + auth::detail::printable(v) +
                                                ": expected primary, secondary or swap");
}

}  // namespace detail

/// Routes one request (SPEC 11.1-11.5, 12.1-12.3). Paths match
/// case-insensitively; device ids are percent-decoded and must pass the id
/// rule; `api-version` is accepted with any value, or none (SPEC 11.1.2).
inline route_result route(const http_request& req, const response_context& ctx = {}) {
  using namespace detail;
  using rights = auth::access_rights;
  auto t = parse_target(req.target);
  if (!t)
    return bad_request(t.error().message, ctx);
  const auto& s = t->segments;
  const std::string_view m = req.method;
  const auto is = [&](std::size_t i, std::string_view word) {
    return i < s.size() && iequals(s[i], word);
  };
  const auto not_allowed = [&](std::string_view allowed) -> route_result {
    return method_not_allowed(m, allowed, ctx);
  };
  const auto device_at = [&](std::size_t i) -> result<std::string> {
    if (auto v = validate_device_id(s[i]); !v)
      return v.error();
    return s[i];
  };

  if (is(0, "devices")) {
    if (s.size() == 1) {  // /devices, /devices/
      if (m != "GET")
        return not_allowed("GET");
      std::uint32_t top = 1000;
      if (const std::string* v = query_value(*t, "top")) {
        std::int64_t n = 0;
        const auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
        // HN-SW: values outside 1..1000 mean 1000 (SPEC 12.1.1); so does junk.
        if (ec == std::errc{} && p == v->data() + v->size() && n >= 1 && n <= 1000)
          top = static_cast<std::uint32_t>(n);
      }
      return routed{
          operation::registry_list, rights::registry_read, {}, registry_list_request{top}};
    }
    auto device = device_at(1);
    if (!device)
      return bad_request(device.error().message, ctx);
    if (s.size() == 2) {  // /devices/{id}
      if (m == "GET")
        return routed{
            operation::registry_get, rights::registry_read, {}, registry_get_request{*device}};
      if (m == "DELETE")
        return routed{operation::registry_delete,
                      rights::registry_write,
                      {},
                      registry_delete_request{{}, *device, if_match(req.headers)}};
      if (m == "PUT") {
        auto update = codec::decode_device_update(req.body);
        if (!update)
          return error_response(update.error(), ctx);
        if (update->device_id != *device)
          return bad_request("deviceId " + auth::detail::printable(update->device_id) +
                                 " in the body is not the device " +
                                 auth::detail::printable(*device) + " of the path",
                             ctx);
        return routed{operation::registry_put,
                      rights::registry_write,
                      {},
                      registry_put_request{{}, std::move(*update), if_match(req.headers)}};
      }
      return not_allowed("GET, PUT, DELETE");
    }
    if (s.size() == 3 && is(2, "commands")) {  // purge (SPEC 11.5)
      if (m != "DELETE")
        return not_allowed("DELETE");
      return routed{operation::purge, rights::service_connect, {}, purge_request{{}, *device}};
    }
    if (s.size() >= 4 && is(2, "messages") && is(3, "devicebound")) {
      if (s.size() == 4) {  // receive (SPEC 11.2)
        if (m != "GET")
          return not_allowed("GET");
        return routed{operation::device_receive, rights::device_connect, *device,
                      receive_request{*device}};
      }
      if (s.size() == 5) {  // complete, reject (SPEC 11.3)
        if (m != "DELETE")
          return not_allowed("DELETE");
        auto token = path_lock_token(s[4]);
        if (!token)
          return error_response(token.error(), ctx);
        const disposition how =
            query_value(*t, "reject") ? disposition::reject : disposition::complete;
        return routed{operation::device_settle, rights::device_connect, *device,
                      settle_request{*device, *token, how}};
      }
      if (s.size() == 6 && is(5, "abandon")) {
        if (m != "POST")
          return not_allowed("POST");
        auto token = path_lock_token(s[4]);
        if (!token)
          return error_response(token.error(), ctx);
        return routed{operation::device_settle, rights::device_connect, *device,
                      settle_request{*device, *token, disposition::abandon}};
      }
    }
  }

  // devicebound's own admin API for shared access policies (IoT Hub has them in
  // ARM, not on its data plane): every call needs all four rights.
  if (is(0, "devicebound") && is(1, "policies")) {
    constexpr auto admin = policy_admin_rights;
    if (s.size() == 2) {
      if (m != "GET")
        return not_allowed("GET");
      return routed{operation::policy_list, admin, {}, policy_list_request{}};
    }
    auto name = policy_name(s[2]);
    if (!name)
      return bad_request(name.error().message, ctx);
    if (s.size() == 3) {
      if (m == "GET")
        return routed{operation::policy_get, admin, {}, policy_get_request{*name}};
      if (m == "DELETE")
        return routed{operation::policy_delete, admin, {}, policy_delete_request{{}, *name}};
      if (m == "PUT") {
        auto p = decode_policy(req.body, *name);
        if (!p)
          return error_response(p.error(), ctx);
        const std::string* none_match = header_value(req.headers, "if-none-match");
        const bool create_only = none_match && unquote(*none_match) == "*";
        return routed{
            operation::policy_put, admin, {}, policy_put_request{{}, std::move(*p), create_only}};
      }
      return not_allowed("GET, PUT, DELETE");
    }
    if (s.size() == 4 && is(3, "renew-key")) {
      if (m != "POST")
        return not_allowed("POST");
      auto which = decode_renew(req.body);
      if (!which)
        return error_response(which.error(), ctx);
      return routed{operation::policy_renew, admin, {}, policy_renew_request{{}, *name, *which}};
    }
  }

  if (is(0, "messages") && is(1, "servicebound") && is(2, "feedback")) {  // SPEC 11.4
    if (s.size() == 3) {
      if (m != "GET")
        return not_allowed("GET");
      return routed{
          operation::feedback_receive, rights::service_connect, {}, feedback_receive_request{}};
    }
    if (s.size() == 4 || (s.size() == 5 && is(4, "abandon"))) {
      const bool abandon = s.size() == 5;
      if (m != (abandon ? "POST" : "DELETE"))
        return not_allowed(abandon ? "POST" : "DELETE");
      auto token = path_lock_token(s[3]);
      if (!token)
        return error_response(token.error(), ctx);
      return routed{operation::feedback_settle,
                    rights::service_connect,
                    {},
                    feedback_settle_request{{}, *token, !abandon}};
    }
  }

  return bad_request("no endpoint " +
                         auth::detail::printable(req.target.substr(0, req.target.find('?'))) +
                         " (docs/https.md lists them)",
                     ctx);
}

// --- authentication (SPEC 12.7-12.9) -----------------------------------------------------

/// Checks the request's `Authorization` token against what `r` needs. Returns
/// the caller's name (the policy, or `device:<id>`; `test` in test mode) or a
/// 401 response. `identities.enabled() == false` (no keys configured) accepts
/// every request, as the other doors do.
inline std::variant<std::string, http_response> authorize(const routed& r, const http_request& req,
                                                          const identity_view& identities,
                                                          std::string_view hub_host,
                                                          const response_context& ctx) {
  if (!identities.enabled())
    return std::string("test");
  const std::string* token = detail::header_value(req.headers, "authorization");
  if (!token)
    return error_response(
        make_auth_error(auth::auth_failure::not_a_token, "no Authorization header"), ctx);
  auto who = identities.authenticate(*token, hub_host, ctx.now);
  if (!who)
    return error_response(who.error(), ctx);
  if (auto ok = auth::authorize(*who, r.needed, r.device); !ok)
    return error_response(ok.error(), ctx);
  return who->policy ? *who->policy : "device:" + who->device_id.value_or("");
}

/// Puts the caller's name where the request carries one (logs only).
inline void stamp_caller(request& what, const std::string& caller) {
  std::visit(
      [&](auto& r) {
        if constexpr (requires { r.service; })
          r.service = caller;
        else if constexpr (requires { r.admin; })
          r.admin = caller;
      },
      what);
}

// --- replies -----------------------------------------------------------------------------

namespace detail {

inline void add_if(header_fields& h, const char* name, const std::optional<std::string>& v) {
  if (v)
    h.emplace_back(name, *v);
}

/// The 200 of a device receive (SPEC 11.2.3): the body and every property.
inline http_response message_response(const std::string& device, const message& msg) {
  http_response r;
  r.status = 200;
  auto& h = r.headers;
  h.emplace_back("ETag", "\"" + (msg.lock_token ? msg.lock_token->to_string() : "") + "\"");
  add_if(h, "iothub-messageid", msg.message_id);
  add_if(h, "iothub-correlationid", msg.correlation_id);
  h.emplace_back("iothub-to", msg.to.value_or("/devices/" + device + "/messages/devicebound"));
  if (msg.expiry_time_utc)
    h.emplace_back("iothub-expiry", codec::format_iso8601(*msg.expiry_time_utc));
  if (msg.enqueued_time_utc)
    h.emplace_back("iothub-enqueuedtime", codec::format_iso8601(*msg.enqueued_time_utc));
  h.emplace_back("iothub-sequencenumber", std::to_string(msg.sequence_number));
  h.emplace_back("iothub-deliverycount",
                 std::to_string(std::min<std::uint32_t>(msg.delivery_count, 255)));
  add_if(h, "iothub-userid", msg.user_id);
  h.emplace_back("iothub-ack", std::string(to_string(msg.ack)));
  if (msg.creation_time_utc)
    h.emplace_back("iothub-creationtimeutc", codec::format_iso8601(*msg.creation_time_utc));
  // The C SDK reads these two names with strncmp, in exactly this case (SPEC 11.2.3).
  add_if(h, "ContentType", msg.content_type);
  add_if(h, "ContentEncoding", msg.content_encoding);
  for (const auto& [name, value] : msg.app_properties)
    h.emplace_back("iothub-app-" + name, value);
  h.emplace_back("Content-Type", "application/octet-stream");
  r.body = msg.body;
  return r;
}

inline http_response json_response(unsigned status, std::string body) {
  http_response r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "application/json; charset=utf-8");
  r.body = std::move(body);
  return r;
}

inline http_response no_content() {
  http_response r;
  r.status = 204;
  return r;
}

/// A policy as ARM's SharedAccessAuthorizationRule shows it.
inline nlohmann::ordered_json policy_json(const auth::shared_access_policy& p) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["keyName"] = p.name;
  j["primaryKey"] = p.primary_key.empty() ? std::string() : p.primary_key.to_base64();
  j["secondaryKey"] = p.secondary_key.empty() ? std::string() : p.secondary_key.to_base64();
  j["rights"] = auth::to_string(p.rights);
  return j;
}

constexpr bool is_policy_op(operation op) noexcept {
  return op == operation::policy_list || op == operation::policy_get ||
         op == operation::policy_put || op == operation::policy_renew ||
         op == operation::policy_delete;
}

}  // namespace detail

/// What the router answers (`reply::what`).
using reply_value = decltype(reply{}.what);

/// The response to `r` for the router's reply `what` (SPEC 11.2-11.5, 12.2-12.3).
inline http_response respond(const routed& r, const reply_value& what,
                             const response_context& ctx) {
  using namespace detail;
  if (const error* e = std::get_if<error>(&what)) {
    // the registry's code for a missing entity is DeviceNotFound; here it is a policy
    if (is_policy_op(r.op) && e->code == errc::device_not_found)
      return error_response(404, "PolicyNotFound", e->message, ctx);
    return error_response(*e, ctx);
  }
  const auto unexpected = [&] {
    return error_response(500, "ServerError", "the hub gave an unexpected reply", ctx);
  };
  switch (r.op) {
    case operation::device_receive: {
      const auto* m = std::get_if<message_reply>(&what);
      if (!m)
        return unexpected();
      if (!m->msg)
        return no_content();
      const auto* rr = std::get_if<receive_request>(&r.what);
      return message_response(rr ? rr->device : r.device, *m->msg);
    }
    case operation::feedback_receive: {
      const auto* f = std::get_if<feedback_reply>(&what);
      if (!f)
        return unexpected();
      if (!f->batch)
        return no_content();
      http_response out;
      out.status = 200;
      out.headers.emplace_back("ETag", "\"" + f->batch->lock_token.to_string() + "\"");
      out.headers.emplace_back("iothub-enqueuedtime",
                               codec::format_iso8601(f->batch->enqueued_time_utc));
      out.headers.emplace_back("iothub-userid", f->batch->user_id);
      out.headers.emplace_back("iothub-deliverycount", std::to_string(f->batch->delivery_count));
      out.headers.emplace_back("Content-Type",
                               "application/vnd.microsoft.iothub.feedback.json; charset=utf-8");
      out.body = codec::encode_feedback_json(f->batch->records);
      return out;
    }
    case operation::device_settle:
    case operation::feedback_settle:
    case operation::registry_delete:
      if (!std::holds_alternative<done_reply>(what))
        return unexpected();
      return no_content();
    case operation::purge: {
      const auto* c = std::get_if<count_reply>(&what);
      const auto* p = std::get_if<purge_request>(&r.what);
      if (!c || !p)
        return unexpected();
      nlohmann::ordered_json j = nlohmann::ordered_json::object();
      j["totalMessagesPurged"] = c->count;
      j["deviceId"] = p->device;
      j["moduleId"] = nullptr;
      return json_response(200, j.dump());
    }
    case operation::registry_put:
    case operation::registry_get: {
      const auto* d = std::get_if<device_reply>(&what);
      if (!d)
        return unexpected();
      auto out = json_response(200, codec::encode_device_json(d->device));
      out.headers.emplace_back("ETag", "\"" + etag_of(d->device.identity) + "\"");
      return out;
    }
    case operation::registry_list: {
      const auto* l = std::get_if<devices_reply>(&what);
      if (!l)
        return unexpected();
      return json_response(200, codec::encode_devices_json(l->devices));
    }
    case operation::policy_list: {
      const auto* l = std::get_if<policies_reply>(&what);
      if (!l)
        return unexpected();
      nlohmann::ordered_json j = nlohmann::ordered_json::object();
      j["value"] = nlohmann::ordered_json::array();
      for (const auto& p : l->policies)
        j["value"].push_back(policy_json(p));
      return json_response(200, j.dump());
    }
    case operation::policy_get:
    case operation::policy_put:
    case operation::policy_renew: {
      const auto* p = std::get_if<policy_reply>(&what);
      if (!p)
        return unexpected();
      return json_response(p->created ? 201 : 200, policy_json(p->policy).dump());
    }
    case operation::policy_delete:
      if (!std::holds_alternative<done_reply>(what))
        return unexpected();
      return no_content();
  }
  return unexpected();
}

}  // namespace devicebound::hubd::https
