/// \file device_id.hpp
/// The device id rule (SPEC 2.11): vocabulary shared by the engine's input
/// rules (validate.hpp), the codecs and the transports. No engine here.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "errors.hpp"

namespace devicebound {

namespace detail {
constexpr bool is_ascii_alnum(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
constexpr bool in_set(char c, std::string_view set) noexcept {
  return set.find(c) != std::string_view::npos;
}
inline std::string quoted_prefix(std::string_view s) {
  constexpr std::size_t kShow = 40;
  std::string out = "'";
  for (char c : s.substr(0, kShow)) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(c);
    } else {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(hex[static_cast<unsigned char>(c) >> 4]);
      out.push_back(hex[static_cast<unsigned char>(c) & 0xF]);
    }
  }
  if (s.size() > kShow)
    out += "...";
  return out + "'";
}
}  // namespace detail

/// Longest device id (SPEC 2.11).
inline constexpr std::size_t max_device_id_length = 128;

/// Device ids: 1..128 ASCII alphanumerics plus `- . % _ * ? ! ( ) , : = @ $ '`
/// (IoT Hub's identity registry rule). None of `/ + #` can appear, so an id is
/// always safe inside an MQTT topic.
inline result<void> validate_device_id(std::string_view id) {
  if (id.empty())
    return make_error(errc::argument_invalid, "device id is empty");
  if (id.size() > max_device_id_length)
    return make_error(errc::argument_invalid, "device id is " + std::to_string(id.size()) +
                                                  " characters long; the limit is 128");
  for (std::size_t i = 0; i < id.size(); ++i)
    if (!detail::is_ascii_alnum(id[i]) && !detail::in_set(id[i], "-.%_*?!(),:=@$'"))
      return make_error(errc::argument_invalid,
                        "device id " + detail::quoted_prefix(id) +
                            " has a character not allowed at " + std::to_string(i) +
                            " (allowed: ASCII letters, digits, -.%_*?!(),:=@$')");
  return {};
}

}  // namespace devicebound
