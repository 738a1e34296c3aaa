/// \file tests/support/rabbitmq.hpp
/// One RabbitMQ node (Debian's rabbitmq-server 3.10) on 127.0.0.1 for a test:
/// the MQTT plugin on a free port, authentication and authorisation by
/// rabbitmq_auth_backend_http (the hub's `--rabbit-auth-listen`; configuration
/// from apps/devicebound-hub/rabbit_config.hpp), everything
/// (Mnesia, logs, config, cookie) in its own temporary directory.
///
/// Processes, all owned by PID: an `epmd -address 127.0.0.1 -port P` started
/// here first (so the node never starts its own daemon that would outlive the
/// test on 0.0.0.0:4369), then `rabbitmq-server`, a shell wrapper that runs
/// the node's `beam.smp` as its child and waits for it. The node writes its
/// beam PID to RABBITMQ_PID_FILE; it is stopped with SIGTERM to that PID (a
/// clean shutdown), SIGKILL after a bounded wait; then the wrapper is reaped
/// and epmd stopped. The wrapper and epmd get SIGKILL if the test dies first
/// (PR_SET_PDEATHSIG); the beam has no such guard (it is the wrapper's child).
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../../apps/devicebound-hub/rabbit_config.hpp"
#include "temp_dir.hpp"

namespace devicebound::test_support::rabbitmq {

inline constexpr const char* server_script = "/usr/lib/rabbitmq/bin/rabbitmq-server";
inline constexpr const char* epmd_executable = "/usr/bin/epmd";

/// Whether Debian's rabbitmq-server (and epmd) are installed.
inline bool installed() {
  return ::access(server_script, X_OK) == 0 && ::access(epmd_executable, X_OK) == 0;
}

/// A free TCP port on 127.0.0.1 (another process may take it before it is used).
inline std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    throw std::runtime_error("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot find a free port");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

/// Whether 127.0.0.1:`port` accepts a TCP connection now.
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

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Starts `argv` with exactly `env`, stdout and stderr to `log`; its PID.
inline pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                   const std::string& log) {
  std::vector<char*> args;
  for (const auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env)
    envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0)
    throw std::runtime_error("fork failed: " + std::string(std::strerror(errno)));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
      ::_exit(127);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) {
      ::dup2(null, 0);
      ::close(null);
    }
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

/// Waits up to `timeout` for child `pid` to exit; whether it did (reaped).
inline bool wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int st = 0;
    const pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD))
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling a deadline
  }
}

/// Whether a process `pid` exists (a zombie counts).
inline bool alive(pid_t pid) {
  return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM);
}

struct node_options {
  std::string name = "rabbit1";  ///< RABBITMQ_NODENAME is `{name}@localhost`
  /// Base of the hub's auth backend, `http://127.0.0.1:PORT` (paths /auth/...).
  std::string auth_http_base;
  /// Ports; 0: a free one.
  std::uint16_t mqtt_port = 0;
  std::chrono::seconds ready_timeout{120};
};

