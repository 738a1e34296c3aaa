/// \file property_bag.hpp
/// Property bags (`k1=v1&k2&...`, SPEC 5.9, 9.2): percent encoding, the one
/// bag writer and the one bag reader that the device-bound topic
/// (codec/topic.hpp) and the extension protocol (codec/protocol.hpp) share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "iso8601.hpp"
#include "utf8.hpp"

namespace devicebound::codec {

namespace detail {

/// Length of the well-formed UTF-8 sequence starting at `s[i]` (Unicode
/// Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF), or 0.
constexpr std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
  if (static_cast<unsigned char>(s[i]) < 0x80)
    return 1;
  const utf8_step step = utf8_next(s, i);
  return step.ok ? step.size : 0;
}

/// Offset of the first byte that is not well-formed UTF-8, or npos.
constexpr std::size_t first_invalid_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence_length(s, i);
    if (n == 0)
      return i;
    i += n;
  }
  return std::string_view::npos;
}

/// RFC 3986 unreserved: the only bytes a bag carries unescaped (SPEC 9.2).
constexpr bool is_unreserved(unsigned char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

constexpr int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

inline void append_escaped(std::string& out, unsigned char c) {
  static constexpr char hex[] = "0123456789ABCDEF";
  out += '%';
  out += hex[c >> 4];
  out += hex[c & 0xF];
}

}  // namespace detail

/// How a bag is written.
struct bag_options {
  /// Write every `.` as `%2E` (off: `.` is unreserved and stays as it is). For
  /// RabbitMQ's MQTT plugin, which turns `/` into `.` on the way in and `.` into
  /// `/` on the way out: a plain `$.mid=1` would reach the device as `$/mid=1`,
  /// a new topic level, and the SDK would lose every property
  /// (docs/scale-out.md). Decoders read `%2E` back as `.`, as they read any escape.
  bool escape_dots = false;
};

/// Appends `s` percent-encoded: RFC 3986 unreserved bytes as they are, every
/// other byte as `%XX` (uppercase hex), so space is `%20` and `$` is `%24`
/// (SPEC 9.2); with `options.escape_dots`, `.` as `%2E` too. Bytes that are
/// not well-formed UTF-8 are written as U+FFFD (`%EF%BF%BD`), one per byte: a
/// Node device decodes with `decodeURIComponent`, which throws on them (a
/// poison message).
inline void append_percent_encoded(std::string& out, std::string_view s,
                                   const bag_options& options) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = detail::utf8_sequence_length(s, i);
    if (n == 0) {
      out += "%EF%BF%BD";
      ++i;
      continue;
    }
    for (std::size_t k = 0; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if (detail::is_unreserved(c) && !(options.escape_dots && c == '.'))
        out += static_cast<char>(c);
      else
        detail::append_escaped(out, c);
    }
    i += n;
  }
}

/// `append_percent_encoded` with the default options (`.` as it is).
inline void append_percent_encoded(std::string& out, std::string_view s) {
  append_percent_encoded(out, s, bag_options{});
}

/// `s` percent-encoded as by `append_percent_encoded`.
inline std::string percent_encode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_percent_encoded(out, s);
  return out;
}

/// Decodes `%XX` (either case) and takes every other byte literally (`+` stays
/// `+`, as `decodeURIComponent` and Python's `unquote` do). The result must be
/// well-formed UTF-8. Errors (`errc::malformed`) name the problem and its byte
/// offset in `s`.
inline result<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    const int hi = i + 1 < s.size() ? detail::hex_value(s[i + 1]) : -1;
    const int lo = i + 2 < s.size() ? detail::hex_value(s[i + 2]) : -1;
    if (hi < 0 || lo < 0)
      return make_error(errc::malformed,
                        "bad percent escape " + detail::quote_for_message(s.substr(i, 3)) +
                            " at byte " + std::to_string(i) + " of " +
                            detail::quote_for_message(s) + " (expected '%' and two hex digits)");
    out += static_cast<char>(hi << 4 | lo);
    i += 2;
  }
  if (const auto bad = detail::first_invalid_utf8(out); bad != std::string::npos)
    return make_error(errc::malformed, detail::quote_for_message(s) +
                                           " is not valid UTF-8 once decoded (byte " +
                                           std::to_string(bad) + " of the decoded text)");
  return out;
}

/// One entry of a property bag. No value is the null form, a bare `key` on
/// the wire (SPEC 5.9); an empty value is `key=`.
struct bag_property {
  std::string key;
  std::optional<std::string> value;

  friend bool operator==(const bag_property&, const bag_property&) = default;
};

