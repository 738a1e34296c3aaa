/// \file amqp.hpp
/// The AMQP 1.0 mapping (SPEC 10): link addresses, `proton::message` ↔
/// devicebound `message` in the four directions (service send, hub delivery to
/// a device, feedback, and the inverses our own AMQP transport uses), delivery
/// tags ↔ lock tokens, and errors ↔ AMQP conditions. Sans-I/O: no sockets, no
/// clock; Proton is used only for its message type and codec. The tables are
/// in docs/amqp.md.
#pragma once

#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <proton/annotation_key.hpp>
#include <proton/binary.hpp>
#include <proton/codec/map.hpp>
#include <proton/error.hpp>
#include <proton/error_condition.hpp>
#include <proton/message.hpp>
#include <proton/message_id.hpp>
#include <proton/scalar.hpp>
#include <proton/symbol.hpp>
#include <proton/timestamp.hpp>
#include <proton/types.hpp>
#include <proton/uuid.hpp>
#include <proton/value.hpp>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "../errors.hpp"
#include "../feedback_batch.hpp"
#include "../message.hpp"
#include "../validate.hpp"
#include "amqp_errors.hpp"
#include "feedback_json.hpp"
#include "iso8601.hpp"

namespace devicebound::codec::amqp {

// ---------------------------------------------------------------------------
// Names on the wire
// ---------------------------------------------------------------------------

/// Application property carrying the ack mode (SPEC 3.1, 10.9.4).
inline constexpr std::string_view property_ack = "iothub-ack";
/// Message annotations of a delivered C2D message; C# reads them type-exact (SPEC 10.14.3).
inline constexpr std::string_view annotation_lock_token = "x-opt-lock-token";            // string
inline constexpr std::string_view annotation_sequence_number = "x-opt-sequence-number";  // ulong
inline constexpr std::string_view annotation_enqueued_time = "iothub-enqueuedtime";    // timestamp
inline constexpr std::string_view annotation_delivery_count = "iothub-deliverycount";  // ubyte

// ---------------------------------------------------------------------------
// Link addresses (SPEC 10.4, 10.8, 10.11, 10.13, 10.16)
// ---------------------------------------------------------------------------

/// What a link's source or target address names.
enum class link_kind : std::uint8_t {
  cbs,                 ///< `$cbs`: claims-based security, put-token (SPEC 10.4)
  c2d_send,            ///< `/messages/devicebound`: service sender (SPEC 10.8)
  feedback,            ///< `/messages/serviceBound/feedback`: service receiver (SPEC 10.11)
  file_notifications,  ///< `/messages/serviceBound/filenotifications` (SPEC 10.11.4)
  device_c2d,          ///< `/devices/{id}/messages/devicebound`: device receiver (SPEC 10.13)
  device_telemetry,    ///< `/devices/{id}/messages/events`: D2C sender (SPEC 10.16)
  device_twin,         ///< `/devices/{id}/twin` (SPEC 10.16)
  device_methods,      ///< `/devices/{id}/methods/devicebound` (SPEC 10.16)
  unknown,             ///< anything else
};

/// `cbs`, `c2d_send`, ... (for logs and error messages).
constexpr std::string_view to_string(link_kind k) noexcept {
  switch (k) {
    case link_kind::cbs:
      return "cbs";
    case link_kind::c2d_send:
      return "c2d_send";
    case link_kind::feedback:
      return "feedback";
    case link_kind::file_notifications:
      return "file_notifications";
    case link_kind::device_c2d:
      return "device_c2d";
    case link_kind::device_telemetry:
      return "device_telemetry";
    case link_kind::device_twin:
      return "device_twin";
    case link_kind::device_methods:
      return "device_methods";
    case link_kind::unknown:
      return "unknown";
  }
  return "unknown";
}

/// A classified link address. `device_id` (URL-decoded) is set for the
/// `device_*` kinds, `module_id` when the address has a `/modules/{m}` segment.
struct link_address {
  link_kind kind = link_kind::unknown;
  std::string device_id;
  std::optional<std::string> module_id;

  friend bool operator==(const link_address&, const link_address&) = default;
};

namespace detail {

using ::devicebound::codec::detail::quote_for_message;

constexpr char ascii_lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

constexpr bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i]))
      return false;
  return true;
}

constexpr bool istarts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

constexpr int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/// `%XX` decoding; nullopt if an escape is malformed.
inline std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size())
      return std::nullopt;
    const int hi = hex_value(s[i + 1]);
    const int lo = hex_value(s[i + 2]);
    if (hi < 0 || lo < 0)
      return std::nullopt;
    out.push_back(static_cast<char>(hi << 4 | lo));
    i += 2;
  }
  return out;
}

/// `encodeURIComponent`: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )` as `%XX`.
inline std::string percent_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
        std::string_view("-_.!~*'()").find(c) != std::string_view::npos) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(hex[u >> 4]);
      out.push_back(hex[u & 0xF]);
    }
  }
  return out;
}

/// An id segment of a path: URL-decoded (Node and C# encode it, SPEC 10.9.1).
/// Python and Java send it raw, and `%` is legal in device ids, so a segment
/// whose `%` escapes do not decode is taken as it is.
inline result<std::string> id_segment(std::string_view segment, std::string_view what) {
  std::string id = percent_decode(segment).value_or(std::string(segment));
  if (auto r = validate_device_id(id); !r)
    return make_error(errc::argument_invalid, std::string(what) + ": " + r.error().message);
  return id;
}

