/// \file amqp_throughput.cpp
/// The C2D lifecycle through devicebound-hub's AMQP front door, against a raw
/// Qpid Proton loop, and with the device over MQTT against the all-MQTT path.
///
/// Starts its own mosquitto and devicebound-hub (free 127.0.0.1 ports, by PID;
/// `--in-memory`, or the durable SQLite store with its default `--store-sync`
/// when DEVICEBOUND_BENCH_STORE=sqlite), and a raw Proton server: this program
/// again as a child process (`--raw-server PORT`), so its CPU is measured as
/// the hub's is. The hub's AMQP door listens with plain AMQP on loopback (no
/// TLS), with an auth file: every connection puts a SAS token made with
/// devicebound/auth on `$cbs` (a `service` policy token for the back end, a
/// device-key token per device), as the SDKs do.
///
/// A **flow** is one closed loop: it has exactly one message in flight, sends
/// the next only when the previous one is done, and has its own receiving end
/// (its own device, on its own connection). All flows of a row share the
/// sending connection and its one sender link (as a service SDK client does).
/// The rows, in one run:
///
/// 1. raw Proton: the sender sends a 64 B message (unsettled) to the raw
///    server, which accepts and settles every transfer and does nothing else.
///    Done: the sender has the settled `accepted`.
/// 2. devicebound, AMQP -> AMQP: the back end sends to `/messages/devicebound`
///    (`to` = the flow's device); the device's receiver link
///    (`/devices/{id}/messages/devicebound`, rcv-settle-mode *second*) gets it
///    and accepts it unsettled; the hub applies the completion and answers
///    with a settled `accepted`. Done: the send's settled `accepted` AND the
///    hub's settled answer to the device's completion have both arrived.
/// 3. devicebound, AMQP -> MQTT: the same send; an extended MQTT device
///    (`device_client<mqtt::extended_device_connection>`, via mosquitto)
///    receives and completes. Done: the send's `accepted` AND the hub has
///    answered the device's complete.
/// 4. devicebound, MQTT -> MQTT (today's path, as bench/mqtt_throughput.cpp):
///    `service_client<mqtt::service_connection>::send` (answered by the hub),
///    the same MQTT devices. Done: the send answered AND the complete answered.
///
/// Each at 1 flow and at DEVICEBOUND_BENCH_FLOWS (16) flows. The AMQP clients
/// of this process are event-driven on one Proton proactor thread; the MQTT
/// clients are the library's blocking clients (one thread per flow and per
/// device). Each row: messages/s, p50/p99 of one message (send to done), CPU
/// microseconds per message of the broker, of the hub (the raw server on the
/// raw rows) from /proc/<pid>/stat, and of this process (getrusage), and the
/// hub's context switches per message (/proc/<pid>/task/*/status); medians of
/// rounds that alternate all rows (the machine may be shared).
///
/// Target (issue 11): devicebound AMQP >= 0.5x raw Proton at 16 flows.
/// DEVICEBOUND_BENCH_SMOKE=1 runs tiny sizes (ctest); DEVICEBOUND_BENCH_ENFORCE=1
/// exits non-zero when the target is missed; DEVICEBOUND_BENCH_MESSAGES and
/// _FLOWS override the sizes.
#include <cstdio>
#include <cstdlib>

#include "../tests/support/required.hpp"

#if DEVICEBOUND_WITH_AMQP_BENCH

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <proton/message.hpp>
#include <proton/message_id.hpp>
#include <proton/scalar.hpp>
#include <proton/value.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../tests/support/mosquitto.hpp"

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
namespace support = devicebound::test_support;
using steady = std::chrono::steady_clock;

constexpr const char* hub_host = "bench.example";
const std::string device_key_b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const std::string service_key_b64 = "ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==";

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
  // After the command name (which may hold spaces): utime is field 14, stime 15.
  const auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 > stat.size())
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

/// Context switches (voluntary and not) of all threads of process `pid` so far.
double context_switches(pid_t pid) {
  double n = 0;
  std::error_code ec;
  for (const auto& t :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::istringstream in(support::read_file(t.path().string() + "/status"));
    for (std::string line; std::getline(in, line);)
      if (line.find("ctxt_switches:") != std::string::npos)
        n += std::strtod(line.substr(line.find(':') + 1).c_str(), nullptr);
  }
  return n;
}

/// CPU seconds used by the broker, the hub (or the raw server) and this process;
/// the hub's context switches.
struct cpu_use {
  double broker = 0, hub = 0, clients = 0, hub_switches = 0;
  void operator+=(const cpu_use& o) {
    broker += o.broker;
    hub += o.hub;
    clients += o.clients;
    hub_switches += o.hub_switches;
  }
};

template <class F>
cpu_use measure_cpu(pid_t broker, pid_t hub, F f) {
  const double b0 = cpu_seconds(broker), h0 = cpu_seconds(hub), c0 = cpu_seconds(-1),
               s0 = context_switches(hub);
  f();
  return {cpu_seconds(broker) - b0, cpu_seconds(hub) - h0, cpu_seconds(-1) - c0,
          context_switches(hub) - s0};
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty())
    return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

