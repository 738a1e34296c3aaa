/// \file mqtt_throughput.cpp
/// Full C2D lifecycle through a real broker, against raw Paho on the same broker.
///
/// Starts its own mosquitto (127.0.0.1, free port, TCP_NODELAY) and
/// devicebound-hub, then in one run:
///
/// 1. Baseline, raw Paho QoS 1 publish -> ack-back: a requester publishes a 64 B
///    message, a responder publishes it back, the requester waits for it and
///    sends the next (one flow, and as many flows as below).
/// 2. devicebound, the full lifecycle: `service_client::send` (answered by the
///    hub) -> devicebound-hub -> an extended `device_client` receives and
///    completes it (answered by the hub); the flow then sends the next. Flows
///    spread over several devices, each device received by as many threads as
///    it has flows.
///
/// Each row: messages/s, p50/p99 latency of one round (send to the end), and
/// for the concurrent rows the CPU time per message of the broker, the hub and
/// this process; medians of rounds that alternate the four measurements. The
/// target is devicebound's rate >= 0.5x the raw loop's at the same concurrency;
/// the ratio against the one-at-a-time raw loop is printed as well. Both sides use the
/// transport's session (Paho's async API with TCP_NODELAY set; without it every
/// round trip costs ~88 ms).
///
/// DEVICEBOUND_BENCH_SMOKE=1 runs tiny sizes (ctest). DEVICEBOUND_BENCH_ENFORCE=1
/// exits non-zero when the target is missed (timings are noisy: off by default).
/// DEVICEBOUND_BENCH_MESSAGES, _DEVICES, _FLOWS, _RECEIVERS (threads per device)
/// override the sizes.
#include <cstdio>
#include <cstdlib>

#include "../tests/support/required.hpp"

#if DEVICEBOUND_WITH_MQTT

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../tests/support/mosquitto.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
namespace support = devicebound::test_support;
using steady = std::chrono::steady_clock;

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v)
    return fallback;
  return static_cast<std::size_t>(std::strtoull(v, nullptr, 10));
}

struct result_t {
  double rate = 0;  ///< messages per second
  double p50_us = 0;
  double p99_us = 0;
  double max_us = 0;
  std::size_t messages = 0;
};