/// The path of an address: `amqps://host[:port]` (any scheme) removed, and one
/// trailing `/` dropped.
constexpr std::string_view address_path(std::string_view address) noexcept {
  if (const auto scheme = address.find("://"); scheme != std::string_view::npos) {
    const auto path = address.find('/', scheme + 3);
    address = path == std::string_view::npos ? std::string_view("/") : address.substr(path);
  }
  if (address.size() > 1 && address.back() == '/')
    address.remove_suffix(1);
  return address;
}

}  // namespace detail

/// Classifies a link source or target address. Forms accepted: relative
/// (`/messages/devicebound`), absolute (`amqps://{host}[:port]/...`), fixed
/// segments in any casing (`deviceBound`, `serviceBound`, `servicebound`),
/// `{id}` URL-encoded or raw, an optional trailing `/`, and module variants
/// `/devices/{d}/modules/{m}/...` (Appendix A.4). An address that names a
/// device whose id is invalid is an `argument_invalid` error; an address this
/// function does not know is `link_kind::unknown`, not an error.
inline result<link_address> parse_link_address(std::string_view address) {
  const std::string_view path = detail::address_path(address);
  if (detail::iequals(path, "$cbs") || detail::iequals(path, "/$cbs"))
    return link_address{link_kind::cbs, {}, std::nullopt};
  if (detail::iequals(path, "/messages/devicebound"))
    return link_address{link_kind::c2d_send, {}, std::nullopt};
  if (detail::iequals(path, "/messages/servicebound/feedback"))
    return link_address{link_kind::feedback, {}, std::nullopt};
  if (detail::iequals(path, "/messages/servicebound/filenotifications"))
    return link_address{link_kind::file_notifications, {}, std::nullopt};

  // /devices/{id}[/modules/{m}]/<rest>
  if (!detail::istarts_with(path, "/devices/"))
    return link_address{};
  std::string_view rest = path.substr(9);
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos)
    return link_address{};
  const std::string_view device_segment = rest.substr(0, slash);
  rest = rest.substr(slash);
  std::optional<std::string_view> module_segment;
  if (detail::istarts_with(rest, "/modules/")) {
    std::string_view after = rest.substr(9);
    const auto s = after.find('/');
    if (s == std::string_view::npos)
      return link_address{};
    module_segment = after.substr(0, s);
    rest = after.substr(s);
  }
  link_kind kind = link_kind::unknown;
  if (detail::iequals(rest, "/messages/devicebound"))
    kind = link_kind::device_c2d;
  else if (detail::iequals(rest, "/messages/events"))
    kind = link_kind::device_telemetry;
  else if (detail::iequals(rest, "/twin"))
    kind = link_kind::device_twin;
  else if (detail::iequals(rest, "/methods/devicebound"))
    kind = link_kind::device_methods;
  else
    return link_address{};

  auto device = detail::id_segment(device_segment, "device id in address");
  if (!device)
    return device.error();
  link_address out{kind, std::move(*device), std::nullopt};
  if (module_segment) {
    auto module = detail::id_segment(*module_segment, "module id in address");
    if (!module)
      return module.error();
    out.module_id = std::move(*module);
  }
  return out;
}

/// The `to` of a C2D message for a device: `/devices/{encodeURIComponent(id)}/messages/devicebound`
/// (Node's form, SPEC 10.9.1), or the module form when `module_id` is given.
inline std::string c2d_to(std::string_view device_id,
                          std::optional<std::string_view> module_id = std::nullopt) {
  std::string to = "/devices/" + detail::percent_encode(device_id);
  if (module_id)
    to += "/modules/" + detail::percent_encode(*module_id);
  return to + "/messages/devicebound";
}

// ---------------------------------------------------------------------------
// Delivery tags and lock tokens (SPEC 10.14.4, 10.11.2)
// ---------------------------------------------------------------------------

/// The 16 tag bytes for a lock token. C# takes the tag as a .NET `Guid` byte
/// array (`new Guid(tag)`: the first three groups little-endian), so the
/// first 4, next 2 and next 2 bytes of the token are reversed: then
/// `new Guid(tag).ToString()` equals `token.to_string()`, the text the hub
/// reports everywhere else (`x-opt-lock-token`, HTTPS ETag, MQTT).
constexpr std::array<std::uint8_t, 16> delivery_tag_bytes(const lock_token& token) noexcept {
  const auto& b = token.bytes;
  return {b[3], b[2], b[1],  b[0],  b[5],  b[4],  b[7],  b[6],
          b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]};
}

/// Inverse of `delivery_tag_bytes` (the permutation is its own inverse).
constexpr lock_token lock_token_from_tag_bytes(const std::array<std::uint8_t, 16>& tag) noexcept {
  lock_token t;
  t.bytes = {tag[3], tag[2], tag[1],  tag[0],  tag[5],  tag[4],  tag[7],  tag[6],
             tag[8], tag[9], tag[10], tag[11], tag[12], tag[13], tag[14], tag[15]};
  return t;
}

