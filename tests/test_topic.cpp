// The device-bound MQTT topic and its property bag (SPEC 5.7-5.10, 9).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <chrono>
#include <cstdint>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/codec/topic.hpp>
#include <devicebound/validate.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using devicebound::ack_mode;
using devicebound::errc;
using devicebound::message;
using devicebound::time_point;
using devicebound::codec::bag_property;
using devicebound::codec::decode_devicebound_topic;
using devicebound::codec::decode_property_bag;
using devicebound::codec::decoded_topic;
using devicebound::codec::devicebound_topic_filter;
using devicebound::codec::devicebound_topic_options;
using devicebound::codec::encode_devicebound_topic;
using devicebound::codec::encode_property_bag;
using devicebound::codec::matches_devicebound_filter;
using devicebound::codec::parse_iso8601;
using devicebound::codec::percent_decode;
using devicebound::codec::percent_encode;
using devicebound::codec::property_bag;
using std::chrono::sys_days;
using std::chrono::year;

time_point iso(std::string_view text) {
  return parse_iso8601(text).value();
}

decoded_topic decode_ok(std::string_view topic) {
  auto r = decode_devicebound_topic(topic);
  EXPECT_TRUE(r.has_value()) << topic << ": " << (r ? "" : r.error().message);
  return r ? std::move(*r) : decoded_topic{};
}

// Decodes `topic`, expects errc::malformed and `fragment` in the message.
void expect_malformed(std::string_view topic, std::string_view fragment) {
  const auto r = decode_devicebound_topic(topic);
  ASSERT_FALSE(r.has_value()) << "accepted: " << topic;
  EXPECT_EQ(r.code(), errc::malformed) << topic;
  EXPECT_NE(r.error().message.find(fragment), std::string::npos)
      << "message for '" << topic << "' was: " << r.error().message;
}

// The properties the topic carries (no body, nothing the hub assigns).
message carried(const message& m, bool with_creation_time) {
  message c;
  c.message_id = m.message_id;
  c.correlation_id = m.correlation_id;
  c.user_id = m.user_id;
  c.to = m.to;
  c.expiry_time_utc = m.expiry_time_utc;
  c.ack = m.ack;
  c.content_type = m.content_type;
  c.content_encoding = m.content_encoding;
  if (with_creation_time)
    c.creation_time_utc = m.creation_time_utc;
  c.app_properties = m.app_properties;
  return c;
}

// ---- generators ----------------------------------------------------------------

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

// Strings over `alphabet`, `min`..`max` characters long.
rc::Gen<std::string> string_over(std::string_view alphabet, std::size_t min, std::size_t max) {
  std::vector<char> chars(alphabet.begin(), alphabet.end());
  return rc::gen::mapcat(rc::gen::inRange(min, max + 1), [chars](std::size_t n) {
    return rc::gen::container<std::string>(n, rc::gen::elementOf(chars));
  });
}

constexpr std::string_view alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

// SPEC 3.2: 1..128 of ASCII alphanumerics and - : . + % _ # * ? ! ( ) , = @ ; $ '
rc::Gen<std::string> message_id() {
  static const std::string chars = std::string(alnum) + "-:.+%_#*?!(),=@;$'";
  return string_over(chars, 1, 128);
}

// SPEC 3.3: ASCII alphanumerics and ! # $ % & ' * + - . ^ _ ` | ~
const std::string property_chars = std::string(alnum) + "!#$%&'*+-.^_`|~";

rc::Gen<std::string> property_name() {
  return rc::gen::suchThat(string_over(property_chars, 1, 24), [](const std::string& name) {
    return devicebound::validate_app_property(name, "").has_value();
  });
}

rc::Gen<time_point> wire_time() {
  const auto lo = time_point{sys_days{year{1} / 1 / 1}}.time_since_epoch().count();
  const auto hi = time_point{sys_days{year{10000} / 1 / 1}}.time_since_epoch().count();
  return rc::gen::map(rc::gen::inRange<std::int64_t>(lo, hi),
                      [](std::int64_t ms) { return time_point{devicebound::duration{ms}}; });
}

template <class T>
rc::Gen<std::optional<T>> maybe(rc::Gen<T> g) {
  return rc::gen::oneOf(rc::gen::just(std::optional<T>{}), rc::gen::map(std::move(g), [](T v) {
                          return std::optional<T>(std::move(v));
                        }));
}

