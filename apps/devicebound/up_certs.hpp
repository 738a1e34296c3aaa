// The certificates of `devicebound up`: a CA made once per state directory and
// a server certificate it signs for every name devices and back ends may use
// (docs: README "Local IoT Hub"). OpenSSL's libcrypto, no `openssl` program.
#pragma once

#include <string>
#include <vector>

namespace devicebound::cli {

struct tls_files {
  std::string ca_cert;      ///< PEM: what clients trust
  std::string ca_key;       ///< PEM, 0600: signs server certificates
  std::string server_cert;  ///< PEM: the server certificate, then the CA (a chain)
  std::string server_key;   ///< PEM, 0600
};

/// Makes the CA if `files.ca_cert` is missing, and a server certificate when
/// there is none, when it lacks one of `names` (DNS names or IP addresses) or
/// expires within 30 days. Returns an empty string, or what went wrong.
std::string ensure_certificates(const tls_files& files, const std::vector<std::string>& names,
                                bool& made_ca, bool& made_server);

}  // namespace devicebound::cli