/// The delivery tag for a lock token, as Proton's sender takes it.
inline proton::binary delivery_tag(const lock_token& token) {
  const auto bytes = delivery_tag_bytes(token);
  proton::binary tag;
  tag.assign(bytes.begin(), bytes.end());
  return tag;
}

/// The lock token of a received delivery tag; `argument_invalid` unless it has 16 bytes.
inline result<lock_token> lock_token_from_delivery_tag(const proton::binary& tag) {
  if (tag.size() != 16)
    return make_error(errc::argument_invalid, "delivery tag has " + std::to_string(tag.size()) +
                                                  " bytes; a lock token needs 16 (SPEC 10.14.4)");
  std::array<std::uint8_t, 16> bytes{};
  for (std::size_t i = 0; i < 16; ++i)
    bytes[i] = tag[i];
  return lock_token_from_tag_bytes(bytes);
}

// ---------------------------------------------------------------------------
// message-id / correlation-id types (SPEC 10.9.2, 10.6.1)
// ---------------------------------------------------------------------------

/// The AMQP type a message-id or correlation-id arrived with.
enum class id_type : std::uint8_t {
  string,  ///< AMQP string (C#, Python, Java; Node for non-UUID text)
  uuid,    ///< AMQP uuid (Node sends UUID-looking text as uuid)
  ulong,   ///< AMQP ulong
  binary,  ///< AMQP binary
};

/// `string`, `uuid`, `ulong`, `binary`.
constexpr std::string_view to_string(id_type t) noexcept {
  switch (t) {
    case id_type::string:
      return "string";
    case id_type::uuid:
      return "uuid";
    case id_type::ulong:
      return "ulong";
    case id_type::binary:
      return "binary";
  }
  return "string";
}

/// The AMQP types of a message's two ids. The devicebound `message` keeps ids
/// as text; a front door that wants to echo the sender's type to the device
/// keeps this beside the message. Without it, ids go out as strings, which
/// every device SDK turns into the same text (SPEC 10.14.2).
struct id_types {
  id_type message_id = id_type::string;
  id_type correlation_id = id_type::string;

  friend bool operator==(const id_types&, const id_types&) = default;
};

namespace detail {

inline std::string uuid_text(const proton::uuid& u) {
  lock_token t;  // same 8-4-4-4-12 lowercase rendering, byte for byte
  for (std::size_t i = 0; i < 16; ++i)
    t.bytes[i] = static_cast<std::uint8_t>(u[i]);
  return t.to_string();
}

inline std::optional<proton::uuid> parse_uuid(std::string_view text) {
  const auto t = lock_token::parse(text);
  if (!t)
    return std::nullopt;
  proton::uuid u;
  for (std::size_t i = 0; i < 16; ++i)
    u[i] = static_cast<proton::uuid::value_type>(t->bytes[i]);
  return u;
}

inline std::optional<std::uint64_t> parse_canonical_ulong(std::string_view text) {
  if (text.empty() || (text.size() > 1 && text[0] == '0'))
    return std::nullopt;
  std::uint64_t v = 0;
  const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size())
    return std::nullopt;
  return v;
}

}  // namespace detail

/// The text of a message-id / correlation-id and its AMQP type: a string as it
/// is, a uuid as lowercase `8-4-4-4-12`, a ulong in decimal, a binary as its
/// bytes. nullopt for an absent (null) id; `argument_invalid` for any other type.
inline result<std::optional<std::pair<std::string, id_type>>> id_text(const proton::message_id& id,
                                                                      std::string_view field) {
  using value_type = std::optional<std::pair<std::string, id_type>>;
  switch (id.type()) {
    case proton::NULL_TYPE:
      return value_type{};
    case proton::STRING:
      return value_type{std::pair{proton::get<std::string>(id), id_type::string}};
    case proton::UUID:
      return value_type{std::pair{detail::uuid_text(proton::get<proton::uuid>(id)), id_type::uuid}};
    case proton::ULONG:
      return value_type{std::pair{std::to_string(proton::get<std::uint64_t>(id)), id_type::ulong}};
    case proton::BINARY: {
      const auto b = proton::get<proton::binary>(id);
      return value_type{std::pair{std::string(b.begin(), b.end()), id_type::binary}};
    }
    default:
      return make_error(errc::argument_invalid, std::string(field) + " has AMQP type " +
                                                    proton::type_name(id.type()) +
                                                    "; expected string, uuid, ulong or binary");
  }
}

/// An id of the given type from its text (inverse of `id_text`). Text that the
/// type cannot hold (a uuid that is not `8-4-4-4-12` hex, a ulong that is not
/// canonical decimal) goes out as a string.
inline proton::message_id make_id(std::string_view text, id_type type) {
  switch (type) {
    case id_type::uuid:
      if (auto u = detail::parse_uuid(text); u && detail::uuid_text(*u) == text)
        return proton::message_id(*u);
      break;
    case id_type::ulong:
      if (auto v = detail::parse_canonical_ulong(text))
        return proton::message_id(*v);
      break;
    case id_type::binary:
      return proton::message_id(proton::binary(std::string(text)));
    case id_type::string:
      break;
  }
  return proton::message_id(std::string(text));
}

// ---------------------------------------------------------------------------
// Body sections
// ---------------------------------------------------------------------------

