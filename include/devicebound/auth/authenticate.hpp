/// \file authenticate.hpp
/// Who a SAS token speaks for, and what it may do (SPEC 12.7-12.9): the one
/// verifier that every front door and the broker plugin use. Sans-I/O: the
/// time is an argument, the registry a lookup function.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../message.hpp"
#include "base64.hpp"
#include "policy.hpp"
#include "rights.hpp"
#include "sas_token.hpp"
#include "signature.hpp"
#include "url.hpp"

namespace devicebound::auth {

/// Why a token or a request was refused. Every one is a 401 (`errc::unauthorized`,
/// IoT Hub's `IotHubUnauthorizedAccess`, SPEC 10.6.5, 12.9.4); the reason is
/// the first word of the error message (`auth_failure_of` reads it back).
enum class auth_failure {
  not_a_token,               ///< not `SharedAccessSignature …` (a raw key, a password, nothing)
  malformed_token,           ///< the token text does not parse
  wrong_host,                ///< `sr` names another hub
  expired,                   ///< `se` plus the allowed clock skew is before now
  unknown_policy,            ///< `skn` names no policy of this hub
  hub_token_without_policy,  ///< `sr` is the hub but there is no `skn`: no key can have signed it
  module_not_supported,      ///< a module token without `skn` (module identities have no keys here)
  unknown_device,            ///< the device in `sr` is not registered
  device_disabled,           ///< the device in `sr` is disabled (SPEC 12.4.1)
  bad_signature,             ///< neither the primary nor the secondary key signed it
  insufficient_rights,       ///< the policy lacks a right the operation needs (SPEC 12.9.3)
  wrong_device,              ///< a token scoped to one device used for another
  out_of_scope,              ///< a token scoped to a device used for a hub-wide operation
};

/// The reason's name, as it starts error messages (`"SasTokenExpired"`).
constexpr std::string_view to_string(auth_failure f) noexcept {
  switch (f) {
    case auth_failure::not_a_token:
      return "NotASasToken";
    case auth_failure::malformed_token:
      return "MalformedSasToken";
    case auth_failure::wrong_host:
      return "WrongHost";
    case auth_failure::expired:
      return "SasTokenExpired";
    case auth_failure::unknown_policy:
      return "UnknownPolicy";
    case auth_failure::hub_token_without_policy:
      return "HubTokenWithoutPolicy";
    case auth_failure::module_not_supported:
      return "ModuleNotSupported";
    case auth_failure::unknown_device:
      return "UnknownDevice";
    case auth_failure::device_disabled:
      return "DeviceDisabled";
    case auth_failure::bad_signature:
      return "BadSignature";
    case auth_failure::insufficient_rights:
      return "InsufficientRights";
    case auth_failure::wrong_device:
      return "WrongDevice";
    case auth_failure::out_of_scope:
      return "OutOfScope";
  }
  return "Unknown";
}

/// The `auth_failure` an error from `authenticate`/`authorize` carries, or
/// `std::nullopt` for any other error.
inline std::optional<auth_failure> auth_failure_of(const error& e) {
  if (e.code != errc::unauthorized)
    return std::nullopt;
  const std::string_view m = e.message;
  const std::string_view word = m.substr(0, m.find(':'));
  for (int i = 0; i <= static_cast<int>(auth_failure::out_of_scope); ++i)
    if (to_string(static_cast<auth_failure>(i)) == word)
      return static_cast<auth_failure>(i);
  return std::nullopt;
}

/// An `errc::unauthorized` error for `reason`.
inline error make_auth_error(auth_failure reason, std::string detail) {
  return make_error(errc::unauthorized, std::string(to_string(reason)) + ": " + std::move(detail));
}

/// Largest clock skew `authenticate` allows, whatever it is asked for.
inline constexpr std::chrono::seconds max_clock_skew{15 * 60};

/// How lenient `authenticate` is with time.
struct verify_options {
  /// A token is still valid this long after its `se` (clocks differ). IoT
  /// Hub's C# reference allows 5 minutes (SPEC 12.7.3). Clamped to
  /// `[0, max_clock_skew]`.
  std::chrono::seconds clock_skew{5 * 60};
};

/// What `sr` names, decoded and normalised (SPEC 12.8.1).
struct sas_scope {
  std::string host;  ///< lower-cased, without `:port`
  std::string path;  ///< `""` (the hub), `/devices/{id}`, `/devices/{id}/modules/{m}`, …
  std::optional<std::string> device_id;  ///< exact, case-sensitive
  std::optional<std::string> module_id;

  friend bool operator==(const sas_scope&, const sas_scope&) = default;
};

namespace detail {

inline std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
  return out;
}

/// `host[:port]` lower-cased, without the port (SPEC 12.8.2).
inline std::string normalise_host(std::string_view host) {
  const std::size_t colon = host.rfind(':');
  if (colon != std::string_view::npos &&
      std::all_of(host.begin() + static_cast<std::ptrdiff_t>(colon) + 1, host.end(),
                  [](char c) { return c >= '0' && c <= '9'; }))
    host = host.substr(0, colon);
  return lower_ascii(host);
}

}  // namespace detail

