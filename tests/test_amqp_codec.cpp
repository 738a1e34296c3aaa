// The AMQP 1.0 mapping (SPEC 10): addresses, messages both ways, tags, errors.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <devicebound/codec/amqp.hpp>
#include <devicebound/codec/amqp_errors.hpp>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/validate.hpp>
#include <optional>
#include <proton/decimal.hpp>
#include <proton/message.hpp>
#include <proton/types.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace amqp = devicebound::codec::amqp;
using amqp::id_type;
using amqp::link_kind;
using devicebound::ack_mode;
using devicebound::errc;
using devicebound::feedback_batch;
using devicebound::feedback_record;
using devicebound::feedback_status;
using devicebound::lock_token;
using devicebound::message;
using devicebound::time_point;

time_point iso(std::string_view text) {
  return devicebound::codec::parse_iso8601(text).value();
}

// Encodes to bytes and decodes again, as the wire does.
proton::message wire(const proton::message& m) {
  proton::message out;
  out.decode(m.encode());
  return out;
}

proton::value annotation(const proton::message& m, std::string_view key) {
  return m.message_annotations().get(proton::annotation_key(proton::symbol(std::string(key))));
}

lock_token token(std::string_view text) {
  return lock_token::parse(text).value();
}

// --- Addresses: every form of SPEC 10.4, 10.8, 10.11, 10.13, 10.16 ----------------

struct address_case {
  std::string_view address;
  link_kind kind;
  std::string_view device;
  std::optional<std::string_view> module;
};

TEST(AmqpAddress, EveryFormTheSdksUse) {
  const address_case cases[] = {
      // CBS (10.4.1)
      {"$cbs", link_kind::cbs, "", {}},
      {"$CBS", link_kind::cbs, "", {}},
      {"amqps://hub.azure-devices.net/$cbs", link_kind::cbs, "", {}},
      // C2D sender (10.8.1: Node/Java, C#, Python)
      {"/messages/devicebound", link_kind::c2d_send, "", {}},
      {"amqps://hub.azure-devices.net:5671/messages/deviceBound", link_kind::c2d_send, "", {}},
      {"amqps://hub.azure-devices.net/messages/devicebound", link_kind::c2d_send, "", {}},
      {"amqps://hub.azure-devices.net/messages/deviceBound", link_kind::c2d_send, "", {}},
      {"/messages/devicebound/", link_kind::c2d_send, "", {}},
      // feedback (10.11.1: Node, C#, Java)
      {"/messages/serviceBound/feedback", link_kind::feedback, "", {}},
      {"amqps://hub.azure-devices.net:5671/messages/serviceBound/feedback",
       link_kind::feedback,
       "",
       {}},
      {"/messages/servicebound/feedback", link_kind::feedback, "", {}},
      // file notifications (10.11.4)
      {"/messages/serviceBound/filenotifications", link_kind::file_notifications, "", {}},
      // device C2D receiver (10.13: Node, C# with UrlEncode, Java, C SDK)
      {"/devices/dev1/messages/devicebound", link_kind::device_c2d, "dev1", {}},
      {"amqps://hub.azure-devices.net:5671/devices/my%3Adev%40x/messages/deviceBound",
       link_kind::device_c2d,
       "my:dev@x",
       {}},
      {"amqps://hub.azure-devices.net/devices/dev1/messages/devicebound",
       link_kind::device_c2d,
       "dev1",
       {}},
      {"/DEVICES/dev1/MESSAGES/DEVICEBOUND", link_kind::device_c2d, "dev1", {}},
      // a raw `%` that is no escape (Python/Java do not encode ids)
      {"/devices/50%zz/messages/devicebound", link_kind::device_c2d, "50%zz", {}},
      // other device links (10.16)
      {"/devices/dev1/messages/events", link_kind::device_telemetry, "dev1", {}},
      {"amqps://hub.azure-devices.net:5671/devices/d%24x/messages/events",
       link_kind::device_telemetry,
       "d$x",
       {}},
      {"/devices/dev1/twin", link_kind::device_twin, "dev1", {}},
      {"/devices/dev1/methods/devicebound", link_kind::device_methods, "dev1", {}},
      // module variants
      {"/devices/d/modules/m/messages/events", link_kind::device_telemetry, "d", "m"},
      {"/devices/d/modules/m/twin", link_kind::device_twin, "d", "m"},
      {"/devices/d/modules/m/methods/devicebound", link_kind::device_methods, "d", "m"},
      {"/devices/d/modules/m%2E1/messages/devicebound", link_kind::device_c2d, "d", "m.1"},
      // unknown
      {"", link_kind::unknown, "", {}},
      {"/", link_kind::unknown, "", {}},
      {"/messages/events", link_kind::unknown, "", {}},
      {"/devices/dev1", link_kind::unknown, "", {}},
      {"/devices/dev1/messages/other", link_kind::unknown, "", {}},
      {"/devices/d/modules/m", link_kind::unknown, "", {}},
      {"amqps://hub.azure-devices.net", link_kind::unknown, "", {}},
  };
  for (const auto& c : cases) {
    const auto r = amqp::parse_link_address(c.address);
    ASSERT_TRUE(r) << c.address << ": " << r.error().message;
    EXPECT_EQ(r->kind, c.kind) << c.address << " -> " << amqp::to_string(r->kind);
    EXPECT_EQ(r->device_id, c.device) << c.address;
    EXPECT_EQ(r->module_id, c.module ? std::optional<std::string>(*c.module) : std::nullopt)
        << c.address;
  }
}

