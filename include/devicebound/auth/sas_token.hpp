/// \file sas_token.hpp
/// The text of an IoT Hub SAS token (SPEC 5.1, 12.6, 12.7.1):
/// `SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<policy>]`.
/// Parsing and printing only; signing is in signature.hpp, checking in
/// authenticate.hpp. No OpenSSL needed here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../errors.hpp"
#include "base64.hpp"
#include "rights.hpp"
#include "url.hpp"

namespace devicebound::auth {

/// The literal that starts every token, followed by one space (SPEC 12.7.1).
inline constexpr std::string_view sas_token_prefix = "SharedAccessSignature";

/// Longest token text accepted (a device token is about 200 bytes; an HTTP
/// header or a CBS body should not make the parser allocate more).
inline constexpr std::size_t max_sas_token_length = 4096;

/// A parsed SAS token.
struct sas_token {
  /// `sr` exactly as received, still URL-encoded: the signature covers these
  /// bytes, and the SDKs differ in how they encode them (SPEC 12.6.3, 12.7.1).
  std::string resource;
  /// `sig`, URL-decoded: base64 of the 32-byte HMAC-SHA256.
  std::string signature;
  /// `se`: seconds since 1970-01-01T00:00:00Z.
  std::uint64_t expiry = 0;
  /// `skn`, URL-decoded: the policy whose key signed the token; absent for a
  /// token signed with a device's own key (SPEC 12.6.1).
  std::optional<std::string> key_name;

  friend bool operator==(const sas_token&, const sas_token&) = default;
};

namespace detail {

inline error token_error(std::string what) {
  return make_error(errc::malformed, "SAS token: " + std::move(what));
}

/// Decimal `se`: digits only, no sign, no leading zero, fits 64 bits.
inline result<std::uint64_t> parse_expiry(std::string_view text) {
  if (text.size() > 1 && text[0] == '0')
    return token_error("se " + printable(text) + " has a leading zero");
  std::uint64_t v = 0;
  for (const char c : text) {
    if (c < '0' || c > '9')
      return token_error("se " + printable(text) + " is not a decimal number of seconds");
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10)
      return token_error("se " + printable(text) + " is too large");
    v = v * 10 + d;
  }
  return v;
}

/// Bytes a token field may hold as received: printable ASCII without space.
constexpr bool is_token_char(char c) noexcept {
  return c > 0x20 && c < 0x7F;
}

}  // namespace detail

/// The length of `to_string(t)` (`sr` as stored, `sig` and `skn` URL-encoded).
inline std::size_t printed_length(const sas_token& t) {
  std::size_t n = sas_token_prefix.size() + 4 + t.resource.size() + 5 +
                  url_encode(t.signature).size() + 4 + std::to_string(t.expiry).size();
  if (t.key_name)
    n += 5 + url_encode(*t.key_name).size();
  return n;
}

