// The JSON body of a feedback message (SPEC 4.5).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <chrono>
#include <cstdint>
#include <devicebound/codec/feedback_json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace {

using devicebound::errc;
using devicebound::feedback_record;
using devicebound::feedback_status;
using devicebound::time_point;
using devicebound::codec::decode_feedback_json;
using devicebound::codec::encode_feedback_json;
using devicebound::codec::parse_iso8601;

// SPEC 4.5's example, on one line.
constexpr std::string_view spec_example =
    R"([{"originalMessageId":"0987654321","enqueuedTimeUtc":"2015-07-28T16:24:48.789Z",)"
    R"("statusCode":"Success","description":"Success","deviceId":"123",)"
    R"("deviceGenerationId":"abcdefghijklmnopqrstuvwxyz"}])";

constexpr feedback_status all_statuses[] = {feedback_status::success, feedback_status::expired,
                                            feedback_status::delivery_count_exceeded,
                                            feedback_status::rejected, feedback_status::purged};

feedback_record sample_record(feedback_status status = feedback_status::success) {
  feedback_record r;
  r.original_message_id = "0987654321";
  r.enqueued_time_utc = *parse_iso8601("2015-07-28T16:24:48.789Z");
  r.status_code = status;
  r.description = std::string(to_string(status));
  r.device_id = "123";
  r.device_generation_id = "abcdefghijklmnopqrstuvwxyz";
  return r;
}

// One record object with `fields` (already JSON text) spliced in.
std::string one_record(std::string_view fields) {
  return "[{" + std::string(fields) + "}]";
}

constexpr std::string_view valid_fields =
    R"("originalMessageId":"m","enqueuedTimeUtc":"2015-07-28T16:24:48.789Z",)"
    R"("statusCode":"Success","description":"Success","deviceId":"d","deviceGenerationId":"g")";

void expect_malformed(std::string_view body, const std::string& fragment) {
  const auto r = decode_feedback_json(body);
  ASSERT_FALSE(r.has_value()) << "accepted: " << body;
  EXPECT_EQ(r.code(), errc::malformed) << body;
  EXPECT_NE(r.error().message.find(fragment), std::string::npos)
      << "message for " << body << " was: " << r.error().message;
}

// Valid UTF-8 of arbitrary scalar values (no surrogates), weighted to ASCII.
rc::Gen<std::string> utf8_string() {
  return rc::gen::map(
      rc::gen::container<std::vector<std::uint32_t>>(rc::gen::oneOf(
          rc::gen::inRange<std::uint32_t>(0, 0x80), rc::gen::inRange<std::uint32_t>(0x80, 0xD800),
          rc::gen::inRange<std::uint32_t>(0xE000, 0x110000))),
      [](const std::vector<std::uint32_t>& cps) {
        std::string s;
        for (const std::uint32_t c : cps) {
          if (c < 0x80) {
            s += static_cast<char>(c);
          } else if (c < 0x800) {
            s += static_cast<char>(0xC0 | c >> 6);
            s += static_cast<char>(0x80 | (c & 0x3F));
          } else if (c < 0x10000) {
            s += static_cast<char>(0xE0 | c >> 12);
            s += static_cast<char>(0x80 | (c >> 6 & 0x3F));
            s += static_cast<char>(0x80 | (c & 0x3F));
          } else {
            s += static_cast<char>(0xF0 | c >> 18);
            s += static_cast<char>(0x80 | (c >> 12 & 0x3F));
            s += static_cast<char>(0x80 | (c >> 6 & 0x3F));
            s += static_cast<char>(0x80 | (c & 0x3F));
          }
        }
        return s;
      });
}

rc::Gen<feedback_record> any_record() {
  using std::chrono::days;
  using std::chrono::sys_days;
  using std::chrono::year;
  const auto lo = time_point{sys_days{year{1} / 1 / 1}}.time_since_epoch().count();
  const auto hi = time_point{sys_days{year{10000} / 1 / 1}}.time_since_epoch().count();
  return rc::gen::apply(
      [](std::string mid, std::int64_t ms, feedback_status status, std::string description,
         std::string device, std::string generation) {
        feedback_record r;
        r.original_message_id = std::move(mid);
        r.enqueued_time_utc = time_point{devicebound::duration{ms}};
        r.status_code = status;
        r.description = std::move(description);
        r.device_id = std::move(device);
        r.device_generation_id = std::move(generation);
        return r;
      },
      utf8_string(), rc::gen::inRange<std::int64_t>(lo, hi),
      rc::gen::element(feedback_status::success, feedback_status::expired,
                       feedback_status::delivery_count_exceeded, feedback_status::rejected,
                       feedback_status::purged),
      utf8_string(), utf8_string(), utf8_string());
}

}  // namespace

