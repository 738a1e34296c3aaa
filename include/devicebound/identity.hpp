/// \file identity.hpp
/// Vocabulary of the identity registry (SPEC 12): a device identity as IoT
/// Hub's registry holds it, and the strings of its enums. No engine, no
/// store, no JSON: the registry (`registry.hpp`), the stores, the front doors
/// and the device JSON codec all take these types.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "auth/shared_access_key.hpp"
#include "message.hpp"

namespace devicebound {

/// Whether a device may connect (SPEC 12.4, 12.4.1).
enum class device_status : std::uint8_t { enabled, disabled };

/// IoT Hub's spelling: `"enabled"`, `"disabled"` (case-sensitive, SPEC 12.4).
constexpr std::string_view to_string(device_status s) noexcept {
  return s == device_status::disabled ? "disabled" : "enabled";
}
constexpr std::optional<device_status> parse_device_status(std::string_view s) noexcept {
  if (s == "enabled")
    return device_status::enabled;
  if (s == "disabled")
    return device_status::disabled;
  return std::nullopt;
}

/// How a device authenticates (SPEC 12.4 `authentication.type`). Only `sas`
/// devices can connect to devicebound; the others are stored and shown.
enum class auth_type : std::uint8_t { sas, self_signed, certificate_authority, none };

/// IoT Hub's spelling: `"sas"`, `"selfSigned"`, `"certificateAuthority"`, `"none"`.
constexpr std::string_view to_string(auth_type t) noexcept {
  switch (t) {
    case auth_type::sas:
      return "sas";
    case auth_type::self_signed:
      return "selfSigned";
    case auth_type::certificate_authority:
      return "certificateAuthority";
    case auth_type::none:
      return "none";
  }
  return "sas";
}
constexpr std::optional<auth_type> parse_auth_type(std::string_view s) noexcept {
  for (auto t :
       {auth_type::sas, auth_type::self_signed, auth_type::certificate_authority, auth_type::none})
    if (to_string(t) == s)
      return t;
  return std::nullopt;
}

/// One device of the registry (SPEC 12.4), as stored. The live fields of the
/// device JSON (`connectionState`, `cloudToDeviceMessageCount`,
/// `lastActivityTime`) are not stored: the router adds them (`device_view`).
struct device_identity {
  std::string device_id;
  std::string generation_id;  ///< the hub's generation id of the device (never reused)
  /// Bumped on every change; the `etag` is written from it (`etag_of`).
  std::uint64_t version = 1;
  device_status status = device_status::enabled;
  std::string status_reason;
  time_point status_updated{};
  auth_type auth = auth_type::sas;
  auth::shared_access_key primary_key;  ///< sas: both set (generated when not given)
  auth::shared_access_key secondary_key;
  std::string primary_thumbprint;  ///< selfSigned only
  std::string secondary_thumbprint;
  bool iot_edge = false;  ///< `capabilities.iotEdge`, stored and shown only

  friend bool operator==(const device_identity&, const device_identity&) = default;
};

/// The `etag` of an identity: IoT Hub's etags are opaque quoted-free strings;
/// ours are the decimal version (`"1"`, `"2"`, …). Compared exactly.
inline std::string etag_of(const device_identity& d) {
  return std::to_string(d.version);
}

/// What a client asks a PUT to store (SPEC 12.2): the fields of the device
/// JSON a caller may set. Empty keys with `auth == sas` mean "generate them".
struct device_identity_update {
  std::string device_id;
  device_status status = device_status::enabled;
  std::string status_reason;
  auth_type auth = auth_type::sas;
  std::string primary_key;  ///< base64 text as sent; "" = generate
  std::string secondary_key;
  std::string primary_thumbprint;
  std::string secondary_thumbprint;
  bool iot_edge = false;
};

/// A device as the registry API shows it: the stored identity plus the live
/// fields (SPEC 12.4).
struct device_view {
  device_identity identity;
  bool connected = false;                   ///< `connectionState`
  std::uint64_t cloud_to_device_count = 0;  ///< `cloudToDeviceMessageCount`: queued, not terminal
  time_point connection_state_updated{};    ///< `connectionStateUpdatedTime`
  time_point last_activity{};               ///< `lastActivityTime`
};

}  // namespace devicebound
