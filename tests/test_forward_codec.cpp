// The wire form of forwarded requests and their answers
// (apps/devicebound-hub/forward_codec.hpp; docs/scale-out.md, "Forwarding requests"):
// every forwarded kind and every answer kind round-trips field for field, and
// malformed input (wrong magic or frame, unknown kind, enum out of range, unknown
// error code, every truncation, trailing bytes) is refused with errc::malformed
// naming the problem.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "forward.hpp"
#include "forward_codec.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
namespace fw = devicebound::hubd::forward;

time_point at(std::int64_t ms) {
  return time_point(duration(ms));
}

lock_token token(std::uint8_t seed) {
  lock_token t;
  for (std::size_t i = 0; i < 16; ++i)
    t.bytes[i] = static_cast<std::uint8_t>(seed + i);
  return t;
}

message full_message() {
  message m;
  m.body = std::string("bin\0ary \xff body", 15);
  m.message_id = "mid-1";
  m.correlation_id = "cid";
  m.user_id = "";
  m.to = "/devices/d1/messages/devicebound";
  m.expiry_time_utc = at(1'800'000'000'000);
  m.ack = ack_mode::full;
  m.content_type = "application/json";
  m.content_encoding = "utf-8";
  m.creation_time_utc = at(-5);  // before the epoch: signed
  m.app_properties = {{"a", "1"}, {"", "empty name"}, {"k\xc3\xa9", ""}};
  m.sequence_number = 0xFFFF'FFFF'FFFF'FFFFull;
  m.enqueued_time_utc = at(42);
  m.delivery_count = 7;
  m.lock_token = token(3);
  return m;
}

std::vector<fw::forwarded_request> every_request() {
  registry_put_request put;
  put.admin = "admin";
  put.update.device_id = "d1";
  put.update.status = device_status::disabled;
  put.update.status_reason = "why";
  put.update.auth = auth_type::self_signed;
  put.update.primary_thumbprint = "AB";
  put.update.secondary_thumbprint = "CD";
  put.update.iot_edge = true;
  put.if_match = "*";
  return {
      send_request{"svc", "d1", full_message()},
      send_request{"", "d2", message{}},
      receive_request{"d1"},
      settle_request{"d1", token(9), disposition::abandon},
      purge_request{"svc", "d1"},
      queue_depth_request{"d1"},
      add_device_request{"admin", "d1"},
      remove_device_request{"admin", "d1"},
      registry_get_request{"d1"},
      put,
      registry_put_request{"a", device_identity_update{}, std::nullopt},
      registry_delete_request{"admin", "d1", "3"},
      registry_delete_request{"admin", "d1", std::nullopt},
  };
}

std::vector<fw::answer_what> every_answer() {
  device_view v;
  v.identity.device_id = "d1";
  v.identity.generation_id = "gen";
  v.identity.version = 5;
  v.identity.status = device_status::disabled;
  v.identity.status_reason = "r";
  v.identity.status_updated = at(100);
  v.identity.auth = auth_type::sas;
  v.identity.primary_key = auth::shared_access_key::from_bytes(std::string(32, '\x01'));
  v.identity.secondary_key = auth::shared_access_key::from_bytes(std::string(32, '\x02'));
  v.identity.iot_edge = true;
  v.connected = true;
  v.cloud_to_device_count = 12;
  v.connection_state_updated = at(200);
  v.last_activity = at(300);
  return {
      make_error(errc::device_maximum_queue_depth_exceeded, "full"),
      make_error(errc::server_busy, ""),
      done_reply{},
      sent_reply{17, at(99)},
      count_reply{3},
      depth_reply{4},
      generation_reply{"g-1"},
      message_reply{full_message()},
      message_reply{std::nullopt},
      device_reply{v},
  };
}

fw::request_frame frame_of(fw::forwarded_request r) {
  return fw::request_frame{"6f1c2a4e-0000-4000-8000-000000000001", 5, "amq.gen-reply", "corr-7",
                           std::move(r)};
}