TEST(AmqpAddress, InvalidDeviceIdsAreArgumentErrors) {
  for (std::string_view address : {"/devices//messages/devicebound",
                                   "/devices/a%2Fb/messages/devicebound",  // decodes to a/b
                                   "/devices/a%20b/messages/events", "/devices/d/modules//twin"}) {
    const auto r = amqp::parse_link_address(address);
    ASSERT_FALSE(r) << address;
    EXPECT_EQ(r.code(), errc::argument_invalid) << address;
  }
}

TEST(AmqpAddress, C2dToIsEncodeUriComponent) {
  EXPECT_EQ(amqp::c2d_to("dev1"), "/devices/dev1/messages/devicebound");
  EXPECT_EQ(amqp::c2d_to("a:b@c$d"), "/devices/a%3Ab%40c%24d/messages/devicebound");
  EXPECT_EQ(amqp::c2d_to("d", "m"), "/devices/d/modules/m/messages/devicebound");
}

// --- Lock tokens and delivery tags (SPEC 10.14.4) -------------------------------------

// Hand-computed: .NET `new Guid(b)` reads b[0..3] as a little-endian int32,
// b[4..5] and b[6..7] as little-endian int16, b[8..15] in order. For the tag
// C9 8B 91 35 6D 19 EA 40 97 79 88 9D 79 B7 53 F0 that gives 35918BC9, 196D,
// 40EA, 9779, 889D79B753F0: "35918bc9-196d-40ea-9779-889d79b753f0".
TEST(AmqpTag, DotNetGuidByteOrderVector) {
  const auto t = token("35918bc9-196d-40ea-9779-889d79b753f0");
  const std::array<std::uint8_t, 16> tag = {0xC9, 0x8B, 0x91, 0x35, 0x6D, 0x19, 0xEA, 0x40,
                                            0x97, 0x79, 0x88, 0x9D, 0x79, 0xB7, 0x53, 0xF0};
  EXPECT_EQ(amqp::delivery_tag_bytes(t), tag);
  EXPECT_EQ(amqp::lock_token_from_tag_bytes(tag), t);

  const proton::binary b = amqp::delivery_tag(t);
  ASSERT_EQ(b.size(), 16u);
  EXPECT_TRUE(std::equal(b.begin(), b.end(), tag.begin()));
  EXPECT_EQ(amqp::lock_token_from_delivery_tag(b).value(), t);
}

TEST(AmqpTag, WrongSizeIsAnError) {
  proton::binary b(std::string("0"));  // rhea-style decimal tag
  const auto r = amqp::lock_token_from_delivery_tag(b);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
}

RC_GTEST_PROP(AmqpTag, TagPermutationIsAnInvolution, (std::array<std::uint8_t, 16> bytes)) {
  lock_token t;
  t.bytes = bytes;
  RC_ASSERT(amqp::lock_token_from_tag_bytes(amqp::delivery_tag_bytes(t)) == t);
  RC_ASSERT(amqp::lock_token_from_delivery_tag(amqp::delivery_tag(t)).value() == t);
}

// --- Service → hub: the C2D send (SPEC 10.9) -----------------------------------------

proton::message send_with_to(std::string to) {
  proton::message m;
  m.to(std::move(to));
  m.body(proton::binary(std::string("payload")));
  m.inferred(true);
  return m;
}

TEST(AmqpSend, ToInEveryFormTheSdksSend) {
  struct to_case {
    std::string to;
    std::string device;
    std::optional<std::string> module;
  };
  const to_case cases[] = {
      {"/devices/a%3Ab/messages/devicebound", "a:b", {}},       // Node encodeURIComponent
      {"/devices/a%3Ab/messages/deviceBound", "a:b", {}},       // C# WebUtility.UrlEncode
      {"/devices/dev-1/messages/devicebound", "dev-1", {}},     // Python, Java (raw)
      {"/devices/d/modules/m/messages/devicebound", "d", "m"},  // Java module form
      {"amqps://hub.azure-devices.net/devices/d/messages/devicebound", "d", {}},
  };
  for (const auto& c : cases) {
    const auto r = amqp::decode_c2d_send(wire(send_with_to(c.to)));
    ASSERT_TRUE(r) << c.to << ": " << r.error().message;
    EXPECT_EQ(r->device_id, c.device);
    EXPECT_EQ(r->module_id, c.module);
    EXPECT_EQ(r->message.to, c.to);
    EXPECT_EQ(r->message.body, "payload");
  }
}

