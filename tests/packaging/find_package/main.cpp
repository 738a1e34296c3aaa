// Built against an installed devicebound by the packaging_find_package test.
#include <cstdio>
#include <devicebound/version.hpp>
#include <string_view>

int main() {
  std::printf("devicebound %.*s via find_package\n", static_cast<int>(devicebound::version.size()),
              devicebound::version.data());
  return devicebound::version == std::string_view{DEVICEBOUND_EXPECTED_VERSION} ? 0 : 1;
}
