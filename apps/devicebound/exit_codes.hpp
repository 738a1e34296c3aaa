// Exit codes of `devicebound` (docs/cli.md). Scripts branch on them; keep them stable.
#pragma once

namespace devicebound::cli {

enum exit_code : int {
  exit_ok = 0,
  exit_failure = 1,      ///< anything not below (server error, bad response, I/O)
  exit_usage = 2,        ///< bad flags or arguments (CLI11 parse errors too)
  exit_auth = 3,         ///< 401/403: wrong key, expired token, missing right
  exit_not_found = 4,    ///< 404: unknown device, no such message
  exit_unavailable = 5,  ///< cannot connect, port taken, broker or plugin missing, timeout
};

}  // namespace devicebound::cli
