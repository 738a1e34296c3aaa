/// \file tests/support/mosquitto.hpp
/// Fixtures for tests and benchmarks that need real processes: a mosquitto
/// broker on a free 127.0.0.1 port, and the devicebound-hub daemon attached to
/// it. Each owns its child by PID (never by name), writes its config into its
/// own temporary directory, waits for readiness with a bounded timeout, and
/// stops the child in its destructor. Children get SIGKILL if the test process
/// dies first (PR_SET_PDEATHSIG), so a crashed test leaves no broker behind.
///
/// The hub fixture needs the MQTT transport (Paho) for its readiness ping.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <devicebound/transport/mqtt.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace devicebound::test_support {

using namespace std::chrono_literals;

#ifdef DEVICEBOUND_MOSQUITTO_EXECUTABLE
inline constexpr const char* default_mosquitto = DEVICEBOUND_MOSQUITTO_EXECUTABLE;
#else
inline constexpr const char* default_mosquitto = "/usr/sbin/mosquitto";
#endif

#ifdef DEVICEBOUND_HUB_EXECUTABLE
inline constexpr const char* default_hub = DEVICEBOUND_HUB_EXECUTABLE;
#else
inline constexpr const char* default_hub = "devicebound-hub";
#endif

/// Whether `path` names an executable file.
inline bool is_executable(const std::string& path) {
  return ::access(path.c_str(), X_OK) == 0;
}

/// A fresh directory under $TMPDIR (or /tmp), removed with its content.
class temp_dir {
 public:
  explicit temp_dir(const std::string& prefix = "devicebound-") {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + prefix + "XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data()))
      throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
    path_ = buf.data();
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const noexcept { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// A free TCP port on 127.0.0.1 (the kernel picks it; another process may
/// still take it before we bind, so callers retry on a bind failure).
inline std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    throw std::runtime_error("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot find a free port");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

/// Whether 127.0.0.1:`port` accepts a TCP connection right now.
inline bool accepts_connections(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

/// The whole content of a file ("" if it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// A child process started with `argv`, stdout and stderr appended to `log`.
class child_process {
 public:
  child_process(const std::vector<std::string>& argv, const std::string& log) {
    std::vector<char*> args;
    for (const auto& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0)
      throw std::runtime_error("fork failed: " + std::string(std::strerror(errno)));
    if (pid == 0) {
      // Only async-signal-safe calls until exec (the parent has threads).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent)
        ::_exit(126);
      sigset_t none;
      ::sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
        ::close(fd);
      }
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    pid_ = pid;
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process() { (void)stop(SIGKILL, 5s); }

  pid_t pid() const noexcept { return pid_; }

  /// Whether the child has not exited yet (reaps it if it has).
  bool running() {
    if (status_)
      return false;
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      status_ = st;
      return false;
    }
    return r == 0;
  }

  /// Waits (at most `timeout`) for the child to exit; its exit code, or
  /// 128 + signal number, or nullopt if it still runs.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
#ifdef SYS_pidfd_open
    // A pidfd becomes readable when the child exits: wait on that event.
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd >= 0) {
      while (running()) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left <= 0ms)
          break;
        pollfd p{pidfd, POLLIN, 0};
        (void)::poll(&p, 1, static_cast<int>(left.count()));
      }
      ::close(pidfd);
      return running() ? std::nullopt : exit_code();
    }
#endif
    while (running()) {
      if (std::chrono::steady_clock::now() >= deadline)
        return std::nullopt;
      std::this_thread::sleep_for(5ms);  // no pidfd (old kernel): poll, bounded
    }
    return exit_code();
  }

  /// Sends `sig` to this PID and waits at most `grace`; then SIGKILL. The exit
  /// code as for `wait_exit`.
  std::optional<int> stop(int sig = SIGTERM, std::chrono::milliseconds grace = 10s) {
    if (!running())
      return exit_code();
    ::kill(pid_, sig);
    if (auto c = wait_exit(grace))
      return c;
    ::kill(pid_, SIGKILL);
    return wait_exit(10s);
  }

