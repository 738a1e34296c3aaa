// expect-error: the transport cannot abandon: MQTT to IoT Hub has no abandon (SPEC 1.6)
// A device client over a transport that can only complete (MQTT to IoT Hub,
// SPEC 1.6) must refuse abandon() at compile time, not at run time.
#include <devicebound/device_client.hpp>
#include <devicebound/transport/inproc.hpp>

int main() {
  devicebound::inproc::hub_host<devicebound::manual_clock> host;
  devicebound::device_client client(host.complete_only_device("thermostat-1"));
  devicebound::lock_token token;
  (void)client.abandon(token);
}