// Any message a sender may build: properties by SPEC 3.2/3.3, free-form UTF-8
// for the other strings, times in the wire range; a body the topic ignores.
rc::Gen<message> any_message() {
  return rc::gen::exec([] {
    message m;
    m.body = *rc::gen::arbitrary<std::string>();
    m.message_id = *maybe(message_id());
    m.correlation_id = *maybe(utf8_string());
    m.user_id = *maybe(utf8_string());
    m.to = *maybe(utf8_string());
    m.expiry_time_utc = *maybe(wire_time());
    m.ack =
        *rc::gen::element(ack_mode::none, ack_mode::positive, ack_mode::negative, ack_mode::full);
    m.content_type = *maybe(utf8_string());
    m.content_encoding = *maybe(utf8_string());
    m.creation_time_utc = *maybe(wire_time());
    const auto names = *rc::gen::container<std::vector<std::string>>(property_name());
    for (const auto& name : names)
      m.app_properties[name] = *string_over(property_chars, 0, 24);
    m.sequence_number = *rc::gen::arbitrary<std::uint64_t>();
    return m;
  });
}

// Text that is mostly topic-shaped, so decoding goes past the prefix checks:
// a valid or broken head, then bag entries built from real keys and values
// with stray pieces (bad escapes, invalid UTF-8, wildcards) mixed in.
rc::Gen<std::string> topic_like() {
  static const std::vector<std::string> heads = {
      "devices/dev1/messages/devicebound/",
      "devices/dev1/messages/devicebound/?",
      "devices/dev1/messages/devicebound",
      "devices/d$v/messages/devicebound/",
      "devices/dev1/messages/deviceBound/",
      "devices//messages/devicebound/",
      "",
      "devices/",
  };
  static const std::vector<std::string> keys = {
      "$.mid",      "%24.cid", "%24.uid",    "$.to", "%24.exp", "$.ct", "$.ce", "%24.ctime",
      "iothub-ack", "$.on",    "IOTHUB-ACK", "k%2A", "%C3%A9",  "a+b",  "",     "%",
  };
  static const std::vector<std::string> values = {
      "x",
      "",
      "%20",
      "%C3%A9",
      "2017-01-06T23%3A37%3A00.669Z",
      "2017-01-06T23:37:00Z",
      "Full",
      "none",
      "a=b",
      "%2F",
      "%2",
      "%zz",
      "%FF",
      "\xC3\xA9",
      "\xFF",
      "+#",
      "%00",
      "%ED%A0%80",
  };
  static const std::vector<std::string> stray = {
      "/", "?", "&", "=", "%", "&&", "#", " ", std::string(1, '\0')};
  const auto entry = rc::gen::apply(
      [](const std::string& k, const std::string& suffix, bool bare, const std::string& v) {
        return bare ? k + suffix : k + suffix + "=" + v;
      },
      rc::gen::elementOf(keys), string_over("abc", 0, 2),
      rc::gen::weightedElement<bool>({{1, true}, {6, false}}), rc::gen::elementOf(values));
  const auto piece = rc::gen::weightedOneOf<std::string>(
      {{8, rc::gen::map(entry, [](std::string e) { return "&" + e; })},
       {1, rc::gen::elementOf(stray)}});
  return rc::gen::apply(
      [](const std::string& head, const std::vector<std::string>& parts) {
        std::string s = head;
        for (const auto& p : parts)
          s += p;
        return s;
      },
      rc::gen::elementOf(heads),
      rc::gen::mapcat(rc::gen::inRange<std::size_t>(0, 8), [piece](std::size_t n) {
        return rc::gen::container<std::vector<std::string>>(n, piece);
      }));
}

}  // namespace

// ---- SPEC 5.7: subscription filter -----------------------------------------------

TEST(Spec_5_7, FilterIsDeviceboundHash) {
  EXPECT_EQ(devicebound_topic_filter("dev1"), "devices/dev1/messages/devicebound/#");
}

