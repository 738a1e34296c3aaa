// Built with devicebound's source tree added as a subdirectory by the
// packaging_add_subdirectory test.
#include <cstdio>
#include <devicebound/version.hpp>
#include <string_view>

int main() {
  std::printf("devicebound %.*s via add_subdirectory\n",
              static_cast<int>(devicebound::version.size()), devicebound::version.data());
  return devicebound::version == std::string_view{DEVICEBOUND_EXPECTED_VERSION} ? 0 : 1;
}
