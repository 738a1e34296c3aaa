// `devicebound up`: a local IoT Hub in one command (README "Local IoT Hub").
//
// The state directory holds everything that must survive a restart:
//
//   version                 the layout version of this directory (state_version)
//   ca.crt ca.key           the CA clients trust (made on the first run)
//   server.crt server.key   the server certificate, remade when a --host is new
//   seed                    the hub's --auth-file: IoT Hub's default policies and
//                           their keys; only a seed (the registry in hub.db is
//                           the truth after the first start)
//   hub.db                  the hub's store: queues, feedback, the identity registry
//   hub.toml mosquitto.conf written on every run
//   mosquitto/              mosquitto's and the plugin's persistence
//   log/                    the last run's output of mosquitto and the hub
//   lock                    held while `up` runs: one `up` per directory
//
// Every run starts mosquitto (with the broker plugin reading the registry from
// hub.db) and then devicebound-hub as children tracked by PID, waits until
// every front door is ready, prints the connection strings, and stops both on
// SIGINT/SIGTERM, the hub first. Nothing is left running when it fails.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <pwd.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <devicebound/auth/base64.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "exit_codes.hpp"
#include "up_certs.hpp"
#include "up_child.hpp"
#include "up_mosquitto_template.hpp"

namespace devicebound::cli {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

/// The layout of the state directory. A directory written by a newer layout is
/// refused, never rewritten.
constexpr int state_version = 1;

/// `--mqtt-max-connections`: its range, as the hub's --amqp-max-connections and
/// --https-max-connections (docs/security.md, "Limits").
constexpr int min_mqtt_connections = 1;
constexpr int max_mqtt_connections = 100000;

/// IoT Hub's default shared access policies (SPEC 12.9.1); the hub gives each
/// its default rights.
constexpr const char* default_policies[] = {"iothubowner", "service", "device", "registryRead",
                                            "registryReadWrite"};

constexpr const char* plugin_file = "devicebound_mosquitto_plugin.so";

/// This build's devicebound-hub has the HTTPS door (apps/CMakeLists.txt checks).
#ifdef DEVICEBOUND_UP_HTTPS
constexpr bool https = true;
#else
constexpr bool https = false;
#endif

struct up_options {
  std::string state_dir;
  std::vector<std::string> devices;
  std::vector<std::string> hosts;
  std::string bind = "127.0.0.1";
  std::optional<int> mqtt_port, amqp_port, https_port;
  /// max_connections of the broker's device listener (the TLS one, or plain with
  /// --insecure), and the plugin's exact cap on connected devices (plugin_opt_max_devices).
  int mqtt_max_connections = 1000;
  std::string plugin, hub, mosquitto;
  std::vector<std::string> hub_args;
  bool insecure = false;
  bool verbose = false;
  std::string output = "text";
};

/// A failure that ends `up` with `code` after `message` is printed.
struct up_failure {
  int code;
  std::string message;
};

// --- small helpers ----------------------------------------------------------------------------

void say(const std::string& line) {
  std::fprintf(stderr, "devicebound up: %s\n", line.c_str());
  std::fflush(stderr);
}

bool is_executable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

fs::path self_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : exe.parent_path();
}

std::string random_key() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1)
    throw up_failure{exit_failure, "no random bytes for a key (OpenSSL RAND_bytes failed)"};
  return auth::base64_encode(std::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes));
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path& p, const std::string& text, mode_t mode) {
  const std::string tmp = p.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  // The mode even if a stale temporary file of another mode was there (keys: 0600).
  if (fd >= 0 && ::fchmod(fd, mode) != 0) {
    ::close(fd);
    throw up_failure{exit_failure, "cannot set the mode of " + tmp};
  }
  bool ok = fd >= 0;
  std::size_t done = 0;
  while (ok && done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    ok = n > 0;
    done += ok ? static_cast<std::size_t>(n) : 0;
  }
  if (fd >= 0)
    ok = ::close(fd) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), p.c_str()) != 0)
    throw up_failure{exit_failure, "cannot write " + p.string() + ": " + std::strerror(errno)};
}

/// A TOML basic string.
std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out + '"';
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + '"';
}

