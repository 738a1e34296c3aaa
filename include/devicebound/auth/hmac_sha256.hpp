/// \file hmac_sha256.hpp
/// HMAC-SHA256 and constant-time comparison from OpenSSL's libcrypto: the
/// only auth/ header that needs it (link `devicebound::auth`).
#pragma once

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <climits>
#include <cstddef>
#include <optional>
#include <string_view>

namespace devicebound::auth {

/// An HMAC-SHA256 value.
using hmac_sha256_digest = std::array<unsigned char, 32>;

/// HMAC-SHA256 of `message` under `key` (raw bytes, any length), or
/// `std::nullopt` if libcrypto fails (so a caller can never match a made-up
/// digest against a real signature).
inline std::optional<hmac_sha256_digest> hmac_sha256(std::string_view key,
                                                     std::string_view message) {
  if (key.size() > static_cast<std::size_t>(INT_MAX))
    return std::nullopt;
  hmac_sha256_digest out{};
  unsigned int length = 0;
  // A zero-length key is legal HMAC; OpenSSL wants a non-null pointer for it.
  static const unsigned char empty = 0;
  const void* key_bytes = key.empty() ? static_cast<const void*>(&empty) : key.data();
  const unsigned char* ok = HMAC(EVP_sha256(), key_bytes, static_cast<int>(key.size()),
                                 reinterpret_cast<const unsigned char*>(message.data()),
                                 message.size(), out.data(), &length);
  if (ok == nullptr || length != out.size())
    return std::nullopt;
  return out;
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
inline bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace devicebound::auth