result_t summarize(std::vector<double>& lat, double secs) {
  result_t r;
  r.messages = lat.size();
  r.rate = secs > 0 ? static_cast<double>(lat.size()) / secs : 0;
  r.p50_us = percentile(lat, 0.50);
  r.p99_us = percentile(lat, 0.99);
  return r;
}

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

std::string amqp_device(std::size_t f) {
  return "am-" + std::to_string(f);
}
std::string mqtt_device(std::size_t f) {
  return "mq-" + std::to_string(f);
}

std::string condition_text(pn_condition_t* c) {
  if (!pn_condition_is_set(c))
    return "(no condition)";
  const char* d = pn_condition_get_description(c);
  return std::string(pn_condition_get_name(c)) + (d ? std::string(": ") + d : std::string());
}

// --- the raw Proton server (a child process: this program with --raw-server PORT) -----------

/// Listens on 127.0.0.1:`port`, opens whatever the peer opens, grants credit on
/// every receiving link and accepts (and settles) every transfer. Nothing else.
int raw_server_main(const char* port) {
  pn_proactor_t* p = pn_proactor();
  pn_listener_t* listener = pn_listener();
  const std::string addr = std::string("127.0.0.1:") + port;
  pn_proactor_listen(p, listener, addr.c_str(), 16);
  constexpr int credit = 1000;
  for (;;) {
    pn_event_batch_t* b = pn_proactor_wait(p);
    while (pn_event_t* e = pn_event_batch_next(b)) {
      switch (pn_event_type(e)) {
        case PN_LISTENER_ACCEPT: {
          pn_transport_t* t = pn_transport();
          pn_transport_set_server(t);
          pn_listener_accept2(listener, pn_connection(), t);
          break;
        }
        case PN_LISTENER_CLOSE:
          std::fprintf(stderr, "raw server: listener closed: %s\n",
                       condition_text(pn_listener_condition(listener)).c_str());
          return 1;
        case PN_CONNECTION_REMOTE_OPEN:
          pn_connection_open(pn_event_connection(e));
          break;
        case PN_SESSION_REMOTE_OPEN:
          pn_session_open(pn_event_session(e));
          break;
        case PN_LINK_REMOTE_OPEN: {
          pn_link_t* l = pn_event_link(e);
          pn_terminus_copy(pn_link_source(l), pn_link_remote_source(l));
          pn_terminus_copy(pn_link_target(l), pn_link_remote_target(l));
          pn_link_open(l);
          if (pn_link_is_receiver(l))
            pn_link_flow(l, credit);
          break;
        }
        case PN_DELIVERY: {
          pn_delivery_t* d = pn_event_delivery(e);
          pn_link_t* l = pn_delivery_link(d);
          if (!pn_link_is_receiver(l) || !pn_delivery_readable(d) || pn_delivery_partial(d))
            break;
          char buf[4096];
          while (pn_link_recv(l, buf, sizeof buf) > 0) {
          }
          pn_link_advance(l);
          pn_delivery_update(d, PN_ACCEPTED);
          pn_delivery_settle(d);
          if (pn_link_credit(l) < credit / 2)
            pn_link_flow(l, credit - pn_link_credit(l));
          break;
        }
        case PN_LINK_REMOTE_CLOSE:
          pn_link_close(pn_event_link(e));
          break;
        case PN_SESSION_REMOTE_CLOSE:
          pn_session_close(pn_event_session(e));
          break;
        case PN_CONNECTION_REMOTE_CLOSE:
          pn_connection_close(pn_event_connection(e));
          break;
        default:
          break;
      }
    }
    pn_proactor_done(p, b);
  }
}

/// The raw server as a child process, stopped (by PID) when this goes away.
class raw_server {
 public:
  raw_server() {
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = support::free_port();
      process_ = std::make_unique<support::child_process>(
          std::vector<std::string>{self, "--raw-server", std::to_string(port_)},
          dir_.file("raw-server.log"));
      for (int i = 0; i < 500 && process_->running(); ++i) {
        if (support::accepts_connections(port_))
          return;
        std::this_thread::sleep_for(10ms);  // no readiness notification: probe, bounded
      }
    }
    throw std::runtime_error("the raw Proton server did not start:\n" +
                             support::read_file(dir_.file("raw-server.log")));
  }
  std::uint16_t port() const { return port_; }
  pid_t pid() const { return process_->pid(); }

 private:
  support::temp_dir dir_{"devicebound-raw-amqp-"};
  std::uint16_t port_ = 0;
  std::unique_ptr<support::child_process> process_;
};

// --- the AMQP clients: one proactor, one event thread --------------------------------------

/// Every AMQP connection of this process (the back end's or the raw sender, and
/// one per AMQP device) lives on one Proton proactor served by one thread.
/// Setup calls from other threads go through `call` (run on that thread);
/// measured runs are driven by events only: when a flow's message is done,
/// the event handler records it and sends the flow's next one.
class amqp_clients {
 public:
  struct conn {
    pn_connection_t* pn = nullptr;
    pn_session_t* session = nullptr;
    bool closed = false;
    std::string error;
    pn_link_t* cbs_send = nullptr;
    pn_link_t* cbs_recv = nullptr;
    std::optional<int> cbs_status;
  };