TEST(Spec_5_7, FilterMatchesTheTopicWithAnyBagAndItsParentLevel) {
  EXPECT_TRUE(matches_devicebound_filter("devices/dev1/messages/devicebound/", "dev1"));
  EXPECT_TRUE(matches_devicebound_filter("devices/dev1/messages/devicebound/a=1&b=", "dev1"));
  EXPECT_TRUE(matches_devicebound_filter("devices/dev1/messages/devicebound", "dev1"));
  EXPECT_TRUE(matches_devicebound_filter("devices/dev1/messages/devicebound/x/y", "dev1"));
  EXPECT_FALSE(matches_devicebound_filter("devices/dev1/messages/deviceboundx", "dev1"));
  EXPECT_FALSE(matches_devicebound_filter("devices/dev1/messages/deviceBound/", "dev1"));
  EXPECT_FALSE(matches_devicebound_filter("devices/dev10/messages/devicebound/", "dev1"));
  EXPECT_FALSE(matches_devicebound_filter("devices/dev/messages/devicebound/", "dev1"));
  EXPECT_FALSE(matches_devicebound_filter("devices/dev1/messages/events/", "dev1"));
  EXPECT_FALSE(matches_devicebound_filter("", "dev1"));
  EXPECT_FALSE(matches_devicebound_filter("devices/dev1", "dev1"));
}

// ---- SPEC 5.8: observed fixtures decode exactly -------------------------------------

TEST(Spec_5_8, NodeSdkFixtureDecodes) {
  const auto d = decode_ok(
      "devices/foo/messages/devicebound/%24.mid=0209afa7-1e2f-4dc1-8a6f-8500efd81db3&%24.to=%"
      "2Fdevices%2Ffoo%2Fmessages%2Fdevicebound");
  message want;
  want.message_id = "0209afa7-1e2f-4dc1-8a6f-8500efd81db3";
  want.to = "/devices/foo/messages/devicebound";
  EXPECT_EQ(d.device_id, "foo");
  EXPECT_EQ(d.message, want);
}

TEST(Spec_5_8, PythonSdkFixtureDecodes) {
  const auto d = decode_ok(
      "devices/fake_device/messages/devicebound/"
      "%24.exp=3237-07-19T23%3A06%3A40.0000000Z&%24.cid=fake_corid&%24.mid=6b822696-f75a-46f5-"
      "8b02-0680db65abf5&%24.to=%2Fdevices%2Ffake_device%2Fmessages%2Fdevicebound&%24.ct=fake_"
      "content_type&%24.ce=utf-8&iothub-ack=positive");
  message want;
  want.expiry_time_utc = iso("3237-07-19T23:06:40.000Z");
  want.correlation_id = "fake_corid";
  want.message_id = "6b822696-f75a-46f5-8b02-0680db65abf5";
  want.to = "/devices/fake_device/messages/devicebound";
  want.content_type = "fake_content_type";
  want.content_encoding = "utf-8";
  want.ack = ack_mode::positive;
  EXPECT_EQ(d.device_id, "fake_device");
  EXPECT_EQ(d.message, want);
}

TEST(Spec_5_8, PythonSdkFixtureWithCustomPropertiesDecodes) {
  const auto d = decode_ok(
      "devices/fake_device/messages/devicebound/%24.mid=6b822696-f75a-46f5-8b02-0680db65abf5&%24."
      "to=%2Fdevices%2Ffake_device%2Fmessages%2Fdevicebound&custom1=value1&custom2=value2&"
      "custom3=value3");
  EXPECT_EQ(d.message.app_properties,
            (devicebound::properties{
                {"custom1", "value1"}, {"custom2", "value2"}, {"custom3", "value3"}}));
}

TEST(Spec_5_8, DMqttExampleWithQuestionMarkDecodes) {
  const auto d = decode_ok("devices/dev1/messages/devicebound/?prop1&prop2=&prop3=a%20string");
  // prop1 is null: taken as absent (SPEC 5.10; message cannot hold null).
  EXPECT_EQ(d.message.app_properties,
            (devicebound::properties{{"prop2", ""}, {"prop3", "a string"}}));
  EXPECT_EQ(d.message, carried(d.message, true));  // nothing else set
  EXPECT_FALSE(d.message.message_id);
}

TEST(Spec_5_8, TopicWithEmptyBagOrNoBagDecodes) {
  for (const auto* topic :
       {"devices/dev1/messages/devicebound/", "devices/dev1/messages/devicebound",
        "devices/dev1/messages/devicebound/?"}) {
    const auto d = decode_ok(topic);
    EXPECT_EQ(d.device_id, "dev1");
    EXPECT_EQ(d.message, message{}) << topic;
  }
}

