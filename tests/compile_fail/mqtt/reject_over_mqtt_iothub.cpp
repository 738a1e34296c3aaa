// expect-error: the transport cannot reject: MQTT to IoT Hub has no reject (SPEC 1.6)
// A device client over MQTT as a stock IoT Hub device (complete only, SPEC 1.6)
// must refuse reject() at compile time, while the same call over AMQP compiles
// (tests/compile_pass/amqp_full_settlement.cpp).
#include <devicebound/device_client.hpp>
#include <devicebound/transport/mqtt.hpp>

int main() {
  devicebound::device_client client(devicebound::mqtt::iothub_device_connection("thermostat-1"));
  devicebound::lock_token token;
  (void)client.reject(token);
}
