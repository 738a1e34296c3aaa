/// \file tests/support/postgres.hpp
/// A real PostgreSQL server for a test binary: `initdb` into a fresh temporary
/// directory, `postgres` on a free loopback port (listen_addresses=127.0.0.1,
/// its Unix socket inside that directory, fsync off), stopped by PID at the end
/// and its directory removed. PostgreSQL refuses to run as root: when the test
/// runs as root (CI), initdb and the server run as the `postgres` system user
/// (created by Debian's postgresql package), which gets the directory.
///
/// The server binaries come from DEVICEBOUND_PG_BINDIR (environment, else the
/// compile definition of that name, else /usr/lib/postgresql/15/bin).
/// `postgres_server::missing()` says what is missing, for a test to skip (or
/// fail under DEVICEBOUND_REQUIRE_ALL=1).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "temp_dir.hpp"

#ifndef DEVICEBOUND_PG_BINDIR
#define DEVICEBOUND_PG_BINDIR "/usr/lib/postgresql/15/bin"
#endif

namespace devicebound::test_support {

/// Starts and stops one PostgreSQL server. Not copyable.
class postgres_server {
 public:
  /// Where initdb and postgres are.
  static std::string bindir() {
    const char* env = std::getenv("DEVICEBOUND_PG_BINDIR");
    return env && *env ? env : DEVICEBOUND_PG_BINDIR;
  }

  /// What is missing to start a server ("" if nothing).
  static std::string missing() {
    for (const char* tool : {"initdb", "postgres"}) {
      const auto path = bindir() + "/" + tool;
      if (::access(path.c_str(), X_OK) != 0)
        return "PostgreSQL server binary " + path +
               " not found (Debian: postgresql-15; or set DEVICEBOUND_PG_BINDIR)";
    }
    if (::geteuid() == 0 && !::getpwnam("postgres"))
      return "running as root, but there is no 'postgres' system user to run PostgreSQL as";
    return {};
  }

  /// initdb and start; throws std::runtime_error with the server's log on failure.
  postgres_server() : dir_("devicebound-pg") {
    namespace fs = std::filesystem;
    if (::geteuid() == 0) {
      const passwd* pw = ::getpwnam("postgres");
      if (!pw)
        throw std::runtime_error("no 'postgres' system user");
      uid_ = pw->pw_uid;
      gid_ = pw->pw_gid;
      if (::chown(dir_.path().c_str(), uid_, gid_) != 0)
        throw std::runtime_error("cannot give " + dir_.path().string() +
                                 " to user postgres: " + std::strerror(errno));
    }
    log_ = dir_.file("server.log");
    const auto data = dir_.file("data");
    run_to_end({bindir() + "/initdb", "-D", data, "-U", user(), "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync"},
               "initdb");
    // The port is free when chosen, but another process may take it first:
    // a server that fails to start is retried on another port.
    std::string why;
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = free_port();
      pid_ = spawn({bindir() + "/postgres", "-D", data, "-p", std::to_string(port_), "-k",
                    dir_.path().string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                    "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c",
                    "max_connections=50", "-c", "shared_buffers=16MB"});
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (std::chrono::steady_clock::now() < deadline) {
        if (!running())
          break;
        if (PQping(conninfo("postgres").c_str()) == PQPING_OK) {
          create_database();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // bounded readiness poll
      }
      why = running() ? "did not accept connections within 30 s" : "exited";
      stop();
    }
    throw std::runtime_error("PostgreSQL " + why + "; its log:\n" + log_tail());
  }
  postgres_server(const postgres_server&) = delete;
  postgres_server& operator=(const postgres_server&) = delete;
  ~postgres_server() { stop(); }

  std::uint16_t port() const noexcept { return port_; }
  pid_t pid() const noexcept { return pid_; }
  /// A libpq connection string to database `db` (default: the test database).
  std::string conninfo(const std::string& db = "devicebound") const {
    return "host=127.0.0.1 port=" + std::to_string(port_) + " user=" + user() + " dbname=" + db +
           " connect_timeout=10";
  }
  /// Runs SQL on the test database; throws with the server's message on failure.
  void exec(const std::string& sql) const {
    PGconn* c = PQconnectdb(conninfo().c_str());
    std::string err;
    if (PQstatus(c) != CONNECTION_OK) {
      err = PQerrorMessage(c);
    } else {
      PGresult* r = PQexec(c, sql.c_str());
      const auto st = PQresultStatus(r);
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        err = PQresultErrorMessage(r);
      PQclear(r);
    }
    PQfinish(c);
    if (!err.empty())
      throw std::runtime_error("SQL '" + sql + "' failed: " + err);
  }

  /// Stops the server by its PID (fast shutdown, then SIGKILL after 15 s).
  void stop() {
    if (pid_ <= 0)
      return;
    if (running()) {
      ::kill(pid_, SIGINT);  // fast shutdown
      if (!wait_exit(std::chrono::seconds(15))) {
        ::kill(pid_, SIGKILL);
        (void)wait_exit(std::chrono::seconds(10));
      }
    }
    pid_ = -1;
  }

  std::string log_tail() const {
    std::ifstream in(log_, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    auto text = s.str();
    return text.size() > 4000 ? text.substr(text.size() - 4000) : text;
  }

 private:
  static std::string user() { return "devicebound"; }

  static std::uint16_t free_port() {
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

  /// Forks and execs `argv` as the server's user, output appended to the log.
  pid_t spawn(const std::vector<std::string>& argv) {
    std::vector<char*> args;
    for (const auto& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    const bool drop = ::geteuid() == 0;
    const pid_t pid = ::fork();
    if (pid < 0)
      throw std::runtime_error("fork failed: " + std::string(std::strerror(errno)));
    if (pid == 0) {
      // only async-signal-safe calls until exec
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        if (drop)
          (void)::fchown(fd, uid_, gid_);
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
        ::close(fd);
      }
      if (drop && (::setgroups(0, nullptr) != 0 || ::setgid(gid_) != 0 || ::setuid(uid_) != 0))
        ::_exit(125);
      // after the change of user, which clears it: die with the test binary
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent)
        ::_exit(126);
      sigset_t none;
      ::sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    status_.reset();
    return pid;
  }

  void run_to_end(const std::vector<std::string>& argv, const char* what) {
    pid_ = spawn(argv);
    if (!wait_exit(std::chrono::seconds(120)))
      throw std::runtime_error(std::string(what) + " did not finish within 120 s");
    const int st = *status_;
    pid_ = -1;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
      throw std::runtime_error(std::string(what) + " failed (status " + std::to_string(st) +
                               "); its output:\n" + log_tail());
  }

  void create_database() {
    PGconn* c = PQconnectdb(conninfo("postgres").c_str());
    PGresult* r = PQexec(c, "CREATE DATABASE devicebound");
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    const std::string err = ok ? "" : PQresultErrorMessage(r);
    PQclear(r);
    PQfinish(c);
    if (!ok)
      throw std::runtime_error("CREATE DATABASE failed: " + err);
  }

  bool running() {
    if (status_ || pid_ <= 0)
      return false;
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      status_ = st;
      return false;
    }
    return r == 0;
  }
  bool wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (running()) {
      if (std::chrono::steady_clock::now() >= deadline)
        return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // bounded exit poll
    }
    return true;
  }

  temp_dir dir_;
  std::string log_;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  std::uint16_t port_ = 0;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

}  // namespace devicebound::test_support
