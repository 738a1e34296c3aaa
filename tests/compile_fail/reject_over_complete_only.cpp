// expect-error: the transport cannot reject: MQTT to IoT Hub has no reject (SPEC 1.6)
// A device client over a transport that can only complete (MQTT to IoT Hub,
// SPEC 1.6) must refuse reject() at compile time, not at run time.
#include <devicebound/device_client.hpp>
#include <devicebound/transport/inproc.hpp>

int main() {
  devicebound::inproc::hub_host<devicebound::manual_clock> host;
  devicebound::device_client client(host.complete_only_device("thermostat-1"));
  devicebound::message m;
  (void)client.reject(m);
}
