/// \file iso8601.hpp
/// ISO-8601 UTC timestamps as IoT Hub writes them (`$.exp`, `enqueuedTimeUtc`; SPEC 4.5, 5.9).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../errors.hpp"
#include "../message.hpp"

namespace devicebound::codec {

namespace detail {

/// Renders untrusted input for an error message: at most 64 bytes, quoted, with
/// bytes outside printable ASCII (and `'`, `\`) written as `\xNN`, so a message
/// is always valid UTF-8 whatever the input was.
inline std::string quote_for_message(std::string_view s) {
  static constexpr std::size_t max_shown = 64;
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < max_shown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7F || c == '\'' || c == '\\') {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xF];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '\'';
  if (s.size() > max_shown)
    out += "...";
  return out;
}

/// Appends `v` as exactly `width` decimal digits (v must fit).
inline void append_digits(std::string& out, unsigned v, int width) {
  char buf[8];
  for (int i = width - 1; i >= 0; --i) {
    buf[i] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
  out.append(buf, static_cast<std::size_t>(width));
}

/// The instants the text form can express: 0001-01-01T00:00:00.000Z through
/// 9999-12-31T23:59:59.999Z (the range of .NET `DateTime`, which the service uses).
inline constexpr time_point iso8601_min =
    time_point{std::chrono::sys_days{std::chrono::year{1} / 1 / 1}};
inline constexpr time_point iso8601_max =
    time_point{std::chrono::sys_days{std::chrono::year{10000} / 1 / 1}} - duration{1};

}  // namespace detail

/// `YYYY-MM-DDThh:mm:ss.mmmZ` in UTC with exactly three fraction digits
/// (`2015-07-28T16:24:48.789Z`). Instants outside years 0001..9999 are clamped
/// to that range (as .NET clamps to `DateTime.MinValue`/`MaxValue`), so
/// `time_point::max()` used as "never" still yields text every SDK can parse.
inline std::string format_iso8601(time_point tp) {
  using namespace std::chrono;
  if (tp < detail::iso8601_min)
    tp = detail::iso8601_min;
  if (tp > detail::iso8601_max)
    tp = detail::iso8601_max;
  const auto day = floor<days>(tp);
  const year_month_day ymd{day};
  const hh_mm_ss<duration> tod{tp - day};

  std::string out;
  out.reserve(24);
  detail::append_digits(out, static_cast<unsigned>(static_cast<int>(ymd.year())), 4);
  out += '-';
  detail::append_digits(out, static_cast<unsigned>(ymd.month()), 2);
  out += '-';
  detail::append_digits(out, static_cast<unsigned>(ymd.day()), 2);
  out += 'T';
  detail::append_digits(out, static_cast<unsigned>(tod.hours().count()), 2);
  out += ':';
  detail::append_digits(out, static_cast<unsigned>(tod.minutes().count()), 2);
  out += ':';
  detail::append_digits(out, static_cast<unsigned>(tod.seconds().count()), 2);
  out += '.';
  detail::append_digits(out, static_cast<unsigned>(tod.subseconds().count()), 3);
  out += 'Z';
  return out;
}

/// Parses an ISO-8601 / RFC 3339 date-time as IoT Hub and the SDKs write it:
/// `YYYY-MM-DDThh:mm:ss[.f...](Z|+hh:mm|-hh:mm)`.
///
/// - Any number of fraction digits (0 means no `.`; .NET writes 7); digits
///   beyond milliseconds are truncated, not rounded.
/// - Lowercase `t` and `z` are accepted, as RFC 3339 section 5.6 allows.
/// - Rejected with `errc::malformed`: a missing time, zone or seconds field,
///   a space for `T`, `+hhmm` without the colon, leap second `60`, hour `24`,
///   dates that do not exist (2023-02-29), year 0000, and any instant that
///   falls outside 0001..9999 once the offset is applied (as .NET rejects it).
inline result<time_point> parse_iso8601(std::string_view s) {
  using namespace std::chrono;
  std::size_t pos = 0;

  auto fail = [&](const std::string& problem) -> result<time_point> {
    return make_error(errc::malformed,
                      "ISO-8601 time " + detail::quote_for_message(s) + ": " + problem);
  };
  auto at = [&](std::size_t i) {
    return "at position " + std::to_string(i);
  };
  // Reads exactly n ASCII digits at pos; false (pos unchanged) if not there.
  auto digits = [&](int n, int& value) {
    if (s.size() - pos < static_cast<std::size_t>(n))
      return false;
    int v = 0;
    for (int i = 0; i < n; ++i) {
      const char c = s[pos + static_cast<std::size_t>(i)];
      if (c < '0' || c > '9')
        return false;
      v = v * 10 + (c - '0');
    }
    value = v;
    pos += static_cast<std::size_t>(n);
    return true;
  };
  // Consumes one character at pos if it is one of `accepted`.
  auto literal = [&](std::string_view accepted) {
    if (pos < s.size() && accepted.find(s[pos]) != std::string_view::npos) {
      ++pos;
      return true;
    }
    return false;
  };
  auto two = [](int v) {
    std::string t;
    detail::append_digits(t, static_cast<unsigned>(v), 2);
    return t;
  };

  if (s.empty())
    return fail("is empty");

  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  if (!digits(4, y))
    return fail("expected a 4-digit year " + at(pos));
  if (!literal("-"))
    return fail("expected '-' after the year " + at(pos));
  if (!digits(2, mo))
    return fail("expected a 2-digit month " + at(pos));
  if (!literal("-"))
    return fail("expected '-' after the month " + at(pos));
  if (!digits(2, d))
    return fail("expected a 2-digit day " + at(pos));
  if (!literal("Tt"))
    return fail("expected 'T' between date and time " + at(pos));
  if (!digits(2, h))
    return fail("expected a 2-digit hour " + at(pos));
  if (!literal(":"))
    return fail("expected ':' after the hour " + at(pos));
  if (!digits(2, mi))
    return fail("expected a 2-digit minute " + at(pos));
  if (!literal(":"))
    return fail("expected ':' after the minute " + at(pos));
  if (!digits(2, sec))
    return fail("expected a 2-digit second " + at(pos));

  int ms = 0;
  if (literal(".")) {
    const std::size_t first = pos;
    int scale = 100;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      ms += (s[pos] - '0') * scale;  // beyond the third digit scale is 0: truncation
      scale /= 10;
      ++pos;
    }
    if (pos == first)
      return fail("expected a digit after '.' " + at(pos));
  }

