/// \file shared_access_key.hpp
/// A symmetric key of a shared access policy or a device (SPEC 12.2.3): the
/// raw bytes that sign SAS tokens, written as base64 everywhere else.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "../errors.hpp"
#include "base64.hpp"

namespace devicebound::auth {

/// The decoded bytes of a key. Keys are secrets: this type never prints
/// itself, and error messages never quote a key.
class shared_access_key {
 public:
  shared_access_key() = default;

  /// A key from its bytes (e.g. 32 random bytes for a new key).
  static shared_access_key from_bytes(std::string bytes) {
    shared_access_key k;
    k.bytes_ = std::move(bytes);
    return k;
  }

  /// A key from its base64 text (connection strings, the registry's JSON).
  /// Errors (`errc::argument_invalid`): empty, or not canonical base64.
  static result<shared_access_key> from_base64(std::string_view text) {
    if (text.empty())
      return make_error(errc::argument_invalid, "the shared access key is empty");
    auto bytes = base64_decode(text);
    if (!bytes)
      return make_error(errc::argument_invalid,
                        "the shared access key is not base64: " + bytes.error().message);
    return from_bytes(std::move(*bytes));
  }

  /// The base64 text of the key.
  std::string to_base64() const { return base64_encode(bytes_); }
  /// The raw bytes: the HMAC key.
  std::string_view bytes() const noexcept { return bytes_; }
  bool empty() const noexcept { return bytes_.empty(); }

  friend bool operator==(const shared_access_key&, const shared_access_key&) = default;

 private:
  std::string bytes_;
};

}  // namespace devicebound::auth
