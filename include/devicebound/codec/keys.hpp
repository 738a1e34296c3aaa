/// \file keys.hpp
/// The one table of property-bag keys: the system properties of the
/// device-bound topic (SPEC 3.1, 5.9) and the `$.` keys of devicebound's
/// extension protocol (docs/protocol.md). `$.` keys never clash with
/// application properties: SPEC 3.3 forbids names starting with `$.`.
#pragma once

#include <array>
#include <string_view>

namespace devicebound::codec {

inline namespace keys {

// clang-format off
// System properties, in the order the device-bound encoder writes them (SPEC 3.1, 5.9).
inline constexpr std::string_view key_message_id        = "$.mid";
inline constexpr std::string_view key_correlation_id    = "$.cid";
inline constexpr std::string_view key_user_id           = "$.uid";
inline constexpr std::string_view key_to                = "$.to";
inline constexpr std::string_view key_expiry            = "$.exp";
inline constexpr std::string_view key_content_type      = "$.ct";
inline constexpr std::string_view key_content_encoding  = "$.ce";
inline constexpr std::string_view key_creation_time     = "$.ctime";
inline constexpr std::string_view key_ack               = "iothub-ack";

// The extension protocol's own keys (docs/protocol.md, "Extension topics").
inline constexpr std::string_view key_request_id        = "$.rid";    ///< request id, echoed in the reply
inline constexpr std::string_view key_code              = "$.code";   ///< 0 or a six-digit error code
inline constexpr std::string_view key_error             = "$.error";  ///< error text
inline constexpr std::string_view key_lock_token        = "$.lock";
inline constexpr std::string_view key_sequence_number   = "$.seq";
inline constexpr std::string_view key_enqueued_time     = "$.enq";
inline constexpr std::string_view key_delivery_count    = "$.dc";
inline constexpr std::string_view key_connection        = "$.conn";   ///< connection id of an attach
inline constexpr std::string_view key_window            = "$.max";    ///< prefetch window of an attach
inline constexpr std::string_view key_count             = "$.count";  ///< purged messages
inline constexpr std::string_view key_depth             = "$.depth";  ///< queue depth
inline constexpr std::string_view key_generation_id     = "$.gen";
// clang-format on

/// The keys that carry a message's system properties on the device-bound topic.
inline constexpr std::array<std::string_view, 9> message_property_keys = {
    key_message_id,   key_correlation_id,   key_user_id,       key_to, key_expiry,
    key_content_type, key_content_encoding, key_creation_time, key_ack};

}  // namespace keys

}  // namespace devicebound::codec
