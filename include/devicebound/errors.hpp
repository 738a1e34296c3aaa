/// \file errors.hpp
/// Error codes (IoT Hub's numeric codes where one exists), a typed exception,
/// and `result<T>`, the return type of every fallible core operation.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace devicebound {

/// Error codes. Values are IoT Hub's six-digit codes (SPEC 2.5) where the
/// service has one; codes of our own use the same shape in ranges IoT Hub
/// leaves unused (see docs/errors.md).
enum class errc : std::uint32_t {
  argument_invalid = 400004,                     ///< bad property, id, config value
  iothub_quota_exceeded = 403002,                ///< daily quota (SPEC 2.5)
  device_maximum_queue_depth_exceeded = 403004,  ///< queue holds max pending (SPEC 2.3)
  device_not_found = 404001,                     ///< unknown device id
  device_already_exists = 409001,                ///< add of an existing device
  precondition_failed = 412001,                  ///< generation id mismatch
  device_message_lock_lost = 412002,             ///< unknown/stale/expired lock token
  message_too_large = 413001,                    ///< size rule of SPEC 2.6
  throttling = 429001,                           ///< send throttle
  server_error = 500001,                         ///< internal error
  server_busy = 503001,                          ///< temporarily unavailable
  not_connected = 503100,                        ///< transport has no connection (ours)
  timeout = 408001,                              ///< operation timed out (ours)
  not_supported = 405001,                        ///< operation impossible on this transport
  invalid_operation = 409002,                    ///< event not valid in the message's state
  unauthorized = 401000,                         ///< credentials refused
  malformed = 400005,                            ///< undecodable wire data (ours)
};

/// IoT Hub's name for a code (`"DeviceMaximumQueueDepthExceeded"`).
constexpr std::string_view to_string(errc e) noexcept {
  switch (e) {
    case errc::argument_invalid:
      return "ArgumentInvalid";
    case errc::iothub_quota_exceeded:
      return "IotHubQuotaExceeded";
    case errc::device_maximum_queue_depth_exceeded:
      return "DeviceMaximumQueueDepthExceeded";
    case errc::device_not_found:
      return "DeviceNotFound";
    case errc::device_already_exists:
      return "DeviceAlreadyExists";
    case errc::precondition_failed:
      return "PreconditionFailed";
    case errc::device_message_lock_lost:
      return "DeviceMessageLockLost";
    case errc::message_too_large:
      return "MessageTooLarge";
    case errc::throttling:
      return "ThrottlingException";
    case errc::server_error:
      return "ServerError";
    case errc::server_busy:
      return "ServerBusy";
    case errc::not_connected:
      return "NotConnected";
    case errc::timeout:
      return "Timeout";
    case errc::not_supported:
      return "NotSupported";
    case errc::invalid_operation:
      return "InvalidOperation";
    case errc::unauthorized:
      return "Unauthorized";
    case errc::malformed:
      return "Malformed";
  }
  return "Unknown";
}

/// Parses IoT Hub's name of a code (`"DeviceNotFound"`, exact spelling); nullopt otherwise.
constexpr std::optional<errc> parse_errc(std::string_view s) noexcept {
  for (auto v : {errc::argument_invalid, errc::iothub_quota_exceeded,
                 errc::device_maximum_queue_depth_exceeded, errc::device_not_found,
                 errc::device_already_exists, errc::precondition_failed,
                 errc::device_message_lock_lost, errc::message_too_large, errc::throttling,
                 errc::server_error, errc::server_busy, errc::not_connected, errc::timeout,
                 errc::not_supported, errc::invalid_operation, errc::unauthorized, errc::malformed})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

namespace detail {
class error_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "devicebound"; }
  std::string message(int ev) const override {
    return std::string(to_string(static_cast<errc>(static_cast<std::uint32_t>(ev))));
  }
};
}  // namespace detail

/// The `std::error_category` of `errc`.
inline const std::error_category& error_category() noexcept {
  static const detail::error_category_impl cat;
  return cat;
}

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

/// A failed operation: the code and a sentence naming the problem.
struct error {
  errc code{};
  std::string message;

  std::uint32_t numeric() const noexcept { return static_cast<std::uint32_t>(code); }
  friend bool operator==(const error& a, const error& b) = default;
};

/// Thrown by `result<T>::value()` on an error, and by throwing wrappers.
class exception : public std::runtime_error {
 public:
  explicit exception(devicebound::error e)
      : std::runtime_error(std::to_string(e.numeric()) + " " + std::string(to_string(e.code)) +
                           ": " + e.message),
        error_(std::move(e)) {}
  errc code() const noexcept { return error_.code; }
  const devicebound::error& error() const noexcept { return error_; }

 private:
  devicebound::error error_;
};

/// Makes an `error` (shorthand used throughout).
inline error make_error(errc code, std::string message) {
  return error{code, std::move(message)};
}

/// Either a value or an `error`. A small stand-in for C++23 `std::expected`.
template <class T>
class [[nodiscard]] result {
 public:
  result(T v) : v_(std::in_place_index<0>, std::move(v)) {}                   // NOLINT(implicit)
  result(devicebound::error e) : v_(std::in_place_index<1>, std::move(e)) {}  // NOLINT(implicit)

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & {
    throw_if_error();
    return std::get<0>(v_);
  }
  const T& value() const& {
    throw_if_error();
    return std::get<0>(v_);
  }
  T&& value() && {
    throw_if_error();
    return std::get<0>(std::move(v_));
  }
  T& operator*() & { return std::get<0>(v_); }
  const T& operator*() const& { return std::get<0>(v_); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }

  const devicebound::error& error() const& { return std::get<1>(v_); }
  errc code() const { return has_value() ? errc{} : std::get<1>(v_).code; }

 private:
  void throw_if_error() const {
    if (!has_value())
      throw exception(std::get<1>(v_));
  }
  std::variant<T, devicebound::error> v_;
};

/// `result<void>`: success or an `error`.
template <>
class [[nodiscard]] result<void> {
 public:
  result() = default;
  result(devicebound::error e) : e_(std::move(e)), ok_(false) {}  // NOLINT(implicit)

  bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  void value() const {
    if (!ok_)
      throw exception(e_);
  }
  const devicebound::error& error() const& { return e_; }
  errc code() const { return ok_ ? errc{} : e_.code; }

 private:
  devicebound::error e_{};
  bool ok_ = true;
};

}  // namespace devicebound

template <>
struct std::is_error_code_enum<devicebound::errc> : std::true_type {};
