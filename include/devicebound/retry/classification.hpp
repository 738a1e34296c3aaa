/// \file retry/classification.hpp
/// What a failed attempt means for retrying (SPEC 8.8): error classes, the SDKs'
/// classification tables, and a classifier with user overrides.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "../errors.hpp"

namespace devicebound::retry {

/// What a failed attempt means for retrying (SPEC 8.8, 8.9).
enum class error_class : std::uint8_t {
  transient,  ///< retry with the normal backoff
  throttled,  ///< retry, with the throttled backoff where the policy has one (Node, SPEC 8.2)
  fatal,      ///< stop and notify (SPEC 8.6)
};

/// Every `error_class`, in declaration order.
inline constexpr std::array<error_class, 3> error_class_values = {
    error_class::transient, error_class::throttled, error_class::fatal};

/// `transient`, `throttled`, `fatal`.
constexpr std::string_view to_string(error_class c) noexcept {
  switch (c) {
    case error_class::transient:
      return "transient";
    case error_class::throttled:
      return "throttled";
    case error_class::fatal:
      return "fatal";
  }
  return "fatal";
}

/// Parses a `to_string(error_class)` spelling; nullopt otherwise.
constexpr std::optional<error_class> parse_error_class(std::string_view s) noexcept {
  for (auto c : error_class_values)
    if (s == to_string(c))
      return c;
  return std::nullopt;
}

/// Whose classification table to use. They differ only where SPEC 8.8 lists a disagreement.
enum class error_table : std::uint8_t {
  consolidated,  ///< SPEC 8.8 with our choices: QuotaExceeded and Unauthorized are fatal
  c,             ///< C: Unauthorized is retried (CONNACK 5 NOT_AUTHORIZED, SPEC 8.1)
  node,          ///< Node DefaultErrorFilter (SPEC 8.2): same as consolidated
  python,        ///< Python transient set (SPEC 8.3): same as consolidated
  csharp_v1,     ///< C# v1: QuotaExceededException is transient (SPEC 8.4)
  csharp_v2,     ///< C# v2: QuotaExceeded is transient (SPEC 8.4)
  java,          ///< Java: no filter in SPEC 8.5, so consolidated
};

/// Every `error_table`, in declaration order.
inline constexpr std::array<error_table, 7> error_table_values = {
    error_table::consolidated, error_table::c,         error_table::node, error_table::python,
    error_table::csharp_v1,    error_table::csharp_v2, error_table::java};

/// `consolidated`, `c`, `node`, `python`, `csharp_v1`, `csharp_v2`, `java`.
constexpr std::string_view to_string(error_table t) noexcept {
  switch (t) {
    case error_table::consolidated:
      return "consolidated";
    case error_table::c:
      return "c";
    case error_table::node:
      return "node";
    case error_table::python:
      return "python";
    case error_table::csharp_v1:
      return "csharp_v1";
    case error_table::csharp_v2:
      return "csharp_v2";
    case error_table::java:
      return "java";
  }
  return "consolidated";
}

/// Parses a `to_string(error_table)` spelling; nullopt otherwise.
constexpr std::optional<error_table> parse_error_table(std::string_view s) noexcept {
  for (auto t : error_table_values)
    if (s == to_string(t))
      return t;
  return std::nullopt;
}

/// Classifies an error code with one SDK's table (SPEC 8.8). Pure; unknown codes are fatal.
constexpr error_class classify(errc e, error_table t = error_table::consolidated) noexcept {
  const bool csharp = t == error_table::csharp_v1 || t == error_table::csharp_v2;
  switch (e) {
    case errc::throttling:
      return error_class::throttled;  // 429: all SDKs retry (SPEC 8.8)
    case errc::not_connected:         // network loss
    case errc::timeout:               // 408
    case errc::server_busy:           // 503, CONNACK 3
    case errc::server_error:
      return error_class::transient;  // 500
    // SPEC 8.8 disagreement: transient in C# v1/v2, fatal in Node. A daily quota does not
    // come back within any backoff cap, so by default we stop and notify.
    case errc::iothub_quota_exceeded:
      return csharp ? error_class::transient : error_class::fatal;
    // SPEC 8.8 disagreement: C retries CONNACK 5 NOT_AUTHORIZED, Python/Node/C# stop.
    case errc::unauthorized:
      return t == error_table::c ? error_class::transient : error_class::fatal;
    case errc::argument_invalid:
    case errc::device_maximum_queue_depth_exceeded:  // 403004: the sender must back off (SPEC 8.8)
    case errc::device_not_found:
    case errc::device_already_exists:
    case errc::precondition_failed:
    case errc::device_message_lock_lost:  // do not retry a disposition (SPEC 8.8)
    case errc::message_too_large:
    case errc::not_supported:  // e.g. reject over MQTT (SPEC 8.2, 8.4)
    case errc::invalid_operation:
    case errc::malformed:
      return error_class::fatal;
  }
  return error_class::fatal;  // Node: a name missing from the filter is not retried (SPEC 8.2)
}

/// A classification table plus user overrides; an override wins over the table.
struct classifier {
  error_table table = error_table::consolidated;
  std::vector<std::pair<errc, error_class>> overrides;

  /// Sets (or replaces) the class of one code.
  classifier& set(errc e, error_class c) {
    for (auto& [code, cls] : overrides)
      if (code == e) {
        cls = c;
        return *this;
      }
    overrides.emplace_back(e, c);
    return *this;
  }

  /// The plain table `t`, without overrides.
  static classifier of(error_table t) {
    classifier c;
    c.table = t;
    return c;
  }

  error_class operator()(errc e) const noexcept {
    for (const auto& [code, cls] : overrides)
      if (code == e)
        return cls;
    return classify(e, table);
  }

  friend bool operator==(const classifier&, const classifier&) = default;
};

}  // namespace devicebound::retry
