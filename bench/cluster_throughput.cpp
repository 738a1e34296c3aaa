/// \file cluster_throughput.cpp
/// A partitioned hub (docs/scale-out.md): C2D lifecycles per second with 1 and
/// with 2 `devicebound-hub --cluster` instances on the same PostgreSQL (and
/// mosquitto), and the takeover time after kill -9 of an instance.
///
/// Starts its own PostgreSQL, mosquitto and hubs (tests/support/cluster_hub.hpp:
/// free 127.0.0.1 ports, by PID; PostgreSQL with fsync off; K = 8 partitions;
/// each hub with an AMQP door in test mode, no SAS). A **flow** is one closed
/// loop with exactly one message in flight: the back end sends a 64 B message
/// (unsettled) on its sender link of the hub that serves the flow's device; the
/// device's receiver link (its own connection to that hub, rcv-settle-mode
/// second) gets it and completes it (accepted, unsettled); the hub settles the
/// completion. Done: the send's settled `accepted` AND the hub's settled answer
/// to the completion. Then the flow sends its next message. Flow f's device is
/// in partition f mod K, so the flows spread evenly over the partitions (and
/// over the instances); the devices are configured (`--device`), registered by
/// their partition when it is claimed. One back-end connection per hub; every
/// connection of this process is on one Proton proactor driven by the main thread.
///
/// Each round starts the instances fresh (1 hub: `--expected-instances 1`; 2
/// hubs: started together, `--expected-instances 2`, 4 partitions each), warms
/// up, measures for --seconds, then stops them with SIGTERM (they release their
/// leases). Rounds alternate 1 hub and 2 hubs (the machine may be shared); the
/// medians are printed, with the CPU each process used per lifecycle from
/// /proc/<pid>/stat: PostgreSQL (the postmaster, its live backends and the
/// backends it reaped), the hubs, mosquitto and this process.
///
/// The takeover: 2 instances; kill -9 the one that serves partitions, measure
/// until the other serves all K (its log line), start the killed one again (it
/// stands by), wait its startup grace out, and kill the other one: --kills
/// times. Printed: min, median, p90, max.
///
/// Flags: --seconds S (measured per round, 5), --warmup S (1), --rounds N (3),
/// --flows N (32), --kills N (10), --lease-ttl D (3s), --lease-renew D (500ms),
/// --only 1hub,2hubs,takeover. DEVICEBOUND_BENCH_SMOKE=1 (ctest) runs tiny sizes.
#include <cstdio>
#include <cstdlib>

#include "../tests/support/required.hpp"

#if DEVICEBOUND_WITH_CLUSTER_BENCH

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <devicebound/cluster/partition.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <proton/message.hpp>
#include <proton/message_id.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../tests/support/cluster_hub.hpp"

