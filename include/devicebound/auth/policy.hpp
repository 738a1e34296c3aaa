/// \file policy.hpp
/// Who may sign a SAS token (SPEC 12.7.4, 12.9): shared access policies with
/// their rights, IoT Hub's default policies, and a device's own keys.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rights.hpp"
#include "shared_access_key.hpp"

namespace devicebound::auth {

/// A hub-level shared access policy: a name (`skn` in tokens), two keys that
/// both sign (so one can be regenerated while the other works), its rights.
struct shared_access_policy {
  std::string name;
  shared_access_key primary_key;
  shared_access_key secondary_key;
  access_rights rights = access_rights::none;

  friend bool operator==(const shared_access_policy&, const shared_access_policy&) = default;
};

/// The name and rights of a policy that a new IoT Hub has.
struct default_policy {
  std::string_view name;
  access_rights rights;
};

/// IoT Hub's default policies (SPEC 12.9.1).
inline constexpr default_policy default_policies[] = {
    {"iothubowner", access_rights::all},
    {"service", access_rights::service_connect},
    {"device", access_rights::device_connect},
    {"registryRead", access_rights::registry_read},
    {"registryReadWrite", access_rights::registry_write},
};

/// The default policies with fresh keys from `new_key` (two calls per policy,
/// primary first). The caller supplies the randomness: this header never
/// reads a random source.
inline std::vector<shared_access_policy> make_default_policies(
    const std::function<shared_access_key()>& new_key) {
  std::vector<shared_access_policy> out;
  out.reserve(std::size(default_policies));
  for (const auto& p : default_policies) {
    shared_access_policy policy;
    policy.name = std::string(p.name);
    policy.primary_key = new_key();
    policy.secondary_key = new_key();
    policy.rights = p.rights;
    out.push_back(std::move(policy));
  }
  return out;
}

/// The policy named `name` (exact, case-sensitive match), or null.
inline const shared_access_policy* find_policy(std::span<const shared_access_policy> policies,
                                               std::string_view name) noexcept {
  for (const auto& p : policies)
    if (p.name == name)
      return &p;
  return nullptr;
}

/// What the registry knows of a device for authentication (SPEC 12.4): its
/// two symmetric keys and whether it is enabled (a disabled device is
/// refused: SPEC 12.4.1).
struct device_credentials {
  shared_access_key primary_key;
  shared_access_key secondary_key;
  bool enabled = true;
};

/// Looks a device up by its exact id; `std::nullopt` if it is not registered.
using device_key_lookup =
    std::function<std::optional<device_credentials>(std::string_view device_id)>;

}  // namespace devicebound::auth
