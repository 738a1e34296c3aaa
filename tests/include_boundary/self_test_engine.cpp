// Self-test of the include-boundary check: this TU pulls in the engine, so the
// check must fail on it (the ctest is marked WILL_FAIL) and print the chain.
#include <devicebound/device_client.hpp>
#include <devicebound/hub.hpp>

int main() {
  return 0;
}