/// `host[:port]` lower-cased, without the port: how `authenticate` compares host names
/// (SPEC 12.8.2).
using detail::normalise_host;

/// Parses a token's `sr` (SPEC 12.8.1): URL-decode once, drop a scheme
/// (`amqps://`, `https://`), split the host from the path, drop a trailing
/// `/`. The host is compared case-insensitively and without its port;
/// `devices` and `modules` case-insensitively; device and module ids exactly
/// (IoT Hub's ids are case-sensitive). Errors (`errc::malformed`): a bad
/// escape, an empty host, an empty path segment.
inline result<sas_scope> parse_sas_resource(std::string_view resource_as_sent) {
  auto decoded = url_decode(resource_as_sent);
  if (!decoded)
    return make_error(errc::malformed, "sr: " + decoded.error().message);
  std::string_view s = *decoded;
  if (const std::size_t scheme = s.find("://");
      scheme != std::string_view::npos && s.find('/') > scheme)
    s.remove_prefix(scheme + 3);
  const std::size_t slash = s.find('/');
  sas_scope out;
  out.host = detail::normalise_host(s.substr(0, slash));
  if (out.host.empty())
    return make_error(errc::malformed, "sr " + detail::printable(*decoded) + " has no host");
  std::string_view rest = slash == std::string_view::npos ? std::string_view{} : s.substr(slash);
  if (rest.ends_with('/'))
    rest.remove_suffix(1);
  std::vector<std::string_view> segments;
  while (!rest.empty()) {
    rest.remove_prefix(1);  // the '/'
    const std::size_t next = rest.find('/');
    const std::string_view segment = rest.substr(0, next);
    if (segment.empty())
      return make_error(errc::malformed,
                        "sr " + detail::printable(*decoded) + " has an empty path segment");
    segments.push_back(segment);
    rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next);
  }
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const bool keyword =
        (i == 0 && segments.size() >= 2 && detail::iequals(segments[0], "devices")) ||
        (i == 2 && out.device_id && segments.size() >= 4 &&
         detail::iequals(segments[2], "modules"));
    out.path += '/';
    out.path += keyword ? detail::lower_ascii(segments[i]) : std::string(segments[i]);
    if (i == 1 && segments.size() >= 2 && detail::iequals(segments[0], "devices"))
      out.device_id = std::string(segments[1]);
    if (i == 3 && out.device_id && detail::iequals(segments[2], "modules"))
      out.module_id = std::string(segments[3]);
  }
  return out;
}

/// Whether a token scoped to `scope_path` may act on `endpoint_path`: a
/// segment-wise prefix (`/a/b` covers `/a/b/c`, not `/a/bc`; SPEC 12.8.1).
inline bool covers(std::string_view scope_path, std::string_view endpoint_path) noexcept {
  if (!endpoint_path.starts_with(scope_path))
    return false;
  return endpoint_path.size() == scope_path.size() || endpoint_path[scope_path.size()] == '/';
}

/// Who a verified token speaks for.
struct principal {
  /// The policy that signed it (`skn`), or none: the device's own key signed it.
  std::optional<std::string> policy;
  /// The policy's rights; `device_connect` alone for a device key (SPEC 12.9.2).
  access_rights rights = access_rights::none;
  /// The device `sr` is scoped to, if any.
  std::optional<std::string> device_id;
  /// The normalised `sr` path (`""`: the whole hub): the token acts only within it.
  std::string scope;
  /// `se`, and the instant the token stops being accepted (`se` + skew): a
  /// front door closes what the token authorised then.
  std::uint64_t expiry = 0;
  time_point valid_until{};

  /// Signed with a device's own key.
  bool is_device() const noexcept { return !policy.has_value(); }
};

namespace detail {

/// Seconds past which `se` is treated as "never" (9999-12-31T23:59:59Z), so
/// the arithmetic below cannot overflow.
inline constexpr std::uint64_t max_expiry_seconds = 253402300799ull;

inline time_point valid_until(std::uint64_t expiry, std::chrono::seconds skew) {
  const auto se =
      std::chrono::seconds(static_cast<std::int64_t>(std::min(expiry, max_expiry_seconds)));
  return time_point(std::chrono::duration_cast<duration>(se + skew));
}

inline bool signed_by_either(const sas_token& token, const shared_access_key& primary,
                             const shared_access_key& secondary) {
  // An empty key is no key: anyone can compute an HMAC under it.
  const bool by_primary = !primary.empty() && signature_matches(token, primary);
  const bool by_secondary = !secondary.empty() && signature_matches(token, secondary);
  return by_primary || by_secondary;
}

}  // namespace detail