bool is_loopback(const std::string& address) {
  in_addr v4{};
  if (::inet_pton(AF_INET, address.c_str(), &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, address.c_str(), &v6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&v6);
  return address == "localhost";
}

/// `host:port` as listeners and connection strings write it ([v6]:port).
std::string host_port(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? "[" + host + "]:" + std::to_string(port)
                                             : host + ":" + std::to_string(port);
}

// --- finding the programs -----------------------------------------------------------------------

/// `name` on PATH, or in the `sbin` beside a PATH entry's `bin` (Debian installs
/// mosquitto in /usr/sbin, which is not on a user's PATH). Empty if none.
std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string_view rest = path ? path : "";
  std::vector<fs::path> dirs;
  while (!rest.empty() || path) {
    const auto colon = rest.find(':');
    const std::string_view dir = rest.substr(0, colon);
    if (!dir.empty())
      dirs.emplace_back(dir);
    if (colon == std::string_view::npos)
      break;
    rest.remove_prefix(colon + 1);
  }
  for (const auto& d : dirs)
    if (is_executable(d / name))
      return (d / name).string();
  for (const auto& d : dirs)
    if (d.filename() == "bin" && is_executable(d.parent_path() / "sbin" / name))
      return (d.parent_path() / "sbin" / name).string();
  return {};
}

struct programs {
  std::string mosquitto, plugin, hub;
};

programs find_programs(const up_options& o) {
  programs p;
  const fs::path here = self_dir();
  p.mosquitto = !o.mosquitto.empty() ? o.mosquitto : find_on_path("mosquitto");
  if (p.mosquitto.empty() || !is_executable(p.mosquitto))
    throw up_failure{exit_unavailable,
                     o.mosquitto.empty()
                         ? "mosquitto is not installed (not on PATH nor in the sbin beside a PATH "
                           "entry): install it (apt-get install mosquitto) or name it with "
                           "--mosquitto PATH"
                         : "--mosquitto " + o.mosquitto + ": not an executable file"};
  if (!o.plugin.empty()) {
    if (!is_file(o.plugin))
      throw up_failure{exit_unavailable, "--plugin " + o.plugin + ": no such file"};
    p.plugin = fs::absolute(o.plugin).string();
  } else {
    // Beside this program, in the build tree (build/apps/ -> build/broker/), installed.
    for (const fs::path& c :
         {here / plugin_file, here.parent_path() / "broker" / plugin_file,
          here.parent_path() / DEVICEBOUND_INSTALL_LIBDIR / "devicebound" / plugin_file}) {
      if (is_file(c)) {
        p.plugin = c.lexically_normal().string();
        break;
      }
    }
    if (p.plugin.empty())
      throw up_failure{exit_unavailable,
                       std::string("the broker plugin ") + plugin_file +
                           " is not beside devicebound, in its build tree or installed under " +
                           (here.parent_path() / DEVICEBOUND_INSTALL_LIBDIR / "devicebound")
                               .lexically_normal()
                               .string() +
                           ": build it (target devicebound_mosquitto_plugin) or name it with "
                           "--plugin PATH"};
  }
  if (!o.hub.empty()) {
    if (!is_executable(o.hub))
      throw up_failure{exit_unavailable, "--hub " + o.hub + ": not an executable file"};
    p.hub = fs::absolute(o.hub).string();
  } else if (is_executable(here / "devicebound-hub")) {
    p.hub = (here / "devicebound-hub").string();
  } else if (const auto on_path = find_on_path("devicebound-hub"); !on_path.empty()) {
    p.hub = on_path;
  } else {
    throw up_failure{exit_unavailable, "devicebound-hub is not beside devicebound (" +
                                           here.string() +
                                           ") nor on PATH: build it or name it with --hub PATH"};
  }
  return p;
}

// --- ports ------------------------------------------------------------------------------------

/// Tries to bind `address:port` as the broker and the hub will (SO_REUSEADDR).
/// 0 if it can; else errno. With port 0 the kernel's choice is stored in `port`.
int try_bind(const std::string& address, int& port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (::inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<std::uint16_t>(port));
    len = sizeof *v4;
  } else if (::inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<std::uint16_t>(port));
    len = sizeof *v6;
  } else {
    return EINVAL;
  }
  const int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return errno;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0 ? 0 : errno;
  if (rc == 0 && port == 0) {
    len = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    port = ntohs(ss.ss_family == AF_INET ? v4->sin_port : v6->sin6_port);
  }
  ::close(fd);
  return rc;
}

struct port_plan {
  int mqtt = 0, amqp = 0, https = 0;
  int broker_plain = 0;  ///< the broker's loopback listener for the hub
};

/// One front door's port: the flag's, else IoT Hub's when it can be bound,
/// else (a privileged port without the privilege) `fallback`.
int choose_port(const std::string& bind, const char* door, const char* flag,
                std::optional<int> given, int iothub_port, int fallback, bool& fell_back) {
  int port = given.value_or(iothub_port);
  if (port < 0 || port > 65535)
    throw up_failure{exit_usage, std::string(flag) + " " + std::to_string(port) +
                                     ": not a port (0..65535; 0 picks a free one)"};
  int rc = try_bind(bind, port);
  if (rc == EACCES && !given) {
    fell_back = true;
    say(std::string(door) + ": port " + std::to_string(port) + " needs privileges here; using " +
        std::to_string(fallback) + " (choose with " + flag +
        ", or allow it: sudo setcap cap_net_bind_service=+ep on the hub)");
    port = fallback;
    rc = try_bind(bind, port);
  }
  if (rc == EADDRINUSE)
    throw up_failure{exit_unavailable,
                     std::string(door) + " port " + std::to_string(port) + " on " + bind +
                         " is taken (another IoT Hub emulator, broker or `devicebound up`?): "
                         "stop it, or choose another port with " +
                         flag + " N (0 picks a free one)"};
  if (rc != 0)
    throw up_failure{exit_unavailable, std::string(door) + " port " + std::to_string(port) +
                                           " on " + bind +
                                           " cannot be bound: " + std::strerror(rc) +
                                           " (choose another with " + flag + ")"};
  return port;
}