/// A property bag in wire order, duplicates kept: what the text says, no more.
using property_bag = std::vector<bag_property>;

/// Parses `k1=v1&k2&k3=...` (SPEC 5.9): entries split at `&`, each at its
/// first `=` (a later `=` belongs to the value); no `=` gives a null value;
/// keys and values percent-decoded by `percent_decode`. Empty entries (`a&&b`,
/// a trailing `&`) are skipped, as URL query parsers do. A leading `?` is not
/// special here; the topic decoders strip it. Rejected (`errc::malformed`): a
/// bad escape, invalid UTF-8 once decoded, an empty key (`=v`).
inline result<property_bag> decode_property_bag(std::string_view bag) {
  property_bag out;
  std::size_t start = 0;
  while (start <= bag.size()) {
    std::size_t end = bag.find('&', start);
    if (end == std::string_view::npos)
      end = bag.size();
    const std::string_view entry = bag.substr(start, end - start);
    if (!entry.empty()) {
      const std::size_t eq = entry.find('=');
      const std::string_view raw_key = entry.substr(0, eq);
      if (raw_key.empty())
        return make_error(errc::malformed, "property bag entry " +
                                               detail::quote_for_message(entry) + " at byte " +
                                               std::to_string(start) + " has an empty key");
      auto key = percent_decode(raw_key);
      if (!key)
        return make_error(errc::malformed, "property bag key at byte " + std::to_string(start) +
                                               ": " + key.error().message);
      bag_property p{std::move(*key), std::nullopt};
      if (eq != std::string_view::npos) {
        auto value = percent_decode(entry.substr(eq + 1));
        if (!value)
          return make_error(errc::malformed, "property bag value of " +
                                                 detail::quote_for_message(p.key) + ": " +
                                                 value.error().message);
        p.value = std::move(*value);
      }
      out.push_back(std::move(p));
    }
    start = end + 1;
  }
  return out;
}

/// A decoded bag whose keys are unique (`decode_property_bag`, then
/// `errc::malformed` on a key that appears twice): what every reader of a
/// devicebound bag starts from.
inline result<property_bag> decode_unique_bag(std::string_view bag) {
  auto b = decode_property_bag(bag);
  if (!b)
    return b.error();
  std::set<std::string_view> seen;
  for (const auto& p : *b)
    if (!seen.insert(p.key).second)
      return make_error(errc::malformed,
                        "key " + detail::quote_for_message(p.key) + " appears more than once");
  return b;
}

/// The value of `key`, or nullptr when it is absent or null.
inline const std::string* find(const property_bag& bag, std::string_view key) {
  for (const auto& p : bag)
    if (p.key == key)
      return p.value ? &*p.value : nullptr;
  return nullptr;
}

/// Writes a bag, percent-encoded (SPEC 9.2), after a head (a topic up to its
/// bag, or nothing): `key=value` pairs joined by `&`, or a bare `key` for the
/// null value.
class bag_writer {
 public:
  bag_writer() = default;
  explicit bag_writer(std::string head, bag_options options = {})
      : out_(std::move(head)), start_(out_.size()), options_(options) {}
  explicit bag_writer(bag_options options) : options_(options) {}

  bag_writer& add(std::string_view key, std::string_view value) {
    add_key(key);
    out_ += '=';
    append_percent_encoded(out_, value, options_);
    return *this;
  }
  bag_writer& add(std::string_view key, std::uint64_t value) {
    return add(key, std::string_view(std::to_string(value)));
  }
  /// The null form: `key` with no `=` (SPEC 5.9).
  bag_writer& add_key(std::string_view key) {
    if (out_.size() != start_)
      out_ += '&';
    append_percent_encoded(out_, key, options_);
    return *this;
  }

  const std::string& str() const& noexcept { return out_; }
  std::string take() && { return std::move(out_); }

 private:
  std::string out_;
  std::size_t start_ = 0;
  bag_options options_;
};

/// `k1=v1&k2=v2...` with every key and value percent-encoded (SPEC 5.9, 9.2).
/// A null value is written as the bare key. Keys should be non-empty:
/// `decode_property_bag` refuses an empty key and drops an empty null entry.
/// `options.escape_dots`: every `.` as `%2E` (RabbitMQ, `bag_options`).
inline std::string encode_property_bag(const property_bag& bag, const bag_options& options = {}) {
  bag_writer w(options);
  for (const bag_property& p : bag) {
    if (p.value)
      w.add(p.key, *p.value);
    else
      w.add_key(p.key);
  }
  return std::move(w).take();
}

}  // namespace devicebound::codec
