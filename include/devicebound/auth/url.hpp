/// \file url.hpp
/// Percent-encoding as SAS tokens use it (SPEC 5.2, 12.6.3-12.6.4): byte
/// exact, no UTF-8 rules, because a signature is computed over these bytes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "../errors.hpp"
#include "base64.hpp"

namespace devicebound::auth {

namespace detail {

/// RFC 3986 unreserved characters: the only ones `url_encode` keeps.
constexpr bool is_url_unreserved(char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

constexpr int hex_digit_value(char c) noexcept {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

}  // namespace detail

/// Every byte but the RFC 3986 unreserved ones as `%XX` with uppercase hex:
/// what Node's device SDK (`encodeURIComponent` plus `!'()*`) and Python's
/// `quote(s, safe="")` produce, and what C#'s `WebUtility.UrlEncode` produces
/// for host names, device ids and base64 (SPEC 12.6.3).
inline std::string url_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (detail::is_url_unreserved(c)) {
      out += c;
    } else {
      const auto b = static_cast<unsigned char>(c);
      out += '%';
      out += hex[b >> 4];
      out += hex[b & 0xF];
    }
  }
  return out;
}

/// Decodes `%XX` (either case); every other byte is taken as it is, `+`
/// included (a `+` written for a space by `quote_plus` or C#'s `UrlEncode`
/// cannot occur in a host name, a device id or base64). Errors
/// (`errc::malformed`) name the bad escape and its offset.
inline result<std::string> url_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    const int hi = i + 1 < s.size() ? detail::hex_digit_value(s[i + 1]) : -1;
    const int lo = i + 2 < s.size() ? detail::hex_digit_value(s[i + 2]) : -1;
    if (hi < 0 || lo < 0)
      return make_error(errc::malformed, "bad percent escape " + detail::printable(s.substr(i, 3)) +
                                             " at offset " + std::to_string(i) +
                                             " (expected '%' and two hex digits)");
    out += static_cast<char>(hi << 4 | lo);
    i += 2;
  }
  return out;
}

}  // namespace devicebound::auth