/// One running node. Throws `std::runtime_error` when it does not start in time
/// (the message holds the end of its log).
class node {
 public:
  explicit node(node_options o) : options_(std::move(o)), dir_("devicebound-rabbitmq") {
    mqtt_port_ = options_.mqtt_port ? options_.mqtt_port : free_port();
    dist_port_ = free_port();
    epmd_port_ = free_port();
    write_config();
    const auto t0 = std::chrono::steady_clock::now();
    epmd_pid_ =
        spawn({epmd_executable, "-address", "127.0.0.1", "-port", std::to_string(epmd_port_)},
              {"PATH=/usr/bin:/bin"}, dir_.file("epmd.log"));
    const auto epmd_deadline = t0 + std::chrono::seconds(10);
    while (!accepts_connections(epmd_port_)) {
      if (std::chrono::steady_clock::now() >= epmd_deadline) {
        stop();
        throw std::runtime_error("epmd did not listen on 127.0.0.1:" + std::to_string(epmd_port_));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const std::string d = dir_.path().string();
    std::vector<std::string> env = {
        "PATH=/usr/lib/rabbitmq/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME=" + d,
        "LANG=C.UTF-8",
        "LC_ALL=C.UTF-8",
        "RABBITMQ_CONF_ENV_FILE=" + d + "/rabbitmq-env.conf",  // absent: /etc's not read
        "RABBITMQ_NODENAME=" + options_.name + "@localhost",
        "RABBITMQ_USE_LONGNAME=false",
        "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
        "RABBITMQ_NODE_PORT=" + std::to_string(free_port()),
        "RABBITMQ_DIST_PORT=" + std::to_string(dist_port_),
        "ERL_EPMD_ADDRESS=127.0.0.1",
        "ERL_EPMD_PORT=" + std::to_string(epmd_port_),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
        "RABBITMQ_MNESIA_BASE=" + d + "/mnesia",
        "RABBITMQ_LOG_BASE=" + d + "/log",
        "RABBITMQ_CONFIG_FILE=" + d + "/rabbitmq.conf",
        "RABBITMQ_ADVANCED_CONFIG_FILE=" + d + "/advanced.config",
        "RABBITMQ_ENABLED_PLUGINS_FILE=" + d + "/enabled_plugins",
        "RABBITMQ_PID_FILE=" + pid_file(),
    };
    server_pid_ = spawn({"/bin/sh", server_script}, env, dir_.file("server.out"));
    const auto deadline = t0 + options_.ready_timeout;
    for (;;) {
      if (beam_pid_ <= 0)
        beam_pid_ = read_pid();
      if (beam_pid_ > 0 && accepts_connections(mqtt_port_))
        break;
      int st = 0;
      const bool exited = ::waitpid(server_pid_, &st, WNOHANG) == server_pid_;
      if (exited || std::chrono::steady_clock::now() >= deadline) {
        const std::string why =
            "RabbitMQ node did not start (MQTT 127.0.0.1:" + std::to_string(mqtt_port_) +
            "): " + tail();
        if (exited)
          server_pid_ = -1;
        stop();
        throw std::runtime_error(why);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    startup_ = std::chrono::steady_clock::now() - t0;
  }
  node(const node&) = delete;
  node& operator=(const node&) = delete;
  ~node() { stop(); }

  std::uint16_t mqtt_port() const noexcept { return mqtt_port_; }
  std::uint16_t epmd_port() const noexcept { return epmd_port_; }
  pid_t beam_pid() const noexcept { return beam_pid_; }
  pid_t epmd_pid() const noexcept { return epmd_pid_; }
  /// From starting epmd to the MQTT listener accepting connections.
  std::chrono::steady_clock::duration startup_time() const noexcept { return startup_; }
  const std::filesystem::path& dir() const noexcept { return dir_.path(); }
  /// The node's log so far.
  std::string log() const {
    return read_text(dir_.file("log/" + options_.name + "@localhost.log"));
  }

  /// SIGTERM to the beam (clean shutdown), SIGKILL after 30 s; reaps the
  /// wrapper; stops epmd. Idempotent.
  void stop() {
    if (beam_pid_ <= 0)
      beam_pid_ = read_pid();
    if (beam_pid_ > 0 && alive(beam_pid_)) {
      ::kill(beam_pid_, SIGTERM);
      if (server_pid_ > 0 && !wait_child(server_pid_, std::chrono::seconds(30))) {
        ::kill(beam_pid_, SIGKILL);
        ::kill(server_pid_, SIGKILL);
        wait_child(server_pid_, std::chrono::seconds(10));
      }
      server_pid_ = -1;
    }
    if (server_pid_ > 0) {
      ::kill(server_pid_, SIGTERM);
      if (!wait_child(server_pid_, std::chrono::seconds(30))) {
        ::kill(server_pid_, SIGKILL);
        wait_child(server_pid_, std::chrono::seconds(10));
      }
      server_pid_ = -1;
    }
    beam_pid_ = -1;
    if (epmd_pid_ > 0) {
      ::kill(epmd_pid_, SIGTERM);
      if (!wait_child(epmd_pid_, std::chrono::seconds(10))) {
        ::kill(epmd_pid_, SIGKILL);
        wait_child(epmd_pid_, std::chrono::seconds(10));
      }
      epmd_pid_ = -1;
    }
  }

 private:
  std::string pid_file() const { return dir_.file("rabbit.pid"); }

  pid_t read_pid() const {
    const std::string s = read_text(pid_file());
    const long v = std::strtol(s.c_str(), nullptr, 10);
    return v > 0 ? static_cast<pid_t>(v) : -1;
  }

  std::string tail() const {
    std::string s = read_text(dir_.file("server.out")) + "\n" + log();
    return s.size() > 3000 ? s.substr(s.size() - 3000) : s;
  }

  void write_config() {
    hubd::rabbit::node_config c;
    c.auth_base_url = options_.auth_http_base;
    c.mqtt_listen = "127.0.0.1:" + std::to_string(mqtt_port_);
    auto conf = hubd::rabbit::rabbitmq_conf(c);
    if (!conf)
      throw std::runtime_error("rabbitmq.conf: " + conf.error().message);
    std::ofstream(dir_.file("rabbitmq.conf")) << *conf;
    std::ofstream(dir_.file("advanced.config")) << hubd::rabbit::advanced_config();
    std::ofstream(dir_.file("enabled_plugins")) << hubd::rabbit::enabled_plugins();
  }

  node_options options_;
  temp_dir dir_;
  std::uint16_t mqtt_port_ = 0;
  std::uint16_t dist_port_ = 0;
  std::uint16_t epmd_port_ = 0;
  pid_t epmd_pid_ = -1;
  pid_t server_pid_ = -1;
  pid_t beam_pid_ = -1;
  std::chrono::steady_clock::duration startup_{};
};

}  // namespace devicebound::test_support::rabbitmq
