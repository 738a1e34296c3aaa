/// \file connection_string.hpp
/// IoT Hub connection strings (SPEC 12.5): service
/// `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` and device
/// `HostName=…;DeviceId=…;SharedAccessKey=…` with optional `ModuleId`,
/// `GatewayHostName`, `SharedAccessSignature=` or `x509=true`. Parse and print.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../errors.hpp"
#include "../validate.hpp"
#include "rights.hpp"
#include "sas_token.hpp"
#include "shared_access_key.hpp"

namespace devicebound::auth {

/// Whom a connection string speaks for.
enum class connection_string_kind {
  service,  ///< a back end, through a shared access policy (or a token with `skn`)
  device,   ///< one device (`DeviceId`)
  module,   ///< one module of a device (`DeviceId` and `ModuleId`)
};

/// A parsed connection string. Exactly one credential is set: a key, a
/// token, or `x509`.
struct connection_string {
  std::string host_name;                                     ///< `HostName`, maybe with `:port`
  std::optional<std::string> device_id;                      ///< `DeviceId`
  std::optional<std::string> module_id;                      ///< `ModuleId` (needs `DeviceId`)
  std::optional<std::string> shared_access_key_name;         ///< `SharedAccessKeyName` (a policy)
  std::optional<auth::shared_access_key> shared_access_key;  ///< `SharedAccessKey`
  std::optional<sas_token> shared_access_signature;          ///< `SharedAccessSignature`
  bool x509 = false;                                         ///< `x509=true` (devices only)
  std::optional<std::string> gateway_host_name;              ///< `GatewayHostName` (devices only)

  connection_string_kind kind() const noexcept {
    if (!device_id)
      return connection_string_kind::service;
    return module_id ? connection_string_kind::module : connection_string_kind::device;
  }

  friend bool operator==(const connection_string&, const connection_string&) = default;
};

namespace detail {

inline error cs_error(std::string what) {
  return make_error(errc::argument_invalid, "connection string: " + std::move(what));
}

/// `host` or `host:port`: host characters as Java's builder allows them
/// (`[A-Za-z0-9_.-]+`, SPEC 12.5.1); a port of 1..65535 as Node and Python
/// allow (SPEC 10.1.2).
inline result<void> validate_host_name(std::string_view key, std::string_view value) {
  const std::size_t colon = value.find(':');
  const std::string_view host = value.substr(0, colon);
  if (host.empty())
    return cs_error(std::string(key) + " " + printable(value) + " has no host");
  for (const char c : host)
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '.' || c == '_'))
      return cs_error(std::string(key) + " " + printable(value) +
                      " may hold only letters, digits, '-', '.' and '_' (and ':port')");
  if (colon != std::string_view::npos) {
    const std::string_view port = value.substr(colon + 1);
    unsigned long n = 0;
    bool ok = !port.empty() && port.size() <= 5 && port[0] != '0';
    for (const char c : port) {
      ok = ok && c >= '0' && c <= '9';
      if (ok)
        n = n * 10 + static_cast<unsigned long>(c - '0');
    }
    if (!ok || n > 65535)
      return cs_error(std::string(key) + " " + printable(value) +
                      " has a bad port (expected 1..65535)");
  }
  return {};
}

}  // namespace detail

