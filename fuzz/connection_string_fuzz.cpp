// Connection string parser (include/devicebound/auth/connection_string.hpp):
// never crashes, and parse -> print -> parse gives the same value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "devicebound/auth/connection_string.hpp"

namespace auth = devicebound::auth;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto cs = auth::parse_connection_string(text);
  if (!cs)
    return 0;
  const std::string printed = to_string(*cs);
  const auto again = auth::parse_connection_string(printed);
  if (!again || !(*again == *cs) || to_string(*again) != printed)
    std::abort();
  return 0;
}