TEST(ForwardCodec, EveryRequestKindRoundTrips) {
  for (auto& r : every_request()) {
    const auto f = frame_of(r);
    const std::string bytes = fw::encode(f);
    auto back = fw::decode_request(bytes);
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->request_id, f.request_id);
    EXPECT_EQ(back->partition, 5u);
    EXPECT_EQ(back->reply_queue, "amq.gen-reply");
    EXPECT_EQ(back->correlation, "corr-7");
    ASSERT_EQ(back->what.index(), f.what.index());
    EXPECT_EQ(fw::encode(*back), bytes);  // every field kept
  }
  // field for field where the types compare
  auto s = fw::decode_request(fw::encode(frame_of(send_request{"svc", "d1", full_message()})));
  ASSERT_TRUE(s);
  EXPECT_EQ(std::get<send_request>(s->what).msg, full_message());
  EXPECT_EQ(std::get<send_request>(s->what).service, "svc");
  auto st =
      fw::decode_request(fw::encode(frame_of(settle_request{"d", token(1), disposition::reject})));
  ASSERT_TRUE(st);
  EXPECT_EQ(std::get<settle_request>(st->what).token, token(1));
  EXPECT_EQ(std::get<settle_request>(st->what).how, disposition::reject);
}

TEST(ForwardCodec, EveryAnswerKindRoundTrips) {
  for (auto& w : every_answer()) {
    const fw::answer_frame a{"corr-1", "id-1", w};
    auto bytes = fw::encode(a);
    ASSERT_TRUE(bytes) << bytes.error().message;
    auto back = fw::decode_answer(*bytes);
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->correlation, "corr-1");
    EXPECT_EQ(back->request_id, "id-1");
    ASSERT_EQ(back->what.index(), w.index());
    EXPECT_EQ(*fw::encode(*back), *bytes);
  }
  auto e = fw::decode_answer(
      *fw::encode(fw::answer_frame{"c", "i", make_error(errc::throttling, "slow")}));
  ASSERT_TRUE(e);
  EXPECT_EQ(std::get<error>(e->what), make_error(errc::throttling, "slow"));
  auto m =
      fw::decode_answer(*fw::encode(fw::answer_frame{"c", "i", message_reply{full_message()}}));
  ASSERT_TRUE(m);
  EXPECT_EQ(std::get<message_reply>(m->what).msg, full_message());
  auto d = fw::decode_answer(*fw::encode(fw::answer_frame{"c", "i", every_answer().back()}));
  ASSERT_TRUE(d);
  EXPECT_EQ(std::get<device_reply>(d->what).device.identity,
            std::get<device_reply>(every_answer().back()).device.identity);
  EXPECT_EQ(std::get<device_reply>(d->what).device.cloud_to_device_count, 12u);
}