TEST(Spec_4_5, FeedbackBodyExampleDecodesAndReencodesByteExact) {
  const auto records = decode_feedback_json(spec_example);
  ASSERT_TRUE(records.has_value()) << records.error().message;
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ(records->front(), sample_record());
  EXPECT_EQ(encode_feedback_json(*records), spec_example);
}

TEST(Spec_4_5, FeedbackBodyFieldNamesAndOrder) {
  feedback_record r = sample_record(feedback_status::rejected);
  r.original_message_id = "mid-1";
  r.device_id = "dev";
  r.device_generation_id = "637";
  EXPECT_EQ(encode_feedback_json({r}),
            R"([{"originalMessageId":"mid-1","enqueuedTimeUtc":"2015-07-28T16:24:48.789Z",)"
            R"("statusCode":"Rejected","description":"Rejected","deviceId":"dev",)"
            R"("deviceGenerationId":"637"}])");
}

TEST(Spec_4_5, FeedbackBodyIsAnArrayOfRecords) {
  EXPECT_EQ(encode_feedback_json({}), "[]");
  const auto empty = decode_feedback_json("[]");
  ASSERT_TRUE(empty.has_value());
  EXPECT_TRUE(empty->empty());

  const std::vector<feedback_record> two = {sample_record(feedback_status::success),
                                            sample_record(feedback_status::expired)};
  const std::string text = encode_feedback_json(two);
  EXPECT_EQ(text.front(), '[');
  EXPECT_NE(text.find("},{"), std::string::npos);
  EXPECT_EQ(*decode_feedback_json(text), two);
}

TEST(Spec_4_5, FeedbackEveryStatusCodeIsWrittenAsItsName) {
  const std::pair<feedback_status, std::string_view> names[] = {
      {feedback_status::success, "Success"},
      {feedback_status::expired, "Expired"},
      {feedback_status::delivery_count_exceeded, "DeliveryCountExceeded"},
      {feedback_status::rejected, "Rejected"},
      {feedback_status::purged, "Purged"}};
  for (const auto& [status, name] : names) {
    const std::string text = encode_feedback_json({sample_record(status)});
    EXPECT_NE(text.find(R"("statusCode":")" + std::string(name) + R"(")"), std::string::npos)
        << text;
    // SPEC 4.5: description = statusCode text (what the C SDK compares).
    EXPECT_NE(text.find(R"("description":")" + std::string(name) + R"(")"), std::string::npos)
        << text;
    const auto back = decode_feedback_json(text);
    ASSERT_TRUE(back.has_value()) << back.error().message;
    EXPECT_EQ(back->at(0).status_code, status);
  }
}

TEST(Spec_4_5, FeedbackStatusCodeNumericValuesMatchCSharp) {
  EXPECT_EQ(static_cast<int>(feedback_status::success), 0);
  EXPECT_EQ(static_cast<int>(feedback_status::expired), 1);
  EXPECT_EQ(static_cast<int>(feedback_status::delivery_count_exceeded), 2);
  EXPECT_EQ(static_cast<int>(feedback_status::rejected), 3);
  EXPECT_EQ(static_cast<int>(feedback_status::purged), 4);
}

TEST(Spec_4_5, FeedbackUnknownStatusCodeIsRejected) {
  const std::string body = "[" + std::string(spec_example.substr(1, spec_example.size() - 2)) +
                           "," +
                           one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                                      R"("2015-07-28T16:24:48.789Z","statusCode":"Foo",)"
                                      R"("deviceId":"d","deviceGenerationId":"g")")
                               .substr(1);
  expect_malformed(body,
                   "record 1: statusCode 'Foo' is not one of Success, Expired, "
                   "DeliveryCountExceeded, Rejected, Purged");
  // The service writes the names with this casing; others are not accepted.
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                              R"("2015-07-28T16:24:48.789Z","statusCode":"success",)"
                              R"("deviceId":"d","deviceGenerationId":"g")"),
                   "record 0: statusCode 'success' is not one of");
}