// --- the state directory --------------------------------------------------------------------

std::string default_state_dir() {
  const auto absolute = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v && v[0] == '/' ? v : nullptr;  // relative values are ignored (XDG)
  };
  if (const char* x = absolute("XDG_STATE_HOME"))
    return (fs::path(x) / "devicebound").string();
  if (const char* h = absolute("HOME"))
    return (fs::path(h) / ".local" / "state" / "devicebound").string();
  throw up_failure{exit_usage, "neither $XDG_STATE_HOME nor $HOME is set: give --state-dir"};
}

/// Creates or checks the directory and takes its lock (held until exit).
/// Returns true on the first run.
bool open_state_dir(const fs::path& dir, int& lock_fd) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw up_failure{exit_unavailable,
                     "cannot create the state directory " + dir.string() + ": " + ec.message()};
  ::chmod(dir.c_str(), 0700);  // keys live here
  lock_fd = ::open((dir / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
    throw up_failure{exit_unavailable,
                     "the state directory " + dir.string() +
                         " is in use by another `devicebound up` (stop it, or choose another "
                         "--state-dir)"};
  const fs::path version = dir / "version";
  if (!fs::exists(version)) {
    // Never write keys into a directory that holds something else.
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename() != "lock")
        throw up_failure{exit_unavailable, "--state-dir " + dir.string() +
                                               " is not empty and has no devicebound version "
                                               "file: choose an empty or new directory"};
    write_text(version, std::to_string(state_version) + "\n", 0644);
    return true;
  }
  const std::string text = read_text(version);
  int v = 0;
  try {
    v = std::stoi(text);
  } catch (...) {
    v = -1;
  }
  if (v > state_version)
    throw up_failure{exit_unavailable, "the state directory " + dir.string() +
                                           " was written by a newer devicebound "
                                           "(state version " +
                                           std::to_string(v) + "; this one knows " +
                                           std::to_string(state_version) +
                                           "): upgrade devicebound, or choose another --state-dir"};
  if (v < 1)
    throw up_failure{exit_unavailable, dir.string() + "/version is not a state version ('" + text +
                                           "'): not a devicebound state directory?"};
  return false;
}

struct seed_file {
  std::map<std::string, std::string> policy_keys;  ///< name -> primary key
};

/// The seed: the policies made on the first run (kept: its keys are what the
/// hub's registry starts with, and what the hub connects to the broker with).
seed_file ensure_seed(const fs::path& path) {
  seed_file s;
  if (fs::exists(path)) {
    std::istringstream in(read_text(path));
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string kind, name, key;
      if (f >> kind >> name >> key && kind == "policy")
        s.policy_keys[name] = key;
    }
  }
  if (s.policy_keys.count("iothubowner"))
    return s;
  std::string text =
      "# devicebound up: the seed of the hub's identity registry (devicebound-hub --auth-file).\n"
      "# IoT Hub's default shared access policies, with the rights of their names.\n"
      "# Only a seed: after the first start the registry in hub.db is the truth.\n";
  for (const char* p : default_policies) {
    s.policy_keys[p] = random_key();
    text += "policy " + std::string(p) + " " + s.policy_keys[p] + "\n";
  }
  write_text(path, text, 0600);
  return s;
}

// --- the registry, read from the hub's store ---------------------------------------------

struct registry_keys {
  std::map<std::string, std::string> policies;  ///< name -> primary key
  std::map<std::string, std::string> devices;   ///< sas devices: id -> primary key
};

/// Reads keys the way the broker plugin does: read-only, beside the running hub.
std::optional<registry_keys> read_registry(const fs::path& db_path, std::string& why) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    why = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return std::nullopt;
  }
  sqlite3_busy_timeout(db, 5000);
  registry_keys r;
  const auto query = [&](const char* sql, std::map<std::string, std::string>& out) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) != SQLITE_OK) {
      why = sqlite3_errmsg(db);
      return false;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const auto* k = sqlite3_column_text(st, 0);
      const auto* v = sqlite3_column_text(st, 1);
      if (k && v)
        out[reinterpret_cast<const char*>(k)] = reinterpret_cast<const char*>(v);
    }
    if (rc != SQLITE_DONE)
      why = sqlite3_errmsg(db);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE;
  };
  const bool ok = query("SELECT name, primary_key FROM policies", r.policies) &&
                  query(
                      "SELECT device_id, primary_key FROM identities WHERE auth_type = 'sas' "
                      "AND status = 'enabled' ORDER BY device_id",
                      r.devices);
  sqlite3_close(db);
  if (!ok)
    return std::nullopt;
  return r;
}

