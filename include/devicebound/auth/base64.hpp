/// \file base64.hpp
/// Base64 (RFC 4648 section 4, standard alphabet, `=` padding) for shared
/// access keys and SAS signatures (SPEC 5.2, 12.7.2). No OpenSSL needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../errors.hpp"

namespace devicebound::auth {

namespace detail {

inline constexpr char base64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The 6-bit value of a base64 character, or -1.
constexpr int base64_value(char c) noexcept {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

/// `s` for an error message: at most 40 bytes, non-printable bytes as `\xNN`.
/// Keys are secrets: callers pass only what is safe to show.
inline std::string printable(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < 40; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xF];
    }
  }
  if (s.size() > 40)
    out += "...";
  out += '\'';
  return out;
}

}  // namespace detail

/// `bytes` as base64 with padding.
inline std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  const auto at = [&](std::size_t k) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[k]));
  };
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = at(i) << 16 | at(i + 1) << 8 | at(i + 2);
    out += detail::base64_alphabet[v >> 18 & 63];
    out += detail::base64_alphabet[v >> 12 & 63];
    out += detail::base64_alphabet[v >> 6 & 63];
    out += detail::base64_alphabet[v & 63];
  }
  if (const std::size_t rest = bytes.size() - i; rest != 0) {
    const std::uint32_t v = at(i) << 16 | (rest == 2 ? at(i + 1) << 8 : 0u);
    out += detail::base64_alphabet[v >> 18 & 63];
    out += detail::base64_alphabet[v >> 12 & 63];
    out += rest == 2 ? detail::base64_alphabet[v >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

/// Decodes canonical base64: a multiple of 4 characters from the standard
/// alphabet, `=` only as the last one or two, and zero unused bits before the
/// padding, so that `base64_encode(decode(s)) == s` always holds. Errors
/// (`errc::malformed`) name the problem and its offset; they never quote the
/// text, which is usually a key.
inline result<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0)
    return make_error(errc::malformed,
                      "base64 text of " + std::to_string(text.size()) +
                          " characters (expected a multiple of 4, with '=' padding)");
  std::size_t pad = 0;
  if (!text.empty() && text.back() == '=')
    pad = text.size() >= 2 && text[text.size() - 2] == '=' ? 2 : 1;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    std::uint32_t v = 0;
    const bool last = i + 4 == text.size();
    for (std::size_t k = 0; k < 4; ++k) {
      const char c = text[i + k];
      if (last && k >= 4 - pad) {
        v <<= 6;
        continue;
      }
      const int d = detail::base64_value(c);
      if (d < 0)
        return make_error(errc::malformed, std::string("base64 text has ") +
                                               (c == '=' ? "'=' padding before its end"
                                                         : "a character outside the alphabet") +
                                               " at offset " + std::to_string(i + k));
      v = v << 6 | static_cast<std::uint32_t>(d);
    }
    out += static_cast<char>(v >> 16 & 0xFF);
    if (!last || pad < 2)
      out += static_cast<char>(v >> 8 & 0xFF);
    if (!last || pad < 1)
      out += static_cast<char>(v & 0xFF);
    if (last && ((pad == 1 && (v & 0xFF) != 0) || (pad == 2 && (v & 0xFFFF) != 0)))
      return make_error(errc::malformed,
                        "base64 text is not canonical (unused bits before the "
                        "'=' padding are not zero)");
  }
  return out;
}

}  // namespace devicebound::auth
