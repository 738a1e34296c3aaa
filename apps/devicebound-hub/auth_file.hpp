// The keys devicebound-hub verifies SAS tokens with (`--auth-file`): the broker
// plugin's file format (docs/stock-devices.md, "Authentication"), extended so a
// policy line may name its rights.
//
//   # one entry a line, '#' starts a comment
//   dev1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
//   policy service ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==
//   policy ops ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ== RegistryRead, ServiceConnect
//
// A policy line without rights gets the rights of IoT Hub's default policy of
// that name (SPEC 12.9.1: `iothubowner`, `service`, `device`, `registryRead`,
// `registryReadWrite`); any other name gets ServiceConnect, which is what the
// plugin's policy lines are for (back ends). A file with rights on a policy
// line is not readable by the broker plugin (it takes three fields).
#pragma once

#include <devicebound/auth/policy.hpp>
#include <devicebound/errors.hpp>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace devicebound::hubd {

struct auth_registry {
  std::vector<auth::shared_access_policy> policies;
  std::map<std::string, auth::device_credentials, std::less<>> devices;

  /// The lookup `auth::authenticate` takes.
  auth::device_key_lookup device_lookup() const;
};

/// Parses the text of an auth file; errors name the line.
result<auth_registry> parse_auth_file(std::string_view text, std::string_view name = "auth file");
/// Reads and parses the file at `path`.
result<auth_registry> load_auth_file(const std::string& path);

}  // namespace devicebound::hubd