  int offset_minutes = 0;
  if (literal("Zz")) {
    // UTC
  } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
    const int sign = s[pos] == '-' ? -1 : 1;
    ++pos;
    int oh = 0, om = 0;
    if (!digits(2, oh))
      return fail("expected a 2-digit offset hour " + at(pos));
    if (!literal(":"))
      return fail("expected ':' in the offset " + at(pos));
    if (!digits(2, om))
      return fail("expected 2-digit offset minutes " + at(pos));
    if (oh > 23)
      return fail("offset hour " + two(oh) + " is out of range 00..23");
    if (om > 59)
      return fail("offset minutes " + two(om) + " are out of range 00..59");
    offset_minutes = sign * (oh * 60 + om);
  } else {
    return fail("expected 'Z' or a +hh:mm/-hh:mm offset " + at(pos));
  }
  if (pos != s.size())
    return fail("unexpected trailing characters " + at(pos));

  if (y < 1)
    return fail("year 0000 is out of range 0001..9999");
  if (mo < 1 || mo > 12)
    return fail("month " + two(mo) + " is out of range 01..12");
  const year_month_day ymd{year{y}, month{static_cast<unsigned>(mo)},
                           day{static_cast<unsigned>(d)}};
  if (!ymd.ok()) {
    std::string ym;
    detail::append_digits(ym, static_cast<unsigned>(y), 4);
    ym += '-';
    detail::append_digits(ym, static_cast<unsigned>(mo), 2);
    return fail("day " + two(d) + " does not exist in " + ym);
  }
  if (h > 23)
    return fail("hour " + two(h) + " is out of range 00..23");
  if (mi > 59)
    return fail("minute " + two(mi) + " is out of range 00..59");
  if (sec > 59)
    return fail("second " + two(sec) + " is out of range 00..59 (no leap seconds)");

  const time_point tp = time_point{sys_days{ymd}} + hours{h} + minutes{mi} + seconds{sec} +
                        milliseconds{ms} - minutes{offset_minutes};
  if (tp < detail::iso8601_min)
    return fail("is before 0001-01-01T00:00:00Z in UTC");
  if (tp > detail::iso8601_max)
    return fail("is after 9999-12-31T23:59:59.999Z in UTC");
  return tp;
}

}  // namespace devicebound::codec
