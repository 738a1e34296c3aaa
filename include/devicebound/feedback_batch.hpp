/// \file feedback_batch.hpp
/// Vocabulary of delivery feedback (SPEC 4.3-4.5): the status, one record and a
/// batch as the service receives it. Shared by clients, transports, codecs and
/// the engine; includes no engine.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "message.hpp"

namespace devicebound {

/// Outcome reported in a feedback record (SPEC 4.5). Numeric values match the
/// C# enum `FeedbackStatusCode`.
enum class feedback_status : std::uint8_t {
  success = 0,
  expired = 1,
  delivery_count_exceeded = 2,
  rejected = 3,
  purged = 4,
};

/// `Success`, `Expired`, `DeliveryCountExceeded`, `Rejected`, `Purged`.
constexpr std::string_view to_string(feedback_status s) noexcept {
  switch (s) {
    case feedback_status::success:
      return "Success";
    case feedback_status::expired:
      return "Expired";
    case feedback_status::delivery_count_exceeded:
      return "DeliveryCountExceeded";
    case feedback_status::rejected:
      return "Rejected";
    case feedback_status::purged:
      return "Purged";
  }
  return "Success";
}

/// Parses the `statusCode` text exactly (case-sensitive, as the service writes it).
constexpr std::optional<feedback_status> parse_feedback_status(std::string_view s) noexcept {
  for (auto v : {feedback_status::success, feedback_status::expired,
                 feedback_status::delivery_count_exceeded, feedback_status::rejected,
                 feedback_status::purged})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// One record of a feedback batch (SPEC 4.5).
struct feedback_record {
  std::string original_message_id;  ///< MessageId of the C2D message ("" if it had none)
  time_point enqueued_time_utc{};   ///< when the outcome happened
  feedback_status status_code = feedback_status::success;
  std::string description;  ///< the status text (SPEC 4.5: description = statusCode)
  std::string device_id;
  std::string device_generation_id;

  friend bool operator==(const feedback_record&, const feedback_record&) = default;
};

/// Content type of a feedback message (SPEC 4.4).
inline constexpr std::string_view feedback_content_type =
    "application/vnd.microsoft.iothub.feedback.json";

/// A feedback message as the service receives it: a batch of records (SPEC 4.3, 4.4).
struct feedback_batch {
  std::vector<feedback_record> records;
  time_point enqueued_time_utc{};        ///< when the hub created the batch
  std::string user_id;                   ///< the hub's name (SPEC 4.4)
  devicebound::lock_token lock_token{};  ///< set when received from the feedback queue
  std::uint32_t delivery_count = 0;

  friend bool operator==(const feedback_batch&, const feedback_batch&) = default;
};

}  // namespace devicebound