TEST(ForwardCodec, AnswersNeverGivenToAForwardedRequestAreRefused) {
  auto r = fw::encode(fw::answer_frame{"c", "i", devices_reply{}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::argument_invalid);
  EXPECT_FALSE(fw::encode(fw::answer_frame{"c", "i", feedback_reply{}}));
}

TEST(ForwardCodec, OnlyDeviceScopedRequestReplyKindsAreForwardable) {
  EXPECT_TRUE(fw::forwardable(request{send_request{}}));
  EXPECT_TRUE(fw::forwardable(request{registry_delete_request{}}));
  EXPECT_FALSE(fw::forwardable(request{device_present{}}));
  EXPECT_FALSE(fw::forwardable(request{device_absent{}}));
  EXPECT_FALSE(fw::forwardable(request{device_delivered{}}));
  EXPECT_FALSE(fw::forwardable(request{feedback_receive_request{}}));
  EXPECT_FALSE(fw::forwardable(request{policy_list_request{}}));
  EXPECT_FALSE(fw::forwardable(request{registry_list_request{}}));
}

void expect_malformed(std::string_view bytes, std::string_view words) {
  auto r = fw::decode_request(bytes);
  ASSERT_FALSE(r) << "accepted: " << words;
  EXPECT_EQ(r.error().code, errc::malformed);
  EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
}

TEST(ForwardCodec, MalformedRequestsAreRefusedNamingTheProblem) {
  const std::string good = fw::encode(frame_of(send_request{"svc", "d1", full_message()}));
  expect_malformed("", "truncated magic");
  expect_malformed("XXXXQ", "no DBF1 magic");
  std::string answer_type = good;
  answer_type[4] = 'A';
  expect_malformed(answer_type, "frame type 'A'");
  expect_malformed(good + "x", "trailing bytes");
  // every truncation is refused
  for (std::size_t n = 0; n < good.size(); ++n) {
    auto r = fw::decode_request(std::string_view(good).substr(0, n));
    ASSERT_FALSE(r) << "a prefix of " << n << " bytes was accepted";
    EXPECT_EQ(r.error().code, errc::malformed);
    EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << r.error().message;
  }
  // an unknown kind: the kind byte follows id, partition, reply queue, correlation
  fw::request_frame f = frame_of(receive_request{"d"});
  std::string bytes = fw::encode(f);
  const std::size_t kind_at =
      5 + 4 + f.request_id.size() + 4 + 4 + f.reply_queue.size() + 4 + f.correlation.size();
  bytes[kind_at] = 42;
  expect_malformed(bytes, "unknown request kind 42");
  // an enum out of range: the disposition is the settle's last byte
  std::string settle = fw::encode(frame_of(settle_request{"d", token(0), disposition::complete}));
  settle.back() = 9;
  expect_malformed(settle, "disposition 9 out of range");
  // an empty request id
  expect_malformed(fw::encode(fw::request_frame{"", 0, "q", "c", receive_request{"d"}}),
                   "empty request id");
}

TEST(ForwardCodec, MalformedAnswersAreRefusedNamingTheProblem) {
  std::string e = *fw::encode(fw::answer_frame{"c", "i", make_error(errc::server_busy, "x")});
  // the code follows magic, type, correlation, id and kind
  const std::size_t code_at = 5 + 4 + 1 + 4 + 1 + 1;
  e[code_at] = 0x7F;
  auto r = fw::decode_answer(e);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::malformed);
  EXPECT_NE(r.error().message.find("unknown error code"), std::string::npos) << r.error().message;
  std::string w = *fw::encode(fw::answer_frame{"c", "i", done_reply{}});
  w.back() = 5;  // window_reply: never an answer to a forwarded request
  auto k = fw::decode_answer(w);
  ASSERT_FALSE(k);
  EXPECT_NE(k.error().message.find("unknown answer kind 5"), std::string::npos);
  auto q = fw::decode_answer(fw::encode(frame_of(receive_request{"d"})));
  ASSERT_FALSE(q);
  EXPECT_NE(q.error().message.find("frame type 'Q'"), std::string::npos);
  const std::string good = *fw::encode(fw::answer_frame{"c", "i", message_reply{full_message()}});
  for (std::size_t n = 0; n < good.size(); ++n)
    EXPECT_FALSE(fw::decode_answer(std::string_view(good).substr(0, n))) << n;
}

TEST(ForwardCodec, DeliveryAddressesRoundTripAndRefuseGarbage) {
  delivery_ref d{3, 123456789012ull, 7, "6f1c2a4e-0000-4000-8000-000000000001"};
  auto back = parse_delivery_address(delivery_address(d));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->connection, 3u);
  EXPECT_EQ(back->tag, 123456789012ull);
  EXPECT_EQ(back->partition, 7u);
  EXPECT_EQ(back->request_id, d.request_id);
  for (std::string_view bad : {"", "1 2 3", "1 2 3 ", "x 2 3 id", "1  3 id", "mqtt-client 42"})
    EXPECT_FALSE(parse_delivery_address(bad)) << bad;
  EXPECT_EQ(partition_queue(12), "devicebound.partition.12");
}

}  // namespace
