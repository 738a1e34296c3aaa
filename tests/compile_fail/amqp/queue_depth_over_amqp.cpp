// expect-error: the transport cannot read a queue depth
// IoT Hub has no AMQP surface for a device queue's depth (the registry's
// cloudToDeviceMessageCount, over HTTPS, SPEC 2.10): a service client over AMQP
// refuses queue_depth() at compile time.
#include <devicebound/service_client.hpp>
#include <devicebound/transport/amqp.hpp>

int main() {
  auto client =
      devicebound::service_client<devicebound::amqp::service_connection>::from_connection_string(
          "HostName=h;SharedAccessKeyName=p;SharedAccessKey=AAAA")
          .value();
  (void)client->queue_depth("thermostat-1");
}