TEST(Spec_5_8, ToIsKeptVerbatimInEitherCasing) {
  EXPECT_EQ(
      decode_ok("devices/d/messages/devicebound/%24.to=%2Fdevices%2Fd%2Fmessages%2FdeviceBound")
          .message.to,
      "/devices/d/messages/deviceBound");
  EXPECT_EQ(
      decode_ok("devices/d/messages/devicebound/%24.to=%2Fdevices%2Fd%2Fmessages%2Fdevicebound")
          .message.to,
      "/devices/d/messages/devicebound");
}

TEST(Spec_5_8, DeviceIdIsTakenRaw) {
  EXPECT_EQ(decode_ok("devices/fake%24device/messages/devicebound/").device_id, "fake%24device");
  EXPECT_EQ(decode_ok("devices/a-b.c%_*?!(),:=@$'/messages/devicebound/").device_id,
            "a-b.c%_*?!(),:=@$'");
}

// ---- SPEC 5.9: bag encoding -------------------------------------------------------

TEST(Spec_5_9, PercentEscapesDecodeInEitherCase) {
  const auto d = decode_ok("devices/d/messages/devicebound/k%2a%2A=%c3%a9%C3%A9");
  EXPECT_EQ(d.message.app_properties, (devicebound::properties{{"k**", "\xC3\xA9\xC3\xA9"}}));
}

TEST(Spec_5_9, PlusIsNotSpaceAndRawCharactersAreLiteral) {
  const auto d = decode_ok("devices/d/messages/devicebound/$.cid=fake+corid&a+b=c d");
  EXPECT_EQ(d.message.correlation_id, "fake+corid");
  EXPECT_EQ(d.message.app_properties, (devicebound::properties{{"a+b", "c d"}}));
}

TEST(Spec_5_9, PythonUrlDecodingFixtureDecodes) {
  const auto d = decode_ok(
      "devices/fake%24device/messages/devicebound/%24.exp=3237-07-19T23%3A06%3A40.0000000Z&%24."
      "cid=fake%23corid&%24.mid=message%24id&%24.to=%2Fdevices%2Ffake%24device%2Fmessages%"
      "2Fdevicebound&%24.ct=fake%23content%24type&%24.ce=utf-%24&custom%2A=value%23&custom%26="
      "value%24&custom%25=value%40");
  EXPECT_EQ(d.message.message_id, "message$id");
  EXPECT_EQ(d.message.correlation_id, "fake#corid");
  EXPECT_EQ(d.message.content_type, "fake#content$type");
  EXPECT_EQ(d.message.content_encoding, "utf-$");
  EXPECT_EQ(d.message.app_properties,
            (devicebound::properties{
                {"custom*", "value#"}, {"custom&", "value$"}, {"custom%", "value@"}}));
}

TEST(Spec_5_9, ExpiryIsWrittenAsIso8601WithMilliseconds) {
  message m;
  m.expiry_time_utc = iso("2017-01-06T23:37:00.669Z");
  EXPECT_EQ(encode_devicebound_topic("d", m),
            "devices/d/messages/devicebound/%24.exp=2017-01-06T23%3A37%3A00.669Z");
}

TEST(Spec_5_9, ExpiryAcceptsOffsetsAndAnyFractionDigits) {
  EXPECT_EQ(decode_ok("devices/d/messages/devicebound/%24.exp=2017-01-07T01%3A37%3A00%2B02%3A00")
                .message.expiry_time_utc,
            iso("2017-01-06T23:37:00Z"));
  EXPECT_EQ(decode_ok("devices/d/messages/devicebound/%24.exp=2017-01-06T23:37:00.6691234Z")
                .message.expiry_time_utc,
            iso("2017-01-06T23:37:00.669Z"));
}

TEST(Spec_5_9, ValueWithMoreEqualsSignsKeepsThem) {
  EXPECT_EQ(decode_ok("devices/d/messages/devicebound/k=a=b").message.app_properties,
            (devicebound::properties{{"k", "a=b"}}));
}

TEST(Spec_5_9, EmptyEntriesAreSkipped) {
  EXPECT_EQ(decode_ok("devices/d/messages/devicebound/&a=1&&b=2&").message.app_properties,
            (devicebound::properties{{"a", "1"}, {"b", "2"}}));
}