TEST(AmqpSend, EveryFieldOfSpec10_9) {
  proton::message m = send_with_to("/devices/dev1/messages/devicebound");
  m.id(std::string("mid-1"));
  m.correlation_id(std::string("cid-1"));
  m.user(std::string("alice"));
  m.expiry_time(proton::timestamp(1700000000123));
  m.creation_time(proton::timestamp(1600000000456));
  m.content_type("application/json");
  m.content_encoding("utf-8");
  m.properties().put("iothub-ack", proton::scalar(std::string("full")));
  m.properties().put("color", proton::scalar(std::string("red")));
  const auto r = amqp::decode_c2d_send(wire(m));
  ASSERT_TRUE(r) << r.error().message;
  const message& out = r->message;
  EXPECT_EQ(out.message_id, "mid-1");
  EXPECT_EQ(out.correlation_id, "cid-1");
  EXPECT_EQ(out.user_id, "alice");
  EXPECT_EQ(out.expiry_time_utc, iso("2023-11-14T22:13:20.123Z"));
  EXPECT_EQ(out.creation_time_utc, time_point(devicebound::duration(1600000000456)));
  EXPECT_EQ(out.content_type, "application/json");
  EXPECT_EQ(out.content_encoding, "utf-8");
  EXPECT_EQ(out.ack, ack_mode::full);
  EXPECT_EQ(out.app_properties, (devicebound::properties{{"color", "red"}}));
  EXPECT_EQ(r->ids, (amqp::id_types{id_type::string, id_type::string}));
  EXPECT_TRUE(devicebound::validate_message(out));
}

TEST(AmqpSend, EachMessageIdTypeIsReadAndEchoedInItsType) {
  const proton::uuid u = [] {
    proton::uuid v;
    const std::array<std::uint8_t, 16> b = {0x0f, 0xa1, 0x2b, 0x3c, 0x4d, 0x5e, 0x4f, 0x80,
                                            0x91, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6, 0xf7, 0x08};
    for (std::size_t i = 0; i < 16; ++i)
      v[i] = static_cast<proton::uuid::value_type>(b[i]);
    return v;
  }();
  struct id_case {
    proton::message_id id;
    std::string text;
    id_type type;
    proton::type_id wire_type;
  };
  const id_case cases[] = {
      {proton::message_id(std::string("order-42")), "order-42", id_type::string, proton::STRING},
      {proton::message_id(u), "0fa12b3c-4d5e-4f80-91a2-b3c4d5e6f708", id_type::uuid, proton::UUID},
      {proton::message_id(std::uint64_t{18446744073709551615u}), "18446744073709551615",
       id_type::ulong, proton::ULONG},
      {proton::message_id(proton::binary(std::string("bin-7"))), "bin-7", id_type::binary,
       proton::BINARY},
  };
  for (const auto& c : cases) {
    proton::message m = send_with_to("/devices/dev1/messages/devicebound");
    m.id(c.id);
    m.correlation_id(c.id);
    const auto r = amqp::decode_c2d_send(wire(m));
    ASSERT_TRUE(r) << c.text << ": " << r.error().message;
    EXPECT_EQ(r->message.message_id, c.text);
    EXPECT_EQ(r->message.correlation_id, c.text);
    EXPECT_EQ(r->ids.message_id, c.type);
    EXPECT_EQ(r->ids.correlation_id, c.type);

    // Echoed to the device in the same AMQP type, same value.
    message locked = r->message;
    locked.lock_token = token("00112233-4455-6677-8899-aabbccddeeff");
    const auto d = amqp::encode_c2d_delivery(locked, r->ids);
    ASSERT_TRUE(d);
    const proton::message delivered = wire(d->message);
    EXPECT_EQ(delivered.id().type(), c.wire_type) << c.text;
    EXPECT_EQ(delivered.correlation_id().type(), c.wire_type) << c.text;
    EXPECT_EQ(delivered.id(), c.id) << c.text;

    // Without the types, ids go to the device as strings with the same text.
    const auto s = amqp::encode_c2d_delivery(locked);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->message.id().type(), proton::STRING);
    EXPECT_EQ(proton::get<std::string>(s->message.id()), c.text);
  }
}

TEST(AmqpSend, IdTextThatDoesNotFitTheTypeGoesAsString) {
  EXPECT_EQ(amqp::make_id("not-a-uuid", id_type::uuid).type(), proton::STRING);
  EXPECT_EQ(amqp::make_id("0FA12B3C-4D5E-4F80-91A2-B3C4D5E6F708", id_type::uuid).type(),
            proton::STRING);  // upper case would not read back the same
  EXPECT_EQ(amqp::make_id("007", id_type::ulong).type(), proton::STRING);
  EXPECT_EQ(amqp::make_id("18446744073709551616", id_type::ulong).type(), proton::STRING);
  EXPECT_EQ(amqp::make_id("7", id_type::ulong).type(), proton::ULONG);
}

