#include "commands.hpp"
#include "exit_codes.hpp"

namespace devicebound::cli {

void add_client_commands(CLI::App& app, int& code) {
  (void)app;
  (void)code;
}

}  // namespace devicebound::cli