// --- the configuration files ------------------------------------------------------------------

/// broker/mosquitto.conf.in (compiled in), filled in. `@USER@` is the invoking
/// user, who owns the state directory (as root, mosquitto would otherwise
/// switch to user `mosquitto`, who could not write it).
std::string mosquitto_conf(const port_plan& ports, const std::string& bind, bool insecure,
                           int max_connections, const fs::path& state, const tls_files& tls,
                           const std::string& plugin, const std::string& hub_host) {
  const passwd* pw = ::getpwuid(::geteuid());
  const std::string user = pw ? pw->pw_name : "root";
  const std::pair<std::string_view, std::string> values[] = {
      {"PLAIN_PORT", std::to_string(ports.broker_plain)},
      {"TLS_ADDRESS", bind},
      {"TLS_PORT", std::to_string(ports.mqtt)},
      {"CA_FILE", tls.ca_cert},
      {"CERT_FILE", tls.server_cert},
      {"KEY_FILE", tls.server_key},
      {"DATA_DIR", (state / "mosquitto").string()},
      {"PLUGIN", plugin},
      {"USER", user},
      {"PLUGIN_OPTIONS", "plugin_opt_registry_db " + (state / "hub.db").string() +
                             "\nplugin_opt_auth_file " + (state / "seed").string() +
                             "\nplugin_opt_iothub_hostname " + hub_host}};
  std::istringstream in{std::string(mosquitto_conf_template)};
  std::string out =
      "# Written by `devicebound up` on every run from broker/mosquitto.conf.in: edits are lost.\n";
  std::string line;
  bool header = true;  // the template's opening comment explains the @NAME@s: not copied
  bool in_tls_listener = false;
  bool has_user = false;
  bool capped = false;
  bool devices_capped = false;
  while (std::getline(in, line)) {
    header = header && line.rfind('#', 0) == 0;
    if (header)
      continue;
    has_user = has_user || line.rfind("user ", 0) == 0;
    if (line.rfind('#', 0) != 0) {
      for (const auto& [name, value] : values) {
        const std::string key = "@" + std::string(name) + "@";
        for (auto at = line.find(key); at != std::string::npos;
             at = line.find(key, at + value.size()))
          line.replace(at, key.size(), value);
      }
      if (line.find('@') != std::string::npos)
        throw up_failure{
            exit_failure,
            "broker/mosquitto.conf.in has a value devicebound up does not fill in: " + line};
    }
    if (line.rfind("listener ", 0) == 0)
      in_tls_listener = line.find(" " + std::to_string(ports.mqtt) + " ") != std::string::npos;
    // --insecure: the device listener is plain MQTT (loopback only, checked before).
    if (insecure && in_tls_listener &&
        (line.rfind("cafile ", 0) == 0 || line.rfind("certfile ", 0) == 0 ||
         line.rfind("keyfile ", 0) == 0 || line.rfind("require_certificate ", 0) == 0 ||
         line.rfind("tls_version ", 0) == 0))
      continue;
    // The device listener's cap is --mqtt-max-connections; the hub's loopback
    // listener keeps the template's (the hub's connection counts there).
    if (in_tls_listener && line.rfind("max_connections ", 0) == 0) {
      line = "max_connections " + std::to_string(max_connections);
      capped = true;
    }
    // The same number for the plugin's count of devices, exact where
    // mosquitto 2.0.11's max_connections drifts (docs/security.md, "Limits").
    if (line.rfind("plugin_opt_max_devices ", 0) == 0) {
      line = "plugin_opt_max_devices " + std::to_string(max_connections);
      devices_capped = true;
    }
    out += line + "\n";
  }
  if (!capped)
    throw up_failure{exit_failure,
                     "broker/mosquitto.conf.in has no max_connections line under the device "
                     "listener for --mqtt-max-connections"};
  if (!devices_capped)
    throw up_failure{exit_failure,
                     "broker/mosquitto.conf.in has no plugin_opt_max_devices line for "
                     "--mqtt-max-connections"};
  if (!has_user)
    out += "\n# devicebound up: the broker runs as the user who ran it\nuser " + user + "\n";
  return out;
}

// --- the terminal: what the children print --------------------------------------------------

