/// \file hub_config.hpp
/// The hub's configuration (SPEC 2.1) and its running totals: plain values,
/// shared by the engine (hub.hpp) and the stores that persist them (store/).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "errors.hpp"
#include "lifecycle.hpp"
#include "message.hpp"
#include "validate.hpp"

namespace devicebound {

using namespace std::chrono_literals;

/// Longest TTL a C2D message may have (SPEC 2.2).
inline constexpr duration max_message_ttl = std::chrono::hours(48);

/// What to do with a per-message expiry later than enqueue time + 2 days (SPEC 2.2, UNCONFIRMED).
enum class expiry_cap_policy : std::uint8_t {
  clamp,   ///< accept; the message expires at enqueue time + 2 days (default)
  reject,  ///< refuse the send with 400004
};

/// `clamp` or `reject`: the spelling of stores, config files and bindings.
constexpr std::string_view to_string(expiry_cap_policy p) noexcept {
  switch (p) {
    case expiry_cap_policy::clamp:
      return "clamp";
    case expiry_cap_policy::reject:
      return "reject";
  }
  return "clamp";
}

/// Parses `clamp` or `reject` (exact spelling); nullopt otherwise.
constexpr std::optional<expiry_cap_policy> parse_expiry_cap_policy(std::string_view s) noexcept {
  for (auto v : {expiry_cap_policy::clamp, expiry_cap_policy::reject})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// Which acks get a `Purged` feedback record (SPEC 1.4, UNCONFIRMED).
enum class purge_feedback : std::uint8_t {
  negative_acks,  ///< ack `negative` or `full`: purge is a non-delivery (default)
  none,           ///< no feedback for purged messages
};

/// `negative_acks` or `none`: the spelling of stores, config files and bindings.
constexpr std::string_view to_string(purge_feedback p) noexcept {
  switch (p) {
    case purge_feedback::negative_acks:
      return "negative_acks";
    case purge_feedback::none:
      return "none";
  }
  return "negative_acks";
}

/// Parses `negative_acks` or `none` (exact spelling); nullopt otherwise.
constexpr std::optional<purge_feedback> parse_purge_feedback(std::string_view s) noexcept {
  for (auto v : {purge_feedback::negative_acks, purge_feedback::none})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// Hub configuration with IoT Hub's defaults (SPEC 2.1). `validate()` checks ranges.
struct hub_config {
  std::string name = "devicebound";  ///< the hub's name: `userId` of feedback messages (SPEC 4.4)
  duration default_ttl = 1h;         ///< defaultTtlAsIso8601: PT1M..P2D
  expiry_cap_policy expiry_over_cap = expiry_cap_policy::clamp;
  std::uint32_t max_delivery_count = 10;  ///< maxDeliveryCount: 1..100
  delivery_count_rule delivery_count = delivery_count_rule::abandon_only;  ///< SPEC 1.4
  /// Lock (visibility) timeout. IoT Hub fixes it at 1 minute (SPEC 1.5); it is
  /// settable (1 s..5 min) so tests and demos need not wait a minute.
  duration lock_duration = 60s;
  std::uint32_t max_queue_depth =
      50;  ///< pending messages per device, counting Invisible (SPEC 2.3); 1..10000
  std::size_t max_message_size = default_max_message_size;  ///< SPEC 2.6; 1..1 MiB
  duration feedback_ttl = 1h;                               ///< feedback.ttlAsIso8601: PT1M..P2D
  std::uint32_t feedback_max_delivery_count = 10;           ///< feedback.maxDeliveryCount: 1..100
  duration feedback_lock_duration = 60s;   ///< feedback.lockDurationAsIso8601: 5..300 s
  std::uint32_t feedback_batch_size = 64;  ///< records per batch (SPEC 4.3); 1..64
  duration feedback_batch_interval = 15s;  ///< since the last batch (SPEC 4.3); 0..15 s
  purge_feedback purge_feedback_for = purge_feedback::negative_acks;

  /// Checks every value against its range; the error names the field.
  result<void> validate() const {
    auto bad = [](std::string what) {
      return make_error(errc::argument_invalid, std::move(what));
    };
    if (default_ttl < 1min || default_ttl > max_message_ttl)
      return bad("default_ttl must be between 1 minute and 2 days (SPEC 2.1)");
    if (max_delivery_count < 1 || max_delivery_count > 100)
      return bad("max_delivery_count must be between 1 and 100 (SPEC 2.1)");
    if (lock_duration < 1s || lock_duration > 5min)
      return bad("lock_duration must be between 1 second and 5 minutes (IoT Hub uses 1 minute)");
    if (max_queue_depth < 1 || max_queue_depth > 10000)
      return bad("max_queue_depth must be between 1 and 10000 (IoT Hub uses 50)");
    if (max_message_size < 1 || max_message_size > 1024 * 1024)
      return bad("max_message_size must be between 1 byte and 1 MiB (IoT Hub uses 64 KB)");
    if (feedback_ttl < 1min || feedback_ttl > max_message_ttl)
      return bad("feedback_ttl must be between 1 minute and 2 days (SPEC 2.1)");
    if (feedback_max_delivery_count < 1 || feedback_max_delivery_count > 100)
      return bad("feedback_max_delivery_count must be between 1 and 100 (SPEC 2.1)");
    if (feedback_lock_duration < 5s || feedback_lock_duration > 300s)
      return bad("feedback_lock_duration must be between 5 and 300 seconds (SPEC 2.1)");
    if (feedback_batch_size < 1 || feedback_batch_size > 64)
      return bad("feedback_batch_size must be between 1 and 64 (SPEC 4.3)");
    if (feedback_batch_interval < 0s || feedback_batch_interval > 15s)
      return bad("feedback_batch_interval must be between 0 and 15 seconds (SPEC 4.3)");
    return {};
  }

  friend bool operator==(const hub_config&, const hub_config&) = default;
};

/// Running totals; every accepted message is counted in exactly one outcome
/// once it leaves its queue.
struct hub_stats {
  std::uint64_t accepted = 0;
  std::uint64_t completed = 0;
  std::uint64_t rejected = 0;
  std::uint64_t expired = 0;
  std::uint64_t delivery_count_exceeded = 0;
  std::uint64_t purged = 0;
  std::uint64_t removed_with_device = 0;       ///< dropped because their device was removed
  std::uint64_t feedback_records = 0;          ///< records created
  std::uint64_t feedback_records_dropped = 0;  ///< pending records dropped with their device
  std::uint64_t feedback_batches = 0;          ///< batches created

  friend bool operator==(const hub_stats&, const hub_stats&) = default;
};

}  // namespace devicebound
