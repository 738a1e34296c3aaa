/// \file tests/support/cluster_hub.hpp
/// A partitioned hub for tests and benchmarks (docs/scale-out.md, "The hub in a
/// cluster"): one PostgreSQL (tests/support/postgres.hpp, a temporary directory,
/// a free loopback port), one mosquitto, and N `devicebound-hub --cluster`
/// processes on them, each with an AMQP door on a free loopback port, in test
/// mode (no --auth-file). Every process is started by fork + exec and stopped by
/// PID; every wait is bounded. Failures throw std::runtime_error carrying the
/// daemons' logs, so a gtest fixture (tests/test_cluster_hub.cpp) and a
/// benchmark (bench/cluster_throughput.cpp) can both use it.
///
/// The fixture reads each daemon's ownership from the line the daemon logs
/// when it changes: `cluster: instance '...' serves N of K partitions: ...`.
/// Link devicebound::postgres (libpq, for the server's readiness ping) and
/// devicebound::proton (the back end's AMQP client).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// tests/support/postgres.hpp and mosquitto.hpp each define test_support::temp_dir:
// the PostgreSQL fixture's is renamed here so both fit in one program.
#define temp_dir pg_temp_dir
#include "file_watch.hpp"
#include "postgres.hpp"
#undef temp_dir
#include "amqp_client.hpp"
#include "mosquitto.hpp"

namespace devicebound::test_support::cluster {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

/// What the last `cluster: instance '...' serves N of K partitions: ...` line of
/// `log` says, or nothing (no such line yet).
inline std::optional<std::vector<std::uint32_t>> serving(const std::string& log) {
  const std::string marker = " partitions: ";
  const auto line_start = log.rfind("' serves ");
  if (line_start == std::string::npos)
    return std::nullopt;
  const auto at = log.find(marker, line_start);
  if (at == std::string::npos)
    return std::nullopt;
  const auto end = log.find('\n', at);
  if (end == std::string::npos)
    return std::nullopt;  // the line is still being written
  std::istringstream in(log.substr(at + marker.size(), end - at - marker.size()));
  std::vector<std::uint32_t> out;
  std::string word;
  while (in >> word)
    if (word != "none")
      out.push_back(static_cast<std::uint32_t>(std::stoul(word)));
  return out;
}

/// One daemon (started by fork + exec, stopped by PID) and, once `connect`ed, a
/// back end's AMQP connection to it with a sender on /messages/devicebound.
struct hub_instance {
  std::string name;
  std::uint16_t port = 0;
  temp_dir dir{"devicebound-cluster-"};
  std::unique_ptr<child_process> process;
  std::unique_ptr<amqp_client::client> service;
  pn_link_t* sender = nullptr;
  bool dead = false;

  std::string log() const { return read_file(dir.file("hub.log")); }
  pid_t pid() const { return process ? process->pid() : -1; }
  std::vector<std::uint32_t> partitions_served() const {
    return serving(log()).value_or(std::vector<std::uint32_t>{});
  }
  void start(const std::vector<std::string>& argv) {
    process = std::make_unique<child_process>(argv, dir.file("hub.log"));
    dead = false;
  }
  /// kill -9 by PID, and reaped (the back end's connection stays, to see it die).
  void kill9() {
    if (process)
      (void)process->stop(SIGKILL, 5s);
    process.reset();
  }
  bool listening() const { return log().find("amqp: listening on") != std::string::npos; }
  /// The back end's connection and sender; "" or what went wrong.
  std::string connect() {
    service = std::make_unique<amqp_client::client>(port, amqp_client::sasl_mode::none);
    if (!service->opened())
      return name + ": the AMQP connection failed: " + service->close_condition();
    sender = service->attach(true, "/messages/devicebound");
    if (!service->attached(sender))
      return name + ": the sender was refused: " + service->link_error(sender);
    return {};
  }
};

/// The settings of a `cluster_hub`; the defaults are tests/test_cluster_hub.cpp's.
struct cluster_options {
  std::uint32_t partitions = 8;
  std::vector<std::string> names{"a", "b"};
  std::string lease_ttl = "3s";
  std::string lease_renew = "500ms";
  std::string overflow_after = "1s";
  /// Each instance gets its share if all start within it (3 s: a loaded machine).
  /// No longer than the lease ttl, so it never delays a takeover.
  std::string startup_grace = "3s";
  /// --expected-instances; 0: the number of names.
  std::uint32_t expected_instances = 0;
  std::string log_level = "info";
  /// Open each instance's back-end connection once the partitions are split.
  bool connect = true;
  /// More flags for every instance (say `--device ID`).
  std::vector<std::string> extra_args;
};

/// PostgreSQL + mosquitto + N `devicebound-hub --cluster` instances that split the
/// partitions between them. Throws std::runtime_error (with the logs) when they
/// do not come up within 15 s.
class cluster_hub {
 public:
  /// What is missing to start one ("" if nothing): for a test to skip, or fail
  /// under DEVICEBOUND_REQUIRE_ALL=1.
  static std::string missing() {
    if (auto m = postgres_server::missing(); !m.empty())
      return m;
    if (!mosquitto_broker::available())
      return std::string("mosquitto not found at ") + default_mosquitto;
    if (!hub_daemon::available())
      return std::string("devicebound-hub not found at ") + default_hub;
    return {};
  }