  amqp_clients() : proactor_(pn_proactor()) {
    thread_ = std::thread([this] { loop(); });
  }
  ~amqp_clients() {
    try {
      call([this] {
        for (auto& c : conns_)
          if (!c->closed)
            pn_connection_close(c->pn);
      });
      (void)poll_until(
          [this] {
            return std::all_of(conns_.begin(), conns_.end(),
                               [](const auto& c) { return c->closed; });
          },
          2s);
    } catch (...) {
    }
    post([this] { stop_ = true; });
    thread_.join();
    pn_proactor_free(proactor_);
  }
  amqp_clients(const amqp_clients&) = delete;
  amqp_clients& operator=(const amqp_clients&) = delete;

  /// Runs `f` on the event thread; its result.
  template <class F>
  auto call(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto fut = task.get_future();
    post([&task] { task(); });
    return fut.get();
  }

  /// Asks `pred` (on the event thread) until it holds or `timeout` passes.
  bool poll_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    const auto deadline = steady::now() + timeout;
    while (!call(pred)) {
      if (steady::now() >= deadline)
        return false;
      std::this_thread::sleep_for(2ms);
    }
    return true;
  }

  /// A connection (plain AMQP, no SASL) with one session; with `token`, put on
  /// its `$cbs` link and answered 200. Throws if it does not come up.
  conn* connect(std::uint16_t port, const std::string& token) {
    conn* c = call([&] {
      auto owned = std::make_unique<conn>();
      conn* k = owned.get();
      k->pn = pn_connection();
      pn_connection_set_container(k->pn, ("bench-" + std::to_string(conns_.size())).c_str());
      pn_connection_set_hostname(k->pn, hub_host);
      pn_connection_open(k->pn);
      k->session = pn_session(k->pn);
      pn_session_open(k->session);
      by_pn_[k->pn] = k;
      conns_.push_back(std::move(owned));
      const std::string addr = "127.0.0.1:" + std::to_string(port);
      pn_proactor_connect2(proactor_, k->pn, pn_transport(), addr.c_str());
      return k;
    });
    if (!poll_until([c] { return c->closed || (pn_connection_state(c->pn) & PN_REMOTE_ACTIVE); },
                    10s) ||
        !call([c] { return !c->closed; }))
      throw std::runtime_error("AMQP connection failed: " + call([c] { return c->error; }));
    if (token.empty())
      return c;
    call([&] {
      c->cbs_send = open_link(c, true, "$cbs", PN_RCV_FIRST, kind::cbs, 0);
      c->cbs_recv = open_link(c, false, "$cbs", PN_RCV_FIRST, kind::cbs, 0);
      pn_link_flow(c->cbs_recv, 4);
      proton::message m;
      m.id(std::string("put-1"));
      m.to("$cbs");
      m.reply_to("cbs");
      m.properties().put("operation", "put-token");
      m.properties().put("type", "servicebus.windows.net:sastoken");
      m.properties().put("name", hub_host);
      m.body(token);
      send(c, c->cbs_send, m);
    });
    if (!poll_until([c] { return c->closed || c->cbs_status.has_value(); }, 10s) ||
        call([c] { return c->cbs_status.value_or(0); }) != 200)
      throw std::runtime_error("CBS put-token was not answered 200: " +
                               call([c] { return c->error; }));
    return c;
  }

  /// A sender link to `address`, attached.
  pn_link_t* sender(conn* c, const std::string& address) {
    pn_link_t* l = call([&] { return open_link(c, true, address, PN_RCV_FIRST, kind::send, 0); });
    wait_attached(c, l, address);
    return l;
  }

  /// A device's C2D receiver link (rcv-settle-mode second), attached, for flow `flow`.
  pn_link_t* device_receiver(conn* c, const std::string& address, std::size_t flow) {
    pn_link_t* l = call([&] {
      pn_link_t* r = open_link(c, false, address, PN_RCV_SECOND, kind::device, flow);
      pn_link_flow(r, 16);
      return r;
    });
    wait_attached(c, l, address);
    return l;
  }

  /// One flow of a run: sends `to` a device; done when the send is accepted
  /// and (if `device_side`) its device has finished too.
  struct flow_spec {
    std::string to;
    bool device_side = false;
  };

  /// Runs `n` messages over `flows` closed loops on `sender` (of `c`).
  result_t run(conn* c, pn_link_t* sender, std::size_t n, std::vector<flow_spec> flows) {
    auto r = std::make_shared<run_state>();
    r->c = c;
    r->sender = sender;
    r->n = n;
    r->active = flows.size();
    for (std::size_t f = 0; f < flows.size(); ++f) {
      flow_state s;
      s.to = flows[f].to;
      s.device_side = flows[f].device_side;
      s.body = flow_payload(f);
      r->flows.push_back(std::move(s));
    }
    r->lat.reserve(n);
    const auto t0 = steady::now();
    post([this, r] {
      run_ = r;
      for (std::size_t f = 0; f < r->flows.size(); ++f)
        send_next(f);
    });
    {
      std::unique_lock<std::mutex> g(r->m);
      const bool ok = r->cv.wait_for(g, 120s, [&] { return r->complete; });
      if (!ok)
        r->failure = "the run did not finish within 120 s";
    }
    const double secs = std::chrono::duration<double>(steady::now() - t0).count();
    call([this] { run_.reset(); });
    if (!r->failure.empty())
      throw std::runtime_error(r->failure);
    return summarize(r->lat, secs);
  }

  /// From any thread: flow `f`'s device (not on this proactor) has finished.
  void device_done(std::size_t f) {
    post([this, f] {
      if (run_ && f < run_->flows.size())
        flow_device_done(f);
    });
  }

 private:
  enum class kind { cbs, send, device };
  struct link_info {
    conn* c = nullptr;
    kind k = kind::send;
    std::size_t flow = 0;
  };
  struct flow_state {
    std::string to;
    std::string body;
    bool device_side = false;
    bool sent_done = false, device_finished = false;
    std::string expect;  ///< the message id in flight
    steady::time_point t0;
    pn_delivery_t* delivery = nullptr;
  };
  struct run_state {
    conn* c = nullptr;
    pn_link_t* sender = nullptr;
    std::size_t n = 0, started = 0, active = 0;
    std::vector<flow_state> flows;
    std::unordered_map<pn_delivery_t*, std::size_t> sends;
    std::vector<double> lat;
    std::mutex m;
    std::condition_variable cv;
    bool complete = false;
    std::string failure;
  };

  void post(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> g(m_);
      posted_.push_back(std::move(f));
    }
    pn_proactor_interrupt(proactor_);
  }

  void wait_attached(conn* c, pn_link_t* l, const std::string& address) {
    if (!poll_until(
            [&] {
              return c->closed || refused_.count(l) > 0 || (pn_link_state(l) & PN_REMOTE_ACTIVE);
            },
            10s) ||
        call([&] { return c->closed || refused_.count(l) > 0; }))
      throw std::runtime_error("link to '" + address + "' refused: " + call([&] {
                                 auto it = refused_.find(l);
                                 return it == refused_.end() ? c->error : it->second;
                               }));
  }

  pn_link_t* open_link(conn* c, bool is_sender, const std::string& address,
                       pn_rcv_settle_mode_t mode, kind k, std::size_t flow) {
    const std::string name = (is_sender ? "s-" : "r-") + std::to_string(next_link_++);
    pn_link_t* l =
        is_sender ? pn_sender(c->session, name.c_str()) : pn_receiver(c->session, name.c_str());
    pn_terminus_set_address(is_sender ? pn_link_target(l) : pn_link_source(l), address.c_str());
    pn_link_set_rcv_settle_mode(l, mode);
    pn_link_open(l);
    links_[l] = link_info{c, k, flow};
    dirty_.insert(c->pn);
    return l;
  }

  pn_delivery_t* send(conn* c, pn_link_t* l, const proton::message& m) {
    buffer_.clear();
    m.encode(buffer_);
    const std::uint64_t tag = next_tag_++;
    pn_delivery_t* d = pn_delivery(l, pn_dtag(reinterpret_cast<const char*>(&tag), sizeof tag));
    pn_link_send(l, buffer_.data(), buffer_.size());
    pn_link_advance(l);
    dirty_.insert(c->pn);
    return d;
  }

  // --- the closed loops (event thread) ---

  void fail(const std::string& why) {
    if (!run_)
      return;
    auto r = run_;
    run_.reset();
    std::lock_guard<std::mutex> g(r->m);
    if (r->failure.empty())
      r->failure = why;
    r->complete = true;
    r->cv.notify_all();
  }

  void send_next(std::size_t f) {
    run_state& r = *run_;
    flow_state& s = r.flows[f];
    if (r.started >= r.n) {
      if (--r.active == 0) {
        auto keep = run_;
        run_.reset();
        std::lock_guard<std::mutex> g(keep->m);
        keep->complete = true;
        keep->cv.notify_all();
      }
      return;
    }
    ++r.started;
    s.expect = "m-" + std::to_string(f) + "-" + std::to_string(r.started);
    message_.id(s.expect);
    message_.to(s.to);
    message_.body(proton::binary(s.body.begin(), s.body.end()));
    s.sent_done = false;
    s.device_finished = !s.device_side;
    s.t0 = steady::now();
    s.delivery = send(r.c, r.sender, message_);
    r.sends[s.delivery] = f;
  }

  void maybe_done(std::size_t f) {
    flow_state& s = run_->flows[f];
    if (!s.sent_done || !s.device_finished)
      return;
    run_->lat.push_back(std::chrono::duration<double, std::micro>(steady::now() - s.t0).count());
    send_next(f);
  }

  void flow_device_done(std::size_t f) {
    flow_state& s = run_->flows[f];
    if (s.device_finished)
      return fail("flow " + std::to_string(f) + ": its device finished a message twice");
    s.device_finished = true;
    maybe_done(f);
  }

  // --- events ---

  void loop() {
    while (!stop_) {
      pn_event_batch_t* b = pn_proactor_wait(proactor_);
      pn_connection_t* batch_conn = nullptr;  // a batch holds one connection's events
      while (pn_event_t* e = pn_event_batch_next(b)) {
        if (!batch_conn)
          batch_conn = pn_event_connection(e);
        try {
          handle(e);
        } catch (const std::exception& x) {  // a reply we cannot decode, say
          fail(std::string("AMQP client: ") + x.what());
        }
      }
      pn_proactor_done(proactor_, b);
      // What was changed on another connection than the batch's is written out
      // only when the proactor serves that connection: wake it.
      for (pn_connection_t* c : dirty_)
        if (c != batch_conn && !by_pn_.at(c)->closed)
          pn_connection_wake(c);
      dirty_.clear();
    }
  }

  void handle(pn_event_t* e) {
    switch (pn_event_type(e)) {
      case PN_PROACTOR_INTERRUPT: {
        std::deque<std::function<void()>> todo;
        {
          std::lock_guard<std::mutex> g(m_);
          todo.swap(posted_);
        }
        for (auto& f : todo)
          f();
        break;
      }
      case PN_LINK_REMOTE_CLOSE:
      case PN_LINK_REMOTE_DETACH: {
        pn_link_t* l = pn_event_link(e);
        refused_[l] = condition_text(pn_link_remote_condition(l));
        pn_link_close(l);
        fail("a link was detached by the peer: " + refused_[l]);
        break;
      }
      case PN_DELIVERY:
        delivery(pn_event_delivery(e));
        break;
      case PN_CONNECTION_REMOTE_CLOSE: {
        pn_connection_t* pc = pn_event_connection(e);
        conn* c = by_pn_.at(pc);
        c->error = condition_text(pn_connection_remote_condition(pc));
        pn_connection_close(pc);
        break;
      }
      case PN_TRANSPORT_CLOSED: {
        pn_connection_t* pc = pn_event_connection(e);
        if (auto it = by_pn_.find(pc); it != by_pn_.end()) {
          conn* c = it->second;
          if (c->error.empty())
            c->error = condition_text(pn_transport_condition(pn_event_transport(e)));
          c->closed = true;
          fail("an AMQP connection closed: " + c->error);
        }
        break;
      }
      default:
        break;
    }
  }

  void delivery(pn_delivery_t* d) {
    pn_link_t* l = pn_delivery_link(d);
    auto it = links_.find(l);
    if (it == links_.end())
      return;
    const link_info& li = it->second;
    if (pn_link_is_sender(l)) {
      if (!pn_delivery_settled(d))
        return;  // only the settled outcome counts
      const std::uint64_t state = pn_delivery_remote_state(d);
      const std::string cond = condition_text(pn_disposition_condition(pn_delivery_remote(d)));
      pn_delivery_settle(d);
      if (li.k != kind::send || !run_)
        return;
      auto s = run_->sends.find(d);
      if (s == run_->sends.end())
        return;
      const std::size_t f = s->second;
      run_->sends.erase(s);
      if (state != PN_ACCEPTED)
        return fail("a send was not accepted: " + std::string(pn_disposition_type_name(state)) +
                    " " + cond);
      run_->flows[f].sent_done = true;
      maybe_done(f);
      return;
    }
    // Receiving links: a new transfer, or the hub's settled answer to our outcome.
    if (pn_delivery_readable(d) && !pn_delivery_partial(d)) {
      buffer_.clear();
      char chunk[4096];
      ssize_t got;
      while ((got = pn_link_recv(l, chunk, sizeof chunk)) > 0)
        buffer_.insert(buffer_.end(), chunk, chunk + got);
      pn_link_advance(l);
      if (li.k == kind::cbs) {
        proton::message m;
        m.decode(buffer_);
        const proton::scalar status = m.properties().get("status-code");
        li.c->cbs_status = proton::get<std::int32_t>(status);
        pn_delivery_update(d, PN_ACCEPTED);
        pn_delivery_settle(d);
        return;
      }
      // A device: decode, check it is its flow's message, complete it (unsettled:
      // rcv-settle-mode second, so the hub answers with a settled outcome).
      received_.decode(buffer_);
      pn_delivery_update(d, PN_ACCEPTED);
      pn_link_flow(l, 1);
      if (!run_ || li.flow >= run_->flows.size())
        return;
      const std::string id = proton::get<std::string>(received_.id());
      if (id != run_->flows[li.flow].expect)
        return fail("device of flow " + std::to_string(li.flow) + " received '" + id +
                    "', expected '" + run_->flows[li.flow].expect + "'");
      return;
    }
    if (li.k == kind::device && pn_delivery_settled(d) &&
        pn_delivery_local_state(d) == PN_ACCEPTED) {
      const std::uint64_t state = pn_delivery_remote_state(d);
      pn_delivery_settle(d);
      if (!run_ || li.flow >= run_->flows.size())
        return;
      if (state != PN_ACCEPTED)
        return fail("the hub answered a completion with " +
                    std::string(pn_disposition_type_name(state)));
      flow_device_done(li.flow);
    }
  }

  pn_proactor_t* proactor_;
  std::thread thread_;
  std::mutex m_;
  std::deque<std::function<void()>> posted_;
  bool stop_ = false;
  // Event thread only:
  std::vector<std::unique_ptr<conn>> conns_;
  std::unordered_map<pn_connection_t*, conn*> by_pn_;
  std::unordered_map<pn_link_t*, link_info> links_;
  std::unordered_map<pn_link_t*, std::string> refused_;
  std::unordered_set<pn_connection_t*> dirty_;
  std::shared_ptr<run_state> run_;
  std::vector<char> buffer_;
  proton::message message_, received_;
  int next_link_ = 0;
  std::uint64_t next_tag_ = 0;
};

