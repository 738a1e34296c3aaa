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
  EXPECT_EQ(push.party, party::device);
  EXPECT_EQ(push.owner, owner::self);
  EXPECT_EQ(classify("devicebound/service/svc/reply", "dev1").owner, owner::other);
  EXPECT_EQ(classify("devicebound/service", "svc").owner, owner::other);
  auto req = classify("devicebound/hub/device/dev1/complete", "dev1");
  EXPECT_EQ(req.area, area::request);
  EXPECT_EQ(req.party, party::device);
  EXPECT_EQ(req.owner, owner::self);
  EXPECT_EQ(classify("devicebound/hub", "dev1").owner, owner::other);
  EXPECT_EQ(classify("devicebound/hub/service/dev1/send", "dev1").party, party::service);
  EXPECT_EQ(classify("devicebound/status/hub", "x").area, area::status);
  EXPECT_EQ(classify("devicebound/broker/subscribed/d", "x").area, area::broker);
  EXPECT_EQ(classify("devicebound", "x").area, area::other);
  EXPECT_EQ(classify("devicebound/", "x").area, area::other);
  EXPECT_EQ(classify("devicebound/#", "x").area, area::other);
}

constexpr access_rights all = access_rights::all;
constexpr access_rights none = access_rights::none;
constexpr access_rights service = access_rights::service_connect;
constexpr access_rights device_connect = access_rights::device_connect;
constexpr access_rights registry_write = access_rights::registry_write;

bool reads(std::string_view topic, std::string_view id, bool device, access_rights r) {
  return allowed(access::read, topic, id, device, r);
}
bool writes(std::string_view topic, std::string_view id, bool device, access_rights r) {
  return allowed(access::write, topic, id, device, r);
}

TEST(broker_topic_acl, access_rules) {
  EXPECT_TRUE(writes("devices/d/messages/events/", "d", true, device_connect));
  EXPECT_FALSE(writes("devices/d/messages/devicebound/x", "d", true, device_connect));
  EXPECT_TRUE(writes("devices/d/messages/devicebound/x", "hub", false, all));
  EXPECT_FALSE(reads("devices/d/messages/devicebound/#", "hub", false, all));
  EXPECT_FALSE(writes("devicebound/broker/x", "hub", false, all));
  EXPECT_TRUE(reads("devicebound/broker/#", "hub", false, all));
  EXPECT_FALSE(reads("devicebound/broker/#", "d", true, all));
  EXPECT_TRUE(reads("devicebound/status/hub", "d", true, device_connect));
  EXPECT_FALSE(reads("devicebound/service/d/#", "d", true, all));
  EXPECT_TRUE(reads("devicebound/service/s/#", "s", false, all));
  EXPECT_TRUE(reads("$share/g/devicebound/hub/#", "hub", false, service));
  EXPECT_FALSE(reads("$share/g/devicebound/hub/#", "hub", false, device_connect));
}

// docs/security.md "The permission matrix", findings 1-3: a back end's topics
// follow its rights.
TEST(broker_topic_acl, back_end_requests_need_the_party_right) {
  const std::string send = "devicebound/hub/service/be/send/dev1/%24.rid=1";
  const std::string purge = "devicebound/hub/service/be/purge/dev1/%24.rid=1";
  const std::string add = "devicebound/hub/admin/be/add/dev9/%24.rid=1";
  const std::string remove = "devicebound/hub/admin/be/remove/dev9/%24.rid=1";
  const std::string attach = "devicebound/hub/device/be/attach/%24.conn=c&%24.rid=1";
  for (const auto& t : {send, purge}) {
    EXPECT_TRUE(writes(t, "be", false, service)) << t;
    EXPECT_FALSE(writes(t, "be", false, device_connect)) << t;  // finding 1
    EXPECT_FALSE(writes(t, "be", false, registry_write)) << t;
    EXPECT_FALSE(writes(t, "other", false, all)) << t;  // in another's name
  }
  for (const auto& t : {add, remove}) {
    EXPECT_TRUE(writes(t, "be", false, all)) << t;
    EXPECT_TRUE(writes(t, "be", false, registry_write | service)) << t;
    EXPECT_FALSE(writes(t, "be", false, service)) << t;  // finding 2
    EXPECT_FALSE(writes(t, "be", false, device_connect)) << t;
    EXPECT_FALSE(writes(t, "be", false, access_rights::registry_read | service)) << t;
  }
  EXPECT_TRUE(writes(attach, "be", false, device_connect));
  EXPECT_FALSE(writes(attach, "be", false, service));  // finding 3
  // A request of no known party: the hub ignores it; any back end in its name.
  EXPECT_TRUE(writes("devicebound/hub/nobody/be/x/", "be", false, device_connect));
  EXPECT_FALSE(writes("devicebound/hub/nobody/be/x/", "be", true, all));
  // A device: its own device-party requests, whatever its token's policy grants.
  EXPECT_TRUE(writes("devicebound/hub/device/d/complete/", "d", true, device_connect));
  EXPECT_FALSE(writes("devicebound/hub/service/d/send/x/", "d", true, all));
  EXPECT_FALSE(writes("devicebound/hub/admin/d/add/x/", "d", true, all));
}