TEST(Spec_4_5, FeedbackStatusCodeIsARequiredString) {
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                              R"("2015-07-28T16:24:48.789Z","statusCode":0,)"
                              R"("deviceId":"d","deviceGenerationId":"g")"),
                   "record 0: statusCode is a number, expected a string");
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                              R"("2015-07-28T16:24:48.789Z",)"
                              R"("deviceId":"d","deviceGenerationId":"g")"),
                   "record 0: statusCode is missing");
}

TEST(Spec_4_5, FeedbackMissingRequiredFieldIsNamed) {
  for (const std::string_view field :
       {"originalMessageId", "enqueuedTimeUtc", "statusCode", "deviceId", "deviceGenerationId"}) {
    // Drop `"field":"value",` (or the last `,"field":"value"`) from the valid record.
    std::string fields(valid_fields);
    const auto start = fields.find("\"" + std::string(field) + "\"");
    ASSERT_NE(start, std::string::npos);
    auto end = fields.find(",\"", start);
    if (end == std::string::npos) {
      fields.erase(fields.rfind(',', start));
    } else {
      fields.erase(start, end + 1 - start);
    }
    expect_malformed(one_record(fields), "record 0: " + std::string(field) + " is missing");
  }
}

TEST(Spec_4_5, FeedbackIllTypedFieldIsNamed) {
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                              R"("2015-07-28T16:24:48.789Z","statusCode":"Success",)"
                              R"("deviceId":123,"deviceGenerationId":"g")"),
                   "record 0: deviceId is a number, expected a string");
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                              R"("2015-07-28T16:24:48.789Z","statusCode":"Success",)"
                              R"("deviceId":"d","deviceGenerationId":null)"),
                   "record 0: deviceGenerationId is a null, expected a string");
  expect_malformed(one_record(R"("originalMessageId":["m"],"enqueuedTimeUtc":)"
                              R"("2015-07-28T16:24:48.789Z","statusCode":"Success",)"
                              R"("deviceId":"d","deviceGenerationId":"g")"),
                   "record 0: originalMessageId is a array, expected a string");
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":1438100688789,)"
                              R"("statusCode":"Success","deviceId":"d","deviceGenerationId":"g")"),
                   "record 0: enqueuedTimeUtc is a number, expected a string");
  expect_malformed(one_record(std::string(valid_fields) + R"(,"description":false)"),
                   "record 0: description is a boolean, expected a string");
}

TEST(Spec_4_5, FeedbackEnqueuedTimeMustBeIso8601) {
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                              R"("2023-02-29T00:00:00Z","statusCode":"Success",)"
                              R"("deviceId":"d","deviceGenerationId":"g")"),
                   "record 0: enqueuedTimeUtc: ISO-8601 time '2023-02-29T00:00:00Z': day 29 "
                   "does not exist in 2023-02");
  expect_malformed(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":"yesterday",)"
                              R"("statusCode":"Success","deviceId":"d","deviceGenerationId":"g")"),
                   "record 0: enqueuedTimeUtc: ISO-8601 time 'yesterday'");
  // .NET writes seven fraction digits; they are read and truncated to ms.
  const auto r = decode_feedback_json(
      one_record(R"("originalMessageId":"m","enqueuedTimeUtc":"2015-07-28T16:24:48.7891234Z",)"
                 R"("statusCode":"Success","deviceId":"d","deviceGenerationId":"g")"));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->at(0).enqueued_time_utc, sample_record().enqueued_time_utc);
}

TEST(Spec_4_5, FeedbackBodyMustBeAJsonArrayOfObjects) {
  expect_malformed("", "is not valid JSON at byte 1: unexpected end of input");
  expect_malformed("[", "is not valid JSON at byte 2: unexpected end of input");
  expect_malformed("[{}]x", "is not valid JSON at byte 5: invalid literal; expected end of input");
  expect_malformed("[/*c*/]", "is not valid JSON at byte 2: invalid literal");
  expect_malformed("[1,]", "is not valid JSON at byte 4: unexpected ']'");
  expect_malformed("[1e999]", "is not valid JSON at byte 6: number overflow");
  expect_malformed(std::string(spec_example.substr(1, spec_example.size() - 2)),
                   "is a JSON object, expected an array of records");
  expect_malformed("\"Success\"", "is a JSON string, expected an array of records");
  expect_malformed("null", "is a JSON null, expected an array of records");
  expect_malformed("[1]", "record 0: is a JSON number, expected an object");
  expect_malformed("[" + one_record(valid_fields) + "]",
                   "record 0: is a JSON array, expected an object");
  expect_malformed(one_record(valid_fields).insert(one_record(valid_fields).size() - 1, ",\"x\""),
                   "record 1: is a JSON string, expected an object");
}