namespace detail {

/// Walks an encoded AMQP message (a sequence of described sections) and
/// concatenates its `data` sections. Proton 0.37's decoder keeps only the last
/// `data` section of a message, while SPEC 10.9.3 allows several. nullopt if
/// the message has no data section; `malformed` if the bytes are not a
/// sequence of well-formed sections.
class section_walker {
 public:
  explicit section_walker(std::span<const char> bytes) : b_(bytes) {}

  result<std::optional<std::string>> data_body() {
    std::optional<std::string> body;
    while (pos_ < b_.size()) {
      if (byte() != 0x00)
        return fail("a section is not a described type");
      ++pos_;
      const auto code = descriptor_code();
      if (!code)
        return fail("a section descriptor is malformed");
      if (*code == 0x75) {  // amqp:data:binary
        auto bytes = binary_value();
        if (!bytes)
          return fail("a data section does not hold a binary");
        if (!body)
          body.emplace();
        body->append(*bytes);
      } else if (!skip_value(0)) {
        return fail("a section is truncated or malformed");
      }
    }
    return body;
  }

 private:
  static constexpr int max_depth = 16;

  unsigned byte() const { return static_cast<unsigned char>(b_[pos_]); }
  bool have(std::size_t n) const { return b_.size() - pos_ >= n; }

  std::optional<std::uint64_t> read_be(std::size_t n) {
    if (!have(n))
      return std::nullopt;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i)
      v = v << 8 | static_cast<unsigned char>(b_[pos_ + i]);
    pos_ += n;
    return v;
  }

  // A section descriptor: smallulong / ulong code, or a symbol (mapped to the
  // code of `amqp:data:binary` when it is that name, else skipped).
  std::optional<std::uint64_t> descriptor_code() {
    if (!have(1))
      return std::nullopt;
    const unsigned c = byte();
    ++pos_;
    if (c == 0x53)
      return read_be(1);
    if (c == 0x80)
      return read_be(8);
    if (c == 0x44)
      return 0;
    if (c == 0xa3 || c == 0xb3) {
      const auto n = read_be(c == 0xa3 ? 1 : 4);
      if (!n || !have(*n))
        return std::nullopt;
      const std::string_view name(b_.data() + pos_, *n);
      pos_ += *n;
      return name == "amqp:data:binary" ? 0x75 : 0xffffffffu;
    }
    return std::nullopt;
  }

  std::optional<std::string_view> binary_value() {
    if (!have(1))
      return std::nullopt;
    const unsigned c = byte();
    if (c != 0xa0 && c != 0xb0)
      return std::nullopt;
    ++pos_;
    const auto n = read_be(c == 0xa0 ? 1 : 4);
    if (!n || !have(*n))
      return std::nullopt;
    const std::string_view v(b_.data() + pos_, *n);
    pos_ += *n;
    return v;
  }

  // Skips one encoded value by its format code's width category.
  bool skip_value(int depth) {
    if (depth > max_depth || !have(1))
      return false;
    const unsigned c = byte();
    ++pos_;
    if (c == 0x00)
      return skip_value(depth + 1) && skip_value(depth + 1);
    std::uint64_t n = 0;
    switch (c >> 4) {
      case 0x4:
        n = 0;
        break;
      case 0x5:
        n = 1;
        break;
      case 0x6:
        n = 2;
        break;
      case 0x7:
        n = 4;
        break;
      case 0x8:
        n = 8;
        break;
      case 0x9:
        n = 16;
        break;
      case 0xa:
      case 0xc:
      case 0xe: {
        const auto v = read_be(1);
        if (!v)
          return false;
        n = *v;
        break;
      }
      case 0xb:
      case 0xd:
      case 0xf: {
        const auto v = read_be(4);
        if (!v)
          return false;
        n = *v;
        break;
      }
      default:
        return false;
    }
    if (!have(n))
      return false;
    pos_ += n;
    return true;
  }

  static error fail(std::string_view why) {
    return make_error(errc::malformed, "AMQP message: " + std::string(why));
  }

  std::span<const char> b_;
  std::size_t pos_ = 0;
};

}  // namespace detail

/// The concatenated `data` sections of an encoded AMQP message; nullopt if it
/// has none. Use it where the raw transfer bytes are at hand: Proton's own
/// decoder keeps only the last data section.
inline result<std::optional<std::string>> data_body(std::span<const char> encoded) {
  return detail::section_walker(encoded).data_body();
}

// ---------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------