TEST(AmqpSend, AckValuesAsTheSdksSendThem) {
  const std::pair<std::string, ack_mode> cases[] = {
      {"none", ack_mode::none},
      {"positive", ack_mode::positive},
      {"negative", ack_mode::negative},
      {"full", ack_mode::full},
      {"Full", ack_mode::full},
      {"positiveonly", ack_mode::positive},  // Java
      {"negativeonly", ack_mode::negative},
  };
  for (const auto& [text, mode] : cases) {
    proton::message m = send_with_to("/devices/dev1/messages/devicebound");
    m.properties().put("iothub-ack", proton::scalar(text));
    const auto r = amqp::decode_c2d_send(wire(m));
    ASSERT_TRUE(r) << text;
    EXPECT_EQ(r->message.ack, mode) << text;
    EXPECT_TRUE(r->message.app_properties.empty());
  }
}

TEST(AmqpSend, NonStringPropertiesBecomeText) {
  proton::message m = send_with_to("/devices/dev1/messages/devicebound");
  auto& p = m.properties();
  p.put("s", proton::scalar(std::string("text")));
  p.put("t", proton::scalar(true));
  p.put("f", proton::scalar(false));
  p.put("i", proton::scalar(std::int32_t{-42}));
  p.put("ul", proton::scalar(std::uint64_t{18446744073709551615u}));
  p.put("ub", proton::scalar(std::uint8_t{7}));
  p.put("d", proton::scalar(0.1));
  p.put("fl", proton::scalar(1.5f));
  p.put("n", proton::scalar());
  p.put("sym", proton::scalar(proton::symbol("abc")));
  p.put("ts", proton::scalar(proton::timestamp(1438100688789)));
  p.put("c", proton::scalar(wchar_t(0xE9)));
  const auto r = amqp::decode_c2d_send(wire(m));
  ASSERT_TRUE(r) << r.error().message;
  const devicebound::properties expected = {
      {"s", "text"},
      {"t", "true"},
      {"f", "false"},
      {"i", "-42"},
      {"ul", "18446744073709551615"},
      {"ub", "7"},
      {"d", "0.1"},
      {"fl", "1.5"},
      {"n", ""},
      {"sym", "abc"},
      {"ts", "2015-07-28T16:24:48.789Z"},
      {"c", "\xC3\xA9"},
  };
  EXPECT_EQ(r->message.app_properties, expected);
}

TEST(AmqpSend, SeveralDataSectionsAreConcatenatedFromTheRawBytes) {
  std::vector<char> bytes = send_with_to("/devices/dev1/messages/devicebound").encode();
  const char second[] = {0x00, 0x53, 0x75, static_cast<char>(0xa0), 4, '-', 't', 'w', 'o'};
  bytes.insert(bytes.end(), std::begin(second), std::end(second));
  proton::message m;
  m.decode(bytes);
  EXPECT_EQ(amqp::data_body(bytes).value(), std::optional<std::string>("payload-two"));
  const auto r = amqp::decode_c2d_send(m, bytes);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->message.body, "payload-two");
}

TEST(AmqpSend, AmqpValueBinaryOrStringBodiesAreAccepted) {
  for (bool as_string : {false, true}) {
    proton::message m;
    m.to("/devices/dev1/messages/devicebound");
    if (as_string)
      m.body(std::string("hello"));
    else
      m.body(proton::binary(std::string("hello")));
    m.inferred(false);
    const auto r = amqp::decode_c2d_send(wire(m));
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->message.body, "hello");
  }
  proton::message empty;
  empty.to("/devices/dev1/messages/devicebound");
  const auto r = amqp::decode_c2d_send(wire(empty));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->message.body, "");
}

// Decodes, expects argument_invalid with `fragment` in the message.
void expect_send_error(const proton::message& m, std::string_view fragment,
                       errc code = errc::argument_invalid) {
  const auto r = amqp::decode_c2d_send(wire(m));
  ASSERT_FALSE(r) << fragment;
  EXPECT_EQ(r.code(), code) << r.error().message;
  EXPECT_NE(r.error().message.find(fragment), std::string::npos) << r.error().message;
}

TEST(AmqpSend, BadInputIsATypedErrorNamingTheProblem) {
  {
    proton::message m;
    m.body(proton::binary(std::string("x")));
    m.inferred(true);
    expect_send_error(m, "no 'to'");
  }
  expect_send_error(send_with_to("/messages/devicebound"), "'to' is");
  expect_send_error(send_with_to("/devices/dev1/messages/events"), "'to' is");
  expect_send_error(send_with_to("/devices/a%2Fb/messages/devicebound"), "device id");
  {
    proton::message m = send_with_to("/devices/dev1/messages/devicebound");
    m.properties().put("iothub-ack", proton::scalar(std::string("sometimes")));
    expect_send_error(m, "iothub-ack is 'sometimes'");
  }
  {
    proton::message m = send_with_to("/devices/dev1/messages/devicebound");
    m.properties().put("iothub-ack", proton::scalar(std::int32_t{1}));
    expect_send_error(m, "iothub-ack has AMQP type int");
  }
  {
    proton::message m = send_with_to("/devices/dev1/messages/devicebound");
    m.properties().put("price", proton::scalar(proton::decimal64()));
    expect_send_error(m, "'price' has AMQP type decimal64");
  }
  {
    proton::message m;
    m.to("/devices/dev1/messages/devicebound");
    m.body(std::int32_t{5});
    m.inferred(false);
    expect_send_error(m, "amqp-value of type int");
  }
  {
    proton::message m;
    m.to("/devices/dev1/messages/devicebound");
    m.body(std::vector<proton::value>{proton::value(1)});
    m.inferred(true);
    expect_send_error(m, "amqp-sequence");
  }
}

