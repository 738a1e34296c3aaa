#include "commands.hpp"
#include "exit_codes.hpp"

namespace devicebound::cli {

void add_up_command(CLI::App& app, int& code) {
  auto* up =
      app.add_subcommand("up", "start a local IoT Hub (MQTT, AMQP, HTTPS) in the foreground");
  up->callback([&code] { code = exit_failure; });
}

}  // namespace devicebound::cli