TEST(Spec_4_5, FeedbackInvalidUtf8IsAnErrorNotAnException) {
  std::string body = one_record(valid_fields);
  body.replace(body.find("\"d\""), 3, "\"\xff\xfe\"");
  // nlohmann counts bytes read, so the offending byte's index + 1.
  expect_malformed(body, "is not valid JSON at byte " + std::to_string(body.find('\xff') + 1) +
                             ": invalid string: ill-formed UTF-8 byte");
  expect_malformed("[\"\xc3\"]", "ill-formed UTF-8 byte");
  expect_malformed("[\"\xed\xa0\x80\"]", "ill-formed UTF-8 byte");  // encoded surrogate
  expect_malformed("[\"\\ud800\"]", "surrogate U+D800..U+DBFF must be followed by");
  // The message never echoes the offending bytes.
  const auto r = decode_feedback_json(body);
  ASSERT_FALSE(r.has_value());
  for (const char c : r.error().message)
    EXPECT_TRUE(c >= 0x20 && c < 0x7F) << r.error().message;
}

TEST(Spec_4_5, FeedbackDescriptionDefaultsToTheStatusText) {
  for (const auto status : all_statuses) {
    const std::string status_field = R"("statusCode":")" + std::string(to_string(status)) + R"(",)";
    const std::string fields = R"("originalMessageId":"m","enqueuedTimeUtc":)"
                               R"("2015-07-28T16:24:48.789Z",)" +
                               status_field + R"("deviceId":"d","deviceGenerationId":"g")";
    const auto missing = decode_feedback_json(one_record(fields));
    ASSERT_TRUE(missing.has_value()) << missing.error().message;
    EXPECT_EQ(missing->at(0).description, to_string(status));
    const auto null = decode_feedback_json(one_record(fields + R"(,"description":null)"));
    ASSERT_TRUE(null.has_value()) << null.error().message;
    EXPECT_EQ(null->at(0).description, to_string(status));
  }
  // A description that is present is kept as written.
  const auto custom = decode_feedback_json(
      one_record(R"("originalMessageId":"m","enqueuedTimeUtc":"2015-07-28T16:24:48.789Z",)"
                 R"("statusCode":"Expired","description":"Message expired","deviceId":"d",)"
                 R"("deviceGenerationId":"g")"));
  ASSERT_TRUE(custom.has_value());
  EXPECT_EQ(custom->at(0).description, "Message expired");
}

TEST(Spec_4_6, FeedbackWithoutMessageIdReadsNullAsEmpty) {
  const auto r = decode_feedback_json(
      one_record(R"("originalMessageId":null,"enqueuedTimeUtc":"2015-07-28T16:24:48.789Z",)"
                 R"("statusCode":"Success","deviceId":"d","deviceGenerationId":"g")"));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->at(0).original_message_id, "");
  EXPECT_NE(encode_feedback_json(*r).find(R"("originalMessageId":"")"), std::string::npos);
}

TEST(Spec_4_5, FeedbackUnknownFieldsAndWhitespaceAreIgnored) {
  const auto r = decode_feedback_json(
      " [ {\n  \"extra\": {\"nested\": [1, 2]},\n  \"deviceGenerationId\": "
      "\"abcdefghijklmnopqrstuvwxyz\", \"deviceId\": \"123\", \"description\": \"Success\",\n"
      "  \"statusCode\": \"Success\", \"enqueuedTimeUtc\": \"2015-07-28T16:24:48.789Z\",\n"
      "  \"originalMessageId\": \"0987654321\", \"moduleId\": null } ]\n");
  ASSERT_TRUE(r.has_value()) << r.error().message;
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ(r->front(), sample_record());
  EXPECT_EQ(encode_feedback_json(*r), spec_example);
}

