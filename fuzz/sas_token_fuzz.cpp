// SAS token parser (include/devicebound/auth/sas_token.hpp): never crashes,
// and parse -> print -> parse gives the same token. A parsed token then goes
// through the verifier, which must refuse it (no key of this hub signed it)
// without crashing, and the parsed resource must be stable under printing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "devicebound/auth/authenticate.hpp"
#include "devicebound/auth/sas_token.hpp"

namespace auth = devicebound::auth;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto token = auth::parse_sas_token(text);
  if (!token)
    return 0;
  const std::string printed = to_string(*token);
  const auto again = auth::parse_sas_token(printed);
  if (!again || !(*again == *token) || to_string(*again) != printed)
    std::abort();

  // The verifier on arbitrary tokens: a hub whose only keys are known here.
  static const auth::shared_access_policy policy{
      "service", auth::shared_access_key::from_bytes(std::string(32, 'k')),
      auth::shared_access_key::from_bytes(std::string(32, 'K')),
      auth::access_rights::service_connect};
  const auth::device_key_lookup devices = [](std::string_view) {
    return std::optional<auth::device_credentials>(
        auth::device_credentials{auth::shared_access_key::from_bytes(std::string(32, 'd')),
                                 auth::shared_access_key::from_bytes(std::string(32, 'D')), true});
  };
  const auto now = devicebound::time_point(std::chrono::seconds(1'700'000'000));
  const auto who = auth::authenticate(*token, "hub.example", {&policy, 1}, devices, now);
  if (who) {
    // Only a token really signed with one of the keys above can get here;
    // random input never is, but a seed may be. Its principal must be sane.
    if (who->is_device() != !token->key_name)
      std::abort();
    (void)auth::authorize(*who, auth::access_rights::device_connect, "d");
  } else if (!auth::auth_failure_of(who.error())) {
    std::abort();  // every refusal names its reason
  }
  return 0;
}