namespace detail {

inline std::optional<std::string> non_empty(std::string s) {
  if (s.empty())
    return std::nullopt;
  return s;
}

inline time_point to_time_point(proton::timestamp t) {
  return time_point(duration(t.milliseconds()));
}

inline proton::timestamp to_timestamp(time_point t) {
  return proton::timestamp(t.time_since_epoch().count());
}

/// Proton's `timestamp` 0 means "absent" for the properties section.
inline std::optional<time_point> optional_time(proton::timestamp t) {
  if (t.milliseconds() == 0)
    return std::nullopt;
  return to_time_point(t);
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | cp >> 6));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | cp >> 12));
    out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18 & 0x07)));
    out.push_back(static_cast<char>(0x80 | (cp >> 12 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

template <class T>
std::string number_text(T v) {
  std::array<char, 64> buf{};
  const auto [p, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return ec == std::errc() ? std::string(buf.data(), p) : std::string();
}

}  // namespace detail

/// An application property value as devicebound's string → string map holds
/// it (SPEC 3.3): strings and symbols as they are; booleans `true`/`false`;
/// integers in decimal; float and double in the shortest text that reads
/// back to the same value (`std::to_chars`); a timestamp as ISO-8601; a uuid
/// as `8-4-4-4-12`; a char as UTF-8; binary as its bytes; null as the empty
/// string. Decimal types are `argument_invalid` (no SDK sends them).
inline result<std::string> property_text(const proton::scalar& v, std::string_view name) {
  switch (v.type()) {
    case proton::NULL_TYPE:
      return std::string();
    case proton::STRING:
      return proton::get<std::string>(v);
    case proton::SYMBOL:
      return std::string(proton::get<proton::symbol>(v));
    case proton::BINARY: {
      const auto b = proton::get<proton::binary>(v);
      return std::string(b.begin(), b.end());
    }
    case proton::BOOLEAN:
      return std::string(proton::get<bool>(v) ? "true" : "false");
    case proton::UBYTE:
    case proton::USHORT:
    case proton::UINT:
    case proton::ULONG:
      return std::to_string(proton::coerce<std::uint64_t>(v));
    case proton::BYTE:
    case proton::SHORT:
    case proton::INT:
    case proton::LONG:
      return std::to_string(proton::coerce<std::int64_t>(v));
    case proton::FLOAT:
      return detail::number_text(proton::get<float>(v));
    case proton::DOUBLE:
      return detail::number_text(proton::get<double>(v));
    case proton::TIMESTAMP:
      return format_iso8601(detail::to_time_point(proton::get<proton::timestamp>(v)));
    case proton::UUID:
      return detail::uuid_text(proton::get<proton::uuid>(v));
    case proton::CHAR: {
      std::string s;
      detail::append_utf8(s, static_cast<std::uint32_t>(proton::get<wchar_t>(v)));
      return s;
    }
    default:
      return make_error(errc::argument_invalid,
                        "application property " + detail::quote_for_message(name) +
                            " has AMQP type " + proton::type_name(v.type()) +
                            "; expected a string, number or boolean");
  }
}

namespace detail {

/// `iothub-ack`: a string (or symbol) `none|positive|negative|full`, any case;
/// Java's `positiveonly` / `negativeonly` read as positive / negative
/// (SPEC 10.9.4 design note).
inline result<ack_mode> parse_ack(const proton::scalar& v) {
  if (v.type() != proton::STRING && v.type() != proton::SYMBOL)
    return make_error(errc::argument_invalid, "iothub-ack has AMQP type " +
                                                  proton::type_name(v.type()) +
                                                  "; expected a string (SPEC 10.9.4)");
  const std::string text = v.type() == proton::STRING ? proton::get<std::string>(v)
                                                      : std::string(proton::get<proton::symbol>(v));
  if (const auto a = parse_ack_mode(text))
    return *a;
  if (iequals(text, "positiveonly"))
    return ack_mode::positive;
  if (iequals(text, "negativeonly"))
    return ack_mode::negative;
  return make_error(errc::argument_invalid,
                    "iothub-ack is " + quote_for_message(text) +
                        "; expected none, positive, negative or full (SPEC 3.6)");
}

/// The user-settable fields every direction shares: ids, user-id, times,
/// content type and encoding, application properties with `iothub-ack`.
inline result<id_types> decode_common(const proton::message& in, message& out) {
  id_types types;
  auto mid = id_text(in.id(), "message-id");
  if (!mid)
    return mid.error();
  if (*mid) {
    out.message_id = std::move((*mid)->first);
    types.message_id = (*mid)->second;
  }
  auto cid = id_text(in.correlation_id(), "correlation-id");
  if (!cid)
    return cid.error();
  if (*cid) {
    out.correlation_id = std::move((*cid)->first);
    types.correlation_id = (*cid)->second;
  }
  out.user_id = non_empty(in.user());
  out.expiry_time_utc = optional_time(in.expiry_time());
  out.creation_time_utc = optional_time(in.creation_time());
  out.content_type = non_empty(in.content_type());
  out.content_encoding = non_empty(in.content_encoding());

  if (!in.properties().empty()) {
    std::map<std::string, proton::scalar> props;
    proton::get(in.properties().value(), props);
    for (const auto& [name, value] : props) {
      if (iequals(name, property_ack)) {
        auto ack = parse_ack(value);
        if (!ack)
          return ack.error();
        out.ack = *ack;
        continue;
      }
      auto text = property_text(value, name);
      if (!text)
        return text.error();
      out.app_properties.emplace(name, std::move(*text));
    }
  }
  return types;
}

inline void encode_common(const message& in, const id_types& types, proton::message& out) {
  if (in.message_id)
    out.id(make_id(*in.message_id, types.message_id));
  if (in.correlation_id)
    out.correlation_id(make_id(*in.correlation_id, types.correlation_id));
  if (in.user_id)
    out.user(*in.user_id);
  if (in.expiry_time_utc)
    out.expiry_time(to_timestamp(*in.expiry_time_utc));
  if (in.creation_time_utc)
    out.creation_time(to_timestamp(*in.creation_time_utc));
  if (in.content_type)
    out.content_type(*in.content_type);
  if (in.content_encoding)
    out.content_encoding(*in.content_encoding);
  for (const auto& [name, value] : in.app_properties)
    out.properties().put(name, proton::scalar(value));
  // SPEC 9.3 / 10.9.4: iothub-ack only when feedback is requested.
  if (in.ack != ack_mode::none)
    out.properties().put(std::string(property_ack), proton::scalar(std::string(to_string(in.ack))));
}

inline void set_data_body(proton::message& out, const std::string& body) {
  out.body(proton::binary(body));
  out.inferred(true);  // a binary body with `inferred` is encoded as a data section
}

/// The body of a message: its data section(s); also an amqp-value holding a
/// binary or a string (lenient: no SDK sends one for C2D, SPEC 10.9.3); a
/// message with no body section is an empty body. Anything else is
/// `argument_invalid`.
inline result<std::string> decode_body(const proton::message& in, std::span<const char> encoded) {
  if (!encoded.empty()) {
    auto data = data_body(encoded);
    if (!data)
      return data.error();
    if (*data)
      return std::move(**data);
  }
  const proton::value& body = in.body();
  const auto type = body.type();
  if (type == proton::NULL_TYPE && !in.inferred())
    return std::string();
  if (type == proton::BINARY) {
    const auto b = proton::get<proton::binary>(body);
    return std::string(b.begin(), b.end());
  }
  if (!in.inferred() && type == proton::STRING)
    return proton::get<std::string>(body);
  return make_error(errc::argument_invalid,
                    std::string("body is ") +
                        (in.inferred() ? "an amqp-sequence" : "an amqp-value") + " of type " +
                        proton::type_name(type) +
                        "; a C2D body is one or more data sections (SPEC 10.9.3, 10.14.1)");
}

template <class F>
auto guard_proton(F&& f, std::string_view what) -> decltype(f()) {
  try {
    return f();
  } catch (const proton::error& e) {
    return make_error(errc::malformed, std::string(what) + ": " + e.what());
  }
}

inline std::optional<proton::value> annotation(const proton::message& in, std::string_view key) {
  const auto& ann = in.message_annotations();
  const proton::annotation_key k{proton::symbol(std::string(key))};
  if (ann.empty() || !ann.exists(k))
    return std::nullopt;
  return ann.get(k);
}

inline result<std::optional<std::uint64_t>> unsigned_annotation(const proton::message& in,
                                                                std::string_view key) {
  const auto v = annotation(in, key);
  if (!v)
    return std::optional<std::uint64_t>{};
  switch (v->type()) {
    case proton::UBYTE:
    case proton::USHORT:
    case proton::UINT:
    case proton::ULONG:
      return std::optional<std::uint64_t>{proton::coerce<std::uint64_t>(*v)};
    default:
      return make_error(errc::argument_invalid,
                        "annotation " + std::string(key) + " has AMQP type " +
                            proton::type_name(v->type()) + "; expected an unsigned integer");
  }
}

inline result<std::optional<time_point>> time_annotation(const proton::message& in,
                                                         std::string_view key) {
  const auto v = annotation(in, key);
  if (!v)
    return std::optional<time_point>{};
  if (v->type() != proton::TIMESTAMP)
    return make_error(errc::argument_invalid, "annotation " + std::string(key) + " has AMQP type " +
                                                  proton::type_name(v->type()) +
                                                  "; expected timestamp (SPEC 10.11.2)");
  return std::optional<time_point>{to_time_point(proton::get<proton::timestamp>(*v))};
}

inline void put_annotation(proton::message& out, std::string_view key, const proton::value& v) {
  out.message_annotations().put(proton::annotation_key(proton::symbol(std::string(key))), v);
}

}  // namespace detail

// ---------------------------------------------------------------------------
// 1. Service → hub: the C2D send (SPEC 10.9) and its inverse for our client
// ---------------------------------------------------------------------------

/// A C2D send as the hub's front door receives it.
struct c2d_send {
  std::string device_id;                 ///< from `to`, URL-decoded
  std::optional<std::string> module_id;  ///< `/devices/{d}/modules/{m}/...` form (Java)
  devicebound::message message;          ///< user-settable fields; `to` as received
  id_types ids;                          ///< AMQP types of message-id and correlation-id

  friend bool operator==(const c2d_send&, const c2d_send&) = default;
};

/// Maps a message received on the `/messages/devicebound` link (SPEC 10.9).
/// The device comes from `to` in any form the SDKs send (10.9.1). Pass the
/// transfer's raw bytes as `encoded` when available so that a body split over
/// several data sections is kept whole. Errors (`argument_invalid` unless
/// noted): no `to`; a `to` that does not name a device's C2D queue; an id of
/// another AMQP type; a bad `iothub-ack`; an application property of an
/// unsupported type; a body that is not data sections; undecodable bytes
/// (`malformed`). Property values and the size rule are left to
/// `validate_message`, as for every front door.
inline result<c2d_send> decode_c2d_send(const proton::message& in,
                                        std::span<const char> encoded = {}) {
  return detail::guard_proton(
      [&]() -> result<c2d_send> {
        const std::string to = in.to();
        if (to.empty())
          return make_error(errc::argument_invalid,
                            "C2D message has no 'to' property; expected "
                            "/devices/{deviceId}/messages/devicebound (SPEC 10.9.1)");
        auto address = parse_link_address(to);
        if (!address)
          return make_error(errc::argument_invalid, "'to' " + detail::quote_for_message(to) + ": " +
                                                        address.error().message);
        if (address->kind != link_kind::device_c2d)
          return make_error(
              errc::argument_invalid,
              "'to' is " + detail::quote_for_message(to) +
                  "; expected /devices/{deviceId}/messages/devicebound (SPEC 10.9.1)");
        c2d_send out;
        out.device_id = std::move(address->device_id);
        out.module_id = std::move(address->module_id);
        out.message.to = to;
        auto ids = detail::decode_common(in, out.message);
        if (!ids)
          return ids.error();
        out.ids = *ids;
        auto body = detail::decode_body(in, encoded);
        if (!body)
          return body.error();
        out.message.body = std::move(*body);
        return out;
      },
      "C2D message");
}

/// The message a service sends for `m` to a device (inverse of
/// `decode_c2d_send`): `to` = `c2d_to(device_id, module_id)`, one data
/// section, ids in the types given. Hub-assigned fields of `m` (and `m.to`)
/// are not sent. `argument_invalid` for an invalid device or module id.
inline result<proton::message> encode_c2d_send(std::string_view device_id, const message& m,
                                               const id_types& ids = {},
                                               std::optional<std::string_view> module_id = {}) {
  if (auto r = validate_device_id(device_id); !r)
    return r.error();
  if (module_id)
    if (auto r = validate_device_id(*module_id); !r)
      return make_error(errc::argument_invalid, "module id: " + r.error().message);
  proton::message out;
  out.to(c2d_to(device_id, module_id));
  detail::encode_common(m, ids, out);
  detail::set_data_body(out, m.body);
  return out;
}

/// `encode_c2d_send` for a `c2d_send` (same device, module, ids; `message.to` ignored).
inline result<proton::message> encode_c2d_send(const c2d_send& s) {
  return encode_c2d_send(s.device_id, s.message, s.ids,
                         s.module_id ? std::optional<std::string_view>(*s.module_id)
                                     : std::optional<std::string_view>());
}

// ---------------------------------------------------------------------------
// 2. Hub → device (SPEC 10.14) and 3. its inverse for our device client
// ---------------------------------------------------------------------------

/// A message and the delivery tag it must be sent with.
struct outgoing_delivery {
  proton::message message;
  proton::binary tag;
};

/// The delivery of a locked C2D message to a device (SPEC 10.14): one data
/// section; message-id, correlation-id (in the types given), `to`, user-id,
/// absolute-expiry-time, creation-time, content-type, content-encoding;
/// application properties with `iothub-ack` unless `none`; annotations
/// `x-opt-lock-token` (string), `x-opt-sequence-number` (ulong),
/// `iothub-enqueuedtime` (timestamp, when set) and `iothub-deliverycount`
/// (ubyte; counts above 255 are sent as 255); the 16-byte tag of the lock
/// token. `invalid_operation` if `m` holds no lock token (it is not Invisible).
inline result<outgoing_delivery> encode_c2d_delivery(const message& m, const id_types& ids = {}) {
  if (!m.lock_token)
    return make_error(errc::invalid_operation,
                      "message has no lock token: only a locked (Invisible) message is delivered");
  outgoing_delivery out;
  if (m.to)
    out.message.to(*m.to);
  detail::encode_common(m, ids, out.message);
  detail::set_data_body(out.message, m.body);
  detail::put_annotation(out.message, annotation_lock_token,
                         proton::value(m.lock_token->to_string()));
  detail::put_annotation(out.message, annotation_sequence_number,
                         proton::value(static_cast<std::uint64_t>(m.sequence_number)));
  if (m.enqueued_time_utc)
    detail::put_annotation(out.message, annotation_enqueued_time,
                           proton::value(detail::to_timestamp(*m.enqueued_time_utc)));
  const auto count = static_cast<std::uint8_t>(m.delivery_count > 255 ? 255 : m.delivery_count);
  detail::put_annotation(out.message, annotation_delivery_count, proton::value(count));
  out.tag = delivery_tag(*m.lock_token);
  return out;
}

/// A C2D message as a device receives it (inverse of `encode_c2d_delivery`).
/// The lock token is the 16-byte delivery tag read as in C#; with a tag of
/// another size, the `x-opt-lock-token` annotation. Annotations are read
/// leniently (any unsigned integer type for the counters). Errors: no lock
/// token, an annotation of the wrong kind, the errors of `decode_c2d_send`
/// for ids, properties and body.
inline result<message> decode_c2d_delivery(const proton::message& in, const proton::binary& tag,
                                           std::span<const char> encoded = {}) {
  return detail::guard_proton(
      [&]() -> result<message> {
        message out;
        if (auto to = in.to(); !to.empty())
          out.to = std::move(to);
        auto ids = detail::decode_common(in, out);
        if (!ids)
          return ids.error();
        auto body = detail::decode_body(in, encoded);
        if (!body)
          return body.error();
        out.body = std::move(*body);

        if (tag.size() == 16) {
          out.lock_token = *lock_token_from_delivery_tag(tag);
        } else if (const auto v = detail::annotation(in, annotation_lock_token)) {
          std::optional<lock_token> t;
          if (v->type() == proton::STRING)
            t = lock_token::parse(proton::get<std::string>(*v));
          if (!t)
            return make_error(errc::argument_invalid,
                              "annotation x-opt-lock-token is not a GUID string");
          out.lock_token = *t;
        } else {
          return make_error(
              errc::argument_invalid,
              "delivery has neither a 16-byte tag nor x-opt-lock-token (SPEC 10.14.4)");
        }
        auto seq = detail::unsigned_annotation(in, annotation_sequence_number);
        if (!seq)
          return seq.error();
        out.sequence_number = seq->value_or(0);
        auto count = detail::unsigned_annotation(in, annotation_delivery_count);
        if (!count)
          return count.error();
        out.delivery_count = static_cast<std::uint32_t>(
            count->value_or(0) > 0xFFFFFFFFu ? 0xFFFFFFFFu : count->value_or(0));
        auto enqueued = detail::time_annotation(in, annotation_enqueued_time);
        if (!enqueued)
          return enqueued.error();
        out.enqueued_time_utc = *enqueued;
        return out;
      },
      "C2D delivery");
}

// ---------------------------------------------------------------------------
// 4. Feedback (SPEC 10.11.2) and its inverse for our service client
// ---------------------------------------------------------------------------

/// A feedback batch as the hub sends it on `/messages/serviceBound/feedback`:
/// content-type `application/vnd.microsoft.iothub.feedback.json`, one data
/// section holding the JSON array (codec/feedback_json.hpp), `user-id` (the
/// hub name, binary), annotation `iothub-enqueuedtime` (timestamp) and
/// `iothub-deliverycount` (ubyte, capped at 255), and the 16-byte tag of the
/// batch's lock token.
inline outgoing_delivery encode_feedback(const feedback_batch& batch) {
  outgoing_delivery out;
  out.message.content_type(std::string(feedback_content_type));
  out.message.user(batch.user_id);
  detail::set_data_body(out.message, encode_feedback_json(batch.records));
  detail::put_annotation(out.message, annotation_enqueued_time,
                         proton::value(detail::to_timestamp(batch.enqueued_time_utc)));
  const auto count =
      static_cast<std::uint8_t>(batch.delivery_count > 255 ? 255 : batch.delivery_count);
  detail::put_annotation(out.message, annotation_delivery_count, proton::value(count));
  out.tag = delivery_tag(batch.lock_token);
  return out;
}

/// A feedback batch as our service client receives it (inverse of
/// `encode_feedback`). Errors (`argument_invalid`): another content type
/// (compared case-insensitively, as C#), a body that is not data sections or
/// not a feedback JSON array, no `iothub-enqueuedtime` timestamp, a tag that
/// is not 16 bytes.
inline result<feedback_batch> decode_feedback(const proton::message& in, const proton::binary& tag,
                                              std::span<const char> encoded = {}) {
  return detail::guard_proton(
      [&]() -> result<feedback_batch> {
        if (!detail::iequals(in.content_type(), feedback_content_type))
          return make_error(errc::argument_invalid,
                            "feedback content-type is " +
                                detail::quote_for_message(in.content_type()) + "; expected " +
                                std::string(feedback_content_type) + " (SPEC 10.11.2)");
        auto body = detail::decode_body(in, encoded);
        if (!body)
          return body.error();
        auto records = decode_feedback_json(*body);
        if (!records)
          return make_error(errc::argument_invalid, "feedback body: " + records.error().message);
        auto enqueued = detail::time_annotation(in, annotation_enqueued_time);
        if (!enqueued)
          return enqueued.error();
        if (!*enqueued)
          return make_error(errc::argument_invalid,
                            "feedback has no iothub-enqueuedtime annotation (SPEC 10.11.2)");
        auto token = lock_token_from_delivery_tag(tag);
        if (!token)
          return token.error();
        auto count = detail::unsigned_annotation(in, annotation_delivery_count);
        if (!count)
          return count.error();
        feedback_batch out;
        out.records = std::move(*records);
        out.enqueued_time_utc = **enqueued;
        out.user_id = in.user();
        out.lock_token = *token;
        out.delivery_count = static_cast<std::uint32_t>(
            count->value_or(0) > 0xFFFFFFFFu ? 0xFFFFFFFFu : count->value_or(0));
        return out;
      },
      "feedback message");
}

// ---------------------------------------------------------------------------
// 5. Errors as Proton conditions (tables in amqp_errors.hpp)
// ---------------------------------------------------------------------------

/// The condition for a `rejected` outcome or a link/connection close:
/// `error.condition` from the table, `error.description` = the error's
/// message (the table's default when empty).
inline proton::error_condition to_error_condition(const error& e) {
  return proton::error_condition(
      std::string(condition(e.code)),
      e.message.empty() ? std::string(default_description(e.code)) : e.message);
}

/// An `error` from a received condition (unknown conditions → `server_error`).
inline error from_error_condition(const proton::error_condition& c) {
  return error_from_condition(c.name(), c.description());
}

}  // namespace devicebound::codec::amqp