/// devicebound-hub logs `2026-01-02T03:04:05.678 info  text`: warnings and
/// errors reach the terminal, everything with --verbose.
bool hub_line_matters(std::string_view line) {
  const auto sp = line.find(' ');
  if (sp == std::string_view::npos)
    return true;
  const std::string_view level = line.substr(sp + 1, 5);
  return level.rfind("warn", 0) == 0 || level.rfind("error", 0) == 0 ||
         level.rfind("criti", 0) == 0;
}

bool mosquitto_line_matters(std::string_view line) {
  // Run as root, `up` keeps the broker root on purpose (the state directory is root's).
  if (line.find("should not be run as root") != std::string_view::npos)
    return false;
  return line.find("Error") != std::string_view::npos ||
         line.find("error") != std::string_view::npos ||
         line.find("Warning") != std::string_view::npos;
}

// --- the command ---------------------------------------------------------------------------

int run_up(const up_options& o) {
  if (o.output != "text" && o.output != "json")
    throw up_failure{exit_usage, "--output must be text or json"};
  if (o.insecure && !is_loopback(o.bind))
    throw up_failure{exit_usage,
                     "--insecure (plain MQTT, AMQP and HTTP) is for tests on a "
                     "loopback address only; --bind " +
                         o.bind + " is not"};
  {
    int probe = 0;
    if (try_bind(o.bind, probe) == EINVAL)
      throw up_failure{exit_usage, "--bind " + o.bind + ": not an IP address"};
  }
  if (o.mqtt_max_connections < min_mqtt_connections ||
      o.mqtt_max_connections > max_mqtt_connections)
    throw up_failure{exit_usage, "--mqtt-max-connections " +
                                     std::to_string(o.mqtt_max_connections) + ": must be " +
                                     std::to_string(min_mqtt_connections) + ".." +
                                     std::to_string(max_mqtt_connections)};
  for (const auto& d : o.devices)
    if (d.empty() || d.size() > 128 || d.find_first_of(" \t\n/#+") != std::string::npos)
      throw up_failure{exit_usage, "--device '" + d + "': not a device id"};

  const programs prog = find_programs(o);
  const fs::path state = fs::absolute(o.state_dir.empty() ? default_state_dir() : o.state_dir);
  int lock_fd = -1;
  if (open_state_dir(state, lock_fd))
    say("a new state directory: " + state.string());

  // The ports, before anything is started: a taken port is reported, not half-started.
  port_plan ports;
  bool fell_back = false;
  ports.mqtt = choose_port(o.bind, "MQTT", "--mqtt-port", o.mqtt_port, 8883, 8883, fell_back);
  ports.amqp = choose_port(o.bind, "AMQP", "--amqp-port", o.amqp_port, 5671, 5671, fell_back);
  if (https)
    ports.https = choose_port(o.bind, "HTTPS", "--https-port", o.https_port, 443, 8443, fell_back);
  if (ports.mqtt == ports.amqp ||
      (https && (ports.mqtt == ports.https || ports.amqp == ports.https)))
    throw up_failure{exit_usage, "the MQTT, AMQP and HTTPS ports must differ"};
  if (try_bind("127.0.0.1", ports.broker_plain) != 0)
    throw up_failure{exit_unavailable, "no free loopback port for the hub's broker connection"};

  // The names the server certificate must carry; the first --host names the hub.
  const std::string hub_host = o.hosts.empty() ? "localhost" : o.hosts.front();
  std::vector<std::string> names{"localhost", "127.0.0.1"};
  {
    char h[256] = "";
    if (::gethostname(h, sizeof h - 1) == 0 && h[0] != '\0')
      names.emplace_back(h);
  }
  names.insert(names.end(), o.hosts.begin(), o.hosts.end());
  if (o.bind != "0.0.0.0" && o.bind != "::")
    names.push_back(o.bind);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());

  tls_files tls{(state / "ca.crt").string(), (state / "ca.key").string(),
                (state / "server.crt").string(), (state / "server.key").string()};
  bool made_ca = false, made_server = false;
  if (auto e = ensure_certificates(tls, names, made_ca, made_server); !e.empty())
    throw up_failure{exit_failure, e};
  if (made_ca)
    say("made a CA: " + tls.ca_cert);
  if (made_server) {
    std::string list;
    for (const auto& n : names)
      list += (list.empty() ? "" : ", ") + n;
    say("made a server certificate for " + list);
  }
  const seed_file seed = ensure_seed(state / "seed");
  fs::create_directories(state / "mosquitto");
  fs::create_directories(state / "log");

  // The hub's broker connection: a SAS token the hub signs with the registry's
  // iothubowner key (the seed's until the registry exists); raw keys are refused.
  std::string owner_key = seed.policy_keys.at("iothubowner");
  if (fs::exists(state / "hub.db")) {
    std::string why;
    if (auto r = read_registry(state / "hub.db", why); r && r->policies.count("iothubowner"))
      owner_key = r->policies.at("iothubowner");
  }

  write_text(state / "mosquitto.conf",
             mosquitto_conf(ports, o.bind, o.insecure, o.mqtt_max_connections, state, tls,
                            prog.plugin, hub_host),
             0600);
  {
    std::string t = "# devicebound up: written on every run\n[broker]\n";
    t += "host = \"127.0.0.1\"\nport = " + std::to_string(ports.broker_plain) + "\n";
    t += "client_id = \"devicebound-hub\"\nusername = \"iothubowner\"\n";
    t += "sas_key = " + toml_string(owner_key) + "\n";
    t += "[store]\npath = " + toml_string((state / "hub.db").string()) + "\n";
    t += "[amqp]\nlisten = " + toml_string(host_port(o.bind, ports.amqp)) + "\n";
    if (!o.insecure) {
      t += "tls_server_cert = " + toml_string(tls.server_cert) + "\n";
      t += "tls_server_key = " + toml_string(tls.server_key) + "\n";
    }
    t += "iothub_hostname = " + toml_string(hub_host) + "\n";
    t += "auth_file = " + toml_string((state / "seed").string()) + "\n";
    t += "[log]\nlevel = \"info\"\n";
    write_text(state / "hub.toml", t, 0600);
  }

  // --- start: the broker, then the hub ---
  wakeup wake;
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);  // only to end the signal thread
  ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread signal_thread([&] {
    int sig = 0;
    if (::sigwait(&signals, &sig) == 0 && sig != SIGUSR1) {
      std::lock_guard g(wake.m);
      wake.interrupted = true;
      wake.signal = sig;
    }
    wake.cv.notify_all();
  });
  struct signal_thread_end {
    std::thread& t;
    ~signal_thread_end() {
      ::pthread_kill(t.native_handle(), SIGUSR1);
      t.join();
    }
  } end_signal_thread{signal_thread};

  const bool verbose = o.verbose;
  child_process broker("mosquitto", wake);
  child_process hub("devicebound-hub", wake);
  const auto stop_all = [&] {
    if (hub.pid() > 0)
      say("devicebound-hub (pid " + std::to_string(hub.pid()) + ") stopped: " + hub.stop(10s));
    if (broker.pid() > 0)
      say("mosquitto (pid " + std::to_string(broker.pid()) + ") stopped: " + broker.stop(10s));
  };
  const auto failed = [&](int code, const std::string& message, const child_process* c) {
    std::string m = message;
    if (c) {
      std::lock_guard g(wake.m);
      std::string tail = c->output();
      if (tail.size() > 2000)
        tail.erase(0, tail.size() - 2000);
      m += "\n--- the end of its output (all of it: " +
           (state / "log" / (c->name() + ".log")).string() + ")\n" + tail;
    }
    stop_all();
    return up_failure{code, m};
  };

  std::vector<std::string> broker_argv{prog.mosquitto, "-c", (state / "mosquitto.conf").string()};
  if (auto e = broker.start(broker_argv, (state / "log" / "mosquitto.log").string(),
                            [verbose](std::string_view l) {
                              if (verbose || mosquitto_line_matters(l))
                                std::fprintf(stderr, "mosquitto: %.*s\n",
                                             static_cast<int>(l.size()), l.data());
                            });
      !e.empty())
    throw up_failure{exit_unavailable, e};
  {
    std::unique_lock lock(wake.m);
    const auto r = broker.wait_until(lock, steady::now() + 15s, [](const std::string& out) {
      return out.find(" running") != std::string::npos;
    });
    lock.unlock();
    if (r == child_process::outcome::interrupted)
      throw failed(exit_failure, "interrupted while mosquitto started", nullptr);
    if (r != child_process::outcome::ready) {
      std::string why;
      {
        std::lock_guard g(wake.m);
        if (broker.output().find("in use") != std::string::npos)
          why = " (a port is taken: MQTT " + std::to_string(ports.mqtt) + " or the loopback port " +
                std::to_string(ports.broker_plain) + "; choose another with --mqtt-port)";
      }
      throw failed(exit_unavailable,
                   "mosquitto did not start" + why +
                       (r == child_process::outcome::exited ? ": it exited, " + broker.reap()
                                                            : ": not ready within 15 s"),
                   &broker);
    }
  }

  std::vector<std::string> hub_argv{prog.hub, "-c", (state / "hub.toml").string()};
  for (const auto& d : o.devices) {
    hub_argv.push_back("--device");
    hub_argv.push_back(d);
  }
  if (https) {
    hub_argv.push_back("--https-listen");
    hub_argv.push_back(host_port(o.bind, ports.https));
    if (o.insecure)
      hub_argv.push_back("--https-insecure");
  }
  hub_argv.insert(hub_argv.end(), o.hub_args.begin(), o.hub_args.end());
  if (auto e = hub.start(hub_argv, (state / "log" / "devicebound-hub.log").string(),
                         [verbose](std::string_view l) {
                           if (verbose || hub_line_matters(l))
                             std::fprintf(stderr, "devicebound-hub: %.*s\n",
                                          static_cast<int>(l.size()), l.data());
                         });
      !e.empty())
    throw failed(exit_unavailable, e, nullptr);
  {
    std::unique_lock lock(wake.m);
    const auto r = hub.wait_until(lock, steady::now() + 30s, [](const std::string& out) {
      return out.find("connected to the broker") != std::string::npos &&
             out.find("amqp: listening on") != std::string::npos &&
             (!https || out.find("https: listening on") != std::string::npos);
    });
    lock.unlock();
    if (r == child_process::outcome::interrupted)
      throw failed(exit_failure, "interrupted while devicebound-hub started", nullptr);
    if (r != child_process::outcome::ready)
      throw failed(exit_unavailable,
                   "devicebound-hub did not start" + (r == child_process::outcome::exited
                                                          ? ": it exited, " + hub.reap()
                                                          : std::string(": not ready within 30 s")),
                   &hub);
  }

  // --- ready: what to paste ---
  std::string why;
  const auto reg = read_registry(state / "hub.db", why);
  if (!reg || !reg->policies.count("iothubowner"))
    throw failed(exit_failure,
                 "cannot read the hub's registry from " + (state / "hub.db").string() + ": " + why,
                 nullptr);
  // SDKs connect to GatewayHostName if given, else HostName, on their protocol's
  // port unless the name carries one (Node does; Python's device SDK is fixed to
  // 8883, SPEC 12.10). IoT Hub's ports need no GatewayHostName.
  const auto at = [&](int port, int iothub_port) {
    return port == iothub_port ? hub_host : host_port(hub_host, port);
  };
  const std::string service_cs =
      "HostName=" + at(ports.amqp, 5671) +
      ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + reg->policies.at("iothubowner");
  const auto device_cs = [&](const std::string& id, const std::string& key, int port,
                             int iothub_port) {
    std::string cs = "HostName=" + hub_host + ";DeviceId=" + id + ";SharedAccessKey=" + key;
    if (port != iothub_port)
      cs += ";GatewayHostName=" + host_port(hub_host, port);
    return cs;
  };
  const std::string scheme = o.insecure ? "" : "s";
  if (o.output == "json") {
    std::string j = "{\"service_connection_string\":" + json_string(service_cs) + ",\"devices\":{";
    bool first = true;
    for (const auto& [id, key] : reg->devices) {
      j += (first ? "" : ",") + json_string(id) + ":" +
           json_string(device_cs(id, key, ports.mqtt, 8883));
      first = false;
    }
    j += "},\"devices_amqp\":{";
    first = true;
    for (const auto& [id, key] : reg->devices) {
      j += (first ? "" : ",") + json_string(id) + ":" +
           json_string(device_cs(id, key, ports.amqp, 5671));
      first = false;
    }
    j += "},\"ca_file\":" + json_string(tls.ca_cert) +
         ",\"ports\":{\"mqtt\":" + std::to_string(ports.mqtt) +
         ",\"amqp\":" + std::to_string(ports.amqp) + ",\"https\":" + std::to_string(ports.https) +
         "},\"state_dir\":" + json_string(state.string()) +
         ",\"pids\":{\"mosquitto\":" + std::to_string(broker.pid()) +
         ",\"hub\":" + std::to_string(hub.pid()) + "}}";
    std::cout << j << std::endl;
  } else {
    std::cout << "MQTT  ready: mqtt" << scheme << "://" << host_port(hub_host, ports.mqtt)
              << "  (mosquitto pid " << broker.pid() << ")\n"
              << "AMQP  ready: amqp" << scheme << "://" << host_port(hub_host, ports.amqp)
              << "  (devicebound-hub pid " << hub.pid() << ")\n"
              << (https ? "HTTPS ready: http" + scheme + "://" + host_port(hub_host, ports.https)
                        : std::string("HTTPS: not in this build of devicebound-hub"))
              << "\n\nService connection string (iothubowner):\n  " << service_cs << "\n";
    if (reg->devices.empty())
      std::cout
          << "\nNo devices yet: add some with --device ID (or `devicebound device create`).\n";
    const bool same = ports.mqtt == 8883 && ports.amqp == 5671;
    for (const auto& [id, key] : reg->devices) {
      if (same) {
        std::cout << "\nDevice " << id << ":\n  " << device_cs(id, key, ports.mqtt, 8883) << "\n";
      } else {
        std::cout << "\nDevice " << id << " over MQTT:\n  " << device_cs(id, key, ports.mqtt, 8883)
                  << "\nDevice " << id << " over AMQP:\n  " << device_cs(id, key, ports.amqp, 5671)
                  << "\n";
      }
    }
    if (!o.insecure)
      std::cout << "\nTrust the hub's CA:\n"
                << "  Node:    export NODE_EXTRA_CA_CERTS=" << tls.ca_cert << "\n"
                << "           (device clients: client.setOptions({ ca: fs.readFileSync('"
                << tls.ca_cert << "', 'utf8') }))\n"
                << "  Python:  IoTHubDeviceClient.create_from_connection_string(cs, "
                   "server_verification_cert=open('"
                << tls.ca_cert << "').read())\n"
                << "  Python back ends (uamqp), OpenSSL: export SSL_CERT_FILE=" << tls.ca_cert
                << "\n";
    if (ports.mqtt != 8883)
      std::cout << "\nNote: the Python device SDK connects to port 8883 only; MQTT is on "
                << ports.mqtt << ".\n";
    std::cout << "\nState: " << state.string() << "   Stop: Ctrl-C\n" << std::flush;
  }
  say("ready (state " + state.string() + "); Ctrl-C stops the hub and the broker");

  // --- run until a signal, or until a child ends ---
  int code = exit_ok;
  {
    std::unique_lock lock(wake.m);
    wake.cv.wait(lock, [&] { return wake.interrupted || broker.ended() || hub.ended(); });
    if (!wake.interrupted) {
      code = exit_failure;
      const child_process& gone = hub.ended() ? hub : broker;
      lock.unlock();
      say(gone.name() + " ended unexpectedly (see " +
          (state / "log" / (gone.name() + ".log")).string() + "); stopping");
    } else {
      say(std::string("received ") + (wake.signal == SIGINT ? "SIGINT" : "SIGTERM") + "; stopping");
    }
  }
  stop_all();
  ::close(lock_fd);
  return code;
}

}  // namespace

