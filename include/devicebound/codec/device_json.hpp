/// \file device_json.hpp
/// The device JSON of IoT Hub's registry API (SPEC 12.4): `device_view` out,
/// `device_identity_update` (a PUT body) in. Sans-I/O; nlohmann/json.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../auth/base64.hpp"
#include "../errors.hpp"
#include "../identity.hpp"
#include "feedback_json.hpp"
#include "iso8601.hpp"
#include "json_syntax_error.hpp"

namespace devicebound::codec {

/// Shortest and longest symmetric key a PUT may give, in bytes once
/// base64-decoded (our rule: step 9 decisions; IoT Hub's own limits are unconfirmed).
inline constexpr std::size_t min_symmetric_key_bytes = 16;
inline constexpr std::size_t max_symmetric_key_bytes = 64;

namespace detail {

/// A time as the device JSON writes it; the zero instant (never happened) is
/// .NET's `DateTime.MinValue`, as IoT Hub writes it.
inline std::string device_json_time(time_point t) {
  return format_iso8601(t == time_point{} ? iso8601_min : t);
}

inline nlohmann::ordered_json string_or_null(const std::string& s) {
  return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s);
}

inline nlohmann::ordered_json device_json_object(const device_view& v) {
  const device_identity& d = v.identity;
  nlohmann::ordered_json o = nlohmann::ordered_json::object();
  o["deviceId"] = d.device_id;
  o["generationId"] = d.generation_id;
  o["etag"] = etag_of(d);
  o["connectionState"] = v.connected ? "Connected" : "Disconnected";
  o["status"] = std::string(to_string(d.status));
  o["statusReason"] = string_or_null(d.status_reason);
  o["connectionStateUpdatedTime"] = device_json_time(v.connection_state_updated);
  o["statusUpdatedTime"] = device_json_time(d.status_updated);
  o["lastActivityTime"] = device_json_time(v.last_activity);
  o["cloudToDeviceMessageCount"] = v.cloud_to_device_count;
  nlohmann::ordered_json auth = nlohmann::ordered_json::object();
  nlohmann::ordered_json sym = nlohmann::ordered_json::object();
  sym["primaryKey"] = d.primary_key.empty() ? nlohmann::ordered_json(nullptr)
                                            : nlohmann::ordered_json(d.primary_key.to_base64());
  sym["secondaryKey"] = d.secondary_key.empty()
                            ? nlohmann::ordered_json(nullptr)
                            : nlohmann::ordered_json(d.secondary_key.to_base64());
  auth["symmetricKey"] = std::move(sym);
  nlohmann::ordered_json x509 = nlohmann::ordered_json::object();
  x509["primaryThumbprint"] = string_or_null(d.primary_thumbprint);
  x509["secondaryThumbprint"] = string_or_null(d.secondary_thumbprint);
  auth["x509Thumbprint"] = std::move(x509);
  auth["type"] = std::string(to_string(d.auth));
  o["authentication"] = std::move(auth);
  nlohmann::ordered_json caps = nlohmann::ordered_json::object();
  caps["iotEdge"] = d.iot_edge;
  o["capabilities"] = std::move(caps);
  return o;
}

inline std::string dump_device_json(const nlohmann::ordered_json& j) {
  // Ids and reasons may hold bytes that are not UTF-8 (a status reason is free
  // text): written as U+FFFD rather than thrown on.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace detail

/// One device as the registry API shows it (SPEC 12.4), compact, fields in
/// IoT Hub's order. Keys are base64; absent keys, thumbprints and an empty
/// status reason are `null`.
inline std::string encode_device_json(const device_view& v) {
  return detail::dump_device_json(detail::device_json_object(v));
}

/// A JSON array of devices (`GET /devices`, SPEC 12.3.2).
inline std::string encode_devices_json(const std::vector<device_view>& devices) {
  nlohmann::ordered_json a = nlohmann::ordered_json::array();
  for (const auto& v : devices)
    a.push_back(detail::device_json_object(v));
  return detail::dump_device_json(a);
}

/// Decodes a PUT body into what it asks to store (SPEC 12.2). Errors never
/// throw and change nothing: `errc::argument_invalid`, with a message that
/// starts with the JSON path of the bad field (`authentication.type: ...`),
/// or the byte where the JSON stops being JSON.
///
/// - The body must be a JSON object; `deviceId` a string (its rules are the
///   registry's: SPEC 2.11).
/// - `status` `"enabled"`/`"disabled"` (default enabled); `statusReason`
///   string or null.
/// - `authentication.type` one of `sas`, `selfSigned`, `certificateAuthority`,
///   `none` (default sas); `symmetricKey.primaryKey`/`secondaryKey` null, `""`
///   (generate) or base64 of 16..64 bytes; `x509Thumbprint.*` strings or null.
/// - `capabilities.iotEdge` a boolean.
/// - Every other field (`etag`, `generationId`, `connectionState`, counts and
///   times the SDKs send back on an update) is read-only and ignored.
inline result<device_identity_update> decode_device_update(std::string_view body) {
  using json = nlohmann::json;
  auto fail = [](std::string problem) -> result<device_identity_update> {
    return make_error(errc::argument_invalid, "device JSON: " + std::move(problem));
  };
  json doc;
  try {
    doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false,
                      /*ignore_comments=*/false);
  } catch (const json::exception& e) {  // not thrown with allow_exceptions=false; be safe
    return fail(std::string("is not valid JSON: ") + e.what());
  }
  if (doc.is_discarded()) {
    detail::json_syntax_error why;
    json::sax_parse(body.begin(), body.end(), &why);
    return fail("is not valid JSON " + why.describe());
  }
  if (!doc.is_object())
    return fail(std::string("is a JSON ") + doc.type_name() + ", expected an object");

  device_identity_update u;
  std::string problem;
  // An optional member of `o` that must be of `kind` (or null when `null_ok`).
  const auto member = [&](const json& o, const char* path, const char* name, json::value_t kind,
                          bool null_ok) -> const json* {
    const auto it = o.find(name);
    if (it == o.end() || (null_ok && it->is_null()))
      return nullptr;
    const bool ok = it->type() == kind || (kind == json::value_t::number_unsigned &&
                                           it->type() == json::value_t::number_integer);
    if (!ok) {
      const char* expected = kind == json::value_t::string    ? "a string"
                             : kind == json::value_t::object  ? "an object"
                             : kind == json::value_t::boolean ? "a boolean"
                                                              : "another type";
      problem = std::string(path) + ": is a " + it->type_name() + ", expected " + expected +
                (null_ok ? " or null" : "");
      return nullptr;
    }
    return &*it;
  };

  const json* id = member(doc, "deviceId", "deviceId", json::value_t::string, false);
  if (!problem.empty())
    return fail(problem);
  if (!id)
    return fail("deviceId: is missing");
  u.device_id = id->get<std::string>();

  if (const json* s = member(doc, "status", "status", json::value_t::string, true)) {
    const auto st = parse_device_status(s->get_ref<const std::string&>());
    if (!st)
      return fail("status: " + detail::quote_for_message(s->get_ref<const std::string&>()) +
                  " is not \"enabled\" or \"disabled\"");
    u.status = *st;
  }
  if (!problem.empty())
    return fail(problem);
  if (const json* r = member(doc, "statusReason", "statusReason", json::value_t::string, true))
    u.status_reason = r->get<std::string>();
  if (!problem.empty())
    return fail(problem);

  if (const json* a =
          member(doc, "authentication", "authentication", json::value_t::object, true)) {
    if (const json* t = member(*a, "authentication.type", "type", json::value_t::string, true)) {
      const auto at = parse_auth_type(t->get_ref<const std::string&>());
      if (!at)
        return fail(
            "authentication.type: " + detail::quote_for_message(t->get_ref<const std::string&>()) +
            " is not sas, selfSigned, certificateAuthority or none");
      u.auth = *at;
    }
    if (!problem.empty())
      return fail(problem);
    if (const json* k = member(*a, "authentication.symmetricKey", "symmetricKey",
                               json::value_t::object, true)) {
      for (const auto& [name, out] :
           {std::pair<const char*, std::string*>{"primaryKey", &u.primary_key},
            std::pair<const char*, std::string*>{"secondaryKey", &u.secondary_key}}) {
        const std::string path = std::string("authentication.symmetricKey.") + name;
        const json* v = member(*k, path.c_str(), name, json::value_t::string, true);
        if (!problem.empty())
          return fail(problem);
        if (!v || v->get_ref<const std::string&>().empty())
          continue;
        const std::string& text = v->get_ref<const std::string&>();
        const auto bytes = auth::base64_decode(text);
        if (!bytes)
          return fail(path + ": is not base64");
        if (bytes->size() < min_symmetric_key_bytes || bytes->size() > max_symmetric_key_bytes)
          return fail(path + ": decodes to " + std::to_string(bytes->size()) +
                      " bytes, expected 16 to 64");
        *out = text;
      }
    }
    if (!problem.empty())
      return fail(problem);
    if (const json* x = member(*a, "authentication.x509Thumbprint", "x509Thumbprint",
                               json::value_t::object, true)) {
      for (const auto& [name, out] :
           {std::pair<const char*, std::string*>{"primaryThumbprint", &u.primary_thumbprint},
            std::pair<const char*, std::string*>{"secondaryThumbprint", &u.secondary_thumbprint}}) {
        const std::string path = std::string("authentication.x509Thumbprint.") + name;
        if (const json* v = member(*x, path.c_str(), name, json::value_t::string, true))
          *out = v->get<std::string>();
        if (!problem.empty())
          return fail(problem);
      }
    }
    if (!problem.empty())
      return fail(problem);
  }
  if (!problem.empty())
    return fail(problem);

  if (const json* c = member(doc, "capabilities", "capabilities", json::value_t::object, true)) {
    if (const json* e = member(*c, "capabilities.iotEdge", "iotEdge", json::value_t::boolean, true))
      u.iot_edge = e->get<bool>();
  }
  if (!problem.empty())
    return fail(problem);
  return u;
}

/// Decodes a device as `encode_device_json` writes it (clients, tests, the
/// fuzzer's round trip): the stored fields and the live ones. Errors as
/// `decode_device_update`, plus `etag` (a decimal version), `generationId`,
/// `cloudToDeviceMessageCount`, `connectionState` and the times.
inline result<device_view> decode_device_view(std::string_view body) {
  using json = nlohmann::json;
  auto fail = [](std::string problem) -> result<device_view> {
    return make_error(errc::argument_invalid, "device JSON: " + std::move(problem));
  };
  auto u = decode_device_update(body);
  if (!u)
    return u.error();
  const json doc = json::parse(body.begin(), body.end(), nullptr, false, false);
  device_view v;
  device_identity& d = v.identity;
  d.device_id = u->device_id;
  d.status = u->status;
  d.status_reason = u->status_reason;
  d.auth = u->auth;
  d.primary_thumbprint = u->primary_thumbprint;
  d.secondary_thumbprint = u->secondary_thumbprint;
  d.iot_edge = u->iot_edge;
  if (!u->primary_key.empty())
    d.primary_key = auth::shared_access_key::from_base64(u->primary_key).value();
  if (!u->secondary_key.empty())
    d.secondary_key = auth::shared_access_key::from_base64(u->secondary_key).value();

  const auto str = [&](const char* name) -> result<std::string> {
    const auto it = doc.find(name);
    if (it == doc.end() || it->is_null())
      return std::string();
    if (!it->is_string())
      return make_error(errc::argument_invalid, std::string("device JSON: ") + name + ": is a " +
                                                    it->type_name() + ", expected a string");
    return it->get<std::string>();
  };
  auto gen = str("generationId");
  if (!gen)
    return gen.error();
  d.generation_id = *gen;
  auto etag = str("etag");
  if (!etag)
    return etag.error();
  if (!etag->empty()) {
    std::uint64_t n = 0;
    for (char c : *etag) {
      if (c < '0' || c > '9' || n > (UINT64_MAX - 9) / 10)
        return fail("etag: " + detail::quote_for_message(*etag) + " is not a decimal version");
      n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    d.version = n;
  }
  auto state = str("connectionState");
  if (!state)
    return state.error();
  if (*state == "Connected")
    v.connected = true;
  else if (!state->empty() && *state != "Disconnected")
    return fail("connectionState: " + detail::quote_for_message(*state) +
                " is not \"Connected\" or \"Disconnected\"");
  if (const auto it = doc.find("cloudToDeviceMessageCount"); it != doc.end() && !it->is_null()) {
    if (!it->is_number_unsigned())
      return fail("cloudToDeviceMessageCount: is a " + std::string(it->type_name()) +
                  ", expected a non-negative integer");
    v.cloud_to_device_count = it->get<std::uint64_t>();
  }
  for (const auto& [name, out] :
       {std::pair<const char*, time_point*>{"connectionStateUpdatedTime",
                                            &v.connection_state_updated},
        std::pair<const char*, time_point*>{"statusUpdatedTime", &d.status_updated},
        std::pair<const char*, time_point*>{"lastActivityTime", &v.last_activity}}) {
    auto text = str(name);
    if (!text)
      return text.error();
    if (text->empty())
      continue;
    auto t = parse_iso8601(*text);
    if (!t)
      return fail(std::string(name) + ": " + t.error().message);
    *out = *t == detail::iso8601_min ? time_point{} : *t;
  }
  return v;
}

}  // namespace devicebound::codec
