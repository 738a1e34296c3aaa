/// \file rights.hpp
/// IoT Hub's permissions (SPEC 12.9): the rights a shared access policy
/// grants, as bit flags with IoT Hub's values and names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../errors.hpp"
#include "base64.hpp"

namespace devicebound::auth {

/// Rights of a shared access policy. Values are IoT Hub's (SPEC 12.9.2):
/// `registry_write` includes `registry_read`, as there.
enum class access_rights : std::uint8_t {
  none = 0,
  registry_read = 1,                   ///< read the identity registry
  registry_write = registry_read | 2,  ///< create, update, delete identities (implies read)
  service_connect = 4,                 ///< send C2D, read feedback, purge
  device_connect = 8,                  ///< act as a device
  all = registry_write | service_connect | device_connect,
};

constexpr access_rights operator|(access_rights a, access_rights b) noexcept {
  return static_cast<access_rights>(static_cast<std::uint8_t>(a) | static_cast<std::uint8_t>(b));
}
constexpr access_rights operator&(access_rights a, access_rights b) noexcept {
  return static_cast<access_rights>(static_cast<std::uint8_t>(a) & static_cast<std::uint8_t>(b));
}
constexpr access_rights& operator|=(access_rights& a, access_rights b) noexcept {
  return a = a | b;
}

/// Whether `granted` includes every right in `needed`.
constexpr bool includes(access_rights granted, access_rights needed) noexcept {
  return (granted & needed) == needed;
}

namespace detail {

struct right_name {
  access_rights right;
  std::string_view name;
};

// RegistryWrite before RegistryRead: to_string names the read right only
// when the write right (which includes it) is absent, as C#'s flags do.
inline constexpr right_name right_names[] = {
    {access_rights::registry_write, "RegistryWrite"},
    {access_rights::registry_read, "RegistryRead"},
    {access_rights::service_connect, "ServiceConnect"},
    {access_rights::device_connect, "DeviceConnect"},
};

constexpr bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z')
      x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z')
      y = static_cast<char>(y - 'A' + 'a');
    if (x != y)
      return false;
  }
  return true;
}

constexpr std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

}  // namespace detail

/// ASCII case-insensitive equality (right names, token field names, tier names).
using detail::iequals;

/// IoT Hub's text for a set of rights, e.g. `"RegistryWrite, ServiceConnect,
/// DeviceConnect"` (the form of the portal and ARM); `"None"` for none.
inline std::string to_string(access_rights rights) {
  std::string out;
  access_rights left = rights;
  for (const auto& [right, name] : detail::right_names) {
    if (!includes(left, right))
      continue;
    left = static_cast<access_rights>(static_cast<std::uint8_t>(left) &
                                      ~static_cast<std::uint8_t>(right));
    if (!out.empty())
      out += ", ";
    out += name;
  }
  return out.empty() ? std::string("None") : out;
}

/// Parses a comma-separated list of right names (case-insensitive, blanks
/// around names ignored): `"RegistryRead, ServiceConnect"`. `"None"` alone is
/// no rights. Errors (`errc::argument_invalid`) name the unknown or empty entry.
inline result<access_rights> parse_access_rights(std::string_view text) {
  if (detail::iequals(detail::trim(text), "None"))
    return access_rights::none;
  access_rights out = access_rights::none;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string_view name = detail::trim(text.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (name.empty())
      return make_error(errc::argument_invalid, "rights " + detail::printable(text) +
                                                    " has an empty entry (expected names such as "
                                                    "'ServiceConnect, RegistryRead')");
    bool known = false;
    for (const auto& [right, right_text] : detail::right_names) {
      if (detail::iequals(name, right_text)) {
        out |= right;
        known = true;
      }
    }
    if (!known)
      return make_error(
          errc::argument_invalid,
          "unknown right " + detail::printable(name) +
              " (expected RegistryRead, RegistryWrite, ServiceConnect or DeviceConnect)");
    if (comma == std::string_view::npos)
      return out;
    start = comma + 1;
  }
}

}  // namespace devicebound::auth