TEST(broker_topic_acl, back_end_pushes_need_the_party_right) {
  EXPECT_TRUE(reads("devicebound/service/be/#", "be", false, service));
  EXPECT_FALSE(reads("devicebound/service/be/#", "be", false, device_connect));
  EXPECT_TRUE(reads("devicebound/admin/be/reply/x", "be", false, registry_write));
  EXPECT_FALSE(reads("devicebound/admin/be/#", "be", false, service));
  EXPECT_TRUE(reads("devicebound/device/be/#", "be", false, device_connect));
  EXPECT_FALSE(reads("devicebound/device/be/#", "be", false, service));  // finding 3
  EXPECT_FALSE(reads("devicebound/device/be/#", "be", false, none));
  EXPECT_TRUE(reads("devicebound/status/hub", "be", false, none));
}

TEST(broker_topic_acl, back_end_as_a_device_needs_device_connect) {
  // Finding 3: client id {id}, a back end's username, a service token.
  const std::string sub = "devices/dev1/messages/devicebound/#";
  EXPECT_FALSE(reads(sub, "dev1", false, service));
  EXPECT_FALSE(reads("devices/dev1/messages/devicebound/%24.mid=1", "dev1", false, service));
  EXPECT_TRUE(reads(sub, "dev1", false, device_connect));
  EXPECT_TRUE(reads(sub, "dev1", true, device_connect));
  EXPECT_FALSE(reads(sub, "dev2", false, all));
  // Telemetry as device dev1: DeviceConnect and the own id.
  EXPECT_TRUE(writes("devices/dev1/messages/events/", "dev1", false, device_connect));
  EXPECT_FALSE(writes("devices/dev1/messages/events/", "dev1", false, service));
  EXPECT_FALSE(writes("devices/dev1/messages/events/", "be", false, all));
}

TEST(broker_topic_acl, the_hub_needs_service_connect_only) {
  // What devicebound-hub reads and writes (docs/protocol.md): its connection
  // needs ServiceConnect, whatever else its policy grants.
  const std::string id = "devicebound-hub";
  for (const access_rights r : {service, all}) {
    EXPECT_TRUE(reads("devicebound/hub/#", id, false, r));
    EXPECT_TRUE(reads("devicebound/broker/#", id, false, r));
    EXPECT_TRUE(reads("devicebound/hub/service/svc/send/dev1/%24.rid=1", id, false, r));
    EXPECT_TRUE(reads("devicebound/broker/subscribed/dev1", id, false, r));
    EXPECT_TRUE(writes("devices/dev1/messages/devicebound/%24.mid=m", id, false, r));
    EXPECT_TRUE(writes("devicebound/device/dev1/message/%24.lock=x", id, false, r));
    EXPECT_TRUE(writes("devicebound/service/svc/reply/%24.rid=1", id, false, r));
    EXPECT_TRUE(writes("devicebound/admin/a/reply/%24.rid=1", id, false, r));
    EXPECT_TRUE(writes("devicebound/status/hub", id, false, r));
  }
  // Without ServiceConnect, none of it: the hub's inputs are not a device's.
  for (const access_rights r : {device_connect, registry_write, none}) {
    EXPECT_FALSE(reads("devicebound/hub/#", id, false, r));
    EXPECT_FALSE(reads("devicebound/broker/subscribed/dev1", id, false, r));
    EXPECT_FALSE(writes("devices/dev1/messages/devicebound/%24.mid=m", id, false, r));
    EXPECT_FALSE(writes("devicebound/device/dev1/message/%24.lock=x", id, false, r));
    EXPECT_FALSE(writes("devicebound/status/hub", id, false, r));
  }
  // Anything outside devicebound's topics: any back end, never a device.
  EXPECT_TRUE(writes("other/topic", "be", false, none));
  EXPECT_TRUE(reads("#", "be", false, none));
  EXPECT_FALSE(reads("#", "d", true, all));
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
