// ISO-8601 text of `$.exp` (SPEC 5.8, 5.9) and `enqueuedTimeUtc` (SPEC 4.5).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <chrono>
#include <cstdint>
#include <devicebound/codec/iso8601.hpp>
#include <string>
#include <string_view>

namespace {

using devicebound::duration;
using devicebound::errc;
using devicebound::time_point;
using devicebound::codec::format_iso8601;
using devicebound::codec::parse_iso8601;
using std::chrono::days;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using std::chrono::sys_days;
using std::chrono::year;
using std::chrono::year_month_day;

constexpr time_point at(year_month_day ymd, hours h = hours{0}, minutes m = minutes{0},
                        seconds s = seconds{0}, milliseconds ms = milliseconds{0}) {
  return time_point{sys_days{ymd}} + h + m + s + ms;
}

constexpr time_point first_instant = at(year{1} / 1 / 1);
constexpr time_point last_instant =
    at(year{9999} / 12 / 31, hours{23}, minutes{59}, seconds{59}, milliseconds{999});

// Parses `text`, expects errc::malformed and `fragment` in the message.
void expect_malformed(std::string_view text, std::string_view fragment) {
  const auto r = parse_iso8601(text);
  ASSERT_FALSE(r.has_value()) << "accepted: " << text;
  EXPECT_EQ(r.code(), errc::malformed) << text;
  EXPECT_NE(r.error().message.find(fragment), std::string::npos)
      << "message for '" << text << "' was: " << r.error().message;
}

}  // namespace

