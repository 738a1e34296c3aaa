// expect-error: the transport cannot purge a device queue
// IoT Hub has no AMQP surface for purging a device queue (it is an HTTPS call,
// SPEC 11): a service client over AMQP refuses purge() at compile time.
#include <devicebound/service_client.hpp>
#include <devicebound/transport/amqp.hpp>

int main() {
  auto client =
      devicebound::service_client<devicebound::amqp::service_connection>::from_connection_string(
          "HostName=h;SharedAccessKeyName=p;SharedAccessKey=AAAA")
          .value();
  (void)client->purge("thermostat-1");
}