namespace {

using namespace std::chrono_literals;
namespace support = devicebound::test_support;
namespace cl = devicebound::test_support::cluster;
using steady = std::chrono::steady_clock;

constexpr std::uint32_t partitions = 8;

// --- CPU from /proc ----------------------------------------------------------------------------

/// The fields of /proc/<pid>/stat after the command name: [0] state, [1] ppid,
/// [11] utime, [12] stime, [13] cutime, [14] cstime (clock ticks). Empty if gone.
std::vector<std::string> stat_fields(pid_t pid) {
  const std::string stat = support::read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto close = stat.rfind(')');
  std::vector<std::string> f;
  if (close == std::string::npos || close + 2 > stat.size())
    return f;
  std::string cur;
  for (char c : stat.substr(close + 2)) {
    if (c == ' ') {
      f.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  f.push_back(cur);
  return f;
}

double ticks_to_seconds(const std::string& t) {
  static const double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
  return std::strtod(t.c_str(), nullptr) / hz;
}

/// CPU seconds (user + system) a process has used so far; this process when pid < 0.
double cpu_seconds(pid_t pid) {
  if (pid < 0) {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  }
  const auto f = stat_fields(pid);
  return f.size() > 12 ? ticks_to_seconds(f[11]) + ticks_to_seconds(f[12]) : 0;
}

/// CPU seconds of PostgreSQL: the postmaster, every live child (the backends,
/// the writer...) and the children it has reaped (a backend of a closed connection).
double postgres_cpu_seconds(pid_t postmaster) {
  const auto m = stat_fields(postmaster);
  if (m.size() < 15)
    return 0;
  double s = ticks_to_seconds(m[11]) + ticks_to_seconds(m[12]) + ticks_to_seconds(m[13]) +
             ticks_to_seconds(m[14]);
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const auto f = stat_fields(static_cast<pid_t>(std::stol(name)));
    if (f.size() > 12 && std::strtol(f[1].c_str(), nullptr, 10) == postmaster)
      s += ticks_to_seconds(f[11]) + ticks_to_seconds(f[12]);
  }
  return s;
}

struct cpu_use {
  double postgres = 0, hubs = 0, broker = 0, bench = 0;
};

cpu_use cpu_now(const cl::cluster_hub& c) {
  cpu_use u;
  u.postgres = postgres_cpu_seconds(c.pg->pid());
  for (const auto& i : c.hubs)
    u.hubs += cpu_seconds(i.pid());
  u.broker = cpu_seconds(c.broker->pid());
  u.bench = cpu_seconds(-1);
  return u;
}

// --- the flows: one proactor, driven by the calling thread ------------------------------------

std::string condition_text(pn_condition_t* c) {
  if (!pn_condition_is_set(c))
    return "(no condition)";
  const char* d = pn_condition_get_description(c);
  return std::string(pn_condition_get_name(c)) + (d ? std::string(": ") + d : std::string());
}

/// Every AMQP connection of a round (a back end per hub, a device per flow) on
/// one proactor. Not thread-safe: one thread calls everything.
class flows_driver {
 public:
  flows_driver() : proactor_(pn_proactor()) {}
  ~flows_driver() {
    for (auto& [pn, c] : conns_)
      if (!c.closed)
        pn_connection_close(pn);
    const auto deadline = steady::now() + 2s;
    (void)pump_until(
        [&] {
          return std::all_of(conns_.begin(), conns_.end(),
                             [](const auto& c) { return c.second.closed; });
        },
        deadline);
    pn_proactor_free(proactor_);
  }
  flows_driver(const flows_driver&) = delete;
  flows_driver& operator=(const flows_driver&) = delete;

  /// A connection to 127.0.0.1:`port` (plain AMQP, no SASL) with one session, open.
  pn_connection_t* connect(std::uint16_t port) {
    pn_connection_t* pn = pn_connection();
    pn_connection_set_container(pn, ("bench-" + std::to_string(conns_.size())).c_str());
    pn_connection_set_hostname(pn, "testhub.example");
    pn_connection_open(pn);
    conn& c = conns_[pn];
    c.session = pn_session(pn);
    pn_session_open(c.session);
    const std::string addr = "127.0.0.1:" + std::to_string(port);
    pn_proactor_connect2(proactor_, pn, pn_transport(), addr.c_str());
    if (!pump_until([&] { return c.closed || (pn_connection_state(pn) & PN_REMOTE_ACTIVE); },
                    steady::now() + 10s) ||
        c.closed)
      throw std::runtime_error("AMQP connection to port " + std::to_string(port) +
                               " failed: " + c.error);
    return pn;
  }

  /// The back end's sender on /messages/devicebound, attached.
  pn_link_t* sender(pn_connection_t* pn) {
    return open_link(pn, true, "/messages/devicebound", PN_RCV_FIRST, 0);
  }
  /// Flow `flow`'s device receiver (rcv-settle-mode second), attached, with credit.
  pn_link_t* device(pn_connection_t* pn, const std::string& device, std::size_t flow) {
    pn_link_t* l = open_link(pn, false, "/devices/" + device + "/messages/devicebound",
                             PN_RCV_SECOND, flow + 1);
    pn_link_flow(l, 16);
    dirty_.insert(pn);
    return l;
  }

  struct flow {
    pn_connection_t* service = nullptr;
    pn_link_t* sender = nullptr;
    std::string to;
  };
  void set_flows(std::vector<flow> f) {
    flows_.clear();
    for (auto& x : f)
      flows_.push_back(state{std::move(x)});
  }

  /// Runs every flow for `d`; how many lifecycles finished. Then stops sending
  /// and waits (bounded) for what is in flight, so the next run starts clean.
  std::size_t run(std::chrono::duration<double> d) {
    done_ = 0;
    running_ = true;
    for (std::size_t f = 0; f < flows_.size(); ++f)
      send_next(f);
    const auto end = steady::now() + std::chrono::duration_cast<steady::duration>(d);
    (void)pump_until([&] { return !failure_.empty(); }, end);
    const std::size_t n = done_;
    running_ = false;
    (void)pump_until(
        [&] {
          return !failure_.empty() ||
                 std::none_of(flows_.begin(), flows_.end(), [](const state& s) { return s.busy; });
        },
        steady::now() + 10s);
    if (!failure_.empty())
      throw std::runtime_error(failure_);
    if (std::any_of(flows_.begin(), flows_.end(), [](const state& s) { return s.busy; }))
      throw std::runtime_error("a message was still in flight 10 s after the run");
    return n;
  }

 private:
  struct conn {
    pn_session_t* session = nullptr;
    bool closed = false;
    std::string error;
  };
  struct state {
    flow spec;
    bool busy = false, sent_done = false, device_done = false;
    std::uint64_t seq = 0;
  };

  pn_link_t* open_link(pn_connection_t* pn, bool is_sender, const std::string& address,
                       pn_rcv_settle_mode_t mode, std::size_t tag) {
    conn& c = conns_.at(pn);
    const std::string name = (is_sender ? "s-" : "r-") + std::to_string(next_link_++);
    pn_link_t* l =
        is_sender ? pn_sender(c.session, name.c_str()) : pn_receiver(c.session, name.c_str());
    pn_terminus_set_address(is_sender ? pn_link_target(l) : pn_link_source(l), address.c_str());
    pn_link_set_rcv_settle_mode(l, mode);
    pn_link_open(l);
    links_[l] = tag;  // 0: a sender; f + 1: flow f's device
    dirty_.insert(pn);
    if (!pump_until(
            [&] { return c.closed || !failure_.empty() || (pn_link_state(l) & PN_REMOTE_ACTIVE); },
            steady::now() + 10s) ||
        c.closed || !failure_.empty())
      throw std::runtime_error("link to '" + address +
                               "' was not attached: " + (failure_.empty() ? c.error : failure_));
    return l;
  }

  template <class Pred>
  bool pump_until(Pred pred, steady::time_point deadline) {
    wake_dirty(nullptr);
    while (!pred()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
      if (left <= 0ms)
        return false;
      pn_proactor_set_timeout(proactor_,
                              std::max<pn_millis_t>(1, static_cast<pn_millis_t>(left.count())));
      pn_event_batch_t* b = pn_proactor_wait(proactor_);
      pn_connection_t* batch_conn = nullptr;  // a batch holds one connection's events
      while (pn_event_t* e = pn_event_batch_next(b)) {
        if (!batch_conn)
          batch_conn = pn_event_connection(e);
        handle(e);
      }
      pn_proactor_done(proactor_, b);
      wake_dirty(batch_conn);
    }
    return true;
  }

  /// What was changed on another connection than the batch's is written out
  /// only when the proactor serves that connection: wake it.
  void wake_dirty(pn_connection_t* batch_conn) {
    for (pn_connection_t* c : dirty_)
      if (c != batch_conn && !conns_.at(c).closed)
        pn_connection_wake(c);
    dirty_.clear();
  }

  void fail(const std::string& why) {
    if (failure_.empty())
      failure_ = why;
  }

  void send_next(std::size_t f) {
    state& s = flows_[f];
    s.busy = false;
    if (!running_)
      return;
    s.busy = true;
    s.sent_done = s.device_done = false;
    message_.id("c-" + std::to_string(f) + "-" + std::to_string(++s.seq));
    message_.to(s.spec.to);
    std::string body = std::to_string(f) + ".";
    body.resize(64, '.');
    message_.body(proton::binary(body.begin(), body.end()));
    buffer_.clear();
    message_.encode(buffer_);
    const std::uint64_t tag = next_tag_++;
    pn_delivery_t* d =
        pn_delivery(s.spec.sender, pn_dtag(reinterpret_cast<const char*>(&tag), sizeof tag));
    pn_link_send(s.spec.sender, buffer_.data(), buffer_.size());
    pn_link_advance(s.spec.sender);
    sends_[d] = f;
    dirty_.insert(s.spec.service);
  }

  void maybe_done(std::size_t f) {
    state& s = flows_[f];
    if (!s.sent_done || !s.device_done)
      return;
    ++done_;
    send_next(f);
  }

  void handle(pn_event_t* e) {
    switch (pn_event_type(e)) {
      case PN_LINK_REMOTE_CLOSE:
      case PN_LINK_REMOTE_DETACH: {
        pn_link_t* l = pn_event_link(e);
        fail("a link was detached by the hub: " + condition_text(pn_link_remote_condition(l)));
        pn_link_close(l);
        break;
      }
      case PN_DELIVERY:
        delivery(pn_event_delivery(e));
        break;
      case PN_CONNECTION_REMOTE_CLOSE: {
        pn_connection_t* pc = pn_event_connection(e);
        conns_[pc].error = condition_text(pn_connection_remote_condition(pc));
        pn_connection_close(pc);
        break;
      }
      case PN_TRANSPORT_CLOSED: {
        pn_connection_t* pc = pn_event_connection(e);
        if (auto it = conns_.find(pc); it != conns_.end()) {
          if (it->second.error.empty())
            it->second.error = condition_text(pn_transport_condition(pn_event_transport(e)));
          it->second.closed = true;
          if (running_)
            fail("an AMQP connection closed: " + it->second.error);
        }
        break;
      }
      default:
        break;
    }
  }

  void delivery(pn_delivery_t* d) {
    pn_link_t* l = pn_delivery_link(d);
    auto li = links_.find(l);
    if (li == links_.end())
      return;
    if (pn_link_is_sender(l)) {
      if (!pn_delivery_settled(d))
        return;  // only the settled outcome counts
      const std::uint64_t state = pn_delivery_remote_state(d);
      const std::string cond = condition_text(pn_disposition_condition(pn_delivery_remote(d)));
      pn_delivery_settle(d);
      auto s = sends_.find(d);
      if (s == sends_.end())
        return;
      const std::size_t f = s->second;
      sends_.erase(s);
      if (state != PN_ACCEPTED)
        return fail("a send was not accepted: " + std::string(pn_disposition_type_name(state)) +
                    " " + cond);
      flows_[f].sent_done = true;
      return maybe_done(f);
    }
    const std::size_t f = li->second - 1;
    if (pn_delivery_readable(d) && !pn_delivery_partial(d)) {
      buffer_.clear();
      char chunk[4096];
      ssize_t got;
      while ((got = pn_link_recv(l, chunk, sizeof chunk)) > 0)
        buffer_.insert(buffer_.end(), chunk, chunk + got);
      pn_link_advance(l);
      received_.decode(buffer_);
      const std::string id = proton::get<std::string>(received_.id());
      const std::string expect =
          f < flows_.size() ? "c-" + std::to_string(f) + "-" + std::to_string(flows_[f].seq) : "";
      if (id != expect)
        fail("the device of flow " + std::to_string(f) + " received '" + id + "', expected '" +
             expect + "'");
      // complete it, unsettled (rcv-settle-mode second): the hub answers settled
      pn_delivery_update(d, PN_ACCEPTED);
      pn_link_flow(l, 1);
      dirty_.insert(pn_session_connection(pn_link_session(l)));
      return;
    }
    if (pn_delivery_settled(d) && pn_delivery_local_state(d) == PN_ACCEPTED) {
      const std::uint64_t state = pn_delivery_remote_state(d);
      pn_delivery_settle(d);
      if (state != PN_ACCEPTED)
        return fail("the hub answered a completion with " +
                    std::string(pn_disposition_type_name(state)));
      if (f >= flows_.size() || flows_[f].device_done)
        return fail("flow " + std::to_string(f) + ": a completion answered twice");
      flows_[f].device_done = true;
      maybe_done(f);
    }
  }

  pn_proactor_t* proactor_;
  std::map<pn_connection_t*, conn> conns_;
  std::unordered_map<pn_link_t*, std::size_t> links_;
  std::unordered_map<pn_delivery_t*, std::size_t> sends_;
  std::unordered_set<pn_connection_t*> dirty_;
  std::vector<state> flows_;
  bool running_ = false;
  std::size_t done_ = 0;
  std::string failure_;
  std::vector<char> buffer_;
  proton::message message_, received_;
  int next_link_ = 0;
  std::uint64_t next_tag_ = 0;
};

// --- the bench ---------------------------------------------------------------------------------

struct settings {
  double seconds = 5, warmup = 1;
  std::size_t rounds = 3, flows = 32, kills = 10;
  std::string lease_ttl = "3s", lease_renew = "500ms";
  std::string only;  ///< "" or a comma list of 1hub, 2hubs, takeover
  bool on(const std::string& what) const {
    return only.empty() || ("," + only + ",").find("," + what + ",") != std::string::npos;
  }
};

/// "3s", "500ms", "1500ms", "2.5s" -> milliseconds; throws naming the flag.
std::chrono::milliseconds duration_ms(const std::string& v, const char* flag) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  const std::string unit(end ? end : "");
  if (end == v.c_str() || x <= 0 || (unit != "s" && unit != "ms"))
    throw std::invalid_argument(std::string(flag) + ": '" + v +
                                "' is not a duration such as 3s or 500ms");
  return std::chrono::milliseconds(static_cast<long long>(unit == "s" ? x * 1000 : x));
}

settings parse(int argc, char** argv, bool smoke) {
  settings s;
  if (smoke) {
    s.seconds = 1;
    s.warmup = 0.3;
    s.rounds = 1;
    s.flows = 4;
    s.kills = 1;
  }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc)
      throw std::invalid_argument(a +
                                  " needs a value (flags: --seconds --warmup --rounds --flows "
                                  "--kills --lease-ttl --lease-renew --only)");
    const std::string v = argv[++i];
    const auto count = [&] {
      char* end = nullptr;
      const auto n = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0')
        throw std::invalid_argument(a + ": '" + v + "' is not a count");
      return static_cast<std::size_t>(n);
    };
    const auto secs = [&] {
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || x < 0)
        throw std::invalid_argument(a + ": '" + v + "' is not a number of seconds");
      return x;
    };
    if (a == "--seconds")
      s.seconds = secs();
    else if (a == "--warmup")
      s.warmup = secs();
    else if (a == "--rounds")
      s.rounds = std::max<std::size_t>(count(), 1);
    else if (a == "--flows")
      s.flows = std::max<std::size_t>(count(), 1);
    else if (a == "--kills")
      s.kills = count();
    else if (a == "--lease-ttl")
      s.lease_ttl = (duration_ms(v, "--lease-ttl"), v);
    else if (a == "--lease-renew")
      s.lease_renew = (duration_ms(v, "--lease-renew"), v);
    else if (a == "--only")
      s.only = v;
    else
      throw std::invalid_argument("unknown flag " + a);
  }
  return s;
}