TEST(AmqpSend, EncodeRefusesAnInvalidDevice) {
  const auto r = amqp::encode_c2d_send("a/b", message{});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);
}

TEST(AmqpSend, MalformedSectionsAreMalformed) {
  const std::vector<char> junk = {0x00, 0x53, 0x75, static_cast<char>(0xb0), 0x7f, 0, 0, 0};
  const auto r = amqp::data_body(junk);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::malformed);
}

// --- Hub → device (SPEC 10.14) ----------------------------------------------------------

message locked_message() {
  message m;
  m.body = "hello device";
  m.message_id = "mid";
  m.correlation_id = "cid";
  m.user_id = "svc";
  m.to = "/devices/dev1/messages/devicebound";
  m.expiry_time_utc = iso("2030-01-02T03:04:05.678Z");
  m.content_type = "text/plain";
  m.content_encoding = "utf-8";
  m.ack = ack_mode::positive;
  m.app_properties = {{"k", "v"}};
  m.sequence_number = 12345678901234ull;
  m.enqueued_time_utc = iso("2029-12-31T23:59:59.001Z");
  m.delivery_count = 3;
  m.lock_token = token("35918bc9-196d-40ea-9779-889d79b753f0");
  return m;
}

TEST(AmqpDelivery, AnnotationsHaveTheExactTypesCSharpReads) {
  const auto d = amqp::encode_c2d_delivery(locked_message());
  ASSERT_TRUE(d);
  const proton::message m = wire(d->message);
  const proton::value lock = annotation(m, "x-opt-lock-token");
  const proton::value seq = annotation(m, "x-opt-sequence-number");
  const proton::value enq = annotation(m, "iothub-enqueuedtime");
  const proton::value count = annotation(m, "iothub-deliverycount");
  EXPECT_EQ(lock.type(), proton::STRING);
  EXPECT_EQ(seq.type(), proton::ULONG);
  EXPECT_EQ(enq.type(), proton::TIMESTAMP);
  EXPECT_EQ(count.type(), proton::UBYTE);
  EXPECT_EQ(proton::get<std::string>(lock), "35918bc9-196d-40ea-9779-889d79b753f0");
  EXPECT_EQ(proton::get<std::uint64_t>(seq), 12345678901234ull);
  EXPECT_EQ(proton::get<proton::timestamp>(enq).milliseconds(),
            iso("2029-12-31T23:59:59.001Z").time_since_epoch().count());
  EXPECT_EQ(proton::get<std::uint8_t>(count), 3);
  EXPECT_EQ(d->tag.size(), 16u);

  // Properties section and application properties (10.14.2).
  EXPECT_TRUE(m.inferred());
  EXPECT_EQ(m.body().type(), proton::BINARY);
  EXPECT_EQ(m.to(), "/devices/dev1/messages/devicebound");
  EXPECT_EQ(m.user(), "svc");
  EXPECT_EQ(m.content_type(), "text/plain");
  EXPECT_EQ(proton::get<std::string>(m.properties().get("iothub-ack")), "positive");
  EXPECT_EQ(proton::get<std::string>(m.properties().get("k")), "v");
}

TEST(AmqpDelivery, RoundTripThroughTheWire) {
  const message in = locked_message();
  const auto d = amqp::encode_c2d_delivery(in);
  ASSERT_TRUE(d);
  const auto out = amqp::decode_c2d_delivery(wire(d->message), d->tag);
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(*out, in);
}

TEST(AmqpDelivery, DeliveryCountAboveAByteIsCapped) {
  message m = locked_message();
  m.delivery_count = 300;
  const auto d = amqp::encode_c2d_delivery(m);
  ASSERT_TRUE(d);
  EXPECT_EQ(proton::get<std::uint8_t>(annotation(d->message, "iothub-deliverycount")), 255);
}

TEST(AmqpDelivery, Errors) {
  message m = locked_message();
  m.lock_token.reset();
  EXPECT_EQ(amqp::encode_c2d_delivery(m).code(), errc::invalid_operation);

  // Short tag: the annotation is the fallback; without it, an error.
  const auto d = amqp::encode_c2d_delivery(locked_message());
  ASSERT_TRUE(d);
  const proton::binary short_tag(std::string("1"));
  const auto via_annotation = amqp::decode_c2d_delivery(wire(d->message), short_tag);
  ASSERT_TRUE(via_annotation);
  EXPECT_EQ(via_annotation->lock_token, locked_message().lock_token);

  proton::message bare = d->message;
  bare.message_annotations().clear();
  const auto r = amqp::decode_c2d_delivery(wire(bare), short_tag);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), errc::argument_invalid);

  proton::message bad_type = d->message;
  bad_type.message_annotations().put(proton::annotation_key(proton::symbol("iothub-enqueuedtime")),
                                     proton::value(std::string("yesterday")));
  const auto r2 = amqp::decode_c2d_delivery(wire(bad_type), d->tag);
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message.find("iothub-enqueuedtime"), std::string::npos);
}