void add_up_command(CLI::App& app, int& code) {
  auto opts = std::make_shared<up_options>();
  auto* up = app.add_subcommand(
      "up",
      "start a local IoT Hub (MQTT, AMQP, HTTPS) in the foreground and print its connection "
      "strings");
  up->add_option("--state-dir", opts->state_dir,
                 "where keys, certificates and queues live (default $XDG_STATE_HOME/devicebound "
                 "or ~/.local/state/devicebound)");
  // One value per flag, repeated: `--device a --device b`.
  const auto repeatable = [](CLI::Option* opt) {
    opt->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  };
  repeatable(
      up->add_option("-d,--device", opts->devices, "create this device if it is new (repeatable)"));
  repeatable(
      up->add_option("--host", opts->hosts,
                     "a name or address clients use, added to the certificate (repeatable); the "
                     "first names the hub (HostName, default localhost)"));
  up->add_option("--bind", opts->bind,
                 "the address the front doors listen on (default 127.0.0.1; 0.0.0.0 for the "
                 "network)");
  up->add_option("--mqtt-port", opts->mqtt_port, "MQTT over TLS (default 8883; 0: any free)");
  up->add_option("--amqp-port", opts->amqp_port, "AMQP over TLS (default 5671; 0: any free)");
  up->add_option("--https-port", opts->https_port,
                 "HTTPS (default 443, or 8443 without the privilege; 0: any free)");
  up->add_option("--mqtt-max-connections", opts->mqtt_max_connections,
                 "connections the broker's device listener takes at once, and devices the "
                 "broker plugin lets in at once (default 1000, 1..100000); more are closed at "
                 "once");
  up->add_option("--plugin", opts->plugin, "the broker plugin devicebound_mosquitto_plugin.so");
  up->add_option("--hub", opts->hub, "the devicebound-hub program");
  up->add_option("--mosquitto", opts->mosquitto, "the mosquitto program");
  repeatable(up->add_option("--hub-arg", opts->hub_args,
                            "pass a flag to devicebound-hub, e.g. --hub-arg=--lock-duration=30s "
                            "(repeatable)"));
  up->add_flag("--insecure", opts->insecure,
               "plain MQTT, AMQP and HTTP without TLS (tests; loopback --bind only)");
  up->add_flag("-v,--verbose", opts->verbose, "show every line mosquitto and the hub log");
  up->add_option("-o,--output", opts->output,
                 "text, or json: one line on stdout once every front door is ready")
      ->check(CLI::IsMember({"text", "json"}));
  up->callback([opts, &code] {
    try {
      code = run_up(*opts);
    } catch (const up_failure& f) {
      say(f.message);
      code = f.code;
    } catch (const std::exception& e) {
      say(e.what());
      code = exit_failure;
    }
  });
}

}  // namespace devicebound::cli