/// Flow f's device: the first "cb-f-n" in partition f mod K.
std::string device_of_flow(std::size_t f) {
  for (std::size_t n = 0;; ++n) {
    std::string id = "cb-" + std::to_string(f) + "-" + std::to_string(n);
    if (devicebound::cluster::partition_of(id, partitions).value() == f % partitions)
      return id;
  }
}

struct round_result {
  double rate = 0;  ///< lifecycles per second
  std::size_t lifecycles = 0;
  cpu_use cpu;  ///< seconds used during the measured run
};

/// One round: `n` instances started together, warm-up, the measured run; then stopped (SIGTERM).
round_result run_round(cl::cluster_hub& c, std::size_t n, const settings& s) {
  c.options.names = n == 1 ? std::vector<std::string>{"a"} : std::vector<std::string>{"a", "b"};
  c.options.expected_instances = 0;  // the number of names
  // The flows' devices are configured (--device): each partition registers its
  // own when it is claimed, one partition at a time. Registered on their first
  // attach instead (--auto-register), two registrations of different
  // partitions in one batch of one instance block each other on the registry's
  // change counter row (store schema 2) until PostgreSQL ends the first
  // transaction (idle_in_transaction_session_timeout, 5 s).
  c.options.extra_args.clear();
  for (std::size_t f = 0; f < s.flows; ++f) {
    c.options.extra_args.push_back("--device");
    c.options.extra_args.push_back(device_of_flow(f));
  }
  c.start_instances();
  round_result r;
  try {
    flows_driver drv;
    std::map<std::uint32_t, std::size_t> owner;  // partition -> instance
    std::vector<pn_connection_t*> svc;
    std::vector<pn_link_t*> snd;
    for (std::size_t i = 0; i < c.hubs.size(); ++i) {
      for (auto k : c.hubs[i].partitions_served())
        owner[k] = i;
      svc.push_back(drv.connect(c.hubs[i].port));
      snd.push_back(drv.sender(svc.back()));
    }
    std::vector<flows_driver::flow> flows;
    for (std::size_t f = 0; f < s.flows; ++f) {
      const std::string dev = device_of_flow(f);
      const std::size_t i = owner.at(static_cast<std::uint32_t>(f % partitions));
      (void)drv.device(drv.connect(c.hubs[i].port), dev, f);
      flows.push_back({svc[i], snd[i], "/devices/" + dev + "/messages/devicebound"});
    }
    drv.set_flows(std::move(flows));
    (void)drv.run(std::chrono::duration<double>(s.warmup));
    const cpu_use before = cpu_now(c);
    const auto t0 = steady::now();
    r.lifecycles = drv.run(std::chrono::duration<double>(s.seconds));
    const double secs = std::chrono::duration<double>(steady::now() - t0).count();
    const cpu_use after = cpu_now(c);
    r.rate = static_cast<double>(r.lifecycles) / secs;
    r.cpu = {after.postgres - before.postgres, after.hubs - before.hubs,
             after.broker - before.broker, after.bench - before.bench};
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(e.what()) + "\n" + c.logs() + "--- PostgreSQL ---\n" +
                             c.pg->log_tail());
  }
  for (const auto& h : c.hubs)
    if (!h.process || !h.process->running())
      throw std::runtime_error("devicebound-hub " + h.name + " exited during the round:\n" +
                               h.log());
  c.stop_instances(SIGTERM);
  return r;
}

