/// \file signature.hpp
/// Signing SAS tokens as the official SDKs do, and checking a token's
/// signature (SPEC 5.2, 12.7.2). Needs libcrypto (link `devicebound::auth`).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../errors.hpp"
#include "../message.hpp"
#include "base64.hpp"
#include "connection_string.hpp"
#include "hmac_sha256.hpp"
#include "sas_token.hpp"
#include "shared_access_key.hpp"
#include "url.hpp"

namespace devicebound::auth {

/// The text that is signed: `sr` as it appears in the token, a newline, and
/// `se` in decimal (SPEC 12.7.2).
inline std::string sas_string_to_sign(std::string_view resource_as_sent, std::uint64_t expiry) {
  std::string out(resource_as_sent);
  out += '\n';
  out += std::to_string(expiry);
  return out;
}

/// `base64(HMAC-SHA256(key, sr + "\n" + se))`, not yet URL-encoded; empty
/// only if libcrypto fails.
inline std::string sas_signature(const shared_access_key& key, std::string_view resource_as_sent,
                                 std::uint64_t expiry) {
  const auto mac = hmac_sha256(key.bytes(), sas_string_to_sign(resource_as_sent, expiry));
  if (!mac)
    return {};
  return base64_encode(std::string_view(reinterpret_cast<const char*>(mac->data()), mac->size()));
}

/// Whether `key` signed `token`: the HMAC over its `sr` as received and its
/// `se`, compared in constant time (`CRYPTO_memcmp`) with the decoded `sig`.
inline bool signature_matches(const sas_token& token, const shared_access_key& key) {
  const auto mac = hmac_sha256(key.bytes(), sas_string_to_sign(token.resource, token.expiry));
  auto sig = base64_decode(token.signature);
  if (!mac || !sig)
    return false;
  return constant_time_equal(
      *sig, std::string_view(reinterpret_cast<const char*>(mac->data()), mac->size()));
}

/// `se` for a token that lives `ttl` from `now` (whole seconds, rounded down).
inline std::uint64_t sas_expiry(time_point now, std::chrono::seconds ttl) {
  const auto at = std::chrono::floor<std::chrono::seconds>(now) + ttl;
  const auto s = at.time_since_epoch().count();
  return s < 0 ? 0 : static_cast<std::uint64_t>(s);
}

/// A token for `resource_uri` (unencoded: `{host}` for a policy,
/// `{host}/devices/{id}` for a device), signed with `key` and valid until
/// `expiry`. `sr` is `url_encode(resource_uri)`: RFC 3986 unreserved
/// characters kept, the rest `%XX` in uppercase, as the Node device SDK and
/// Python's `quote(…, safe="")` write it; not lowercased (SPEC 5.3, 12.6.3).
/// `key_name` becomes `skn` (a policy's name; none for a device key).
inline sas_token generate_sas_token(std::string_view resource_uri, const shared_access_key& key,
                                    std::uint64_t expiry,
                                    std::optional<std::string> key_name = std::nullopt) {
  sas_token t;
  t.resource = url_encode(resource_uri);
  t.expiry = expiry;
  t.signature = sas_signature(key, t.resource, expiry);
  t.key_name = std::move(key_name);
  return t;
}

/// The resource URI a connection string's tokens are for (SPEC 5.3, 12.5.2):
/// `{HostName}`, `{HostName}/devices/{DeviceId}` or
/// `{HostName}/devices/{DeviceId}/modules/{ModuleId}`. `HostName`, never
/// `GatewayHostName`, as Node and C# do.
inline std::string sas_resource_uri(const connection_string& cs) {
  std::string out = cs.host_name;
  if (cs.device_id) {
    out += "/devices/";
    out += *cs.device_id;
    if (cs.module_id) {
      out += "/modules/";
      out += *cs.module_id;
    }
  }
  return out;
}

/// The token a client with connection string `cs` sends: a fresh one signed
/// with its `SharedAccessKey` (with `skn` = `SharedAccessKeyName` if given),
/// or its `SharedAccessSignature` as it is. Errors (`errc::argument_invalid`):
/// an `x509` connection string has no token.
inline result<sas_token> generate_sas_token(const connection_string& cs, std::uint64_t expiry) {
  if (cs.shared_access_signature)
    return *cs.shared_access_signature;
  if (!cs.shared_access_key)
    return make_error(errc::argument_invalid,
                      "connection string has no SharedAccessKey to sign a token with");
  return generate_sas_token(sas_resource_uri(cs), *cs.shared_access_key, expiry,
                            cs.shared_access_key_name);
}

}  // namespace devicebound::auth