TEST(Spec_5_9, ExpIsFormattedAsUtcWithThreeFractionDigits) {
  EXPECT_EQ(
      format_iso8601(at(year{2017} / 1 / 6, hours{23}, minutes{37}, seconds{0}, milliseconds{669})),
      "2017-01-06T23:37:00.669Z");
  EXPECT_EQ(format_iso8601(
                at(year{2015} / 7 / 28, hours{16}, minutes{24}, seconds{48}, milliseconds{789})),
            "2015-07-28T16:24:48.789Z");
  EXPECT_EQ(format_iso8601(time_point{}), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_iso8601(time_point{} - milliseconds{1}), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(format_iso8601(first_instant), "0001-01-01T00:00:00.000Z");
  EXPECT_EQ(format_iso8601(last_instant), "9999-12-31T23:59:59.999Z");
  EXPECT_EQ(format_iso8601(at(year{2024} / 2 / 29, hours{12})), "2024-02-29T12:00:00.000Z");
}

TEST(Spec_5_9, ExpFormatClampsToYears1To9999) {
  EXPECT_EQ(format_iso8601(time_point::max()), "9999-12-31T23:59:59.999Z");
  EXPECT_EQ(format_iso8601(time_point::min()), "0001-01-01T00:00:00.000Z");
  EXPECT_EQ(format_iso8601(last_instant + milliseconds{1}), "9999-12-31T23:59:59.999Z");
  EXPECT_EQ(format_iso8601(first_instant - milliseconds{1}), "0001-01-01T00:00:00.000Z");
}

TEST(Spec_5_9, ExpParsesTheDocumentedExample) {
  EXPECT_EQ(*parse_iso8601("2017-01-06T23:37:00.669Z"),
            at(year{2017} / 1 / 6, hours{23}, minutes{37}, seconds{0}, milliseconds{669}));
}

TEST(Spec_5_8, ExpParsesSevenFractionDigitsFromThePythonFixture) {
  EXPECT_EQ(*parse_iso8601("3237-07-19T23:06:40.0000000Z"),
            at(year{3237} / 7 / 19, hours{23}, minutes{6}, seconds{40}));
}

TEST(Spec_5_9, ExpFractionDigitsBeyondMillisecondsAreTruncated) {
  const time_point base = at(year{2015} / 7 / 28, hours{16}, minutes{24}, seconds{48});
  EXPECT_EQ(*parse_iso8601("2015-07-28T16:24:48Z"), base);
  EXPECT_EQ(*parse_iso8601("2015-07-28T16:24:48.7Z"), base + milliseconds{700});
  EXPECT_EQ(*parse_iso8601("2015-07-28T16:24:48.78Z"), base + milliseconds{780});
  EXPECT_EQ(*parse_iso8601("2015-07-28T16:24:48.789Z"), base + milliseconds{789});
  EXPECT_EQ(*parse_iso8601("2015-07-28T16:24:48.7899999Z"), base + milliseconds{789});
  EXPECT_EQ(*parse_iso8601("2015-07-28T16:24:48.999999999999999999999Z"), base + milliseconds{999});
}

TEST(Spec_5_9, ExpOffsetsAreConvertedToUtc) {
  const time_point utc = at(year{2017} / 1 / 6, hours{23}, minutes{37});
  EXPECT_EQ(*parse_iso8601("2017-01-07T00:37:00+01:00"), utc);
  EXPECT_EQ(*parse_iso8601("2017-01-06T18:07:00.000-05:30"), utc);
  EXPECT_EQ(*parse_iso8601("2017-01-06T23:37:00+00:00"), utc);
  EXPECT_EQ(*parse_iso8601("2017-01-06T23:37:00-00:00"), utc);
  EXPECT_EQ(*parse_iso8601("2017-01-07T13:22:00.0000000+13:45"), utc);
  // Crossing a year and a leap day.
  EXPECT_EQ(*parse_iso8601("2024-02-28T23:30:00-01:00"),
            at(year{2024} / 2 / 29, hours{0}, minutes{30}));
}

TEST(Spec_5_9, ExpAcceptsLowercaseSeparatorsAsRfc3339Allows) {
  EXPECT_EQ(*parse_iso8601("2017-01-06t23:37:00.669z"), *parse_iso8601("2017-01-06T23:37:00.669Z"));
}

TEST(Spec_5_9, ExpLeapDaysFollowTheGregorianCalendar) {
  EXPECT_EQ(*parse_iso8601("2024-02-29T00:00:00Z"), at(year{2024} / 2 / 29));
  EXPECT_EQ(*parse_iso8601("2000-02-29T00:00:00Z"), at(year{2000} / 2 / 29));
  EXPECT_EQ(*parse_iso8601("0004-02-29T00:00:00Z"), at(year{4} / 2 / 29));
  expect_malformed("2023-02-29T00:00:00Z", "day 29 does not exist in 2023-02");
  expect_malformed("1900-02-29T00:00:00Z", "day 29 does not exist in 1900-02");
  expect_malformed("2100-02-29T00:00:00Z", "day 29 does not exist in 2100-02");
  expect_malformed("2024-02-30T00:00:00Z", "day 30 does not exist in 2024-02");
  expect_malformed("2024-04-31T00:00:00Z", "day 31 does not exist in 2024-04");
  expect_malformed("2024-01-00T00:00:00Z", "day 00 does not exist in 2024-01");
}

TEST(Spec_5_9, ExpRejectsMalformedText) {
  expect_malformed("", "is empty");
  expect_malformed("2017", "expected '-' after the year at position 4");
  expect_malformed("17-01-06T23:37:00Z", "4-digit year at position 0");
  expect_malformed("2017-1-06T23:37:00Z", "2-digit month at position 5");
  expect_malformed("2017-01-06", "expected 'T' between date and time at position 10");
  expect_malformed("2017-01-06 23:37:00Z", "expected 'T' between date and time at position 10");
  expect_malformed("2017-01-06T23:37Z", "expected ':' after the minute at position 16");
  expect_malformed("2017-01-06T23:37:00", "expected 'Z' or a +hh:mm/-hh:mm offset at position 19");
  expect_malformed("2017-01-06T23:37:00.Z", "expected a digit after '.' at position 20");
  expect_malformed("2017-01-06T23:37:00.669", "offset at position 23");
  expect_malformed("2017-01-06T23:37:00+0100", "expected ':' in the offset at position 22");
  expect_malformed("2017-01-06T23:37:00+01", "expected ':' in the offset at position 22");
  expect_malformed("2017-01-06T23:37:00ZZ", "unexpected trailing characters at position 20");
  expect_malformed("2017-01-06T23:37:00Z ", "unexpected trailing characters at position 20");
  expect_malformed(" 2017-01-06T23:37:00Z", "4-digit year at position 0");
  expect_malformed("+2017-01-06T23:37:00Z", "4-digit year at position 0");
  expect_malformed("12017-01-06T23:37:00Z", "expected '-' after the year at position 4");
  expect_malformed("2017-13-06T23:37:00Z", "month 13 is out of range 01..12");
  expect_malformed("2017-00-06T23:37:00Z", "month 00 is out of range 01..12");
  expect_malformed("2017-01-06T24:00:00Z", "hour 24 is out of range 00..23");
  expect_malformed("2017-01-06T23:60:00Z", "minute 60 is out of range 00..59");
  expect_malformed("2016-12-31T23:59:60Z", "second 60 is out of range 00..59");
  expect_malformed("2017-01-06T23:37:00+24:00", "offset hour 24 is out of range 00..23");
  expect_malformed("2017-01-06T23:37:00+01:60", "offset minutes 60 are out of range 00..59");
  expect_malformed("0000-01-01T00:00:00Z", "year 0000 is out of range 0001..9999");
  expect_malformed(std::string_view("2017-01-06T23:37:00\0Z", 21),
                   "expected 'Z' or a +hh:mm/-hh:mm offset at position 19");
}

TEST(Spec_5_9, ExpRejectsInstantsOutsideYears1To9999AfterTheOffset) {
  expect_malformed("0001-01-01T00:00:00+00:01", "is before 0001-01-01T00:00:00Z in UTC");
  expect_malformed("9999-12-31T23:59:59.999-00:01", "is after 9999-12-31T23:59:59.999Z in UTC");
  EXPECT_EQ(*parse_iso8601("0001-01-01T00:00:00-00:01"), first_instant + minutes{1});
  EXPECT_EQ(*parse_iso8601("9999-12-31T23:59:59.999+00:01"), last_instant - minutes{1});
}

TEST(Spec_5_9, ExpErrorMessageQuotesInputSafely) {
  const auto r = parse_iso8601("\xff\xfe'\\");
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("'\\xFF\\xFE\\x27\\x5C'"), std::string::npos)
      << r.error().message;
  const auto long_input = std::string(1000, '9');
  const auto r2 = parse_iso8601(long_input);
  ASSERT_FALSE(r2.has_value());
  EXPECT_LT(r2.error().message.size(), 200u);
}

