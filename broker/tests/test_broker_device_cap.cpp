// The plugin's device cap (broker/plugin/device_cap.hpp, plugin_opt_max_devices),
// without a broker: the count stays exact across connects, disconnects and
// takeovers, and back ends are never refused.
// python/tests/test_broker_plugin.py checks the same through mosquitto.
#include <gtest/gtest.h>

#include "../plugin/device_cap.hpp"

namespace {

using devicebound::broker::connection_kind;
using devicebound::broker::device_cap;
constexpr auto none = connection_kind::none;
constexpr auto device = connection_kind::device;
constexpr auto back_end = connection_kind::back_end;

// The plugin's CONNECT: let in and counted, or refused and not.
bool connect(device_cap& cap, connection_kind current, connection_kind incoming) {
  if (!cap.admits(current, incoming))
    return false;
  cap.connected(current, incoming);
  return true;
}

TEST(broker_device_cap, refuses_the_device_beyond_the_cap) {
  device_cap cap(3);
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(connect(cap, none, device)) << i;
  EXPECT_EQ(cap.connected(), 3u);
  EXPECT_FALSE(connect(cap, none, device));
  EXPECT_EQ(cap.connected(), 3u);  // a refusal counts nothing
}

TEST(broker_device_cap, back_ends_are_never_counted_nor_refused) {
  device_cap cap(1);
  EXPECT_TRUE(connect(cap, none, device));
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(connect(cap, none, back_end)) << i;
  EXPECT_EQ(cap.connected(), 1u);
  cap.left(back_end);
  EXPECT_EQ(cap.connected(), 1u);
  EXPECT_FALSE(connect(cap, none, device));
}

TEST(broker_device_cap, a_device_leaving_frees_exactly_one_slot_every_time) {
  device_cap cap(3);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(connect(cap, none, device));
  for (int round = 0; round < 5; ++round) {
    cap.left(device);
    EXPECT_TRUE(connect(cap, none, device)) << round;
    EXPECT_FALSE(connect(cap, none, device)) << round;
    EXPECT_EQ(cap.connected(), 3u) << round;
  }
}

TEST(broker_device_cap, a_takeover_by_the_same_device_needs_no_slot) {
  device_cap cap(2);
  ASSERT_TRUE(connect(cap, none, device));
  ASSERT_TRUE(connect(cap, none, device));
  EXPECT_TRUE(connect(cap, device, device));  // the old connection leaves
  EXPECT_TRUE(connect(cap, device, device));
  EXPECT_EQ(cap.connected(), 2u);
  EXPECT_FALSE(connect(cap, none, device));
  // The taken-over connection's close is no departure (the plugin ignores the
  // disconnect of a connection that is no longer the id's current one).
  cap.left(device);
  EXPECT_EQ(cap.connected(), 1u);
  EXPECT_TRUE(connect(cap, none, device));
}

TEST(broker_device_cap, kinds_changing_under_one_client_id) {
  device_cap cap(1);
  ASSERT_TRUE(connect(cap, none, device));
  // A back end with a device's id, taking its connection over: the device's
  // slot is free again.
  EXPECT_TRUE(connect(cap, device, back_end));
  EXPECT_EQ(cap.connected(), 0u);
  ASSERT_TRUE(connect(cap, none, device));
  // A device taking over a back end's connection needs a slot like any other.
  EXPECT_FALSE(connect(cap, back_end, device));
  cap.left(device);
  EXPECT_TRUE(connect(cap, back_end, device));
  EXPECT_EQ(cap.connected(), 1u);
}

TEST(broker_device_cap, no_cap_and_a_cap_of_zero) {
  device_cap unlimited;
  EXPECT_FALSE(unlimited.limit());
  for (int i = 0; i < 1000; ++i)
    ASSERT_TRUE(connect(unlimited, none, device));
  EXPECT_EQ(unlimited.connected(), 1000u);

  device_cap closed(0);
  EXPECT_FALSE(connect(closed, none, device));
  EXPECT_TRUE(connect(closed, none, back_end));
  EXPECT_EQ(closed.connected(), 0u);
}

TEST(broker_device_cap, leaving_never_goes_below_zero) {
  device_cap cap(1);
  cap.left(device);
  cap.left(none);
  EXPECT_EQ(cap.connected(), 0u);
  EXPECT_TRUE(connect(cap, none, device));
  EXPECT_FALSE(connect(cap, none, device));
}

}  // namespace
