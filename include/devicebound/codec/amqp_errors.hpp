/// \file amqp_errors.hpp
/// `errc` ↔ AMQP error condition (the `rejected` outcome of a C2D send, a
/// device settlement answered with a lock error, a link or connection closed
/// with an error), and `errc` ↔ CBS put-token `status-code` (SPEC 10.6,
/// 10.10.2, 10.15.1). Needs no Proton: the Proton-typed helpers live in
/// codec/amqp.hpp.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "../errors.hpp"

namespace devicebound::codec::amqp {

/// One row of the error-condition table.
struct error_condition_row {
  errc code;                     ///< devicebound's code
  std::string_view condition;    ///< AMQP `error.condition` symbol the hub sends
  std::string_view description;  ///< default `error.description` when the error has none
};

// clang-format off
/// `errc` → AMQP condition. Each `errc` appears exactly once; a condition
/// maps back to the first `errc` listed with it (`errc_from_condition`), so
/// `com.microsoft:timeout` reads back as `timeout` (C#: TimeoutException), not
/// `server_busy`, which sends it because Node turns it into the retryable
/// ServiceUnavailableError that a 503 means. Sources: SPEC 10.10.2 (send
/// rejections and the SDK classes they become), SPEC 2.5 (quota, throttling),
/// SPEC 1.5 and 10.15.1 (lock lost), the Node device SDK's translateError
/// table (precondition failed, device already exists, not implemented).
inline constexpr std::array<error_condition_row, 17> error_conditions = {{
  {errc::argument_invalid,                    "com.microsoft:argument-error",             "The request has an invalid argument"},
  {errc::iothub_quota_exceeded,               "com.microsoft:quota-exceeded",             "The IoT hub's daily message quota is exceeded"},
  {errc::device_maximum_queue_depth_exceeded, "amqp:resource-limit-exceeded",             "The device's queue of cloud-to-device messages is full"},
  {errc::device_not_found,                    "amqp:not-found",                           "The device is not registered"},
  {errc::device_already_exists,               "com.microsoft:device-already-exists",      "The device already exists"},
  {errc::precondition_failed,                 "com.microsoft:precondition-failed",        "A precondition failed"},
  {errc::device_message_lock_lost,            "com.microsoft:message-lock-lost",          "The message lock was lost or has expired"},
  {errc::message_too_large,                   "amqp:link:message-size-exceeded",          "The message is larger than 64 KB"},
  {errc::throttling,                          "com.microsoft:device-container-throttled", "The request was throttled"},
  {errc::server_error,                        "amqp:internal-error",                      "The hub failed internally"},
  {errc::not_connected,                       "amqp:connection:forced",                   "The connection was closed"},
  {errc::timeout,                             "com.microsoft:timeout",                    "The operation timed out"},
  {errc::server_busy,                         "com.microsoft:timeout",                    "The hub is busy; try again later"},
  {errc::not_supported,                       "amqp:not-implemented",                     "The operation is not supported"},
  {errc::invalid_operation,                   "amqp:not-allowed",                         "The operation is not allowed in the current state"},
  {errc::unauthorized,                        "amqp:unauthorized-access",                 "The credentials were refused"},
  {errc::malformed,                           "amqp:decode-error",                        "The AMQP message could not be decoded"},
}};

/// Conditions devicebound never sends but a client may receive (from IoT Hub,
/// from Proton, from a peer closing a link), and the `errc` each becomes.
struct condition_alias {
  std::string_view condition;
  errc code;
};
inline constexpr std::array<condition_alias, 8> condition_aliases = {{
  {"amqp:link:detach-forced",             errc::not_connected},
  {"amqp:link:stolen",                    errc::not_connected},
  {"amqp:connection:framing-error",       errc::not_connected},
  {"amqp:connection:redirect",            errc::not_connected},
  {"com.microsoft:argument-out-of-range", errc::argument_invalid},
  {"amqp:invalid-field",                  errc::argument_invalid},
  {"amqp:illegal-state",                  errc::invalid_operation},
  {"com.microsoft:iot-hub-suspended",     errc::server_busy},
}};
// clang-format on

/// The AMQP condition the hub sends for `e` (`amqp:not-found` for `device_not_found`, ...).
constexpr std::string_view condition(errc e) noexcept {
  for (const auto& row : error_conditions)
    if (row.code == e)
      return row.condition;
  return "amqp:internal-error";
}

/// The default description for `e`, used when an error carries no message.
constexpr std::string_view default_description(errc e) noexcept {
  for (const auto& row : error_conditions)
    if (row.code == e)
      return row.description;
  return "The hub failed internally";
}

/// The `errc` for a received AMQP condition (exact, case-sensitive symbol
/// match); nullopt for a condition devicebound does not know.
constexpr std::optional<errc> errc_from_condition(std::string_view c) noexcept {
  for (const auto& row : error_conditions)
    if (row.condition == c)
      return row.code;
  for (const auto& alias : condition_aliases)
    if (alias.condition == c)
      return alias.code;
  return std::nullopt;
}

/// An `error` from a received condition and description. An unknown condition
/// becomes `server_error` whose message names the condition.
inline error error_from_condition(std::string_view c, std::string_view description) {
  if (const auto code = errc_from_condition(c))
    return make_error(*code, description.empty() ? std::string(default_description(*code))
                                                 : std::string(description));
  return make_error(errc::server_error,
                    "AMQP error " + std::string(c) +
                        (description.empty() ? std::string() : ": " + std::string(description)));
}

/// CBS put-token `status-code` of success. Node and Java accept nothing else
/// (not even 202): SPEC 10.6.3.
inline constexpr std::int32_t cbs_status_ok = 200;

/// CBS put-token `status-code` (an AMQP int, SPEC 10.6.2) for a refusal: the
/// HTTP status of IoT Hub's six-digit code (401 for `unauthorized`, 404 for
/// `device_not_found`, 400 for `argument_invalid`, 429 for `throttling`, ...).
constexpr std::int32_t cbs_status_code(errc e) noexcept {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(e) / 1000);
}

/// The `errc` for a put-token reply status: nullopt for 2xx (success; C#
/// accepts 200 and 202, uamqp any 2xx: SPEC 10.6.3), else the code of that
/// HTTP status (403 → `iothub_quota_exceeded`, as C# maps 403 to
/// transfer-limit-exceeded: SPEC 10.6.5); other 4xx → `argument_invalid`,
/// anything else → `server_error`.
constexpr std::optional<errc> errc_from_cbs_status(std::int32_t status) noexcept {
  if (status >= 200 && status < 300)
    return std::nullopt;
  switch (status) {
    case 400:
      return errc::argument_invalid;
    case 401:
      return errc::unauthorized;
    case 403:
      return errc::iothub_quota_exceeded;
    case 404:
      return errc::device_not_found;
    case 405:
      return errc::not_supported;
    case 408:
      return errc::timeout;
    case 409:
      return errc::invalid_operation;
    case 412:
      return errc::precondition_failed;
    case 413:
      return errc::message_too_large;
    case 429:
      return errc::throttling;
    case 503:
      return errc::server_busy;
    default:
      break;
  }
  if (status >= 400 && status < 500)
    return errc::argument_invalid;
  return errc::server_error;
}

}  // namespace devicebound::codec::amqp