RC_GTEST_PROP(Spec_5_9, ExpRoundTripsEveryMillisecondOfYears1To9999, ()) {
  const auto ms = *rc::gen::inRange<std::int64_t>(first_instant.time_since_epoch().count(),
                                                  last_instant.time_since_epoch().count() + 1);
  const time_point tp{duration{ms}};
  const std::string text = format_iso8601(tp);
  RC_ASSERT(text.size() == 24u);
  RC_ASSERT(text[4] == '-' && text[7] == '-' && text[10] == 'T' && text[13] == ':' &&
            text[16] == ':' && text[19] == '.' && text[23] == 'Z');
  const auto back = parse_iso8601(text);
  RC_ASSERT(back.has_value());
  RC_ASSERT(*back == tp);
}

RC_GTEST_PROP(Spec_5_9, ExpWithAnyOffsetDenotesTheSameUtcInstant, ()) {
  // Keep one day away from the range ends so every offset stays in range.
  const auto ms =
      *rc::gen::inRange<std::int64_t>((first_instant + days{1}).time_since_epoch().count(),
                                      (last_instant - days{1}).time_since_epoch().count());
  const time_point utc{duration{ms}};
  const int offset = *rc::gen::inRange(-(23 * 60 + 59), 23 * 60 + 60);
  // Local text = UTC text of (utc + offset) with the offset suffix instead of Z.
  std::string local = format_iso8601(utc + minutes{offset});
  local.pop_back();
  const int a = offset < 0 ? -offset : offset;
  local += offset < 0 ? '-' : '+';
  local += static_cast<char>('0' + a / 60 / 10);
  local += static_cast<char>('0' + a / 60 % 10);
  local += ':';
  local += static_cast<char>('0' + a % 60 / 10);
  local += static_cast<char>('0' + a % 60 % 10);
  const auto parsed = parse_iso8601(local);
  RC_ASSERT(parsed.has_value());
  RC_ASSERT(*parsed == utc);
}

RC_GTEST_PROP(Spec_5_9, ExpParseIsTotalAndAcceptedTextIsStable, ()) {
  // Text over the format's own alphabet reaches deep into the parser.
  const auto text = *rc::gen::container<std::string>(
      rc::gen::element('0', '1', '2', '9', '-', ':', 'T', '.', 'Z', '+', 'z', 't'));
  const auto r = parse_iso8601(text);
  if (r.has_value()) {
    const auto again = parse_iso8601(format_iso8601(*r));
    RC_ASSERT(again.has_value());
    RC_ASSERT(*again == *r);
  } else {
    RC_ASSERT(r.code() == errc::malformed);
    RC_ASSERT(!r.error().message.empty());
  }
}