double median(std::vector<double> v) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// v sorted ascending; the nearest-rank percentile.
double rank(const std::vector<double>& v, double p) {
  if (v.empty())
    return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size()) + 0.999999);
  return v[std::min(v.size(), std::max<std::size_t>(k, 1)) - 1];
}

/// kill -9 the instance that serves partitions; the time until the other serves all K.
std::vector<double> takeovers(cl::cluster_hub& c, const settings& s) {
  c.options.names = {"a", "b"};
  c.options.expected_instances = 0;
  c.start_instances();
  const auto ttl = duration_ms(s.lease_ttl, "--lease-ttl");
  const auto grace = duration_ms(c.options.startup_grace, "--startup-grace");
  std::vector<double> out;
  for (std::size_t n = 0; n < s.kills; ++n) {
    // the victim: the one serving partitions (after the first kill, the one serving all)
    cl::hub_instance& victim =
        c.hubs[0].partitions_served().size() >= c.hubs[1].partitions_served().size() ? c.hubs[0]
                                                                                     : c.hubs[1];
    cl::hub_instance& other = &victim == &c.hubs[0] ? c.hubs[1] : c.hubs[0];
    const auto killed_at = steady::now();
    victim.kill9();
    const auto t = c.wait_all(other, killed_at, ttl + 10s);
    if (!t)
      throw std::runtime_error("the survivor did not serve every partition within " +
                               std::to_string((ttl + 10s).count()) + " ms\n" + c.logs());
    out.push_back(static_cast<double>(t->count()));
    std::printf("  kill -9 %zu: %s took over all %u partitions after %lld ms\n", n + 1,
                other.name.c_str(), partitions, static_cast<long long>(t->count()));
    std::fflush(stdout);
    if (n + 1 < s.kills) {
      // the killed one again, standing by; its first overflow round (which may
      // take all K) is its startup grace after its first tick: wait it out, or
      // the next takeover would measure the grace, not the lease
      c.restart(victim);
      std::this_thread::sleep_for(grace + duration_ms(s.lease_renew, "--lease-renew"));
    }
  }
  c.stop_instances(SIGTERM);
  return out;
}

