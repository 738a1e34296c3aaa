// devicebound: a local IoT Hub in one command (`devicebound up`) and a CLI like
// `az iot` over IoT Hub's own protocols (docs/cli.md).
#include <CLI/CLI.hpp>
#include <iostream>

#include "commands.hpp"
#include "exit_codes.hpp"

int main(int argc, char** argv) {
  using namespace devicebound::cli;
  CLI::App app{"devicebound: a local Azure IoT Hub for C2D messaging, and its CLI"};
  app.require_subcommand(1);
  int code = exit_ok;
  add_up_command(app, code);
  add_client_commands(app, code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    (void)app.exit(e);
    return exit_usage;
  }
  return code;
}
