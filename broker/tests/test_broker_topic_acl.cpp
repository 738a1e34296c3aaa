// The plugin's topic rules (broker/plugin/topic_acl.hpp), without a broker;
// python/tests/test_broker_plugin.py checks them through mosquitto.
#include <gtest/gtest.h>

#include "../plugin/topic_acl.hpp"

namespace {

using namespace devicebound::broker;

TEST(broker_topic_acl, classify_device_topics) {
  auto p = classify("devices/dev1/messages/devicebound/%24.mid=1", "dev1");
  EXPECT_EQ(p.area, area::devices);
  EXPECT_EQ(p.owner, owner::self);
  EXPECT_EQ(p.rest, "/messages/devicebound/%24.mid=1");
  EXPECT_TRUE(is_devicebound_rest(p.rest));
  EXPECT_EQ(classify("devices/dev2/messages/devicebound/#", "dev1").owner, owner::other);
  EXPECT_EQ(classify("devices/+/messages/devicebound/#", "dev1").owner, owner::other);
  EXPECT_EQ(classify("devices", "dev1").owner, owner::other);
  EXPECT_EQ(classify("devices/dev1", "dev1").rest, "");
  EXPECT_EQ(classify("devicesx/dev1", "dev1").area, area::other);
}

TEST(broker_topic_acl, classify_extension_topics) {
  auto push = classify("devicebound/device/dev1/message/x", "dev1");
  EXPECT_EQ(push.area, area::push);
  EXPECT_TRUE(push.device_party);
  EXPECT_EQ(push.owner, owner::self);
  EXPECT_EQ(classify("devicebound/service/svc/reply", "dev1").owner, owner::other);
  EXPECT_EQ(classify("devicebound/service", "svc").owner, owner::other);
  auto req = classify("devicebound/hub/device/dev1/complete", "dev1");
  EXPECT_EQ(req.area, area::request);
  EXPECT_TRUE(req.device_party);
  EXPECT_EQ(req.owner, owner::self);
  EXPECT_EQ(classify("devicebound/hub", "dev1").owner, owner::other);
  EXPECT_EQ(classify("devicebound/hub/service/dev1/send", "dev1").device_party, false);
  EXPECT_EQ(classify("devicebound/status/hub", "x").area, area::status);
  EXPECT_EQ(classify("devicebound/broker/subscribed/d", "x").area, area::broker);
  EXPECT_EQ(classify("devicebound", "x").area, area::other);
  EXPECT_EQ(classify("devicebound/", "x").area, area::other);
  EXPECT_EQ(classify("devicebound/#", "x").area, area::other);
}

TEST(broker_topic_acl, access_rules) {
  const auto own = classify("devices/d/messages/events/", "d");
  EXPECT_TRUE(may_write(own, true));
  EXPECT_FALSE(may_write(classify("devices/d/messages/devicebound/x", "d"), true));
  EXPECT_TRUE(may_write(classify("devices/d/messages/devicebound/x", "hub"), false));
  EXPECT_FALSE(may_read(classify("devices/d/messages/devicebound/#", "hub"), false));
  EXPECT_FALSE(may_write(classify("devicebound/broker/x", "hub"), false));
  EXPECT_TRUE(may_read(classify("devicebound/broker/#", "hub"), false));
  EXPECT_FALSE(may_read(classify("devicebound/broker/#", "d"), true));
  EXPECT_TRUE(may_read(classify("devicebound/status/hub", "d"), true));
  EXPECT_FALSE(may_read(classify("devicebound/service/d/#", "d"), true));
  EXPECT_TRUE(may_read(classify("devicebound/service/s/#", "s"), false));
}

TEST(broker_topic_acl, helpers) {
  EXPECT_EQ(strip_share("$share/g/devices/d/#"), "devices/d/#");
  EXPECT_EQ(strip_share("$share/g"), "$share/g");
  EXPECT_TRUE(is_devicebound_topic_of_anyone("devices/x/messages/devicebound"));
  EXPECT_TRUE(is_devicebound_topic_of_anyone("devices/x/messages/devicebound/a"));
  EXPECT_FALSE(is_devicebound_topic_of_anyone("devices/x/messages/deviceboundx"));
  EXPECT_FALSE(is_devicebound_topic_of_anyone("devices/x"));
  EXPECT_TRUE(filter_matches("devicebound/broker/#", "devicebound/broker/subscribed/d"));
  EXPECT_TRUE(filter_matches("devicebound/broker/+/d", "devicebound/broker/subscribed/d"));
  EXPECT_TRUE(filter_matches("#", "devicebound/broker/subscribed/d"));
  EXPECT_TRUE(filter_matches("a/#", "a"));
  EXPECT_FALSE(filter_matches("devicebound/broker/+", "devicebound/broker/subscribed/d"));
  EXPECT_TRUE(has_wildcard_or_slash("a/b"));
  EXPECT_FALSE(has_wildcard_or_slash("dev-1"));
}

TEST(broker_topic_acl, device_usernames) {
  auto d = parse_device_username("hub.example/dev1/?api-version=2021-04-12");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->host, "hub.example");
  EXPECT_EQ(d->device, "dev1");
  EXPECT_FALSE(parse_device_username(nullptr));
  EXPECT_FALSE(parse_device_username("hub"));
  EXPECT_FALSE(parse_device_username("hub/?x"));
  EXPECT_FALSE(parse_device_username("/dev1/?x"));
  EXPECT_TRUE(is_device_client("h/dev1/?a", "dev1"));
  EXPECT_FALSE(is_device_client("h/dev1/?a", "dev2"));
}

}  // namespace
