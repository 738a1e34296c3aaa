// The subcommands of `devicebound`. Each `add_*` registers its subcommands on
// the app; a subcommand's callback runs it and stores its exit code in `code`.
#pragma once

#include <CLI/CLI.hpp>

namespace devicebound::cli {

/// `devicebound up`: a local IoT Hub in one command (up.cpp).
void add_up_command(CLI::App& app, int& code);
/// `device`, `policy`, `c2d`, `feedback`: the client commands over IoT Hub's own
/// protocols, AMQP and HTTPS (client_commands.cpp).
void add_client_commands(CLI::App& app, int& code);

}  // namespace devicebound::cli
