// A device client over AMQP declares full settlement (SPEC 10.15): complete,
// reject and abandon all compile, by lock token and by message, as does the
// run-time `settle`. Its MQTT-to-IoT-Hub counterparts must not compile
// (tests/compile_fail/mqtt/).
#include <devicebound/device_client.hpp>
#include <devicebound/transport/amqp.hpp>

int main() {
  auto client =
      devicebound::device_client<devicebound::amqp::device_connection>::from_connection_string(
          "HostName=h;DeviceId=thermostat-1;SharedAccessKey=AAAA")
          .value();
  devicebound::lock_token token;
  devicebound::message m;
  m.lock_token = token;
  (void)client->complete(token);
  (void)client->reject(token);
  (void)client->abandon(token);
  (void)client->reject(m);
  (void)client->abandon(m);
  (void)client->settle(token, devicebound::disposition::reject);
}