// --- Our service client sends as the SDKs do (inverse of decode_c2d_send) ------------------

TEST(AmqpSend, EncodeIsTheInverseOfDecode) {
  message m = locked_message();
  const auto p = amqp::encode_c2d_send("my:dev", m, {id_type::uuid, id_type::ulong});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->to(), "/devices/my%3Adev/messages/devicebound");
  EXPECT_TRUE(p->message_annotations().empty());  // hub-assigned fields are not sent
  const auto back = amqp::decode_c2d_send(wire(*p));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->device_id, "my:dev");
  EXPECT_EQ(back->message.body, m.body);
  EXPECT_EQ(back->message.ack, m.ack);
  EXPECT_EQ(back->ids, amqp::id_types{});  // "mid"/"cid" fit neither uuid nor ulong
}

// --- Feedback (SPEC 10.11.2) ------------------------------------------------------------

feedback_batch sample_batch() {
  feedback_batch b;
  b.records.push_back(feedback_record{"0987654321", iso("2015-07-28T16:24:48.789Z"),
                                      feedback_status::success, "Success", "123",
                                      "abcdefghijklmnopqrstuvwxyz"});
  b.records.push_back(feedback_record{"m2", iso("2015-07-28T16:25:00.000Z"),
                                      feedback_status::rejected, "Rejected", "dev2", "g2"});
  b.enqueued_time_utc = iso("2015-07-28T16:25:01.000Z");
  b.user_id = "myhub";
  b.lock_token = token("00112233-4455-6677-8899-aabbccddeeff");
  b.delivery_count = 1;
  return b;
}

TEST(AmqpFeedback, WhatCSharpJavaAndNodeRequire) {
  const auto d = amqp::encode_feedback(sample_batch());
  const proton::message m = wire(d.message);
  EXPECT_EQ(m.content_type(), "application/vnd.microsoft.iothub.feedback.json");
  EXPECT_TRUE(m.inferred());
  ASSERT_EQ(m.body().type(), proton::BINARY);
  const std::string body = proton::get<proton::binary>(m.body());
  EXPECT_EQ(body.front(), '[');
  EXPECT_NE(body.find("\"originalMessageId\":\"0987654321\""), std::string::npos);
  EXPECT_EQ(m.user(), "myhub");
  EXPECT_EQ(annotation(m, "iothub-enqueuedtime").type(), proton::TIMESTAMP);
  EXPECT_EQ(d.tag.size(), 16u);
  EXPECT_EQ(amqp::lock_token_from_delivery_tag(d.tag).value(), sample_batch().lock_token);
}

TEST(AmqpFeedback, RoundTrip) {
  const auto d = amqp::encode_feedback(sample_batch());
  const auto back = amqp::decode_feedback(wire(d.message), d.tag);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, sample_batch());
}

TEST(AmqpFeedback, Errors) {
  const auto d = amqp::encode_feedback(sample_batch());
  {
    proton::message m = d.message;
    m.content_type("application/json");
    const auto r = amqp::decode_feedback(wire(m), d.tag);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("content-type"), std::string::npos);
  }
  {
    proton::message m = d.message;
    m.content_type("Application/Vnd.Microsoft.IotHub.Feedback.Json");  // C# compares ignoring case
    EXPECT_TRUE(amqp::decode_feedback(wire(m), d.tag));
  }
  {
    proton::message m = d.message;
    m.message_annotations().clear();
    const auto r = amqp::decode_feedback(wire(m), d.tag);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("iothub-enqueuedtime"), std::string::npos);
  }
  {
    proton::message m = d.message;
    m.body(proton::binary(std::string("{}")));
    m.inferred(true);
    EXPECT_EQ(amqp::decode_feedback(wire(m), d.tag).code(), errc::argument_invalid);
  }
  EXPECT_EQ(amqp::decode_feedback(wire(d.message), proton::binary(std::string("abc"))).code(),
            errc::argument_invalid);
}

// --- Error conditions (SPEC 10.10.2, 10.15.1, 10.6) ---------------------------------------

TEST(AmqpErrors, EveryErrcHasOneRow) {
  std::set<errc> seen;
  for (const auto& row : amqp::error_conditions) {
    EXPECT_TRUE(seen.insert(row.code).second) << devicebound::to_string(row.code);
    EXPECT_FALSE(row.description.empty());
  }
  EXPECT_EQ(seen.size(), devicebound::errc_values.size());
}

