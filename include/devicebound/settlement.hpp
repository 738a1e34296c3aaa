/// \file settlement.hpp
/// Vocabulary shared by clients, transports and the engine: the receipt of an
/// accepted send and a device's settlement of a locked message. No engine here.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "message.hpp"

namespace devicebound {

/// Receipt of an accepted send.
struct enqueue_receipt {
  std::uint64_t sequence_number = 0;
  time_point expiry_time_utc{};  ///< when the message expires (after any clamping)
};

/// Settlement a device sends for a locked message.
enum class disposition : std::uint8_t { complete, reject, abandon };

constexpr std::string_view to_string(disposition d) noexcept {
  switch (d) {
    case disposition::complete:
      return "complete";
    case disposition::reject:
      return "reject";
    case disposition::abandon:
      return "abandon";
  }
  return "complete";
}

/// Parses `complete`, `reject` or `abandon` (exact spelling); nullopt otherwise.
constexpr std::optional<disposition> parse_disposition(std::string_view s) noexcept {
  for (auto d : {disposition::complete, disposition::reject, disposition::abandon})
    if (s == to_string(d))
      return d;
  return std::nullopt;
}

}  // namespace devicebound