/// Parses a connection string: `;`-separated `Key=value` pairs, each split at
/// its first `=` (base64 keys end in `=`), keys case-insensitive as in C#,
/// empty segments (a trailing `;`) skipped. Errors (`errc::argument_invalid`)
/// name the problem: a segment without `=`, an unknown or repeated key, an
/// empty value, a missing `HostName`, a key that is not base64, a bad id or
/// host, a token that does not parse, no credential or more than one, a
/// device-only key in a service string.
inline result<connection_string> parse_connection_string(std::string_view text) {
  connection_string out;
  std::optional<std::string_view> host, device, module, key_name, key, signature, x509, gateway;
  struct known_key {
    std::string_view name;
    std::optional<std::string_view>* slot;
  };
  const known_key keys[] = {
      {"HostName", &host},       {"DeviceId", &device},
      {"ModuleId", &module},     {"SharedAccessKeyName", &key_name},
      {"SharedAccessKey", &key}, {"SharedAccessSignature", &signature},
      {"x509", &x509},           {"GatewayHostName", &gateway},
  };
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(';', start);
    if (end == std::string_view::npos)
      end = text.size();
    const std::string_view segment = text.substr(start, end - start);
    start = end + 1;
    if (segment.empty())
      continue;
    const std::size_t eq = segment.find('=');
    if (eq == std::string_view::npos)
      return detail::cs_error("segment " + detail::printable(segment) +
                              " has no '=' (expected Key=value)");
    const std::string_view name = segment.substr(0, eq);
    const std::string_view value = segment.substr(eq + 1);
    const known_key* found = nullptr;
    for (const auto& k : keys)
      if (detail::iequals(name, k.name))
        found = &k;
    if (!found)
      return detail::cs_error("unknown key " + detail::printable(name) +
                              " (expected HostName, DeviceId, ModuleId, SharedAccessKeyName, "
                              "SharedAccessKey, SharedAccessSignature, x509 or GatewayHostName)");
    if (*found->slot)
      return detail::cs_error("key " + std::string(found->name) + " appears twice");
    if (value.empty())
      return detail::cs_error("key " + std::string(found->name) + " has an empty value");
    *found->slot = value;
  }

  if (!host)
    return detail::cs_error("HostName is missing");
  if (auto ok = detail::validate_host_name("HostName", *host); !ok)
    return ok.error();
  out.host_name = std::string(*host);
  if (device) {
    if (auto ok = validate_device_id(*device); !ok)
      return detail::cs_error("DeviceId: " + ok.error().message);
    out.device_id = std::string(*device);
  }
  if (module) {
    if (!device)
      return detail::cs_error("ModuleId needs a DeviceId");
    if (auto ok = validate_device_id(*module); !ok)
      return detail::cs_error("ModuleId (same rule as a device id): " + ok.error().message);
    out.module_id = std::string(*module);
  }
  if (gateway) {
    if (!device)
      return detail::cs_error(
          "GatewayHostName is for device connection strings (it needs a DeviceId)");
    if (auto ok = detail::validate_host_name("GatewayHostName", *gateway); !ok)
      return ok.error();
    out.gateway_host_name = std::string(*gateway);
  }
  if (key_name) {
    for (const char c : *key_name)
      if (!detail::is_token_char(c))
        return detail::cs_error("SharedAccessKeyName " + detail::printable(*key_name) +
                                " holds a space or a byte that is not printable ASCII");
    out.shared_access_key_name = std::string(*key_name);
  }
  if (key) {
    auto k = shared_access_key::from_base64(*key);
    if (!k)
      return detail::cs_error("SharedAccessKey: " + k.error().message);
    out.shared_access_key = std::move(*k);
  }
  if (signature) {
    auto t = parse_sas_token(*signature);
    if (!t)
      return detail::cs_error("SharedAccessSignature: " + t.error().message);
    out.shared_access_signature = std::move(*t);
  }
  if (x509) {
    if (!detail::iequals(*x509, "true"))
      return detail::cs_error("x509 must be 'true' (got " + detail::printable(*x509) + ")");
    if (!device)
      return detail::cs_error("x509=true is for device connection strings (it needs a DeviceId)");
    out.x509 = true;
  }

  const int credentials = (key ? 1 : 0) + (signature ? 1 : 0) + (x509 ? 1 : 0);
  if (credentials == 0)
    return detail::cs_error(
        device ? "no credential (expected SharedAccessKey, SharedAccessSignature or x509=true)"
               : "no credential (expected SharedAccessKey or SharedAccessSignature)");
  if (credentials > 1)
    return detail::cs_error(
        "more than one credential (give one of SharedAccessKey, SharedAccessSignature, x509)");
  if (!device && key && !key_name)
    return detail::cs_error(
        "SharedAccessKeyName is missing (a service connection string names its policy)");
  if (key_name && x509)
    return detail::cs_error("SharedAccessKeyName cannot go with x509=true");
  return out;
}

/// The connection string text, keys in the portal's order (`HostName`,
/// `DeviceId`, `ModuleId`, `SharedAccessKeyName`, `SharedAccessKey`,
/// `SharedAccessSignature`, `x509`, `GatewayHostName`).
/// `parse_connection_string(to_string(cs)) == cs` for every parsed `cs`.
inline std::string to_string(const connection_string& cs) {
  std::string out = "HostName=" + cs.host_name;
  const auto add = [&out](std::string_view name, std::string_view value) {
    out += ';';
    out += name;
    out += '=';
    out += value;
  };
  if (cs.device_id)
    add("DeviceId", *cs.device_id);
  if (cs.module_id)
    add("ModuleId", *cs.module_id);
  if (cs.shared_access_key_name)
    add("SharedAccessKeyName", *cs.shared_access_key_name);
  if (cs.shared_access_key)
    add("SharedAccessKey", cs.shared_access_key->to_base64());
  if (cs.shared_access_signature)
    add("SharedAccessSignature", to_string(*cs.shared_access_signature));
  if (cs.x509)
    add("x509", "true");
  if (cs.gateway_host_name)
    add("GatewayHostName", *cs.gateway_host_name);
  return out;
}

}  // namespace devicebound::auth
