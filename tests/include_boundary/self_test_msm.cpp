// Self-test of the include-boundary check: this TU pulls in the Boost.MSM retry
// machine, so the check must fail on it and print the chain.
#include <devicebound/device_client.hpp>
#include <devicebound/retry/machine.hpp>

int main() {
  return 0;
}
