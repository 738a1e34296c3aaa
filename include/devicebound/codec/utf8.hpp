/// \file codec/utf8.hpp
/// Well-formed UTF-8 (Unicode Table 3-7), one sequence at a time: for the codecs that check
/// or repair text (property bags, the feedback JSON).
#pragma once

#include <cstddef>
#include <string_view>

namespace devicebound::codec::detail {

/// One UTF-8 sequence at `s[i]`, a byte >= 0x80 (Unicode Table 3-7: no
/// overlongs, no surrogates, nothing above U+10FFFF).
struct utf8_step {
  /// ok: the sequence's length. Not ok: the length of its longest well-formed
  /// prefix (0 if `s[i]` begins none); `s[i + size]`, or the end, breaks it.
  std::size_t size;
  bool ok;
};

constexpr utf8_step utf8_next(std::string_view s, std::size_t i) noexcept {
  const auto b0 = static_cast<unsigned char>(s[i]);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    lo = b0 == 0xE0 ? 0xA0 : 0x80;
    hi = b0 == 0xED ? 0x9F : 0xBF;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    lo = b0 == 0xF0 ? 0x90 : 0x80;
    hi = b0 == 0xF4 ? 0x8F : 0xBF;
  } else {
    return {0, false};
  }
  for (std::size_t k = 1; k < n; ++k, lo = 0x80, hi = 0xBF) {
    if (i + k >= s.size())
      return {k, false};
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < lo || b > hi)
      return {k, false};
  }
  return {n, true};
}

}  // namespace devicebound::codec::detail