int bench_main(int argc, char** argv) {
  const char* smoke_env = std::getenv("DEVICEBOUND_BENCH_SMOKE");
  const bool smoke = smoke_env && *smoke_env && std::strcmp(smoke_env, "0") != 0;
  if (auto m = cl::cluster_hub::missing(); !m.empty()) {
    std::printf("cluster_throughput: skipped (%s)\n", m.c_str());
    return support::all_parts_required() ? 1 : 0;  // DEVICEBOUND_REQUIRE_ALL=1: a failure
  }
  settings s;
  try {
    s = parse(argc, argv, smoke);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cluster_throughput: %s\n", e.what());
    return 2;
  }
  try {
    cl::cluster_options o;
    o.partitions = partitions;
    o.lease_ttl = s.lease_ttl;
    o.lease_renew = s.lease_renew;
    o.log_level = "info";
    o.connect = false;
    cl::cluster_hub c(o, false);
    std::printf(
        "cluster_throughput%s: K = %u partitions, %zu flows (64 B C2D over the hubs' AMQP doors: "
        "send + device receive + complete), lease ttl %s renewed every %s; PostgreSQL "
        "127.0.0.1:%u (fsync off, synchronous_commit off), mosquitto 127.0.0.1:%u; %u CPU(s)\n",
        smoke ? " (smoke)" : "", partitions, s.flows, s.lease_ttl.c_str(), s.lease_renew.c_str(),
        c.pg->port(), c.broker->port(), std::thread::hardware_concurrency());
    std::fflush(stdout);

    const bool one = s.on("1hub"), two = s.on("2hubs");
    std::vector<round_result> r1, r2;
    for (std::size_t r = 0; r < s.rounds && (one || two); ++r) {
      std::printf("  round %zu:", r + 1);
      if (one) {
        r1.push_back(run_round(c, 1, s));
        std::printf(" 1 hub %.0f/s", r1.back().rate);
      }
      if (two) {
        r2.push_back(run_round(c, 2, s));
        std::printf("%s2 hubs %.0f/s", one ? ", " : " ", r2.back().rate);
      }
      if (one && two)
        std::printf(", ratio %.2f", r2.back().rate / r1.back().rate);
      std::printf("\n");
      std::fflush(stdout);
    }
    const auto summary = [&](const char* what, const std::vector<round_result>& v) {
      std::vector<double> rates;
      std::size_t n = 0;
      cpu_use cpu;
      for (const auto& r : v) {
        rates.push_back(r.rate);
        n += r.lifecycles;
        cpu.postgres += r.cpu.postgres;
        cpu.hubs += r.cpu.hubs;
        cpu.broker += r.cpu.broker;
        cpu.bench += r.cpu.bench;
      }
      const auto us = [&](double secs) {
        return n ? secs * 1e6 / static_cast<double>(n) : 0.0;
      };
      std::printf(
          "  %-6s median %7.0f lifecycles/s (min %.0f, max %.0f); CPU us per lifecycle: "
          "PostgreSQL %.0f, hub(s) %.0f, mosquitto %.0f, bench %.0f, total %.0f\n",
          what, median(rates), *std::min_element(rates.begin(), rates.end()),
          *std::max_element(rates.begin(), rates.end()), us(cpu.postgres), us(cpu.hubs),
          us(cpu.broker), us(cpu.bench), us(cpu.postgres + cpu.hubs + cpu.broker + cpu.bench));
      return median(rates);
    };
    double m1 = 0, m2 = 0;
    if (!r1.empty())
      m1 = summary("1 hub", r1);
    if (!r2.empty())
      m2 = summary("2 hubs", r2);
    if (m1 > 0 && m2 > 0) {
      std::vector<double> ratios;
      for (std::size_t r = 0; r < std::min(r1.size(), r2.size()); ++r)
        ratios.push_back(r2[r].rate / r1[r].rate);
      std::printf("  ratio 2 hubs / 1 hub: %.2f (medians; per round %.2f..%.2f)\n", m2 / m1,
                  *std::min_element(ratios.begin(), ratios.end()),
                  *std::max_element(ratios.begin(), ratios.end()));
    }
    std::fflush(stdout);

    if (s.on("takeover") && s.kills > 0) {
      auto t = takeovers(c, s);
      std::sort(t.begin(), t.end());
      std::printf(
          "  takeover after kill -9 (ttl %s, renew %s), %zu kills: min %.0f ms, median %.0f ms, "
          "p90 %.0f ms, max %.0f ms\n",
          s.lease_ttl.c_str(), s.lease_renew.c_str(), t.size(), t.front(), median(t), rank(t, 0.9),
          t.back());
    }
    return 0;
  } catch (const std::exception& e) {
    std::printf("cluster_throughput: FAILED: %s\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench_main(argc, argv);
}

#else  // built without libpq, Qpid Proton or the daemon

int main() {
  std::printf(
      "cluster_throughput: skipped (built without libpq, DEVICEBOUND_WITH_AMQP or "
      "DEVICEBOUND_BUILD_APPS)\n");
  return devicebound::test_support::all_parts_required() ? 1 : 0;  // DEVICEBOUND_REQUIRE_ALL=1
}

#endif
