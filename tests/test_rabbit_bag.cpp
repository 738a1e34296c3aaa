// Property bags with every '.' written as %2E (codec/property_bag.hpp, bag_options::escape_dots):
// what the hub writes when RabbitMQ, which turns '.' into '/' on the way to the
// device, is the broker (docs/scale-out.md). The project's own SDK-style parser
// must read such a bag back exactly as the plain one.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <chrono>
#include <devicebound/codec/property_bag.hpp>
#include <devicebound/codec/topic.hpp>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace devicebound;
using namespace devicebound::codec;

constexpr bag_options escaped{true};

TEST(rabbit_bag, default_keeps_dots_and_the_option_escapes_every_one) {
  const property_bag bag = {{"$.mid", "a.b"}, {"k.", std::nullopt}, {"x", "..."}};
  EXPECT_EQ(encode_property_bag(bag), "%24.mid=a.b&k.&x=...");
  EXPECT_EQ(encode_property_bag(bag, escaped), "%24%2Emid=a%2Eb&k%2E&x=%2E%2E%2E");
  std::string s;
  append_percent_encoded(s, "v1.2 ü", escaped);
  EXPECT_EQ(s, "v1%2E2%20%C3%BC");
  EXPECT_EQ(percent_encode("v1.2"), "v1.2");
}

TEST(rabbit_bag, escaped_bag_decodes_to_the_same_bag) {
  const property_bag bag = {{"$.mid", "m.1"},
                            {"$.to", "/devices/d/messages/devicebound"},
                            {"app.key", "v.a.l"},
                            {"n", std::nullopt}};
  const auto plain = decode_property_bag(encode_property_bag(bag));
  const auto dotless = decode_property_bag(encode_property_bag(bag, escaped));
  ASSERT_TRUE(plain && dotless);
  EXPECT_EQ(*plain, bag);
  EXPECT_EQ(*dotless, bag);
}

TEST(rabbit_bag, devicebound_topic_with_escaped_dots_decodes_like_the_plain_one) {
  message m;
  m.message_id = "mid.1";
  m.correlation_id = "cid.2";
  m.user_id = "user.3";
  m.to = "/devices/dev1/messages/devicebound";
  m.expiry_time_utc = time_point(
      std::chrono::duration_cast<duration>(std::chrono::milliseconds(1'700'000'000'123)));
  m.content_type = "application/vnd.x+json";
  m.content_encoding = "utf-8";
  m.ack = ack_mode::full;
  m.app_properties = {{"a.b", "c.d"}, {"plain", "x"}};
  devicebound_topic_options o;
  o.escape_dots = true;
  const std::string topic = encode_devicebound_topic("dev1", m, o);
  // No '.' anywhere after the device id: RabbitMQ has nothing to turn into '/'.
  const std::string prefix = "devices/dev1/messages/devicebound/";
  ASSERT_TRUE(topic.starts_with(prefix)) << topic;
  EXPECT_EQ(topic.find('.'), std::string::npos) << topic;
  EXPECT_NE(topic.find("%24%2Emid=mid%2E1"), std::string::npos) << topic;
  const auto plain = decode_devicebound_topic(encode_devicebound_topic("dev1", m));
  const auto dotless = decode_devicebound_topic(topic);
  ASSERT_TRUE(plain) << plain.error().message;
  ASSERT_TRUE(dotless) << dotless.error().message;
  EXPECT_EQ(dotless->device_id, "dev1");
  EXPECT_EQ(dotless->message, plain->message);
  EXPECT_EQ(dotless->message.message_id, "mid.1");
  EXPECT_EQ(dotless->message.to, "/devices/dev1/messages/devicebound");
  EXPECT_EQ(dotless->message.app_properties, m.app_properties);
}

rc::Gen<std::string> text_with_dots() {
  // Dots often, plus any byte (invalid UTF-8 becomes U+FFFD, which the decoder keeps).
  return rc::gen::container<std::string>(rc::gen::weightedOneOf<char>(
      {{3, rc::gen::just('.')}, {1, rc::gen::just('%')}, {4, rc::gen::arbitrary<char>()}}));
}

RC_GTEST_PROP(rabbit_bag, escaped_bags_have_no_dot_and_decode_as_the_plain_encoding, ()) {
  const auto bag = *rc::gen::container<property_bag>(rc::gen::apply(
      [](std::string k, bool null, std::string v) {
        return bag_property{std::move(k),
                            null ? std::nullopt : std::optional<std::string>(std::move(v))};
      },
      rc::gen::nonEmpty(text_with_dots()), rc::gen::arbitrary<bool>(), text_with_dots()));
  const std::string text = encode_property_bag(bag, escaped);
  RC_ASSERT(text.find('.') == std::string::npos);
  const auto back = decode_property_bag(text);
  const auto plain = decode_property_bag(encode_property_bag(bag));
  RC_ASSERT(back.has_value());
  RC_ASSERT(plain.has_value());
  RC_ASSERT(*back == *plain);
}

}  // namespace