TEST(Spec_5_9, PropertyBagCodecKeepsOrderNullsAndDuplicates) {
  const property_bag bag = {{"$.mid", "m 1"}, {"k", std::nullopt}, {"k", ""}, {"a&b", "c=d/e"}};
  const std::string text = encode_property_bag(bag);
  EXPECT_EQ(text, "%24.mid=m%201&k&k=&a%26b=c%3Dd%2Fe");
  const auto back = decode_property_bag(text);
  ASSERT_TRUE(back.has_value()) << back.error().message;
  EXPECT_EQ(*back, bag);
  EXPECT_EQ(encode_property_bag({}), "");
  EXPECT_EQ(decode_property_bag("")->size(), 0u);
}

RC_GTEST_PROP(Spec_5_9, PropertyBagRoundTripsAnyUtf8, ()) {
  const auto bag = *rc::gen::container<property_bag>(rc::gen::apply(
      [](std::string k, std::optional<std::string> v) {
        return bag_property{k, v};
      },
      rc::gen::nonEmpty(utf8_string()), maybe(utf8_string())));
  const std::string text = encode_property_bag(bag);
  const auto back = decode_property_bag(text);
  RC_ASSERT(back.has_value());
  RC_ASSERT(*back == bag);
}

RC_GTEST_PROP(Spec_5_9, PercentEncodingRoundTripsUtf8AndKeepsOnlyUnreserved, ()) {
  const auto s = *utf8_string();
  const std::string e = percent_encode(s);
  for (std::size_t i = 0; i < e.size(); ++i) {
    const char c = e[i];
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    RC_ASSERT(unreserved || c == '%');
  }
  RC_ASSERT(percent_decode(e).value() == s);
}

TEST(Spec_5_9, InvalidUtf8IsEncodedAsReplacementCharacter) {
  EXPECT_EQ(percent_encode("a\xFF"
                           "b"),
            "a%EF%BF%BDb");
  EXPECT_EQ(percent_encode("\xC3"), "%EF%BF%BD");                            // truncated sequence
  EXPECT_EQ(percent_encode("\xED\xA0\x80"), "%EF%BF%BD%EF%BF%BD%EF%BF%BD");  // surrogate
  EXPECT_EQ(percent_encode("\xC0\xAF"), "%EF%BF%BD%EF%BF%BD");               // overlong '/'
  EXPECT_EQ(percent_encode("\xF4\x90\x80\x80"), "%EF%BF%BD%EF%BF%BD%EF%BF%BD%EF%BF%BD");
  EXPECT_EQ(percent_encode("\xF0\x9F\x98\x80"), "%F0%9F%98%80");  // U+1F600 is fine
}

// ---- SPEC 5.10: what SDK parsers do with odd entries ---------------------------------

TEST(Spec_5_10, BareKeysAreAbsentForSystemAndApplicationProperties) {
  const auto d = decode_ok(
      "devices/fakedevice/messages/devicebound/topic=%2Fsubscriptions%2FresourceGroups&subject=%"
      "2FgraphInstances&dataVersion&%24.cdid=fakecdid&%24.mid=e32c2285-668e-4161-a236-"
      "9f5f6b90362c&%24.cid&%24.uid&classname&iothub-ack&%24.exp");
  EXPECT_EQ(d.message.message_id, "e32c2285-668e-4161-a236-9f5f6b90362c");
  EXPECT_FALSE(d.message.correlation_id);
  EXPECT_FALSE(d.message.user_id);
  EXPECT_FALSE(d.message.expiry_time_utc);
  EXPECT_EQ(d.message.ack, ack_mode::none);
  EXPECT_EQ(d.message.app_properties, (devicebound::properties{
                                          {"topic", "/subscriptions/resourceGroups"},
                                          {"subject", "/graphInstances"},
                                          {"$.cdid", "fakecdid"},
                                      }));
}

TEST(Spec_5_10, UnknownSystemKeysPassThroughAsApplicationProperties) {
  const auto d = decode_ok(
      "devices/d/messages/devicebound/%24.on=out&iothub-operation=x&%24.schema=s&IOTHUB-ACK=full");
  EXPECT_EQ(
      d.message.app_properties,
      (devicebound::properties{
          {"$.on", "out"}, {"iothub-operation", "x"}, {"$.schema", "s"}, {"IOTHUB-ACK", "full"}}));
  EXPECT_EQ(d.message.ack, ack_mode::none);  // keys are case-sensitive, values are not
}