TEST(AmqpErrors, ConditionsTheSdksTranslate) {
  EXPECT_EQ(amqp::condition(errc::device_not_found), "amqp:not-found");
  EXPECT_EQ(amqp::condition(errc::device_maximum_queue_depth_exceeded),
            "amqp:resource-limit-exceeded");
  EXPECT_EQ(amqp::condition(errc::message_too_large), "amqp:link:message-size-exceeded");
  EXPECT_EQ(amqp::condition(errc::unauthorized), "amqp:unauthorized-access");
  EXPECT_EQ(amqp::condition(errc::throttling), "com.microsoft:device-container-throttled");
  EXPECT_EQ(amqp::condition(errc::argument_invalid), "com.microsoft:argument-error");
  EXPECT_EQ(amqp::condition(errc::device_message_lock_lost), "com.microsoft:message-lock-lost");
  EXPECT_EQ(amqp::condition(errc::iothub_quota_exceeded), "com.microsoft:quota-exceeded");
  EXPECT_EQ(amqp::condition(errc::server_error), "amqp:internal-error");
  EXPECT_EQ(amqp::condition(errc::invalid_operation), "amqp:not-allowed");
  EXPECT_EQ(amqp::condition(errc::timeout), "com.microsoft:timeout");
}

TEST(AmqpErrors, ConditionToErrcIsTheInverse) {
  for (const auto e : devicebound::errc_values) {
    const auto back = amqp::errc_from_condition(amqp::condition(e));
    ASSERT_TRUE(back) << devicebound::to_string(e);
    // server_busy shares com.microsoft:timeout, which reads back as timeout.
    EXPECT_EQ(*back, e == errc::server_busy ? errc::timeout : e) << devicebound::to_string(e);
  }
  EXPECT_EQ(amqp::errc_from_condition("amqp:link:detach-forced"), errc::not_connected);
  EXPECT_EQ(amqp::errc_from_condition("com.microsoft:argument-out-of-range"),
            errc::argument_invalid);
  EXPECT_EQ(amqp::errc_from_condition("amqp:no-such-thing"), std::nullopt);
  EXPECT_EQ(amqp::errc_from_condition("AMQP:NOT-FOUND"), std::nullopt);  // symbols are exact
}

TEST(AmqpErrors, ProtonConditions) {
  const auto c = amqp::to_error_condition(
      devicebound::make_error(errc::device_not_found, "device 'x' is not registered"));
  EXPECT_EQ(c.name(), "amqp:not-found");
  EXPECT_EQ(c.description(), "device 'x' is not registered");
  EXPECT_EQ(amqp::to_error_condition(devicebound::make_error(errc::throttling, "")).description(),
            amqp::default_description(errc::throttling));

  const auto e = amqp::from_error_condition(c);
  EXPECT_EQ(e.code, errc::device_not_found);
  EXPECT_EQ(e.message, "device 'x' is not registered");
  const auto u = amqp::from_error_condition(proton::error_condition("x:odd", "why"));
  EXPECT_EQ(u.code, errc::server_error);
  EXPECT_EQ(u.message, "AMQP error x:odd: why");
}

TEST(AmqpErrors, CbsStatusCodes) {
  EXPECT_EQ(amqp::cbs_status_ok, 200);
  EXPECT_EQ(amqp::cbs_status_code(errc::unauthorized), 401);
  EXPECT_EQ(amqp::cbs_status_code(errc::device_not_found), 404);
  EXPECT_EQ(amqp::cbs_status_code(errc::argument_invalid), 400);
  EXPECT_EQ(amqp::cbs_status_code(errc::throttling), 429);
  EXPECT_EQ(amqp::cbs_status_code(errc::server_error), 500);
  EXPECT_EQ(amqp::errc_from_cbs_status(200), std::nullopt);
  EXPECT_EQ(amqp::errc_from_cbs_status(202), std::nullopt);
  EXPECT_EQ(amqp::errc_from_cbs_status(401), errc::unauthorized);
  EXPECT_EQ(amqp::errc_from_cbs_status(404), errc::device_not_found);
  EXPECT_EQ(amqp::errc_from_cbs_status(403), errc::iothub_quota_exceeded);
  EXPECT_EQ(amqp::errc_from_cbs_status(418), errc::argument_invalid);
  EXPECT_EQ(amqp::errc_from_cbs_status(502), errc::server_error);
  for (const auto e : devicebound::errc_values) {
    const auto s = amqp::cbs_status_code(e);
    EXPECT_TRUE(s >= 400 && s < 600) << devicebound::to_string(e);
    EXPECT_TRUE(amqp::errc_from_cbs_status(s).has_value());
  }
}

// --- Property: devicebound → proton → devicebound is the identity ------------------------

constexpr std::string_view message_id_chars =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:.+%_#*?!(),=@;$'";
constexpr std::string_view property_chars =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
constexpr std::string_view device_id_chars =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.%_*?!(),:=@$'";

rc::Gen<std::string> string_over(std::string_view alphabet, std::size_t min, std::size_t max) {
  const std::vector<char> chars(alphabet.begin(), alphabet.end());
  return rc::gen::mapcat(rc::gen::inRange(min, max + 1), [chars](std::size_t n) {
    return rc::gen::container<std::string>(n, rc::gen::elementOf(chars));
  });
}

