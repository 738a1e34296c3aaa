/// \file validate.hpp
/// Input rules of the service: device ids (device_id.hpp), message ids,
/// application properties and the message size rule (SPEC 2.6, 2.11, 3.2, 3.3).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "device_id.hpp"
#include "errors.hpp"
#include "message.hpp"

namespace devicebound {

/// Longest message id (SPEC 3.2).
inline constexpr std::size_t max_message_id_length = 128;
/// Largest C2D message by the size rule of SPEC 2.6 (64 KB).
inline constexpr std::size_t default_max_message_size = 64 * 1024;

/// Message ids: 1..128 ASCII alphanumerics plus `- : . + % _ # * ? ! ( ) , = @ ; $ '` (SPEC 3.2).
inline result<void> validate_message_id(std::string_view id) {
  if (id.empty())
    return make_error(errc::argument_invalid, "message id is empty");
  if (id.size() > max_message_id_length)
    return make_error(errc::argument_invalid, "message id is " + std::to_string(id.size()) +
                                                  " characters long; the limit is 128");
  for (std::size_t i = 0; i < id.size(); ++i)
    if (!detail::is_ascii_alnum(id[i]) && !detail::in_set(id[i], "-:.+%_#*?!(),=@;$'"))
      return make_error(errc::argument_invalid, "message id " + detail::quoted_prefix(id) +
                                                    " has a character not allowed at " +
                                                    std::to_string(i) + " (SPEC 3.2)");
  return {};
}

namespace detail {
constexpr bool is_property_char(char c) noexcept {
  return is_ascii_alnum(c) || in_set(c, "!#$%&'*+-.^_`|~");
}
}  // namespace detail

/// Application property names and values: ASCII alphanumerics plus
/// ``! # $ % & ' * + - . ^ _ ` | ~`` (SPEC 3.3). Names are non-empty and may not
/// use the reserved prefixes `iothub-` and `$.` (system properties travel under
/// them on the wire). Values may be empty.
inline result<void> validate_app_property(std::string_view name, std::string_view value) {
  if (name.empty())
    return make_error(errc::argument_invalid, "application property name is empty");
  for (std::size_t i = 0; i < name.size(); ++i)
    if (!detail::is_property_char(name[i]))
      return make_error(errc::argument_invalid,
                        "application property name " + detail::quoted_prefix(name) +
                            " has a character not allowed at " + std::to_string(i) + " (SPEC 3.3)");
  auto starts_with_ci = [](std::string_view s, std::string_view p) {
    if (s.size() < p.size())
      return false;
    for (std::size_t i = 0; i < p.size(); ++i) {
      char c = s[i];
      if (c >= 'A' && c <= 'Z')
        c = static_cast<char>(c - 'A' + 'a');
      if (c != p[i])
        return false;
    }
    return true;
  };
  if (starts_with_ci(name, "iothub-") || name.starts_with("$."))
    return make_error(errc::argument_invalid, "application property name " +
                                                  detail::quoted_prefix(name) +
                                                  " uses a reserved prefix (iothub- or $.)");
  for (std::size_t i = 0; i < value.size(); ++i)
    if (!detail::is_property_char(value[i]))
      return make_error(errc::argument_invalid,
                        "application property " + detail::quoted_prefix(name) +
                            " has a value with a character not allowed at " + std::to_string(i) +
                            " (SPEC 3.3)");
  return {};
}

/// Length of an ISO-8601 time as the wire carries it (`2015-07-28T16:24:48.789Z`).
inline constexpr std::size_t iso8601_length = 24;

/// The size of a message by SPEC 2.6: body bytes + the bytes of every system
/// property value + the bytes of every application property name and value.
/// System property values counted: message id, correlation id, user id, to,
/// content type, content encoding, the ack text (when not `none`), and expiry
/// and creation times in their 24-character wire form.
inline std::size_t message_size(const message& m) noexcept {
  std::size_t n = m.body.size();
  for (const auto* s :
       {&m.message_id, &m.correlation_id, &m.user_id, &m.to, &m.content_type, &m.content_encoding})
    if (*s)
      n += (*s)->size();
  if (m.ack != ack_mode::none)
    n += to_string(m.ack).size();
  if (m.expiry_time_utc)
    n += iso8601_length;
  if (m.creation_time_utc)
    n += iso8601_length;
  for (const auto& [k, v] : m.app_properties)
    n += k.size() + v.size();
  return n;
}

/// Checks what a sender controls: message id, application properties, size.
inline result<void> validate_message(const message& m,
                                     std::size_t max_size = default_max_message_size) {
  if (m.message_id)
    if (auto r = validate_message_id(*m.message_id); !r)
      return r;
  for (const auto& [k, v] : m.app_properties)
    if (auto r = validate_app_property(k, v); !r)
      return r;
  // The text names everything counted: a body alone can be refused for the `to`
  // the hub sets (65,536 bytes to device `dev1` count 65,570).
  if (const auto n = message_size(m); n > max_size)
    return make_error(errc::message_too_large,
                      "message is " + std::to_string(n) +
                          " bytes by the size rule (body + system property values, including "
                          "the 'to' the hub sets, + application property names and values); "
                          "the limit is " +
                          std::to_string(max_size));
  return {};
}

}  // namespace devicebound