TEST(Spec_5_10, CreationTimeDecodes) {
  EXPECT_EQ(decode_ok("devices/d/messages/devicebound/%24.ctime=2024-02-29T12%3A00%3A00.000Z")
                .message.creation_time_utc,
            iso("2024-02-29T12:00:00Z"));
}

// ---- SPEC 3.6: ack values -------------------------------------------------------------

TEST(Spec_3_6, AckValueDecodesInAnyCase) {
  const std::pair<const char*, ack_mode> cases[] = {
      {"none", ack_mode::none}, {"positive", ack_mode::positive}, {"NEGATIVE", ack_mode::negative},
      {"Full", ack_mode::full}, {"fUlL", ack_mode::full},
  };
  for (const auto& [text, mode] : cases)
    EXPECT_EQ(
        decode_ok(std::string("devices/d/messages/devicebound/iothub-ack=") + text).message.ack,
        mode)
        << text;
}

TEST(Spec_3_6, AckIsWrittenLowercaseAndOnlyWhenFeedbackIsRequested) {
  message m;
  EXPECT_EQ(encode_devicebound_topic("d", m), "devices/d/messages/devicebound/");
  m.ack = ack_mode::none;
  EXPECT_EQ(encode_devicebound_topic("d", m).find("iothub-ack"), std::string::npos);
  const std::pair<ack_mode, const char*> cases[] = {
      {ack_mode::positive, "positive"}, {ack_mode::negative, "negative"}, {ack_mode::full, "full"}};
  for (const auto& [mode, text] : cases) {
    m.ack = mode;
    EXPECT_EQ(encode_devicebound_topic("d", m),
              std::string("devices/d/messages/devicebound/iothub-ack=") + text);
  }
}

// ---- SPEC 9: what a stock device SDK needs ---------------------------------------------

TEST(Spec_9_1, EmptyBagKeepsTheTrailingSlashAndTheDeviceIdIsRaw) {
  EXPECT_EQ(encode_devicebound_topic("dev1", message{}), "devices/dev1/messages/devicebound/");
  EXPECT_EQ(encode_devicebound_topic("a$b%c:(d)", message{}),
            "devices/a$b%c:(d)/messages/devicebound/");
}

TEST(Spec_9_1, BodyIsNotInTheTopic) {
  message m;
  m.body = "a/b&c=d";
  EXPECT_EQ(encode_devicebound_topic("dev1", m), "devices/dev1/messages/devicebound/");
}

TEST(Spec_9_2, EverySpecialCharacterIsPercentEncoded) {
  const std::pair<std::string, std::string> cases[] = {
      {"/", "%2F"},    {"&", "%26"},           {"=", "%3D"},     {"%", "%25"},
      {"+", "%2B"},    {"#", "%23"},           {" ", "%20"},     {"$", "%24"},
      {"?", "%3F"},    {"*", "%2A"},           {"'", "%27"},     {"!", "%21"},
      {"(", "%28"},    {")", "%29"},           {",", "%2C"},     {":", "%3A"},
      {";", "%3B"},    {"@", "%40"},           {"^", "%5E"},     {"`", "%60"},
      {"|", "%7C"},    {"\"", "%22"},          {"\\", "%5C"},    {std::string(1, '\0'), "%00"},
      {"\x7F", "%7F"}, {"\xC3\xA9", "%C3%A9"}, {"-._~", "-._~"}, {"aZ09", "aZ09"},
  };
  for (const auto& [raw, wire] : cases) {
    message m;
    m.correlation_id = "x" + raw;
    m.app_properties["k" + raw] = raw + "v";
    const std::string topic = encode_devicebound_topic("d", m);
    EXPECT_EQ(topic,
              "devices/d/messages/devicebound/%24.cid=x" + wire + "&k" + wire + "=" + wire + "v")
        << "character " << raw;
    const auto back = decode_devicebound_topic(topic);
    ASSERT_TRUE(back.has_value()) << topic;
    EXPECT_EQ(back->message, m) << topic;
  }
}