template <class T>
rc::Gen<std::optional<T>> maybe(rc::Gen<T> g) {
  return rc::gen::oneOf(rc::gen::just(std::optional<T>{}),
                        rc::gen::map(std::move(g), [](T v) { return std::optional<T>(v); }));
}

rc::Gen<time_point> wire_time() {  // 0 means "absent" in Proton's properties section
  return rc::gen::map(rc::gen::inRange<std::int64_t>(1, 253402300799999),
                      [](std::int64_t ms) { return time_point(devicebound::duration(ms)); });
}

// An id's text that fits `type`, so it reads back in that type.
std::string id_for(id_type type) {
  switch (type) {
    case id_type::uuid: {
      lock_token t;
      t.bytes = *rc::gen::arbitrary<std::array<std::uint8_t, 16>>();
      return t.to_string();
    }
    case id_type::ulong:
      return std::to_string(*rc::gen::arbitrary<std::uint64_t>());
    case id_type::string:
    case id_type::binary:
      break;
  }
  return *string_over(message_id_chars, 1, 40);
}

id_type any_id_type() {
  return *rc::gen::element(id_type::string, id_type::uuid, id_type::ulong, id_type::binary);
}

message any_message(amqp::id_types& ids) {
  message m;
  m.body = *rc::gen::arbitrary<std::string>();
  ids.message_id = any_id_type();
  ids.correlation_id = any_id_type();
  if (*rc::gen::arbitrary<bool>())
    m.message_id = id_for(ids.message_id);
  else
    ids.message_id = id_type::string;
  if (*rc::gen::arbitrary<bool>())
    m.correlation_id = id_for(ids.correlation_id);
  else
    ids.correlation_id = id_type::string;
  m.user_id = *maybe(string_over(property_chars, 1, 20));
  m.expiry_time_utc = *maybe(wire_time());
  m.creation_time_utc = *maybe(wire_time());
  m.content_type = *maybe(string_over(property_chars, 1, 30));
  m.content_encoding = *maybe(string_over(property_chars, 1, 10));
  m.ack = *rc::gen::element(ack_mode::none, ack_mode::positive, ack_mode::negative, ack_mode::full);
  const auto n = *rc::gen::inRange(0, 5);
  for (int i = 0; i < n; ++i) {
    auto name = *rc::gen::suchThat(string_over(property_chars, 1, 16), [](const std::string& s) {
      return devicebound::validate_app_property(s, "").has_value();
    });
    m.app_properties.emplace(std::move(name), *string_over(property_chars, 0, 16));
  }
  return m;
}

RC_GTEST_PROP(AmqpProperty, DeliveryRoundTripIsIdentity, ()) {
  amqp::id_types ids;
  message m = any_message(ids);
  const auto device = *string_over(device_id_chars, 1, 20);
  m.to = amqp::c2d_to(device);
  m.sequence_number = *rc::gen::arbitrary<std::uint64_t>();
  m.enqueued_time_utc =
      *maybe(rc::gen::map(rc::gen::inRange<std::int64_t>(0, 253402300799999),
                          [](std::int64_t ms) { return time_point(devicebound::duration(ms)); }));
  m.delivery_count = *rc::gen::inRange<std::uint32_t>(0, 256);
  lock_token t;
  t.bytes = *rc::gen::arbitrary<std::array<std::uint8_t, 16>>();
  m.lock_token = t;

  const auto d = amqp::encode_c2d_delivery(m, ids);
  RC_ASSERT(d.has_value());
  const proton::message on_wire = wire(d->message);
  const auto back = amqp::decode_c2d_delivery(on_wire, d->tag);
  RC_ASSERT(back.has_value());
  RC_ASSERT(*back == m);
  // The ids kept their AMQP types.
  if (m.message_id)
    RC_ASSERT(amqp::id_text(on_wire.id(), "message-id").value()->second == ids.message_id);
}

RC_GTEST_PROP(AmqpProperty, SendRoundTripIsIdentity, ()) {
  amqp::id_types ids;
  const message m = any_message(ids);
  const auto device = *string_over(device_id_chars, 1, 20);
  const auto module = *maybe(string_over(device_id_chars, 1, 10));

  const auto p = amqp::encode_c2d_send(
      device, m, ids, module ? std::optional<std::string_view>(*module) : std::nullopt);
  RC_ASSERT(p.has_value());
  const auto back = amqp::decode_c2d_send(wire(*p));
  RC_ASSERT(back.has_value());
  RC_ASSERT(back->device_id == device);
  RC_ASSERT(back->module_id == module);
  RC_ASSERT(back->ids == ids);
  message expected = m;
  expected.to =
      amqp::c2d_to(device, module ? std::optional<std::string_view>(*module) : std::nullopt);
  RC_ASSERT(back->message == expected);
  RC_ASSERT(devicebound::validate_message(back->message, SIZE_MAX).has_value());
}

}  // namespace