  /// Starts PostgreSQL and mosquitto, and with `start_now` the instances
  /// (`start_instances`).
  explicit cluster_hub(cluster_options o = {}, bool start_now = true) : options(std::move(o)) {
    pg = std::make_unique<postgres_server>();
    broker = std::make_unique<mosquitto_broker>();
    if (start_now)
      start_instances();
  }
  cluster_hub(const cluster_hub&) = delete;
  cluster_hub& operator=(const cluster_hub&) = delete;
  ~cluster_hub() { stop_instances(SIGKILL); }  // the daemons before the broker and the database

  /// Starts one instance per `options.names` together (no waiting between, so
  /// that each gets its share), waits (bounded, 15 s) until each serves some
  /// partitions and together all K, and (`options.connect`) opens each one's
  /// back-end connection. `split_at` is when the split was seen: every
  /// instance's first ownership tick was before it.
  void start_instances() {
    for (const auto& n : options.names) {
      auto& i = hubs.emplace_back();
      i.name = n;
      i.port = free_port();
    }
    // Re-checked on each write to a daemon's log, not on a timer (bounded).
    file_watch logs_written(log_folders(hubs));
    for (auto& i : hubs)
      i.start(argv(i));
    if (!eventually(logs_written, steady::now() + 15s, [&] { return split() && all_listening(); }))
      throw std::runtime_error("the instances did not split the partitions within 15 s\n" + logs());
    split_at = steady::now();
    if (options.connect)
      for (auto& i : hubs)
        if (auto e = i.connect(); !e.empty())
          throw std::runtime_error(e + "\n" + logs());
  }

  /// Stops every instance by PID with `sig` (SIGTERM: each releases its leases
  /// and exits; at most 10 s, then SIGKILL) and forgets them.
  void stop_instances(int sig = SIGTERM) {
    for (auto& i : hubs) {
      i.service.reset();
      if (i.pid() > 0)
        ::kill(i.pid(), SIGCONT);  // a stopped daemon must be able to die
      if (i.process)
        (void)i.process->stop(sig, 10s);
    }
    hubs.clear();
  }

  /// The command line of instance `i`.
  std::vector<std::string> argv(const hub_instance& i) const {
    const std::uint32_t expected = options.expected_instances != 0
                                       ? options.expected_instances
                                       : static_cast<std::uint32_t>(options.names.size());
    std::vector<std::string> args{default_hub,
                                  "--host",
                                  "127.0.0.1",
                                  "--port",
                                  std::to_string(broker->port()),
                                  "--log-level",
                                  options.log_level,
                                  "--cluster",
                                  "--store",
                                  pg->conninfo(),
                                  "--partitions",
                                  std::to_string(options.partitions),
                                  "--instance",
                                  i.name,
                                  "--client-id",
                                  "hub-" + i.name,
                                  "--lease-ttl",
                                  options.lease_ttl,
                                  "--lease-renew",
                                  options.lease_renew,
                                  "--expected-instances",
                                  std::to_string(expected),
                                  "--overflow-after",
                                  options.overflow_after,
                                  "--startup-grace",
                                  options.startup_grace,
                                  "--hub-name",
                                  "testhub",
                                  "--auto-register",
                                  "--feedback-batch-interval",
                                  "0s",
                                  "--amqp-listen",
                                  "127.0.0.1:" + std::to_string(i.port)};
    args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
    return args;
  }

  /// Starts instance `i` again (after kill9), in a fresh log, and waits (bounded)
  /// until its AMQP door listens; it claims what is free at its next tick.
  void restart(hub_instance& i, std::chrono::milliseconds timeout = 15s) {
    i.kill9();
    i.service.reset();
    i.sender = nullptr;
    std::error_code ec;
    std::filesystem::remove(i.dir.file("hub.log"), ec);
    i.port = free_port();
    file_watch log_written({i.dir.path()});
    i.start(argv(i));
    if (!eventually(log_written, steady::now() + timeout, [&] { return i.listening(); }))
      throw std::runtime_error(i.name + " did not listen again within " +
                               std::to_string(timeout.count()) + " ms\n" + i.log());
  }

  /// Every live instance serves something, and together all K partitions.
  bool split() const {
    std::set<std::uint32_t> all;
    for (const auto& i : hubs) {
      auto s = i.partitions_served();
      if (s.empty())
        return false;
      all.insert(s.begin(), s.end());
    }
    return all.size() == options.partitions;
  }
  static std::vector<std::filesystem::path> log_folders(const std::deque<hub_instance>& hubs) {
    std::vector<std::filesystem::path> out;
    for (const auto& i : hubs)
      out.push_back(i.dir.path());
    return out;
  }
  bool all_listening() const {
    return std::all_of(hubs.begin(), hubs.end(),
                       [](const hub_instance& i) { return i.listening(); });
  }

  std::string logs() const {
    std::string out;
    for (const auto& i : hubs)
      out += "--- devicebound-hub " + i.name + " ---\n" + i.log();
    return out;
  }

  /// Waits until `i` serves every partition; the time it took from `since`.
  std::optional<std::chrono::milliseconds> wait_all(const hub_instance& i, steady::time_point since,
                                                    std::chrono::milliseconds timeout) const {
    file_watch log_written({i.dir.path()});
    if (!eventually(log_written, since + timeout,
                    [&] { return i.partitions_served().size() == options.partitions; }))
      return std::nullopt;
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - since);
  }

  cluster_options options;
  steady::time_point split_at{};
  std::unique_ptr<postgres_server> pg;
  std::unique_ptr<mosquitto_broker> broker;
  std::deque<hub_instance> hubs;
};

}  // namespace devicebound::test_support::cluster