TEST(Spec_9_2, TopicHoldsNoWildcardsNoSpaceAndNoExtraSlash) {
  message m;
  m.message_id = "a+b#c/d e%f";
  m.app_properties["p#+/ &="] = "v#+/ &=";
  m.to = "/devices/d/messages/devicebound";
  const std::string topic = encode_devicebound_topic("d", m);
  const std::string_view bag =
      std::string_view(topic).substr(std::string_view("devices/d/messages/devicebound/").size());
  for (char c : std::string_view("+#/ "))
    EXPECT_EQ(bag.find(c), std::string_view::npos) << "found '" << c << "' in " << topic;
  EXPECT_EQ(topic,
            "devices/d/messages/devicebound/%24.mid=a%2Bb%23c%2Fd%20e%25f&%24.to=%2Fdevices%2Fd%"
            "2Fmessages%2Fdevicebound&p%23%2B%2F%20%26%3D=v%23%2B%2F%20%26%3D");
}

TEST(Spec_9_3, SystemKeysComeFirstInAFixedOrderThenSortedApplicationProperties) {
  message m;
  m.app_properties = {{"zeta", "1"}, {"Alpha", "2"}, {"alpha", "3"}};
  m.ack = ack_mode::full;
  m.content_encoding = "utf-8";
  m.content_type = "application/json";
  m.creation_time_utc = iso("2024-01-01T00:00:00Z");
  m.expiry_time_utc = iso("2024-01-02T00:00:00Z");
  m.to = "/devices/dev1/messages/deviceBound";
  m.user_id = "hub";
  m.correlation_id = "c1";
  m.message_id = "m1";
  EXPECT_EQ(encode_devicebound_topic("dev1", m),
            "devices/dev1/messages/devicebound/%24.mid=m1&%24.cid=c1&%24.uid=hub&%24.to=%"
            "2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&%24.exp=2024-01-02T00%3A00%3A00.000Z&%24."
            "ct=application%2Fjson&%24.ce=utf-8&iothub-ack=full&Alpha=2&alpha=3&zeta=1");
  devicebound_topic_options with_ctime;
  with_ctime.include_creation_time = true;
  EXPECT_EQ(encode_devicebound_topic("dev1", m, with_ctime),
            "devices/dev1/messages/devicebound/%24.mid=m1&%24.cid=c1&%24.uid=hub&%24.to=%"
            "2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&%24.exp=2024-01-02T00%3A00%3A00.000Z&%24."
            "ct=application%2Fjson&%24.ce=utf-8&%24.ctime=2024-01-01T00%3A00%3A00.000Z&iothub-"
            "ack=full&Alpha=2&alpha=3&zeta=1");
}

TEST(Spec_9_3, ApplicationPropertyNamedLikeASystemKeyIsLeftOut) {
  message m;
  m.message_id = "real";
  m.app_properties = {{"$.mid", "fake"}, {"iothub-ack", "full"}, {"$.on", "kept"}};
  const std::string topic = encode_devicebound_topic("d", m);
  EXPECT_EQ(topic, "devices/d/messages/devicebound/%24.mid=real&%24.on=kept");
  EXPECT_TRUE(decode_devicebound_topic(topic).has_value());
}

TEST(Spec_9_4, EmptyValuesAreWrittenAsKeyEqualsNeverBare) {
  message m;
  m.message_id = "";
  m.correlation_id = "";
  m.app_properties = {{"empty", ""}};
  const std::string topic = encode_devicebound_topic("d", m);
  EXPECT_EQ(topic, "devices/d/messages/devicebound/%24.mid=&%24.cid=&empty=");
  EXPECT_EQ(decode_ok(topic).message, m);
}

// ---- rejections --------------------------------------------------------------------------