/// CPU seconds (user + system) a process has used so far; this process when pid < 0.
double cpu_seconds(pid_t pid) {
  if (pid < 0) {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  }
  const std::string stat = support::read_file("/proc/" + std::to_string(pid) + "/stat");
  // Fields after the command name (which may hold spaces): state is field 3; utime 14, stime 15.
  const auto close = stat.rfind(')');
  if (close == std::string::npos)
    return 0;
  std::vector<std::string> f;
  std::string cur;
  for (char c : stat.substr(close + 2)) {
    if (c == ' ') {
      f.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (f.size() < 13)
    return 0;
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  return (std::stod(f[11]) + std::stod(f[12])) / ticks;
}

/// CPU used by the broker, the hub and this process during one measured run.
struct cpu_use {
  double broker = 0, hub = 0, clients = 0;
};

template <class F>
cpu_use measure_cpu(pid_t broker, pid_t hub, F f) {
  const double b0 = cpu_seconds(broker), h0 = cpu_seconds(hub), c0 = cpu_seconds(-1);
  f();
  return {cpu_seconds(broker) - b0, cpu_seconds(hub) - h0, cpu_seconds(-1) - c0};
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty())
    return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

/// One closed-loop flow: sends a message, waits until it has gone all the way,
/// records the latency, sends the next.
struct flow_slot {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  void signal() {
    {
      std::lock_guard<std::mutex> g(m);
      done = true;
    }
    cv.notify_one();
  }
  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> g(m);
    const bool ok = cv.wait_for(g, timeout, [&] { return done; });
    done = false;
    return ok;
  }
};

/// A 64-byte payload naming its flow: `{flow}.` then padding.
std::string flow_payload(std::size_t flow) {
  std::string p = std::to_string(flow) + ".";
  p.resize(64, '.');
  return p;
}

std::size_t flow_of(std::string_view payload) {
  return static_cast<std::size_t>(
      std::strtoull(std::string(payload.substr(0, payload.find('.'))).c_str(), nullptr, 10));
}

mqtt::connection_options options_for(std::uint16_t port, std::string client_id = {}) {
  mqtt::connection_options o;
  o.port = port;
  o.client_id = std::move(client_id);
  o.request_timeout = 30s;
  o.prefetch = 16;
  return o;
}

/// Runs `flows` threads, `n` messages in all; `one(flow)` sends one message and
/// waits for it. Returns the rate and latency percentiles of `one`.
template <class One>
result_t run_flows(std::size_t n, std::size_t flows, One one) {
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex m;
  std::string failure;
  std::vector<std::vector<double>> lat(flows);
  const auto t0 = steady::now();
  std::vector<std::thread> threads;
  for (std::size_t f = 0; f < flows; ++f)
    threads.emplace_back([&, f] {
      lat[f].reserve(n / flows + 1);
      while (next++ < n && !failed.load()) {
        const auto t = steady::now();
        try {
          one(f);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> g(m);
          if (!failed.exchange(true))
            failure = e.what();
          return;
        }
        lat[f].push_back(std::chrono::duration<double, std::micro>(steady::now() - t).count());
      }
    });
  for (auto& t : threads)
    t.join();
  if (failed.load())
    throw std::runtime_error(failure);
  const double secs = std::chrono::duration<double>(steady::now() - t0).count();
  std::vector<double> all;
  for (auto& v : lat)
    all.insert(all.end(), v.begin(), v.end());
  result_t r;
  r.messages = all.size();
  r.rate = static_cast<double>(all.size()) / secs;
  r.p50_us = percentile(all, 0.50);
  r.p99_us = percentile(all, 0.99);
  r.max_us = all.empty() ? 0 : *std::max_element(all.begin(), all.end());
  return r;
}

// --- 1. raw Paho ----------------------------------------------------------------------------

/// A requester and a responder that publishes every request back.
class raw_rig {
 public:
  explicit raw_rig(std::uint16_t port)
      : responder_(
            options_for(port), "bench-raw-responder",
            [this](std::string_view, std::string_view payload) {
              (void)responder_.publish(ack_topic_, payload);
            },
            nullptr),
        requester_(
            options_for(port), "bench-raw-requester",
            [this](std::string_view, std::string_view payload) {
              const std::size_t f = flow_of(payload);
              std::lock_guard<std::mutex> g(m_);
              if (f < slots_.size())
                slots_[f]->signal();
            },
            nullptr) {
    if (!responder_.connect(true, {req_topic_}, std::nullopt) ||
        !requester_.connect(true, {ack_topic_}, std::nullopt))
      throw std::runtime_error("raw clients cannot connect");
  }

  result_t run(std::size_t n, std::size_t flows) {
    {
      std::lock_guard<std::mutex> g(m_);
      while (slots_.size() < flows)
        slots_.push_back(std::make_unique<flow_slot>());
    }
    return run_flows(n, flows, [&](std::size_t f) {
      if (auto r = requester_.publish(req_topic_, flow_payload(f)); !r)
        throw std::runtime_error("raw publish: " + r.error().message);
      if (!slots_[f]->wait(30s))
        throw std::runtime_error("raw loop: an answer is missing");
    });
  }

 private:
  const std::string req_topic_ = "bench/raw/request";
  const std::string ack_topic_ = "bench/raw/ack";
  std::mutex m_;
  std::vector<std::unique_ptr<flow_slot>> slots_;
  mqtt::session responder_;
  mqtt::session requester_;
};

// --- 2. devicebound --------------------------------------------------------------------------

using device_type = device_client<mqtt::extended_device_connection>;
using service_type = service_client<mqtt::service_connection>;

/// `devices` extended devices and one back end, connected and attached once.
class devicebound_rig {
 public:
  devicebound_rig(std::uint16_t port, std::size_t devices)
      : svc_(mqtt::service_connection(options_for(port))) {
    for (std::size_t d = 0; d < devices; ++d) {
      devs_.push_back(std::make_unique<device_type>(
          mqtt::extended_device_connection("bench-" + std::to_string(d), options_for(port))));
      if (auto r = devs_.back()->connect(); !r)
        throw std::runtime_error("device connect: " + r.error().message);
      // Attach now (the first receive does), so that setup is not measured.
      if (auto r = devs_.back()->receive(0ms); !r)
        throw std::runtime_error("device attach: " + r.error().message);
    }
    if (auto r = svc_.open(); !r)
      throw std::runtime_error("service open: " + r.error().message);
  }

  /// `flows` closed loops over the first `devices` devices; `receivers`
  /// receiving threads per device (0: as many in all as flows).
  result_t run(std::size_t n, std::size_t flows, std::size_t devices,
               std::size_t receivers_per = 0) {
    devices = std::min(devices, devs_.size());
    std::vector<std::unique_ptr<flow_slot>> slots;
    for (std::size_t f = 0; f < flows; ++f)
      slots.push_back(std::make_unique<flow_slot>());
    std::atomic<bool> stop{false};
    std::mutex m;
    std::string receive_error;
    std::vector<std::thread> receivers;
    const std::size_t threads =
        receivers_per == 0 ? std::max(flows, devices) : receivers_per * devices;
    for (std::size_t t = 0; t < threads; ++t)
      receivers.emplace_back([&, d = devs_[t % devices].get()] {
        while (!stop.load()) {
          auto r = d->receive(100ms);
          if (r && !*r)
            continue;
          if (r) {
            if (auto c = d->complete(**r); c) {
              slots[flow_of((*r)->body) % slots.size()]->signal();
              continue;
            } else {
              r = c.error();
            }
          }
          std::lock_guard<std::mutex> g(m);
          receive_error = r.error().message;
          return;
        }
      });
    const auto join = [&] {
      stop = true;
      for (auto& t : receivers)
        t.join();
    };
    try {
      auto out = run_flows(n, flows, [&](std::size_t f) {
        message msg;
        msg.body = flow_payload(f);
        if (auto r = svc_.send("bench-" + std::to_string(f % devices), std::move(msg)); !r)
          throw std::runtime_error("send: " + r.error().message);
        if (!slots[f]->wait(30s)) {
          std::lock_guard<std::mutex> g(m);
          throw std::runtime_error("a message was not completed within 30 s " + receive_error);
        }
      });
      join();
      return out;
    } catch (...) {
      join();
      throw;
    }
  }

 private:
  std::vector<std::unique_ptr<device_type>> devs_;
  service_type svc_;
};

}  // namespace