/// Parses a token (SPEC 12.7.1): the literal prefix `SharedAccessSignature`
/// and one space, then `&`-separated fields, each split at its first `=`.
/// Field names are case-insensitive and their order is free (Node writes
/// `sr, sig, skn, se`; the others `sr, sig, se, skn`: SPEC 12.6.2). `sr` is
/// kept as received; `sig` and `skn` are URL-decoded. Errors
/// (`errc::malformed`) name the problem: wrong prefix, an empty or unknown
/// field, a field twice, a missing `sr`/`sig`/`se`, an empty value, a bad
/// escape, a signature that is not base64, an `se` that is not a number.
inline result<sas_token> parse_sas_token(std::string_view text) {
  if (text.size() > max_sas_token_length)
    return detail::token_error("longer than " + std::to_string(max_sas_token_length) + " bytes");
  if (!text.starts_with(sas_token_prefix) || text.size() == sas_token_prefix.size() ||
      text[sas_token_prefix.size()] != ' ')
    return detail::token_error("does not start with 'SharedAccessSignature ' (got " +
                               detail::printable(text) + ")");
  const std::string_view fields = text.substr(sas_token_prefix.size() + 1);
  if (fields.empty())
    return detail::token_error("has no fields after 'SharedAccessSignature '");
  std::optional<std::string_view> sr, sig, se, skn;
  std::size_t start = 0;
  while (true) {
    const std::size_t amp = fields.find('&', start);
    const std::string_view field =
        fields.substr(start, amp == std::string_view::npos ? std::string_view::npos : amp - start);
    if (field.empty())
      return detail::token_error("has an empty field at offset " + std::to_string(start) +
                                 " (a stray '&')");
    for (std::size_t i = 0; i < field.size(); ++i)
      if (!detail::is_token_char(field[i]))
        return detail::token_error("field " + detail::printable(field) +
                                   " holds a space or a byte that is not printable ASCII");
    const std::size_t eq = field.find('=');
    if (eq == std::string_view::npos)
      return detail::token_error("field " + detail::printable(field) + " has no '='");
    const std::string_view name = field.substr(0, eq);
    const std::string_view value = field.substr(eq + 1);
    std::optional<std::string_view>* slot = nullptr;
    if (detail::iequals(name, "sr"))
      slot = &sr;
    else if (detail::iequals(name, "sig"))
      slot = &sig;
    else if (detail::iequals(name, "se"))
      slot = &se;
    else if (detail::iequals(name, "skn"))
      slot = &skn;
    else
      return detail::token_error("unknown field " + detail::printable(name) +
                                 " (expected sr, sig, se, skn)");
    if (*slot)
      return detail::token_error("field " + detail::printable(name) + " appears twice");
    if (value.empty())
      return detail::token_error("field " + detail::printable(name) + " is empty");
    *slot = value;
    if (amp == std::string_view::npos)
      break;
    start = amp + 1;
  }
  if (!sr)
    return detail::token_error("has no sr (the resource URI)");
  if (!sig)
    return detail::token_error("has no sig (the signature)");
  if (!se)
    return detail::token_error("has no se (the expiry)");

  sas_token out;
  out.resource = std::string(*sr);
  if (auto decoded = url_decode(*sr); !decoded)
    return detail::token_error("sr: " + decoded.error().message);
  auto signature = url_decode(*sig);
  if (!signature)
    return detail::token_error("sig: " + signature.error().message);
  if (signature->empty())
    return detail::token_error("sig is empty once decoded");
  if (auto bytes = base64_decode(*signature); !bytes)
    return detail::token_error("sig is not base64: " + bytes.error().message);
  out.signature = std::move(*signature);
  auto expiry = detail::parse_expiry(*se);
  if (!expiry)
    return expiry.error();
  out.expiry = *expiry;
  if (skn) {
    auto name = url_decode(*skn);
    if (!name)
      return detail::token_error("skn: " + name.error().message);
    if (name->empty())
      return detail::token_error("skn is empty once decoded");
    out.key_name = std::move(*name);
  }
  // `to_string` writes `sig` and `skn` URL-encoded, which may be longer than they came
  // (a raw `+` becomes `%2B`): a token whose printed form would pass the limit is refused
  // too, so every token this returns prints to a text this accepts.
  if (printed_length(out) > max_sas_token_length)
    return detail::token_error("longer than " + std::to_string(max_sas_token_length) +
                               " bytes once its sig and skn are URL-encoded");
  return out;
}

/// The token text, fields in the order C#, Python and Java write them
/// (`sr, sig, se, skn`); `sr` as stored, `sig` and `skn` URL-encoded.
/// `parse_sas_token(to_string(t)) == t` for every token `parse_sas_token` returns.
inline std::string to_string(const sas_token& t) {
  std::string out(sas_token_prefix);
  out += " sr=";
  out += t.resource;
  out += "&sig=";
  out += url_encode(t.signature);
  out += "&se=";
  out += std::to_string(t.expiry);
  if (t.key_name) {
    out += "&skn=";
    out += url_encode(*t.key_name);
  }
  return out;
}

}  // namespace devicebound::auth