/// Verifies `token` for the hub `hub_host` at time `now` (SPEC 12.7-12.8):
/// `sr` must name this hub (any case, with or without `:port`); `se` plus the
/// clock skew must not be before `now`; with `skn`, that policy's primary or
/// secondary key must have signed it; without, the device named in `sr`
/// (which must be registered and enabled) must have, with its primary or
/// secondary key. A policy token scoped to a device also needs that device
/// registered and enabled. Returns who the token speaks for, or an
/// `errc::unauthorized` error whose message starts with the `auth_failure`.
inline result<principal> authenticate(const sas_token& token, std::string_view hub_host,
                                      std::span<const shared_access_policy> policies,
                                      const device_key_lookup& devices, time_point now,
                                      verify_options options = {}) {
  auto scope = parse_sas_resource(token.resource);
  if (!scope)
    return make_auth_error(auth_failure::malformed_token, scope.error().message);
  if (scope->host != detail::normalise_host(hub_host))
    return make_auth_error(auth_failure::wrong_host,
                           "sr names host " + detail::printable(scope->host) + ", this hub is " +
                               detail::printable(hub_host));
  const auto skew = std::clamp(options.clock_skew, std::chrono::seconds{0}, max_clock_skew);
  principal p;
  p.expiry = token.expiry;
  p.valid_until = detail::valid_until(token.expiry, skew);
  if (now > p.valid_until)
    return make_auth_error(auth_failure::expired, "se " + std::to_string(token.expiry) + " (plus " +
                                                      std::to_string(skew.count()) +
                                                      " s of clock skew) is in the past");
  p.scope = scope->path;
  p.device_id = scope->device_id;

  if (!token.key_name && !scope->device_id)
    return make_auth_error(auth_failure::hub_token_without_policy,
                           "a token for the hub must name its policy in skn");
  if (!token.key_name && scope->module_id)
    return make_auth_error(auth_failure::module_not_supported,
                           "module tokens signed with a module key are not supported");

  std::optional<device_credentials> device;
  if (scope->device_id) {
    device = devices ? devices(*scope->device_id) : std::nullopt;
    if (!device)
      return make_auth_error(
          auth_failure::unknown_device,
          "device " + detail::printable(*scope->device_id) + " is not registered");
    if (!device->enabled)
      return make_auth_error(auth_failure::device_disabled,
                             "device " + detail::printable(*scope->device_id) + " is disabled");
  }

  if (token.key_name) {
    const shared_access_policy* policy = find_policy(policies, *token.key_name);
    if (!policy)
      return make_auth_error(auth_failure::unknown_policy,
                             "no shared access policy named " + detail::printable(*token.key_name));
    if (!detail::signed_by_either(token, policy->primary_key, policy->secondary_key))
      return make_auth_error(
          auth_failure::bad_signature,
          "the signature matches neither key of policy " + detail::printable(policy->name));
    p.policy = policy->name;
    p.rights = policy->rights;
    return p;
  }
  if (!detail::signed_by_either(token, device->primary_key, device->secondary_key))
    return make_auth_error(
        auth_failure::bad_signature,
        "the signature matches neither key of device " + detail::printable(*scope->device_id));
  p.rights = access_rights::device_connect;
  return p;
}

/// `authenticate` for token text as it arrives (an `Authorization` header, a
/// CBS put-token body, an MQTT password). Anything that is not a SAS token is
/// refused, a raw key included (`not_a_token`); a token that does not parse
/// is `malformed_token`.
inline result<principal> authenticate(std::string_view token_text, std::string_view hub_host,
                                      std::span<const shared_access_policy> policies,
                                      const device_key_lookup& devices, time_point now,
                                      verify_options options = {}) {
  if (!token_text.starts_with(sas_token_prefix)) {
    const bool looks_like_key = !token_text.empty() && base64_decode(token_text).has_value();
    return make_auth_error(auth_failure::not_a_token,
                           looks_like_key
                               ? "a raw key is never accepted where a SAS token is expected"
                               : "expected 'SharedAccessSignature sr=…&sig=…&se=…'");
  }
  auto token = parse_sas_token(token_text);
  if (!token)
    return make_auth_error(auth_failure::malformed_token, token.error().message);
  return authenticate(*token, hub_host, policies, devices, now, options);
}

/// Whether `who` may do an operation that needs `needed` (SPEC 12.9.3), on
/// the device `device_id` or, when it is empty, on the hub as a whole
/// (sending C2D, feedback, purge, the registry). A device's own key grants
/// only DeviceConnect, for that device only; a token scoped to a device acts
/// only for that device. Errors: `insufficient_rights`, `wrong_device`,
/// `out_of_scope`.
inline result<void> authorize(const principal& who, access_rights needed,
                              std::string_view device_id = {}) {
  if (!includes(who.rights, needed))
    return make_auth_error(
        auth_failure::insufficient_rights,
        (who.policy ? "policy " + detail::printable(*who.policy) : std::string("a device key")) +
            " grants " + to_string(who.rights) + "; this needs " + to_string(needed));
  if (device_id.empty()) {
    if (!who.scope.empty())
      return make_auth_error(
          auth_failure::out_of_scope,
          "a token for " + detail::printable(who.scope) + " cannot act on the whole hub");
    return {};
  }
  std::string endpoint = "/devices/";
  endpoint += device_id;
  if (!covers(who.scope, endpoint))
    return make_auth_error(auth_failure::wrong_device,
                           "a token for " + detail::printable(who.scope) +
                               " cannot act for device " + detail::printable(device_id));
  return {};
}

}  // namespace devicebound::auth