TEST(Spec_5_8, MalformedTopicsAreRejectedWithTheProblemNamed) {
  expect_malformed("", "does not start with 'devices/'");
  expect_malformed("device/d/messages/devicebound/", "does not start with 'devices/'");
  expect_malformed("$iothub/twin/res/200/?$rid=1", "does not start with 'devices/'");
  expect_malformed("devices/d", "no '/messages/devicebound'");
  expect_malformed("devices/d/messages/deviceBound/", "expected '/messages/devicebound'");
  expect_malformed("devices/d/messages/events/", "expected '/messages/devicebound'");
  expect_malformed("devices/d/messages/deviceboundx", "expected '/' or the end");
  expect_malformed("devices//messages/devicebound/", "device id is empty");
  expect_malformed("devices/fake+device/messages/devicebound/", "not allowed");
  expect_malformed("devices/d/messages/devicebound/a=1/b=2", "holds a '/'");
  expect_malformed("devices/d/messages/devicebound/a=%2", "bad percent escape");
  expect_malformed("devices/d/messages/devicebound/a=%", "bad percent escape");
  expect_malformed("devices/d/messages/devicebound/a=%zz", "bad percent escape");
  expect_malformed("devices/d/messages/devicebound/%g1=v", "bad percent escape");
  expect_malformed("devices/d/messages/devicebound/a=%FF", "not valid UTF-8");
  expect_malformed("devices/d/messages/devicebound/a=%C3", "not valid UTF-8");
  expect_malformed("devices/d/messages/devicebound/a=%ED%A0%80", "not valid UTF-8");
  expect_malformed("devices/d/messages/devicebound/a=\xFF", "not valid UTF-8");
  expect_malformed("devices/d/messages/devicebound/=v", "empty key");
  expect_malformed("devices/d/messages/devicebound/a=1&a=2", "appears more than once");
  expect_malformed("devices/d/messages/devicebound/a&a=2", "appears more than once");
  expect_malformed("devices/d/messages/devicebound/%24.mid=1&$.mid=2", "appears more than once");
  expect_malformed("devices/d/messages/devicebound/%24.exp=tomorrow", "$.exp is not a time");
  expect_malformed("devices/d/messages/devicebound/%24.exp=", "$.exp is not a time");
  expect_malformed("devices/d/messages/devicebound/%24.ctime=2023-02-29T00:00:00Z",
                   "$.ctime is not a time");
  expect_malformed("devices/d/messages/devicebound/iothub-ack=yes", "expected none, positive");
  expect_malformed("devices/d/messages/devicebound/iothub-ack=", "expected none, positive");
}

TEST(Spec_5_8, ErrorMessagesAreAsciiWhateverTheInput) {
  const auto r = decode_devicebound_topic("devices/d/messages/devicebound/a=\xFF\x01\xC3");
  ASSERT_FALSE(r.has_value());
  for (char c : r.error().message)
    EXPECT_TRUE(c >= 0x20 && c < 0x7F) << r.error().message;
}

// ---- properties ---------------------------------------------------------------------------

RC_GTEST_PROP(Spec_5_9, AnyMessageRoundTripsThroughTheTopic, ()) {
  const message m = *any_message();
  const bool with_ctime = *rc::gen::arbitrary<bool>();
  devicebound_topic_options options;
  options.include_creation_time = with_ctime;
  const std::string device_id =
      *rc::gen::oneOf(rc::gen::just(std::string("dev1")),
                      string_over(std::string(alnum) + "-.%_*?!(),:=@$'", 1, 128));
  RC_PRE(devicebound::validate_device_id(device_id).has_value());

  const std::string topic = encode_devicebound_topic(device_id, m, options);
  RC_ASSERT(matches_devicebound_filter(topic, device_id));
  const auto back = decode_devicebound_topic(topic);
  RC_ASSERT(back.has_value());
  RC_ASSERT(back->device_id == device_id);
  RC_ASSERT(back->message == carried(m, with_ctime));
  RC_ASSERT(encode_devicebound_topic(device_id, back->message, options) == topic);
}

RC_GTEST_PROP(Spec_5_9, DecodeIsTotalOnArbitraryStrings, ()) {
  const auto text = *rc::gen::arbitrary<std::string>();
  const auto r = decode_devicebound_topic(text);
  if (!r.has_value())
    RC_ASSERT(r.code() == errc::malformed);
}

RC_GTEST_PROP(Spec_5_9, DecodeOfTopicShapedTextIsTotalAndStable, ()) {
  const auto text = *topic_like();
  const auto r = decode_devicebound_topic(text);
  RC_CLASSIFY(r.has_value(), "decoded");
  if (!r.has_value()) {
    RC_ASSERT(r.code() == errc::malformed);
    RC_ASSERT(!r.error().message.empty());
    return;
  }
  devicebound_topic_options options;
  options.include_creation_time = true;
  const auto again =
      decode_devicebound_topic(encode_devicebound_topic(r->device_id, r->message, options));
  RC_ASSERT(again.has_value());
  RC_ASSERT(*again == *r);
}
