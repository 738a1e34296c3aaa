// Fuzzes the HTTPS door's request routing and the registry's device JSON
// (apps/devicebound-hub/https_routes.hpp, codec/device_json.hpp). The input is
// a request as text: the method on the first line, the target on the second,
// then `name: value` header lines, a blank line and the body.
//
// Whatever the input: routing never throws; a refusal is a 4xx with IoT Hub's
// error JSON (SPEC 11.6.2); a routed request gets a well-formed response for
// an error reply and a success reply; a device JSON that decodes survives
// encode -> decode unchanged (parse -> serialize -> parse).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <devicebound/codec/device_json.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "https_routes.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;

void check_error_body(const https::http_response& r) {
  if (r.status < 400 || r.status > 599)
    std::abort();
  const auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("Message") || !j["Message"].is_string())
    std::abort();
  const std::string m = j["Message"].get<std::string>();
  const std::string* code = r.header("iothub-errorcode");
  if (!code || m.rfind("ErrorCode:" + *code + ";", 0) != 0)
    std::abort();
}

/// The update a device view shows: keys as base64, the rest as stored.
device_identity_update update_of(const device_view& v) {
  device_identity_update u;
  u.device_id = v.identity.device_id;
  u.status = v.identity.status;
  u.status_reason = v.identity.status_reason;
  u.auth = v.identity.auth;
  u.primary_key = v.identity.primary_key.empty() ? "" : v.identity.primary_key.to_base64();
  u.secondary_key = v.identity.secondary_key.empty() ? "" : v.identity.secondary_key.to_base64();
  u.primary_thumbprint = v.identity.primary_thumbprint;
  u.secondary_thumbprint = v.identity.secondary_thumbprint;
  u.iot_edge = v.identity.iot_edge;
  return u;
}

bool same(const device_identity_update& a, const device_identity_update& b) {
  return a.device_id == b.device_id && a.status == b.status && a.status_reason == b.status_reason &&
         a.auth == b.auth && a.primary_thumbprint == b.primary_thumbprint &&
         a.secondary_thumbprint == b.secondary_thumbprint && a.iot_edge == b.iot_edge;
}

bool valid_utf8(std::string_view s) {
  try {  // dump() with strict errors checks UTF-8
    (void)nlohmann::json(std::string(s)).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

void check_device_json(std::string_view body) {
  const auto v = codec::decode_device_view(body);
  if (!v) {
    if (v.code() != errc::argument_invalid || v.error().message.empty())
      std::abort();
    return;
  }
  // Text fields that are not UTF-8 are written as U+FFFD: no round trip for them.
  const auto& d = v->identity;
  if (!valid_utf8(d.device_id) || !valid_utf8(d.status_reason) || !valid_utf8(d.generation_id) ||
      !valid_utf8(d.primary_thumbprint) || !valid_utf8(d.secondary_thumbprint))
    return;
  const std::string text = codec::encode_device_json(*v);
  const auto again = codec::decode_device_view(text);
  if (!again || again->identity != v->identity || again->connected != v->connected ||
      again->cloud_to_device_count != v->cloud_to_device_count)
    std::abort();
  if (codec::encode_device_json(*again) != text)
    std::abort();
  const auto u = codec::decode_device_update(text);
  if (!u || !same(*u, update_of(*v)))
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::size_t pos = 0;
  const auto line = [&]() -> std::string_view {
    const std::size_t end = input.find('\n', pos);
    const std::string_view l =
        input.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    pos = end == std::string_view::npos ? input.size() : end + 1;
    return l;
  };
  const std::string method(line());
  const std::string target(line());
  https::header_fields headers;
  while (pos < input.size()) {
    const std::string_view h = line();
    if (h.empty())
      break;
    const std::size_t colon = h.find(':');
    std::string name(h.substr(0, colon));
    for (char& c : name)
      if (c >= 'A' && c <= 'Z')
        c = static_cast<char>(c - 'A' + 'a');
    headers.emplace_back(std::move(name), colon == std::string_view::npos
                                              ? std::string()
                                              : std::string(h.substr(colon + 1)));
  }
  const std::string_view body = input.substr(pos);

  const https::http_request req{method, target, &headers, body};
  const https::response_context ctx;
  const auto r = https::route(req, ctx);
  if (const auto* refused = std::get_if<https::http_response>(&r)) {
    check_error_body(*refused);
  } else {
    const auto& routed = std::get<https::routed>(r);
    check_error_body(
        https::respond(routed, make_error(errc::device_message_lock_lost, "fuzz"), ctx));
    const auto ok = https::respond(routed, done_reply{}, ctx);
    if (ok.status != 204 && ok.status != 500)
      std::abort();
    const hubd::identity_view open(false);
    if (!std::holds_alternative<std::string>(https::authorize(routed, req, open, "h", ctx)))
      std::abort();
  }
  check_device_json(body);
  return 0;
}