TEST(Spec_4_5, FeedbackStringsAreEscapedAndRoundTrip) {
  feedback_record r = sample_record();
  r.original_message_id = "quote\" backslash\\ slash/ tab\t nul" + std::string(1, '\0') + "end";
  r.device_id = "caf\xc3\xa9-\xf0\x9f\x98\x80";  // UTF-8 is written as-is, not \u-escaped
  const std::string text = encode_feedback_json({r});
  EXPECT_NE(text.find(R"("quote\" backslash\\ slash/ tab\t nul\u0000end")"), std::string::npos)
      << text;
  EXPECT_NE(text.find("\"caf\xc3\xa9-\xf0\x9f\x98\x80\""), std::string::npos) << text;
  EXPECT_EQ(*decode_feedback_json(text), std::vector<feedback_record>{r});
}

TEST(Spec_4_5, FeedbackEncodeReplacesInvalidUtf8InsteadOfThrowing) {
  feedback_record r = sample_record();
  r.device_id =
      "a\xff"
      "b";
  std::string text;
  ASSERT_NO_THROW(text = encode_feedback_json({r}));
  const auto back = decode_feedback_json(text);
  ASSERT_TRUE(back.has_value()) << back.error().message;
  EXPECT_EQ(back->at(0).device_id,
            "a\xef\xbf\xbd"
            "b");  // U+FFFD
}

TEST(Spec_4_3, FeedbackBatchOf64RecordsRoundTrips) {
  std::vector<feedback_record> batch;
  for (int i = 0; i < 64; ++i) {
    feedback_record r = sample_record(all_statuses[i % 5]);
    r.original_message_id = "m" + std::to_string(i);
    r.enqueued_time_utc += std::chrono::milliseconds{i * 1001};
    batch.push_back(r);
  }
  const auto back = decode_feedback_json(encode_feedback_json(batch));
  ASSERT_TRUE(back.has_value()) << back.error().message;
  EXPECT_EQ(*back, batch);
}

RC_GTEST_PROP(Spec_4_5, FeedbackBodyRoundTripsAnyRecords, ()) {
  const auto records = *rc::gen::container<std::vector<feedback_record>>(any_record());
  const std::string text = encode_feedback_json(records);
  const auto back = decode_feedback_json(text);
  RC_ASSERT(back.has_value());
  RC_ASSERT(*back == records);
  RC_ASSERT(encode_feedback_json(*back) == text);
}

RC_GTEST_PROP(Spec_4_5, FeedbackDecodeIsTotalOnArbitraryBytes, ()) {
  const auto bytes = *rc::gen::string<std::string>();
  const auto r = decode_feedback_json(bytes);  // must not throw
  if (!r.has_value())
    RC_ASSERT(r.code() == errc::malformed);
}

RC_GTEST_PROP(Spec_4_5, FeedbackDecodeOfCorruptedValidBodyNeverThrows, ()) {
  std::string text = encode_feedback_json(
      *rc::gen::container<std::vector<feedback_record>>(rc::gen::resize(5, any_record())));
  const auto edits = *rc::gen::container<std::vector<std::pair<std::size_t, char>>>(
      rc::gen::pair(rc::gen::arbitrary<std::size_t>(), rc::gen::arbitrary<char>()));
  for (const auto& [at, c] : edits)
    text[at % text.size()] = c;
  const auto r = decode_feedback_json(text);
  if (r.has_value()) {
    RC_ASSERT(decode_feedback_json(encode_feedback_json(*r)).has_value());
  } else {
    RC_ASSERT(r.code() == errc::malformed);
  }
}

// ---- the reader's edge cases (codec/feedback_json.hpp has its own reader; the
// expected messages are those nlohmann/json 3.11 gave, which the fuzz target
// fuzz/feedback_json_fuzz.cpp checks against it on every input) ----

namespace {

std::vector<feedback_record> decode_ok(std::string_view body) {
  const auto r = decode_feedback_json(body);
  EXPECT_TRUE(r.has_value()) << r.error().message;
  return r.has_value() ? *r : std::vector<feedback_record>{};
}

// The record of `valid_fields` with `extra` (already JSON text) after them.
std::string record_with(std::string_view extra) {
  return one_record(std::string(valid_fields) + std::string(extra));
}

}  // namespace

TEST(FeedbackJsonReader, ALeadingBomIsSkippedOnlyAtTheVeryStart) {
  EXPECT_EQ(decode_ok("\xEF\xBB\xBF" + std::string(spec_example)),
            std::vector<feedback_record>{sample_record()});
  EXPECT_TRUE(decode_ok("\xEF\xBB\xBF[]").empty());
  expect_malformed("\xEF\xBB[]",
                   "is not valid JSON at byte 3: invalid BOM; must be 0xEF 0xBB "
                   "0xBF if given");
  expect_malformed("\xEF", "is not valid JSON at byte 2: invalid BOM");
  expect_malformed(" \xEF\xBB\xBF[]", "is not valid JSON at byte 2: invalid literal");
  expect_malformed("\xEF\xBB\xBF\xEF\xBB\xBF[]", "is not valid JSON at byte 4: invalid literal");
}

TEST(FeedbackJsonReader, UnicodeEscapesAndSurrogatePairs) {
  const auto r = decode_ok(one_record(
      R"("originalMessageId":"\ud83d\ude00\uD834\uDD1E","enqueuedTimeUtc":)"
      R"("2015-07-28T16:24:48.789Z","statusCode":"Succ\u0065ss","deviceId":"\u00e9\u20ac\u0041",)"
      R"("deviceGenerationId":"a\u0000b\/\"\\\b\f\n\r\t")"));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].original_message_id, "\xF0\x9F\x98\x80\xF0\x9D\x84\x9E");
  EXPECT_EQ(r[0].status_code, feedback_status::success);
  EXPECT_EQ(r[0].device_id,
            "\xC3\xA9\xE2\x82\xAC"
            "A");
  EXPECT_EQ(r[0].device_generation_id, std::string("a\0b/\"\\\b\f\n\r\t", 11));
  // Keys are compared once unescaped.
  EXPECT_EQ(decode_ok(one_record(R"("originalMessageId":"m","enqueuedTimeUtc":)"
                                 R"("2015-07-28T16:24:48.789Z","statusCode":"Success",)"
                                 R"("\u0064eviceId":"d","deviceGenerationId":"g")"))
                .at(0)
                .device_id,
            "d");
}

TEST(FeedbackJsonReader, LoneSurrogatesAndBadEscapesAreMalformed) {
  expect_malformed(R"(["\ud800"])",
                   "at byte 9: invalid string: surrogate U+D800..U+DBFF must "
                   "be followed by U+DC00..U+DFFF");
  expect_malformed(R"(["\ud800\n"])", "at byte 10: invalid string: surrogate U+D800..U+DBFF");
  expect_malformed(R"(["\ud800\ud800"])", "at byte 14: invalid string: surrogate U+D800..U+DBFF");
  expect_malformed(R"(["\udc00"])",
                   "at byte 8: invalid string: surrogate U+DC00..U+DFFF must "
                   "follow U+D800..U+DBFF");
  expect_malformed(R"(["\u12G4"])",
                   "at byte 7: invalid string: '\\u' must be followed by 4 hex "
                   "digits");
  expect_malformed(R"(["\x"])", "at byte 4: invalid string: forbidden character after backslash");
  expect_malformed("[\"\\", "at byte 4: invalid string: forbidden character after backslash");
  expect_malformed("[\"a", "at byte 4: invalid string: missing closing quote");
  expect_malformed("[\"a\tb\"]",
                   "at byte 4: invalid string: control character U+0009 (HT) must "
                   "be escaped to \\u0009 or \\t");
  expect_malformed(std::string("[\"\0\"]", 5),
                   "at byte 3: invalid string: control character U+0000 (NUL) must be escaped "
                   "to \\u0000");
  expect_malformed("[\"\x1f\"]", "control character U+001F (US) must be escaped to \\u001F");
  // Ill-formed UTF-8: the position of the byte that breaks the sequence.
  expect_malformed("[\"\xE0\x80\xAF\"]", "at byte 4: invalid string: ill-formed UTF-8 byte");
  expect_malformed("[\"\xF0\x9F\x98\"]", "at byte 6: invalid string: ill-formed UTF-8 byte");
  expect_malformed("[\"\xF4\x90\x80\x80\"]", "at byte 4: invalid string: ill-formed UTF-8 byte");
  expect_malformed("[\"\xC0\xAF\"]", "at byte 3: invalid string: ill-formed UTF-8 byte");
  expect_malformed("[\"\xF0\x9F\x98", "at byte 6: invalid string: ill-formed UTF-8 byte");
}

TEST(FeedbackJsonReader, NumbersMustFitADouble) {
  EXPECT_EQ(decode_ok(record_with(R"(,"n":[0,-0,1.5,-2.5E+3,1e-400,-4.9e-325,)"
                                  R"(1.7976931348623157e308,123456789012345678901234567890])"))
                .size(),
            1u);
  expect_malformed("[1e309]", "at byte 6: number overflow");
  expect_malformed("[-1e309]", "at byte 7: number overflow");
  expect_malformed("[1.7976931348623159e308]", "at byte 23: number overflow");
  expect_malformed("[0.001e312]", "at byte 10: number overflow");
  expect_malformed("[" + std::string(400, '9') + "]", "at byte 401: number overflow");
  expect_malformed(record_with(R"(,"n":1e999)"), "number overflow");
  expect_malformed("[-]", "at byte 3: invalid number; expected digit after '-'");
  expect_malformed("[1.]", "at byte 4: invalid number; expected digit after '.'");
  expect_malformed("[1e]",
                   "at byte 4: invalid number; expected '+', '-', or digit after "
                   "exponent");
  expect_malformed("[1e+]", "at byte 5: invalid number; expected digit after exponent sign");
  expect_malformed("[01]",
                   "at byte 3: syntax error while parsing array - unexpected number "
                   "literal; expected ']'");
  expect_malformed("[+1]", "at byte 2: invalid literal");
  expect_malformed("[.5]", "at byte 2: invalid literal");
}

TEST(FeedbackJsonReader, DeepNestingIsReadWithoutRecursion) {
  // No depth limit (as with nlohmann's iterative parser): nesting costs a
  // byte a level, never stack.
  constexpr std::size_t depth = 200000;
  const std::string deep = std::string(depth, '[') + std::string(depth, ']');
  EXPECT_EQ(decode_ok(record_with(",\"x\":" + deep)), std::vector<feedback_record>{[] {
              feedback_record r = sample_record();
              r.original_message_id = "m";
              r.device_id = "d";
              r.device_generation_id = "g";
              return r;
            }()});
  expect_malformed(std::string(depth, '['),
                   "at byte " + std::to_string(depth + 1) +
                       ": unexpected end of input; expected '[', '{', or a literal");
  expect_malformed(std::string(depth, '[') + std::string(depth - 1, ']') + "}",
                   "at byte " + std::to_string(2 * depth) +
                       ": syntax error while parsing array - unexpected '}'; expected ']'");
  expect_malformed("[" + std::string(depth, '{'),
                   "at byte 3: syntax error while parsing object key - unexpected '{'; expected "
                   "string literal");
  expect_malformed(deep, "record 0: is a JSON array, expected an object");
}

TEST(FeedbackJsonReader, ForADuplicatedKeyTheLastWins) {
  EXPECT_EQ(decode_ok(record_with(R"(,"deviceId":"d2","deviceId":"d3")")).at(0).device_id, "d3");
  expect_malformed(record_with(R"(,"deviceId":"d2","deviceId":7)"),
                   "record 0: deviceId is a number, expected a string");
  EXPECT_EQ(decode_ok(one_record(R"("deviceId":[1],)" + std::string(valid_fields))).at(0).device_id,
            "d");
  EXPECT_EQ(decode_ok(record_with(R"(,"description":null)")).at(0).description, "Success");
}

TEST(FeedbackJsonReader, WhitespaceIsTheFourJsonBytesOnly) {
  EXPECT_EQ(decode_ok(" \t\r\n[ \t\r\n{ \"deviceId\" \n: \"d\" ,\r" + std::string(valid_fields) +
                      "\t} \n]\r\n ")
                .size(),
            1u);
  expect_malformed("\v[]", "at byte 1: invalid literal");
  expect_malformed("\f[]", "at byte 1: invalid literal");
  expect_malformed("\xC2\xA0[]", "at byte 1: invalid literal");  // NBSP
}

TEST(FeedbackJsonReader, TrailingBytesAreMalformedUntilANul) {
  expect_malformed("[] x", "at byte 4: invalid literal; expected end of input");
  expect_malformed("[][]", "at byte 3: unexpected '['; expected end of input");
  expect_malformed("[],", "at byte 3: unexpected ','; expected end of input");
  expect_malformed(std::string(spec_example) + "\"",
                   "invalid string: missing closing quote; "
                   "expected end of input");
  // As with nlohmann/json, a NUL byte outside a string ends the input (a C
  // sender's terminator); what follows it is not read.
  EXPECT_EQ(decode_ok(std::string(spec_example) + std::string("\0garbage", 8)),
            std::vector<feedback_record>{sample_record()});
  expect_malformed(std::string("[\0]", 3),
                   "at byte 2: unexpected end of input; expected '[', '{', or a literal");
}

TEST(FeedbackJsonReader, SyntaxErrorsNameTheirContext) {
  expect_malformed(R"([{"a" 1}])",
                   "at byte 7: syntax error while parsing object separator - "
                   "unexpected number literal; expected ':'");
  expect_malformed(R"([{1:2}])",
                   "at byte 3: syntax error while parsing object key - unexpected "
                   "number literal; expected string literal");
  expect_malformed(R"([{"a":1 "b":2}])",
                   "at byte 11: syntax error while parsing object - "
                   "unexpected string literal; expected '}'");
  expect_malformed(R"([1 2])",
                   "at byte 4: syntax error while parsing array - unexpected number "
                   "literal; expected ']'");
  expect_malformed(R"([{"a":tru}])", "at byte 10: invalid literal");
  expect_malformed(R"([{"a":1,}])",
                   "at byte 9: syntax error while parsing object key - "
                   "unexpected '}'; expected string literal");
}

TEST(FeedbackJsonReader, EveryTruncationOfAValidBodyIsMalformed) {
  feedback_record r = sample_record(feedback_status::delivery_count_exceeded);
  r.original_message_id = "caf\xC3\xA9 \xF0\x9F\x98\x80 \"q\" \\ \t";
  r.description = std::string("nul\0 and \x1f", 11);
  const std::string body = " " + encode_feedback_json({r, sample_record()}) + "\n";
  ASSERT_EQ(decode_ok(body).size(), 2u);
  for (std::size_t n = 0; n + 1 < body.size(); ++n) {
    const auto t = decode_feedback_json(std::string_view(body).substr(0, n));
    ASSERT_FALSE(t.has_value()) << n;
    EXPECT_EQ(t.code(), errc::malformed);
    EXPECT_NE(t.error().message.find("is not valid JSON at byte"), std::string::npos)
        << t.error().message;
    for (const char c : t.error().message)
      ASSERT_TRUE(c >= 0x20 && c < 0x7F) << t.error().message;
  }
}

TEST(FeedbackJsonWriter, EscapesAsNlohmannDumpDid) {
  feedback_record r = sample_record();
  r.original_message_id = std::string("\x01\x1f\x7f/\b\f\n\r\t\"\\\0", 12);
  const std::string text = encode_feedback_json({r});
  EXPECT_NE(text.find(R"("originalMessageId":"\u0001\u001f)"
                      "\x7f"
                      R"(/\b\f\n\r\t\"\\\u0000",)"),
            std::string::npos)
      << text;
}

TEST(FeedbackJsonWriter, EachIllFormedUtf8SequenceBecomesOneReplacementCharacter) {
  const auto written = [](std::string s) {
    feedback_record r = sample_record();
    r.device_id = std::move(s);
    const std::string text = encode_feedback_json({r});
    const auto from = text.find("\"deviceId\":\"") + 12;
    return text.substr(from, text.find("\",\"deviceGenerationId\"") - from);
  };
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(written("a\xFF"
                    "b"),
            "a" + fffd + "b");
  EXPECT_EQ(written("\xC3\x28"), fffd + "(");              // the breaking byte read again
  EXPECT_EQ(written("\xE0\x80\xAF"), fffd + fffd + fffd);  // overlong: E0 then 80 breaks
  EXPECT_EQ(written("\xED\xA0\x80"), fffd + fffd + fffd);  // an encoded surrogate
  EXPECT_EQ(written("\xF0\x9F\x98"), fffd);                // cut short at the end
  EXPECT_EQ(written("\xF0\x9F\x98"
                    "A\xF0\x9F\x98\x80"),
            fffd + "A\xF0\x9F\x98\x80");
  EXPECT_EQ(written("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // above U+10FFFF
  EXPECT_EQ(written("\xC0\xAF\xF8"), fffd + fffd + fffd);
  EXPECT_EQ(written("\xE2\x82\xAC\xF0\x9F\x98\x80"), "\xE2\x82\xAC\xF0\x9F\x98\x80");
}
