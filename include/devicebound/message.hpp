/// \file message.hpp
/// The C2D message value type: body, user-settable system properties,
/// application properties, and the properties the hub assigns (SPEC 3.1).
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "errors.hpp"

namespace devicebound {

/// Milliseconds: the resolution of every time in the service (ISO-8601 with ms).
using duration = std::chrono::milliseconds;
/// A UTC instant at millisecond resolution. The core never reads a clock: every
/// operation takes `now` of this type.
using time_point = std::chrono::sys_time<duration>;

/// `t + d`, saturating at `time_point::max()` (a timeout of "forever" must not overflow).
constexpr time_point saturating_add(time_point t, duration d) noexcept {
  if (d <= duration::zero())
    return t;
  if (t.time_since_epoch() > duration::max() - d)
    return time_point::max();
  return t + d;
}

/// Delivery acknowledgement requested by the sender (`iothub-ack`, SPEC 4.1).
enum class ack_mode : std::uint8_t {
  none,      ///< no feedback (default)
  positive,  ///< feedback on Completed
  negative,  ///< feedback on Dead-lettered (rejected, expired, delivery count exceeded)
  full,      ///< both
};

/// Wire text of an ack mode: `none`, `positive`, `negative`, `full` (SPEC 3.6).
constexpr std::string_view to_string(ack_mode a) noexcept {
  switch (a) {
    case ack_mode::none:
      return "none";
    case ack_mode::positive:
      return "positive";
    case ack_mode::negative:
      return "negative";
    case ack_mode::full:
      return "full";
  }
  return "none";
}

/// Parses an ack mode case-insensitively (`Full` appears in C SDK fixtures, SPEC 3.6).
constexpr std::optional<ack_mode> parse_ack_mode(std::string_view s) noexcept {
  auto lower_eq = [](std::string_view a, std::string_view b) {
    if (a.size() != b.size())
      return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      char c = a[i];
      if (c >= 'A' && c <= 'Z')
        c = static_cast<char>(c - 'A' + 'a');
      if (c != b[i])
        return false;
    }
    return true;
  };
  for (auto m : {ack_mode::none, ack_mode::positive, ack_mode::negative, ack_mode::full})
    if (lower_eq(s, to_string(m)))
      return m;
  return std::nullopt;
}

/// A 128-bit lock token, rendered as a lowercase GUID (SPEC 3.1: AMQP delivery
/// tag as GUID; HTTP ETag).
struct lock_token {
  std::array<std::uint8_t, 16> bytes{};

  bool is_nil() const noexcept {
    for (auto b : bytes)
      if (b != 0)
        return false;
    return true;
  }
  friend bool operator==(const lock_token&, const lock_token&) = default;
  friend auto operator<=>(const lock_token&, const lock_token&) = default;

  /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hex.
  std::string to_string() const {
    static constexpr char hex[] = "0123456789abcdef";
    std::string s;
    s.reserve(36);
    for (std::size_t i = 0; i < 16; ++i) {
      if (i == 4 || i == 6 || i == 8 || i == 10)
        s.push_back('-');
      s.push_back(hex[bytes[i] >> 4]);
      s.push_back(hex[bytes[i] & 0xF]);
    }
    return s;
  }

  /// Parses the GUID form (either case, hyphens required); nullopt if malformed.
  static std::optional<lock_token> parse(std::string_view s) noexcept {
    if (s.size() != 36)
      return std::nullopt;
    lock_token t;
    std::size_t j = 0;
    for (std::size_t i = 0; i < 36;) {
      if (i == 8 || i == 13 || i == 18 || i == 23) {
        if (s[i] != '-')
          return std::nullopt;
        ++i;
        continue;
      }
      auto nib = [](char c) -> int {
        if (c >= '0' && c <= '9')
          return c - '0';
        if (c >= 'a' && c <= 'f')
          return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
          return c - 'A' + 10;
        return -1;
      };
      int hi = nib(s[i]), lo = nib(s[i + 1]);
      if (hi < 0 || lo < 0)
        return std::nullopt;
      t.bytes[j++] = static_cast<std::uint8_t>(hi << 4 | lo);
      i += 2;
    }
    return t;
  }
};

/// Application properties: string to string, never modified by the hub (SPEC 3.3).
using properties = std::map<std::string, std::string, std::less<>>;

/// A cloud-to-device message.
///
/// The sender sets the body, the user-settable system properties and the
/// application properties. The hub assigns `to`, `sequence_number`,
/// `enqueued_time_utc`, `delivery_count` and `lock_token`; values a sender puts
/// there are ignored on enqueue.
struct message {
  std::string body;  ///< payload bytes

  // user-settable system properties (SPEC 3.1)
  std::optional<std::string> message_id;      ///< `$.mid`; needed for feedback correlation
  std::optional<std::string> correlation_id;  ///< `$.cid`
  std::optional<std::string> user_id;         ///< `$.uid`
  std::optional<std::string> to;  ///< `$.to`; the hub sets `/devices/{id}/messages/devicebound`
  std::optional<time_point> expiry_time_utc;    ///< `$.exp`; else enqueued + default TTL
  ack_mode ack = ack_mode::none;                ///< `iothub-ack`
  std::optional<std::string> content_type;      ///< `$.ct`
  std::optional<std::string> content_encoding;  ///< `$.ce`
  std::optional<time_point> creation_time_utc;  ///< `$.ctime`

  properties app_properties;  ///< application properties

  // assigned by the hub
  std::uint64_t sequence_number = 0;                  ///< increasing per device queue
  std::optional<time_point> enqueued_time_utc;        ///< when the hub accepted it
  std::uint32_t delivery_count = 0;                   ///< see docs/lifecycle.md for the rule
  std::optional<devicebound::lock_token> lock_token;  ///< set while locked (Invisible)

  friend bool operator==(const message&, const message&) = default;
};

}  // namespace devicebound