int main() {
  const bool smoke = env_flag("DEVICEBOUND_BENCH_SMOKE");
  const bool enforce = env_flag("DEVICEBOUND_BENCH_ENFORCE");
  const std::size_t n = env_size("DEVICEBOUND_BENCH_MESSAGES", smoke ? 200 : 20000);
  const std::size_t devices = std::max<std::size_t>(env_size("DEVICEBOUND_BENCH_DEVICES", 4), 1);
  const std::size_t flows = std::max<std::size_t>(env_size("DEVICEBOUND_BENCH_FLOWS", 16), 1);
  const std::size_t receivers =
      env_size("DEVICEBOUND_BENCH_RECEIVERS", 0);  // per device; 0: one per flow
  if (!support::mosquitto_broker::available() || !support::hub_daemon::available()) {
    std::printf("mqtt_throughput: skipped (no mosquitto at %s or no devicebound-hub at %s)\n",
                support::default_mosquitto, support::default_hub);
    return support::all_parts_required() ? 1 : 0;  // DEVICEBOUND_REQUIRE_ALL=1: a failure
  }
  try {
    support::mosquitto_broker broker;
    // the messaging path against raw Paho: in memory (DEVICEBOUND_BENCH_STORE=sqlite
    // measures the durable daemon instead: one fsync'd commit per event batch)
    std::vector<std::string> args{"--max-queue-depth", "10000", "--max-in-flight", "16"};
    if (const char* s = std::getenv("DEVICEBOUND_BENCH_STORE"); !s || std::string(s) != "sqlite")
      args.push_back("--in-memory");
    for (std::size_t d = 0; d < devices; ++d) {
      args.push_back("--device");
      args.push_back("bench-" + std::to_string(d));
    }
    support::hub_daemon::options ho;
    ho.broker_port = broker.port();
    ho.args = args;
    ho.log_level = "warn";
    support::hub_daemon hub(ho);

    std::printf(
        "mqtt_throughput%s: 64 B messages, mosquitto 127.0.0.1:%u with TCP_NODELAY, "
        "closed-loop flows (each sends, waits for the end, sends again)\n",
        smoke ? " (smoke)" : "", broker.port());
    raw_rig raw_clients(broker.port());
    devicebound_rig db_clients(broker.port(), devices);
    // Warm up both paths (allocators, caches), then measure.
    // (Paho 1.3.11-12 takes up to a second to start polling a new connection's
    // socket when the process has others: eclipse-paho/paho.mqtt.c#1430.)
    const std::size_t warm = smoke ? 2 * flows : 500;
    (void)raw_clients.run(warm, flows);
    (void)db_clients.run(warm, flows, devices, receivers);
    // Rounds alternate the four measurements, so that load from other processes
    // (this machine may be shared) hits all of them alike; medians are printed.
    const std::size_t rounds = smoke ? 1 : 5;
    const std::size_t per = std::max<std::size_t>(n / rounds, 1);
    const std::size_t per1 = std::max<std::size_t>(per / 4, 1);  // one flow is slower
    std::vector<result_t> raw1s, raws, db1s, dbs;
    cpu_use raw_cpu, db_cpu;
    const auto add = [](cpu_use& a, const cpu_use& b) {
      a.broker += b.broker;
      a.hub += b.hub;
      a.clients += b.clients;
    };
    for (std::size_t r = 0; r < rounds; ++r) {
      raw1s.push_back(raw_clients.run(per1, 1));
      add(raw_cpu,
          measure_cpu(broker.pid(), -1, [&] { raws.push_back(raw_clients.run(per, flows)); }));
      db1s.push_back(db_clients.run(per1, 1, 1));
      add(db_cpu, measure_cpu(broker.pid(), hub.pid(), [&] {
            dbs.push_back(db_clients.run(per, flows, devices, receivers));
          }));
    }
    const auto median = [](std::vector<result_t> v) {
      result_t m;
      const auto mid = [&](auto field) {
        std::vector<double> x;
        for (const auto& r : v)
          x.push_back(r.*field);
        return percentile(x, 0.5);
      };
      m.rate = mid(&result_t::rate);
      m.p50_us = mid(&result_t::p50_us);
      m.p99_us = mid(&result_t::p99_us);
      m.max_us = mid(&result_t::max_us);
      for (const auto& r : v)
        m.messages += r.messages;
      return m;
    };
    const result_t raw1 = median(raw1s), raw = median(raws), db1 = median(db1s), db = median(dbs);
    const auto us_per = [](double secs, const result_t& r) {
      return r.messages ? secs * 1e6 / static_cast<double>(r.messages) : 0.0;
    };
    std::printf("  median of %zu rounds %32s %9s %8s %8s %8s   CPU us/msg: broker   hub clients\n",
                rounds, "", "msg/s", "p50 us", "p99 us", "max ms");
    const auto row = [](const std::string& what, const result_t& r) {
      std::printf("  %-52s %9.0f %8.0f %8.0f %8.1f", what.c_str(), r.rate, r.p50_us, r.p99_us,
                  r.max_us / 1000);
    };
    row("raw Paho QoS 1 publish -> ack-back, 1 flow", raw1);
    std::printf("\n");
    row("raw Paho QoS 1 publish -> ack-back, " + std::to_string(flows) + " flows", raw);
    std::printf("   %18.1f %5s %7.1f\n", us_per(raw_cpu.broker, raw), "-",
                us_per(raw_cpu.clients, raw));
    row("devicebound send->hub->device->complete, 1 flow", db1);
    std::printf("\n");
    row("devicebound send->hub->device->complete, " + std::to_string(flows) + " flows", db);
    std::printf("   %18.1f %5.1f %7.1f\n", us_per(db_cpu.broker, db), us_per(db_cpu.hub, db),
                us_per(db_cpu.clients, db));
    // The target: devicebound's rate against the raw loop's at the same concurrency.
    const double ratio = db.rate / raw.rate;
    const double ratio_loop = db.rate / raw1.rate;
    std::printf("  ratio devicebound / raw, %zu flows each: %.2f (target >= 0.50)%s\n", flows,
                ratio, ratio >= 0.5 ? "" : "  BELOW TARGET");
    std::printf("  ratio devicebound (%zu flows) / raw one-at-a-time loop: %.2f\n", flows,
                ratio_loop);
    std::printf(
        "  (per message devicebound makes 5 broker hops: send, answer, delivery, "
        "complete, answer; the raw loop 2)\n");
    if (hub.running() == false) {
      std::printf("devicebound-hub exited during the run:\n%s\n", hub.log().c_str());
      return 1;
    }
    if (enforce && !smoke && ratio < 0.5)
      return 1;
    return 0;
  } catch (const std::exception& e) {
    std::printf("mqtt_throughput: FAILED: %s\n", e.what());
    return 1;
  }
}

#else  // built without the MQTT transport

int main() {
  std::printf("mqtt_throughput: skipped (built without DEVICEBOUND_BUILD_APPS)\n");
  return devicebound::test_support::all_parts_required() ? 1 : 0;  // DEVICEBOUND_REQUIRE_ALL=1
}

#endif