  std::optional<int> exit_code() const {
    if (!status_)
      return std::nullopt;
    if (WIFEXITED(*status_))
      return WEXITSTATUS(*status_);
    if (WIFSIGNALED(*status_))
      return 128 + WTERMSIG(*status_);
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

/// mosquitto listening on 127.0.0.1 only, at a free port, with TCP_NODELAY,
/// anonymous access, no persistence, a per-client queue far above anything
/// the hub keeps in flight (so a dropped message is a bug, not a limit) and the
/// connection cap of broker/mosquitto.conf.in.
struct mosquitto_options {
  std::string executable = default_mosquitto;
  /// `max_connections` of the fixture's listener (-1: none). Every client of the
  /// fixture's port counts toward it, the hub's own connection included.
  int max_connections = 1000;
  std::vector<std::string> extra_config;  ///< more lines, e.g. `plugin /path/x.so`
  std::chrono::milliseconds startup_timeout = 10s;
};

class mosquitto_broker {
 public:
  using options = mosquitto_options;

  static bool available(const std::string& executable = default_mosquitto) {
    return is_executable(executable);
  }

  explicit mosquitto_broker(options o = {}) : options_(std::move(o)) {
    // The port is only free when we looked: retry with another on a bind failure.
    for (int attempt = 0;; ++attempt) {
      port_ = free_port();
      write_config();
      if (try_start())
        return;
      if (attempt == 4)
        throw std::runtime_error("mosquitto did not start:\n" + log());
    }
  }

  std::uint16_t port() const noexcept { return port_; }
  const std::string& config_path() const noexcept { return config_; }
  std::string log() const { return read_file(log_); }
  bool running() { return process_ && process_->running(); }
  pid_t pid() const { return process_ ? process_->pid() : -1; }

  /// Stops the broker (SIGTERM, by PID); its exit code. The port stays held
  /// (bound, not listening: clients see a dead broker) until `restart`, so that
  /// another test running in parallel cannot be given it meanwhile.
  std::optional<int> stop() {
    if (!process_)
      return std::nullopt;
    auto c = process_->stop(SIGTERM);
    process_.reset();
    hold_port();
    return c;
  }

  /// Starts it again on the same port (after `stop`).
  void restart() {
    stop();
    release_port();
    if (!try_start())
      throw std::runtime_error("mosquitto did not restart on port " + std::to_string(port_) +
                               ":\n" + log());
  }

  ~mosquitto_broker() { release_port(); }
  mosquitto_broker(const mosquitto_broker&) = delete;
  mosquitto_broker& operator=(const mosquitto_broker&) = delete;

 private:
  void hold_port() {
    release_port();
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
      return;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port_);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return;
    }
    hold_fd_ = fd;
  }
  void release_port() {
    if (hold_fd_ >= 0)
      ::close(hold_fd_);
    hold_fd_ = -1;
  }

  void write_config() {
    config_ = dir_.file("mosquitto.conf");
    log_ = dir_.file("mosquitto.log");
    std::ofstream c(config_);
    c << "listener " << port_
      << " 127.0.0.1\n"
      // As broker/mosquitto.conf.in: a setting of the listener above.
      << "max_connections " << options_.max_connections << "\n"
      << "allow_anonymous true\n"
      << "set_tcp_nodelay true\n"
      // Not 0: see broker/mosquitto.conf.in on mosquitto 2.0.11's ACL path.
      << "max_queued_messages 1000000\n"
      << "max_queued_bytes 0\n"
      // As broker/mosquitto.conf.in: a bigger packet disconnects its sender.
      << "max_packet_size 262144\n"
      << "persistence false\n"
      << "log_dest stderr\n"
      << "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
      << "connection_messages true\n";
    for (const auto& l : options_.extra_config)
      c << l << "\n";
  }

  bool try_start() {
    process_ = std::make_unique<child_process>(
        std::vector<std::string>{options_.executable, "-c", config_}, log_);
    const auto deadline = std::chrono::steady_clock::now() + options_.startup_timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!process_->running()) {
        process_.reset();
        return false;
      }
      if (accepts_connections(port_))
        return true;
      // mosquitto has no readiness notification: probe the port, bounded.
      std::this_thread::sleep_for(10ms);
    }
    process_.reset();
    return false;
  }

  options options_;
  temp_dir dir_{"devicebound-mosquitto-"};
  std::string config_;
  std::string log_;
  std::uint16_t port_ = 0;
  int hold_fd_ = -1;  ///< holds the port between stop() and restart()
  std::unique_ptr<child_process> process_;
};