// --- MQTT clients (the library's) ----------------------------------------------------------

mqtt::connection_options options_for(std::uint16_t port) {
  mqtt::connection_options o;
  o.port = port;
  o.request_timeout = 30s;
  o.prefetch = 16;
  return o;
}

using device_type = device_client<mqtt::extended_device_connection>;
using service_type = service_client<mqtt::service_connection>;

/// One flow's wake-up for the blocking MQTT loops.
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

/// The extended MQTT devices mq-0.., connected and attached once; `receive`
/// runs one receiving thread per device of a run, each completing what it
/// gets and then calling `on_complete(flow)`.
class mqtt_devices {
 public:
  mqtt_devices(std::uint16_t port, std::size_t n) {
    for (std::size_t d = 0; d < n; ++d)
      devs_.push_back(std::make_unique<device_type>(
          mqtt::extended_device_connection(mqtt_device(d), options_for(port))));
    // In parallel: a new Paho connection may take a second to be polled when the
    // process has others (eclipse-paho/paho.mqtt.c#1430).
    std::vector<std::string> errors(n);
    std::vector<std::thread> t;
    for (std::size_t d = 0; d < n; ++d)
      t.emplace_back([&, d] {
        if (auto r = devs_[d]->connect(); !r)
          errors[d] = "MQTT device connect: " + r.error().message;
        else if (auto a = devs_[d]->receive(0ms); !a)  // attach now, not while measuring
          errors[d] = "MQTT device attach: " + a.error().message;
      });
    for (auto& x : t)
      x.join();
    for (const auto& e : errors)
      if (!e.empty())
        throw std::runtime_error(e);
  }

