// The include boundary (issue 10, item 1): what a program that uses both
// clients over MQTT compiles. cmake/devicebound-include-boundary.cmake reads
// its include tree and fails if the engine (hub, queue, lifecycle, feedback,
// validate), a store, Boost.MSM or nlohmann/json appears in it.
#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/mqtt.hpp>

int main() {
  return 0;
}