/// devicebound-hub attached to a broker on 127.0.0.1:`broker_port`. Ready when
/// it answers an admin ping over MQTT (so it is connected and subscribed).
/// Unless `args` name a store (`--store`, `--in-memory`), its SQLite store is a
/// file in the fixture's own directory: kept across `stop` and `start`.
struct hub_daemon_options {
  std::string executable = default_hub;
  std::uint16_t broker_port = 0;
  std::vector<std::string> args;  ///< more command-line arguments
  std::string config_toml;        ///< written to a file and passed as --config when set
  std::string log_level = "debug";
  std::chrono::milliseconds startup_timeout = 15s;
  /// Credentials of the readiness ping's MQTT connection, for a broker that
  /// authenticates (the devicebound plugin): a policy name and a SAS token signed
  /// with its key (the plugin refuses raw keys).
  std::optional<std::string> ping_username;
  std::optional<std::string> ping_password;
};

class hub_daemon {
 public:
  using options = hub_daemon_options;

  static bool available(const std::string& executable = default_hub) {
    return is_executable(executable);
  }

  explicit hub_daemon(options o) : options_(std::move(o)) {
    log_ = dir_.file("devicebound-hub.log");
    start();
  }

  /// Starts the daemon (again, after `stop`) and waits until it answers a ping.
  void start() {
    std::vector<std::string> argv{options_.executable,
                                  "--host",
                                  "127.0.0.1",
                                  "--port",
                                  std::to_string(options_.broker_port),
                                  "--log-level",
                                  options_.log_level};
    if (!options_.config_toml.empty()) {
      const std::string path = dir_.file("devicebound-hub.toml");
      std::ofstream(path) << options_.config_toml;
      argv.push_back("--config");
      argv.push_back(path);
    }
    argv.insert(argv.end(), options_.args.begin(), options_.args.end());
    if (std::find(argv.begin(), argv.end(), "--store") == argv.end() &&
        std::find(argv.begin(), argv.end(), "--in-memory") == argv.end()) {
      argv.push_back("--store");
      argv.push_back(store_path());
    }
    process_ = std::make_unique<child_process>(argv, log_);
    if (!wait_ready(options_.startup_timeout))
      throw std::runtime_error("devicebound-hub did not become ready:\n" + log());
  }

  /// Sends `sig` by PID and waits; the exit code (0 for a clean shutdown).
  std::optional<int> stop(int sig = SIGTERM, std::chrono::milliseconds grace = 10s) {
    if (!process_)
      return std::nullopt;
    auto c = process_->stop(sig, grace);
    process_.reset();
    return c;
  }

  bool running() { return process_ && process_->running(); }
  pid_t pid() const { return process_ ? process_->pid() : -1; }
  std::string log() const { return read_file(log_); }
  /// The store file used when `args` name none.
  std::string store_path() const { return dir_.file("devicebound-hub.db"); }

  /// Pings until answered or `timeout`: true when the daemon is connected and subscribed.
  bool wait_ready(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    const std::string id = "fixture-" + mqtt::detail::random_hex(6);
    std::mutex m;
    std::condition_variable cv;
    bool answered = false;
    mqtt::connection_options o;
    o.port = options_.broker_port;
    o.connect_timeout = 2s;
    o.username = options_.ping_username;
    o.password = options_.ping_password;
    mqtt::session s(
        o, id,
        [&](std::string_view, std::string_view) {
          {
            std::lock_guard<std::mutex> g(m);
            answered = true;
          }
          cv.notify_all();
        },
        nullptr);
    const std::string reply_filter =
        mqtt::protocol::client_filter(mqtt::protocol::party::admin, id);
    while (std::chrono::steady_clock::now() < deadline) {
      if (process_ && !process_->running())
        return false;
      if (!s.connected() && !s.connect(true, {reply_filter}, std::nullopt)) {
        std::this_thread::sleep_for(50ms);  // broker not there yet: bounded retry
        continue;
      }
      const std::string ping =
          mqtt::protocol::request_head(mqtt::protocol::party::admin, id, mqtt::protocol::op_ping) +
          "%24.rid=ready";
      (void)s.publish(ping, {});
      // The daemon may not be subscribed yet (a request before that is lost): ask again.
      std::unique_lock<std::mutex> g(m);
      if (cv.wait_for(g, 200ms, [&] { return answered; }))
        return true;
    }
    return false;
  }

 private:
  options options_;
  temp_dir dir_{"devicebound-hub-"};
  std::string log_;
  std::unique_ptr<child_process> process_;
};

}  // namespace devicebound::test_support