  class receivers {
   public:
    receivers(mqtt_devices& d, std::size_t flows, std::function<void(std::size_t)> on_complete) {
      for (std::size_t f = 0; f < flows; ++f)
        threads_.emplace_back([this, dev = d.devs_[f].get(), on_complete] {
          while (!stop_.load()) {
            auto r = dev->receive(100ms);
            if (r && !*r)
              continue;
            if (r) {
              if (auto c = dev->complete(**r); c) {
                on_complete(flow_of((*r)->body));
                continue;
              } else {
                r = c.error();
              }
            }
            std::lock_guard<std::mutex> g(m_);
            error_ = r.error().message;
            return;
          }
        });
    }
    ~receivers() {
      stop_ = true;
      for (auto& t : threads_)
        t.join();
    }
    receivers(const receivers&) = delete;
    receivers& operator=(const receivers&) = delete;
    std::string error() {
      std::lock_guard<std::mutex> g(m_);
      return error_;
    }

   private:
    std::atomic<bool> stop_{false};
    std::mutex m_;
    std::string error_;
    std::vector<std::thread> threads_;
  };

 private:
  std::vector<std::unique_ptr<device_type>> devs_;
};

/// Today's all-MQTT path: one thread per flow sends with the service client
/// (blocking until the hub answers) and waits for its device's complete.
result_t run_all_mqtt(service_type& svc, mqtt_devices& devs, std::size_t n, std::size_t flows) {
  std::vector<std::unique_ptr<flow_slot>> slots;
  for (std::size_t f = 0; f < flows; ++f)
    slots.push_back(std::make_unique<flow_slot>());
  mqtt_devices::receivers rx(devs, flows, [&](std::size_t f) {
    if (f < slots.size())
      slots[f]->signal();
  });
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex m;
  std::string failure;
  std::vector<std::vector<double>> lat(flows);
  const auto t0 = steady::now();
  std::vector<std::thread> threads;
  for (std::size_t f = 0; f < flows; ++f)
    threads.emplace_back([&, f] {
      while (next++ < n && !failed.load()) {
        const auto t = steady::now();
        message msg;
        msg.body = flow_payload(f);
        std::string why;
        if (auto r = svc.send(mqtt_device(f), std::move(msg)); !r)
          why = "MQTT send: " + r.error().message;
        else if (!slots[f]->wait(30s))
          why = "a message was not completed within 30 s " + rx.error();
        if (!why.empty()) {
          std::lock_guard<std::mutex> g(m);
          if (!failed.exchange(true))
            failure = why;
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
  return summarize(all, secs);
}

// --- the run -------------------------------------------------------------------------------

std::string service_token() {
  const auto se = auth::sas_expiry(system_clock{}.now(), 24h);
  return to_string(auth::generate_sas_token(
      hub_host, auth::shared_access_key::from_base64(service_key_b64).value(), se, "service"));
}

std::string device_token(const std::string& device) {
  const auto se = auth::sas_expiry(system_clock{}.now(), 24h);
  return to_string(
      auth::generate_sas_token(std::string(hub_host) + "/devices/" + device,
                               auth::shared_access_key::from_base64(device_key_b64).value(), se));
}

/// devicebound-hub on the broker at `broker_port`, its AMQP door on a free port.
std::unique_ptr<support::hub_daemon> start_hub(std::uint16_t broker_port, std::size_t flows,
                                               const std::string& auth_file,
                                               std::uint16_t& amqp_port) {
  std::string last;
  for (int attempt = 0; attempt < 4; ++attempt) {
    amqp_port = support::free_port();
    std::vector<std::string> args{"--max-queue-depth", "10000",
                                  "--max-in-flight",   "16",
                                  "--amqp-listen",     "127.0.0.1:" + std::to_string(amqp_port),
                                  "--auth-file",       auth_file,
                                  "--iothub-hostname", hub_host};
    if (const char* s = std::getenv("DEVICEBOUND_BENCH_STORE"); !s || std::string(s) != "sqlite")
      args.push_back("--in-memory");
    for (std::size_t f = 0; f < flows; ++f)
      for (const auto& d : {amqp_device(f), mqtt_device(f)}) {
        args.push_back("--device");
        args.push_back(d);
      }
    support::hub_daemon::options ho;
    ho.broker_port = broker_port;
    ho.args = args;
    ho.log_level = "warn";
    try {
      auto hub = std::make_unique<support::hub_daemon>(ho);
      for (int i = 0; i < 500 && !support::accepts_connections(amqp_port); ++i)
        std::this_thread::sleep_for(10ms);  // bounded: the door may listen after the ping
      if (support::accepts_connections(amqp_port))
        return hub;
      last = "the AMQP door does not listen:\n" + hub->log();
    } catch (const std::exception& e) {
      last = e.what();  // most likely the port was taken meanwhile: another one
    }
  }
  throw std::runtime_error(last);
}

int bench_main() {
  const bool smoke = env_flag("DEVICEBOUND_BENCH_SMOKE");
  const bool enforce = env_flag("DEVICEBOUND_BENCH_ENFORCE");
  const std::size_t n = env_size("DEVICEBOUND_BENCH_MESSAGES", smoke ? 200 : 20000);
  const std::size_t flows = std::max<std::size_t>(env_size("DEVICEBOUND_BENCH_FLOWS", 16), 1);
  const bool durable = [] {
    const char* s = std::getenv("DEVICEBOUND_BENCH_STORE");
    return s && std::string(s) == "sqlite";
  }();
  if (!support::mosquitto_broker::available() || !support::hub_daemon::available()) {
    std::printf("amqp_throughput: skipped (no mosquitto at %s or no devicebound-hub at %s)\n",
                support::default_mosquitto, support::default_hub);
    return support::all_parts_required() ? 1 : 0;  // DEVICEBOUND_REQUIRE_ALL=1: a failure
  }
  try {
    support::temp_dir dir("devicebound-amqp-bench-");
    {
      std::ofstream a(dir.file("auth.txt"));
      a << "policy service " << service_key_b64 << "\n";
      for (std::size_t f = 0; f < flows; ++f)
        a << amqp_device(f) << " " << device_key_b64 << "\n";
    }
    support::mosquitto_broker broker;
    std::uint16_t amqp_port = 0;
    auto hub = start_hub(broker.port(), flows, dir.file("auth.txt"), amqp_port);
    raw_server raw;

    std::printf(
        "amqp_throughput%s: 64 B messages, hub %s, AMQP door 127.0.0.1:%u (plain, SAS on $cbs), "
        "mosquitto 127.0.0.1:%u, raw Proton server 127.0.0.1:%u (child process)\n",
        smoke ? " (smoke)" : "", durable ? "SQLite store (default --store-sync)" : "--in-memory",
        amqp_port, broker.port(), raw.port());

    amqp_clients amqp;
    // raw: one connection, one sender link
    auto* raw_conn = amqp.connect(raw.port(), {});
    pn_link_t* raw_link = amqp.sender(raw_conn, "/bench/raw");
    // the AMQP back end: one connection, one sender link; one connection per AMQP device
    auto* svc_conn = amqp.connect(amqp_port, service_token());
    pn_link_t* svc_link = amqp.sender(svc_conn, "/messages/devicebound");
    for (std::size_t f = 0; f < flows; ++f) {
      auto* c = amqp.connect(amqp_port, device_token(amqp_device(f)));
      (void)amqp.device_receiver(c, "/devices/" + amqp_device(f) + "/messages/devicebound", f);
    }
    // the MQTT devices and the MQTT back end
    mqtt_devices mq(broker.port(), flows);
    service_type mqtt_svc(mqtt::service_connection(options_for(broker.port())));
    if (auto r = mqtt_svc.open(); !r)
      throw std::runtime_error("MQTT service open: " + r.error().message);

    const auto specs = [&](std::size_t k, int what) {
      std::vector<amqp_clients::flow_spec> v;
      for (std::size_t f = 0; f < k; ++f) {
        if (what == 0)
          v.push_back({"/devices/raw-" + std::to_string(f) + "/messages/devicebound", false});
        else if (what == 1)
          v.push_back({"/devices/" + amqp_device(f) + "/messages/devicebound", true});
        else
          v.push_back({"/devices/" + mqtt_device(f) + "/messages/devicebound", true});
      }
      return v;
    };
    // The rows: 0 raw, 1 AMQP->AMQP, 2 AMQP->MQTT, 3 MQTT->MQTT; each at 1 and `flows` flows.
    const auto run_row = [&](int what, std::size_t count, std::size_t k) -> result_t {
      switch (what) {
        case 0:
          return amqp.run(raw_conn, raw_link, count, specs(k, 0));
        case 1:
          return amqp.run(svc_conn, svc_link, count, specs(k, 1));
        case 2: {
          mqtt_devices::receivers rx(mq, k, [&](std::size_t f) { amqp.device_done(f); });
          return amqp.run(svc_conn, svc_link, count, specs(k, 2));
        }
        default:
          return run_all_mqtt(mqtt_svc, mq, count, k);
      }
    };
    const auto server_of = [&](int what) {
      return what == 0 ? raw.pid() : hub->pid();
    };

    // Warm up every path, then rounds that alternate all rows; medians are printed.
    const std::size_t warm = smoke ? 2 * flows : 500;
    // DEVICEBOUND_BENCH_ROWS=raw,amqp,mixed,mqtt: only those (e.g. to profile one path).
    const std::string only = [] {
      const char* v = std::getenv("DEVICEBOUND_BENCH_ROWS");
      return std::string(v ? v : "");
    }();
    const char* keys[4] = {"raw", "amqp", "mixed", "mqtt"};
    bool on[4];
    for (int what = 0; what < 4; ++what) {
      on[what] = only.empty() ||
                 ("," + only + ",").find(std::string(",") + keys[what] + ",") != std::string::npos;
      if (on[what])
        (void)run_row(what, warm, flows);
    }
    const std::size_t rounds = smoke ? 1 : 5;
    const std::size_t per = std::max<std::size_t>(n / rounds, flows);
    const std::size_t per1 = std::max<std::size_t>(per / 4, 1);  // one flow is slower
    constexpr int kinds = 4;
    std::vector<result_t> results[kinds][2];
    cpu_use cpu[kinds][2];
    for (std::size_t r = 0; r < rounds; ++r)
      for (int what = 0; what < kinds; ++what)
        for (int c = 0; c < 2 && on[what]; ++c) {
          const std::size_t k = c == 0 ? 1 : flows;
          cpu[what][c] += measure_cpu(broker.pid(), server_of(what), [&] {
            results[what][c].push_back(run_row(what, c == 0 ? per1 : per, k));
          });
        }

    const auto median = [](const std::vector<result_t>& v) {
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
      for (const auto& r : v)
        m.messages += r.messages;
      return m;
    };
    const char* names[kinds] = {
        "raw Proton send -> accepted", "devicebound AMQP svc -> hub -> AMQP device",
        "devicebound AMQP svc -> hub -> MQTT device", "devicebound MQTT svc -> hub -> MQTT device"};
    result_t med[kinds][2];
    std::printf(
        "  median of %zu rounds %32s %9s %8s %8s   CPU us/msg: broker   hub clients   hub cs/msg\n",
        rounds, "", "msg/s", "p50 us", "p99 us");
    for (int what = 0; what < kinds; ++what)
      for (int c = 0; c < 2 && on[what]; ++c) {
        const result_t m = med[what][c] = median(results[what][c]);
        const auto per_msg = [&](double secs) {
          return m.messages ? secs * 1e6 / static_cast<double>(m.messages) : 0.0;
        };
        const std::string what_s = std::string(names[what]) + ", " +
                                   std::to_string(c == 0 ? 1 : flows) +
                                   (c == 0 ? " flow" : " flows");
        std::printf("  %-53s %9.0f %8.0f %8.0f   %18.1f %5.1f %7.1f %12.2f\n", what_s.c_str(),
                    m.rate, m.p50_us, m.p99_us, per_msg(cpu[what][c].broker),
                    per_msg(cpu[what][c].hub), per_msg(cpu[what][c].clients),
                    per_msg(cpu[what][c].hub_switches) / 1e6);
      }
    std::printf(
        "  (hub columns: the raw Proton server's process on the raw rows; cs: context switches)\n");
    const auto ratios = [&](const char* what, int a, int b) {
      if (on[a] && on[b])
        std::printf("  ratio %s: 1 flow %.2f, %zu flows %.2f\n", what,
                    med[a][0].rate / med[b][0].rate, flows, med[a][1].rate / med[b][1].rate);
    };
    ratios("devicebound AMQP / raw Proton", 1, 0);
    const double ratio16 = on[0] && on[1] ? med[1][1].rate / med[0][1].rate : 1.0;
    if (on[0] && on[1])
      std::printf("  target devicebound AMQP >= 0.50x raw Proton at %zu flows: %.2f%s\n", flows,
                  ratio16, ratio16 >= 0.5 ? "" : "  BELOW TARGET");
    ratios("AMQP svc + MQTT device / all-MQTT", 2, 3);
    ratios("AMQP svc + AMQP device / AMQP svc + MQTT device", 1, 2);
    ratios("all-AMQP / all-MQTT", 1, 3);
    if (!hub->running()) {
      std::printf("devicebound-hub exited during the run:\n%s\n", hub->log().c_str());
      return 1;
    }
    if (enforce && !smoke && ratio16 < 0.5)
      return 1;
    return 0;
  } catch (const std::exception& e) {
    std::printf("amqp_throughput: FAILED: %s\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--raw-server")
    return raw_server_main(argv[2]);
  return bench_main();
}

#else  // built without Qpid Proton, libcrypto or the daemon

int main() {
  std::printf(
      "amqp_throughput: skipped (built without DEVICEBOUND_WITH_AMQP or DEVICEBOUND_BUILD_APPS)\n");
  return devicebound::test_support::all_parts_required() ? 1 : 0;  // DEVICEBOUND_REQUIRE_ALL=1
}

#endif
