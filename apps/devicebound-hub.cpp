// devicebound-hub: the hub as a process attached to an MQTT broker.
//
// One thread owns the sans-I/O engine (`devicebound::hub`). Paho's threads only
// queue what arrives (requests, broker-plugin events, connection loss); the
// main loop takes them in order with `now` from the real clock, ticks the hub
// at `hub.next_deadline()`, publishes device-bound messages, replies and
// feedback at QoS 1, and reconnects to the broker under a retry policy.
//
// The hub's state lives in a SQLite store (include/devicebound/store/sqlite.hpp;
// `--in-memory` keeps it in this process only), so neither a broker restart nor
// a restart of the daemon loses what the hub has accepted. The operations of one
// batch of events share one store transaction (grouped commits); everything the
// batch publishes (replies, deliveries, feedback) is held until that transaction
// committed, so an acknowledgement always follows the commit. A failed commit
// ends the daemon (exit code 4) for its supervisor to restart it from the store.
// The topics are described in docs/protocol.md; running it in
// docs/mqtt-quickstart.md; durability in docs/architecture.md.
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <toml++/toml.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <devicebound/codec/feedback_json.hpp>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/codec/topic.hpp>
#include <devicebound/hub.hpp>
#include <devicebound/retry.hpp>
#include <devicebound/store/sqlite.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <devicebound/version.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using namespace devicebound;
using namespace std::chrono_literals;
namespace proto = devicebound::mqtt::protocol;
using proto::party;

// =============================================================================================
// Configuration
// =============================================================================================

/// Exit codes (docs/mqtt-quickstart.md, "Exit codes").
enum exit_code : int {
  exit_ok = 0,            ///< stopped on SIGINT / SIGTERM
  exit_broker = 1,        ///< gave up on the broker (refused credentials, ...)
  exit_config = 2,        ///< bad command line or configuration
  exit_store_open = 3,    ///< the store cannot be used: newer schema, not devicebound's,
                          ///< damaged, in use by another hub, unreadable
  exit_store_failed = 4,  ///< a commit to the store failed while running: restart the daemon
};

struct store_config {
  bool in_memory = false;  ///< no store: the queues live (and die) with the process
  std::string path;        ///< empty: `default_store_path`
  sqlite_sync sync = sqlite_sync::full;
};

/// Where the store lives unless configured: `$STATE_DIRECTORY` (systemd's
/// StateDirectory=), else `$XDG_STATE_HOME/devicebound`, else
/// `~/.local/state/devicebound`, else the working directory; the file is named
/// after the MQTT client id, so hubs with different client ids (partitions)
/// never share a file.
std::string default_store_path(const std::string& client_id) {
  namespace fs = std::filesystem;
  const auto absolute = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v && v[0] == '/' ? v : nullptr;  // relative values are ignored (XDG)
  };
  const std::string file = client_id + ".db";
  if (const char* d = absolute("STATE_DIRECTORY")) {
    const std::string_view dirs(d);  // may list several, separated by ':'
    return (fs::path(dirs.substr(0, dirs.find(':'))) / file).string();
  }
  if (const char* x = absolute("XDG_STATE_HOME"))
    return (fs::path(x) / "devicebound" / file).string();
  if (const char* h = absolute("HOME"))
    return (fs::path(h) / ".local" / "state" / "devicebound" / file).string();
  return file;
}

std::optional<sqlite_sync> parse_sync(std::string_view s) {
  if (s == "full")
    return sqlite_sync::full;
  if (s == "normal")
    return sqlite_sync::normal;
  return std::nullopt;
}

struct reconnect_config {
  duration initial = 100ms;  ///< first wait after an immediate retry
  duration cap = 10s;        ///< longest wait
};

struct daemon_config {
  mqtt::connection_options broker = [] {
    mqtt::connection_options o;
    o.client_id = "devicebound-hub";
    return o;
  }();
  hub_config hub;
  std::vector<std::string> devices;  ///< registered at start
  bool auto_register = false;        ///< register unknown devices on send / presence
  std::uint32_t max_in_flight = 4;   ///< locked, unsettled pushes per device or back end
  reconnect_config reconnect;
  store_config store;
  std::string log_level = "info";
};

/// `250ms`, `2s`, `5min`, `1h`, `2d` (a whole number and a unit).
std::optional<duration> parse_duration(std::string_view s) {
  std::int64_t n = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc{} || p == s.data() || n < 0)
    return std::nullopt;
  const std::string_view unit(p, static_cast<std::size_t>(s.data() + s.size() - p));
  if (unit == "ms")
    return duration{n};
  if (unit == "s")
    return std::chrono::duration_cast<duration>(std::chrono::seconds{n});
  if (unit == "min" || unit == "m")
    return std::chrono::duration_cast<duration>(std::chrono::minutes{n});
  if (unit == "h")
    return std::chrono::duration_cast<duration>(std::chrono::hours{n});
  if (unit == "d")
    return std::chrono::duration_cast<duration>(std::chrono::hours{24 * n});
  return std::nullopt;
}

/// A CLI11 validator/converter for durations.
duration duration_arg(const std::string& s, const std::string& what) {
  auto d = parse_duration(s);
  if (!d)
    throw CLI::ValidationError(what, "'" + s + "' is not a duration (e.g. 250ms, 2s, 5min, 1h)");
  return *d;
}

class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Reads the TOML file into `c` (only the keys present; see docs/mqtt-quickstart.md).
void load_toml(const std::string& path, daemon_config& c) {
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw config_error(path + ": " + std::string(e.description()));
  }
  const auto str = [&](toml::node_view<toml::node> n, std::string_view name, std::string& out) {
    if (!n)
      return;
    auto v = n.value<std::string>();
    if (!v)
      throw config_error(path + ": " + std::string(name) + " must be a string");
    out = *v;
  };
  const auto opt_str = [&](toml::node_view<toml::node> n, std::string_view name,
                           std::optional<std::string>& out) {
    if (!n)
      return;
    std::string s;
    str(n, name, s);
    out = s;
  };
  const auto dur = [&](toml::node_view<toml::node> n, std::string_view name, duration& out) {
    if (!n)
      return;
    auto v = n.value<std::string>();
    auto d = v ? parse_duration(*v) : std::nullopt;
    if (!d)
      throw config_error(path + ": " + std::string(name) +
                         " must be a duration string such as \"2s\" or \"250ms\"");
    out = *d;
  };
  const auto num = [&]<class T>(toml::node_view<toml::node> n, std::string_view name, T& out) {
    if (!n)
      return;
    auto v = n.value<std::int64_t>();
    if (!v || *v < 0)
      throw config_error(path + ": " + std::string(name) + " must be a non-negative integer");
    out = static_cast<T>(*v);
  };
  const auto flag = [&](toml::node_view<toml::node> n, std::string_view name, bool& out) {
    if (!n)
      return;
    auto v = n.value<bool>();
    if (!v)
      throw config_error(path + ": " + std::string(name) + " must be true or false");
    out = *v;
  };

  auto b = t["broker"];
  str(b["host"], "broker.host", c.broker.host);
  num(b["port"], "broker.port", c.broker.port);
  str(b["client_id"], "broker.client_id", c.broker.client_id);
  opt_str(b["username"], "broker.username", c.broker.username);
  opt_str(b["password"], "broker.password", c.broker.password);
  dur(b["keep_alive"], "broker.keep_alive", c.broker.keep_alive);
  dur(b["connect_timeout"], "broker.connect_timeout", c.broker.connect_timeout);
  if (auto tls = b["tls"]; tls) {
    mqtt::tls_options o;
    str(tls["ca_file"], "broker.tls.ca_file", o.ca_file);
    str(tls["ca_path"], "broker.tls.ca_path", o.ca_path);
    str(tls["cert_file"], "broker.tls.cert_file", o.cert_file);
    str(tls["key_file"], "broker.tls.key_file", o.key_file);
    str(tls["key_password"], "broker.tls.key_password", o.key_password);
    flag(tls["verify_server"], "broker.tls.verify_server", o.verify_server);
    c.broker.tls = o;
  }

  auto h = t["hub"];
  str(h["name"], "hub.name", c.hub.name);
  dur(h["default_ttl"], "hub.default_ttl", c.hub.default_ttl);
  dur(h["lock_duration"], "hub.lock_duration", c.hub.lock_duration);
  num(h["max_delivery_count"], "hub.max_delivery_count", c.hub.max_delivery_count);
  num(h["max_queue_depth"], "hub.max_queue_depth", c.hub.max_queue_depth);
  num(h["max_message_size"], "hub.max_message_size", c.hub.max_message_size);
  dur(h["feedback_ttl"], "hub.feedback_ttl", c.hub.feedback_ttl);
  dur(h["feedback_lock_duration"], "hub.feedback_lock_duration", c.hub.feedback_lock_duration);
  num(h["feedback_max_delivery_count"], "hub.feedback_max_delivery_count",
      c.hub.feedback_max_delivery_count);
  num(h["feedback_batch_size"], "hub.feedback_batch_size", c.hub.feedback_batch_size);
  dur(h["feedback_batch_interval"], "hub.feedback_batch_interval", c.hub.feedback_batch_interval);
  if (auto r = h["delivery_count_rule"]; r) {
    std::string s;
    str(r, "hub.delivery_count_rule", s);
    if (s == "abandon_only")
      c.hub.delivery_count = delivery_count_rule::abandon_only;
    else if (s == "every_delivery")
      c.hub.delivery_count = delivery_count_rule::every_delivery;
    else
      throw config_error(path + ": hub.delivery_count_rule must be abandon_only or every_delivery");
  }
  if (auto r = h["expiry_over_cap"]; r) {
    std::string s;
    str(r, "hub.expiry_over_cap", s);
    if (s == "clamp")
      c.hub.expiry_over_cap = expiry_cap_policy::clamp;
    else if (s == "reject")
      c.hub.expiry_over_cap = expiry_cap_policy::reject;
    else
      throw config_error(path + ": hub.expiry_over_cap must be clamp or reject");
  }
  if (auto r = h["purge_feedback"]; r) {
    std::string s;
    str(r, "hub.purge_feedback", s);
    if (s == "negative_acks")
      c.hub.purge_feedback_for = purge_feedback::negative_acks;
    else if (s == "none")
      c.hub.purge_feedback_for = purge_feedback::none;
    else
      throw config_error(path + ": hub.purge_feedback must be negative_acks or none");
  }

  auto d = t["delivery"];
  num(d["max_in_flight"], "delivery.max_in_flight", c.max_in_flight);
  flag(d["auto_register"], "delivery.auto_register", c.auto_register);

  if (auto devs = t["devices"]; devs) {
    const toml::array* a = devs.as_array();
    if (!a)
      throw config_error(path + ": devices must be an array of device ids");
    for (const auto& e : *a) {
      auto v = e.value<std::string>();
      if (!v)
        throw config_error(path + ": devices must be an array of strings");
      c.devices.push_back(*v);
    }
  }

  auto r = t["reconnect"];
  dur(r["initial"], "reconnect.initial", c.reconnect.initial);
  dur(r["max"], "reconnect.max", c.reconnect.cap);

  auto st = t["store"];
  str(st["path"], "store.path", c.store.path);
  flag(st["in_memory"], "store.in_memory", c.store.in_memory);
  if (auto n = st["sync"]; n) {
    std::string v;
    str(n, "store.sync", v);
    const auto sync = parse_sync(v);
    if (!sync)
      throw config_error(path + ": store.sync must be full or normal");
    c.store.sync = *sync;
  }

  str(t["log"]["level"], "log.level", c.log_level);
}

// =============================================================================================
// What Paho's threads hand to the main loop
// =============================================================================================

struct event {
  enum class kind : std::uint8_t { message, connection_lost };
  kind what = kind::message;
  std::string topic;
  std::string payload;
};

class event_queue {
 public:
  void push(event e) {
    {
      std::lock_guard<std::mutex> g(m_);
      q_.push_back(std::move(e));
    }
    cv_.notify_one();
  }

  void request_stop() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
    }
    cv_.notify_all();
  }

  bool stop_requested() const {
    std::lock_guard<std::mutex> g(m_);
    return stop_;
  }

  /// Waits until an event arrives, stop is requested or `deadline` passes; moves
  /// every queued event into `out` (appended, in arrival order).
  void wait(time_point deadline, std::deque<event>& out) {
    std::unique_lock<std::mutex> g(m_);
    devicebound::wait_until(clock_, g, cv_, deadline, [&] { return !q_.empty() || stop_; });
    while (!q_.empty()) {
      out.push_back(std::move(q_.front()));
      q_.pop_front();
    }
  }

 private:
  mutable std::mutex m_;
  std::condition_variable_any cv_;
  std::deque<event> q_;
  bool stop_ = false;
  system_clock clock_;
};

// =============================================================================================
// The daemon
// =============================================================================================

using reconnect_policy = retry::basic_policy<retry::exponential_backoff_with_jitter>;

reconnect_policy make_reconnect_policy(const reconnect_config& c) {
  retry::options o;
  o.first = retry::first_retry::immediate;  // a dropped connection is retried at once
  o.reset_on_success = true;
  // Only the CONNACK refusals (bad credentials, 401000) are fatal for the daemon.
  return reconnect_policy({c.initial, c.cap, duration{0}, retry::jitter::up_to(0.1)}, o,
                          retry::classifier::of(retry::error_table::consolidated));
}

/// How a device takes its messages right now.
enum class presence : std::uint8_t {
  absent,    ///< not connected (or not known to be): nothing is pushed
  stock,     ///< a stock IoT Hub device subscribed to its device-bound topic (plugin event)
  extended,  ///< devicebound's device side attached on the extension topics
};

constexpr std::string_view to_string(presence p) {
  switch (p) {
    case presence::absent:
      return "absent";
    case presence::stock:
      return "stock";
    case presence::extended:
      return "extended";
  }
  return "absent";
}

/// A message this daemon pushed to a device and that is still locked.
struct in_flight {
  std::uint64_t sequence_number = 0;
  lock_token token;
  std::string topic;  ///< stock devices: the device-bound topic, matched by `delivered`
};

struct device_state {
  presence mode = presence::absent;
  std::string connection;  ///< extended: the connection id of the attach
  std::uint32_t window = 0;
  std::deque<in_flight> pushed;
};

/// A back end that attached for feedback.
struct service_state {
  std::string connection;
  std::uint32_t window = 1;
  std::vector<std::pair<lock_token, time_point>> pushed;  ///< token, lock expiry
};

struct id_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

class hub_daemon {
 public:
  /// A daemon serving `h`, which commits to `store` (null: no store, `--in-memory`).
  hub_daemon(daemon_config cfg, std::unique_ptr<sqlite_store> store, hub h)
      : cfg_(std::move(cfg)),
        store_(std::move(store)),
        hub_(std::move(h)),
        session_(
            cfg_.broker, cfg_.broker.client_id,
            [this](std::string_view topic, std::string_view payload) {
              events_.push(event{event::kind::message, std::string(topic), std::string(payload)});
            },
            [this](std::string_view cause) {
              events_.push(event{event::kind::connection_lost, std::string(cause), {}});
            }),
        reconnect_(make_reconnect_policy(cfg_.reconnect)) {
    hub_.set_observer([this](const transition& t) { observe(t); });
  }

  void stop() {
    stopping_.request_stop();
    events_.request_stop();
  }

  /// Runs until stop(); returns the process exit code.
  int run() {
    // Devices of the configuration are added only if absent: a restart keeps
    // their generation ids and queues.
    if (!begin_batch())
      return store_failed();
    for (const auto& id : cfg_.devices) {
      if (!hub_.has_device(id)) {
        register_device(id);
        continue;
      }
      devices_.try_emplace(id);
      const auto gen = hub_.generation_id(id);
      spdlog::info("device '{}' is registered (generation {})", id, gen ? *gen : "?");
    }
    if (!end_batch())
      return store_failed();
    spdlog::info(
        "devicebound-hub {} '{}': broker {}://{}:{}, client id '{}', lock {} ms, default TTL {} "
        "ms, "
        "max delivery count {}, queue depth {}, {} in flight per device, auto-register {}",
        devicebound::version, cfg_.hub.name, cfg_.broker.tls ? "ssl" : "tcp", cfg_.broker.host,
        cfg_.broker.port, cfg_.broker.client_id, cfg_.hub.lock_duration.count(),
        cfg_.hub.default_ttl.count(), cfg_.hub.max_delivery_count, cfg_.hub.max_queue_depth,
        cfg_.max_in_flight, cfg_.auto_register ? "on" : "off");
    if (store_)
      spdlog::info(
          "store '{}' (SQLite, synchronous {}): {} device(s), {} feedback batch(es) queued, {} "
          "message(s) accepted so far",
          store_->path(), cfg_.store.sync == sqlite_sync::full ? "full" : "normal",
          hub_.device_count(), hub_.feedback_queue_depth(), hub_.stats().accepted);
    else
      spdlog::warn("no store (--in-memory): the queues are lost when the daemon stops");

    time_point last = clock_.now();
    const auto monotonic = [&] {
      last = std::max(last, clock_.now());
      return last;
    };
    // When to try the broker next; max: no attempt pending (connected).
    time_point next_attempt = time_point::max();
    if (auto d = reconnect_.start(monotonic()); d && d->what == retry::verdict::attempt_now)
      next_attempt = d->at;

    std::deque<event> batch;
    while (!events_.stop_requested()) {
      if (!connected_ && monotonic() >= next_attempt) {
        if (reconnect_.state() == retry::state::waiting)
          (void)reconnect_.timer_fired(monotonic());
        auto r = connect();
        if (events_.stop_requested())
          break;
        if (r) {
          next_attempt = time_point::max();
          (void)reconnect_.attempt_succeeded(monotonic());
        } else {
          auto d = reconnect_.attempt_failed(r.code(), monotonic());
          if (!d || d->what == retry::verdict::give_up) {
            spdlog::critical("giving up on the broker: {}", r.error().message);
            say_goodbye();
            return exit_broker;
          }
          next_attempt = d->at;
          spdlog::warn("cannot connect to the broker: {} (retry in {} ms)", r.error().message,
                       (d->at - monotonic()).count());
        }
      }

      time_point deadline = hub_.next_deadline().value_or(time_point::max());
      if (!connected_)
        deadline = std::min(deadline, next_attempt);
      events_.wait(deadline, batch);
      const time_point now = clock_.now();
      // One batch: the operations of every event that arrived, the timers and the
      // pushes share one store transaction; what they publish goes out after it.
      if (!begin_batch())
        return store_failed();
      while (!batch.empty() && !hub_.store_failure()) {
        event e = std::move(batch.front());
        batch.pop_front();
        if (e.what == event::kind::connection_lost) {
          if (!connected_)
            continue;
          connected_ = false;
          spdlog::warn("lost the broker connection ({}); {} device(s) registered, queues kept",
                       e.topic, hub_.device_count());
          auto d = reconnect_.start(monotonic());
          next_attempt = d ? d->at : monotonic();
          continue;
        }
        on_message(e.topic, e.payload, now);
      }
      if (!hub_.store_failure()) {
        hub_.tick(now);
        pump(now);
      }
      if (!end_batch())
        return store_failed();
    }

    spdlog::info("stopping");
    say_goodbye();
    log_stats();
    return exit_ok;
  }

 private:
  // --- batches: grouped commits, publishes held until committed ----------------------

  /// Starts a batch of operations: with a store, one transaction for all of them.
  bool begin_batch() {
    if (!store_)
      return true;
    if (auto r = store_->begin_group(); !r) {
      store_error_ = r.error();
      return false;
    }
    return true;
  }

  /// Ends a batch: commits its transaction, then publishes what it produced
  /// (replies, deliveries, feedback), in order. Nothing is published when the
  /// store failed: an operation that was not committed is never acknowledged.
  bool end_batch() {
    if (const auto& f = hub_.store_failure()) {
      store_error_ = *f;
      outbox_.clear();
      return false;
    }
    if (store_ && store_->in_group())
      if (auto r = store_->commit_group(); !r) {
        store_error_ = r.error();
        outbox_.clear();
        return false;
      }
    for (auto& [topic, payload] : outbox_) {
      if (!connected_) {
        spdlog::debug("not connected: dropped publish to {}", topic);
        continue;
      }
      if (auto r = session_.publish(topic, payload); !r)
        spdlog::warn("publish to {} failed: {}", topic, r.error().message);
    }
    outbox_.clear();
    return true;
  }

  /// The store failed: the hub's memory may be ahead of its file. Stop serving
  /// (nothing more is published) and exit for the supervisor to restart the
  /// daemon, which reopens the hub from the store (every acknowledged operation
  /// is there).
  int store_failed() {
    spdlog::critical(
        "the store failed: {}; stopping (exit code {}): restart devicebound-hub to reopen the hub "
        "from its store, which holds every acknowledged operation",
        store_error_ ? store_error_->message : std::string("unknown error"),
        static_cast<int>(exit_store_failed));
    say_goodbye();
    log_stats();
    return exit_store_failed;
  }

  void say_goodbye() {
    if (!connected_)
      return;
    (void)session_.publish(std::string(proto::hub_status_topic), "offline", true);
    session_.disconnect(1s);
    connected_ = false;
  }

  void log_stats() const {
    const auto& s = hub_.stats();
    spdlog::info(
        "stats: accepted {}, completed {}, rejected {}, expired {}, delivery count exceeded {}, "
        "purged {}, feedback records {}, feedback batches {}",
        s.accepted, s.completed, s.rejected, s.expired, s.delivery_count_exceeded, s.purged,
        s.feedback_records, s.feedback_batches);
  }

  // --- broker connection ------------------------------------------------------------

  result<void> connect() {
    spdlog::debug("connecting to {}:{}", cfg_.broker.host, cfg_.broker.port);
    const std::vector<std::string> filters{std::string(proto::hub_requests_filter),
                                           std::string(proto::broker_events_filter)};
    const mqtt::detail::session::will_message will{std::string(proto::hub_status_topic), "offline",
                                                   true};
    auto r = session_.connect(false, filters, will, stopping_.get_token());
    if (!r)
      return r.error();
    connected_ = true;
    spdlog::info("connected to the broker at {}:{} (session {}; TCP_NODELAY on {} socket(s))",
                 cfg_.broker.host, cfg_.broker.port, *r ? "resumed" : "new",
                 session_.nodelay_sockets());
    if (!*r) {
      // The broker has no session for us (first start, or it restarted): whatever it
      // knew about devices is gone too. They announce themselves again.
      for (auto& [id, d] : devices_)
        if (d.mode != presence::absent) {
          spdlog::info("device '{}' presumed disconnected (new broker session)", id);
          d.mode = presence::absent;
        }
      services_.clear();
    }
    (void)session_.publish(std::string(proto::hub_status_topic), "online", true);
    for (const auto& [id, d] : devices_)
      if (d.mode != presence::absent)
        dirty_.insert(id);
    return {};
  }

  /// Queues a publish of the running batch; it goes out once the batch is committed.
  void publish(std::string topic, std::string_view payload) {
    outbox_.emplace_back(std::move(topic), std::string(payload));
  }

  // --- the engine's transitions ------------------------------------------------------

  void observe(const transition& t) {
    if (spdlog::should_log(spdlog::level::trace))
      spdlog::trace("message {} of '{}' ({}): {} {} -> {}", t.sequence_number, t.device_id,
                    t.message_id.value_or("no id"), to_string(t.cause), to_string(t.from),
                    to_string(t.to));
    if (t.cause == transition_cause::accepted || t.cause == transition_cause::lock_expired ||
        t.cause == transition_cause::abandon)
      mark_dirty(t.device_id);
    if (t.from != message_state::invisible || t.cause == transition_cause::lock)
      return;
    // The message left Invisible: it no longer holds a push slot of its device.
    auto it = devices_.find(t.device_id);
    if (it == devices_.end())
      return;
    auto& pushed = it->second.pushed;
    const auto p = std::find_if(pushed.begin(), pushed.end(), [&](const in_flight& f) {
      return f.sequence_number == t.sequence_number;
    });
    if (p != pushed.end()) {
      pushed.erase(p);
      mark_dirty(t.device_id);
    }
    if (t.cause == transition_cause::lock_expired)
      spdlog::debug("lock of message {} of '{}' expired: it will be delivered again",
                    t.sequence_number, t.device_id);
  }

  void mark_dirty(std::string_view id) {
    auto it = devices_.find(id);
    if (it != devices_.end() && it->second.mode != presence::absent)
      dirty_.insert(it->first);
  }

  // --- incoming ---------------------------------------------------------------------------

  void on_message(const std::string& topic, const std::string& payload, time_point now) {
    if (topic.starts_with(proto::hub_requests_prefix))
      on_request(topic, payload, now);
    else if (topic.starts_with(proto::broker_events_prefix))
      on_broker_event(topic, payload, now);
    else
      spdlog::debug("ignored a message on {}", topic);
  }

  /// The request id of a bag we could not fully read, so that the error still
  /// reaches the requester.
  static std::string salvage_request_id(std::string_view bag) {
    std::size_t start = 0;
    while (start <= bag.size()) {
      std::size_t end = bag.find('&', start);
      if (end == std::string_view::npos)
        end = bag.size();
      const auto entry = bag.substr(start, end - start);
      const auto eq = entry.find('=');
      if (eq != std::string_view::npos) {
        auto k = codec::percent_decode(entry.substr(0, eq));
        if (k && *k == proto::key_request_id) {
          auto v = codec::percent_decode(entry.substr(eq + 1));
          if (v)
            return *v;
        }
      }
      start = end + 1;
    }
    return {};
  }

  void reply(party p, std::string_view id, std::string_view rid, const error& e) {
    spdlog::debug("-> {} '{}' request {}: {} {}", to_string(p), id, rid, e.numeric(), e.message);
    publish(proto::reply_writer(p, id, rid, &e).str(), {});
  }

  void reply_ok(const proto::bag_writer& w) { publish(w.str(), {}); }

  void on_request(const std::string& topic, const std::string& payload, time_point now) {
    auto t = proto::parse_request_topic(topic);
    if (!t) {
      spdlog::warn("ignored a malformed request: {}", t.error().message);
      return;
    }
    const party from = t->from;
    const std::string id(t->id);
    const std::string op(t->op);
    const std::string target(t->target);

    if (from == party::service && op == proto::op_send) {
      if (target.empty())
        return reply(
            from, id, salvage_request_id(t->bag),
            make_error(errc::malformed, "send needs a device id: .../send/{deviceId}/{bag}"));
      auto d = proto::decode_send_bag(target, t->bag);
      if (!d)
        return reply(from, id, salvage_request_id(t->bag), d.error());
      return on_send(id, target, d->second, std::move(d->first), payload, now);
    }

    auto bag = proto::decode_unique_bag(t->bag);
    if (!bag)
      return reply(from, id, salvage_request_id(t->bag),
                   make_error(errc::malformed, "request " + topic + ": " + bag.error().message));
    const std::string* rid_p = proto::find(*bag, proto::key_request_id);
    const std::string rid = rid_p ? *rid_p : std::string();
    const auto needs_target = [&]() -> bool {
      if (!target.empty())
        return true;
      reply(from, id, rid,
            make_error(errc::malformed, "operation '" + op + "' needs a device id after it"));
      return false;
    };
    const auto no_target = [&]() -> bool {
      if (target.empty())
        return true;
      reply(from, id, rid,
            make_error(errc::malformed, "operation '" + op + "' takes no device id"));
      return false;
    };
    const auto lock = [&]() -> std::optional<lock_token> {
      const std::string* v = proto::find(*bag, proto::key_lock_token);
      auto tok = v ? lock_token::parse(*v) : std::nullopt;
      if (!tok)
        reply(from, id, rid,
              make_error(errc::malformed, "operation '" + op + "' needs $.lock, a lock token"));
      return tok;
    };

    switch (from) {
      case party::service:
        if (op == proto::op_purge) {
          if (needs_target())
            on_purge(id, rid, target, now);
        } else if (op == proto::op_depth) {
          if (needs_target())
            on_depth(id, rid, target, now);
        } else if (op == proto::op_attach) {
          if (no_target())
            on_service_attach(id, rid, *bag);
        } else if (op == proto::op_detach) {
          on_service_detach(id, *bag);
        } else if (op == proto::op_feedback_complete || op == proto::op_feedback_abandon) {
          if (!no_target())
            return;
          if (auto tok = lock())
            on_feedback_settle(id, rid, *tok, op == proto::op_feedback_complete, now);
        } else {
          reply(from, id, rid,
                make_error(errc::malformed, "unknown service operation '" + op + "'"));
        }
        return;
      case party::device:
        if (!target.empty()) {
          reply(from, id, rid,
                make_error(errc::malformed, "device operations take no second device id"));
        } else if (op == proto::op_attach) {
          on_device_attach(id, rid, *bag, now);
        } else if (op == proto::op_detach) {
          on_device_detach(id, *bag);
        } else if (op == proto::op_complete || op == proto::op_reject || op == proto::op_abandon) {
          if (auto tok = lock()) {
            const disposition d = op == proto::op_complete ? disposition::complete
                                  : op == proto::op_reject ? disposition::reject
                                                           : disposition::abandon;
            on_device_settle(id, rid, *tok, d, now);
          }
        } else {
          reply(from, id, rid,
                make_error(errc::malformed, "unknown device operation '" + op + "'"));
        }
        return;
      case party::admin:
        if (op == proto::op_ping) {
          if (no_target())
            reply_ok(proto::reply_writer(from, id, rid));
        } else if (op == proto::op_add) {
          if (needs_target())
            on_add(id, rid, target);
        } else if (op == proto::op_remove) {
          if (needs_target())
            on_remove(id, rid, target, now);
        } else {
          reply(from, id, rid, make_error(errc::malformed, "unknown admin operation '" + op + "'"));
        }
        return;
    }
  }

  bool register_device(const std::string& id) {
    auto r = hub_.add_device(id);
    if (!r) {
      spdlog::error("cannot register device '{}': {}", id, r.error().message);
      return false;
    }
    devices_.try_emplace(id);
    spdlog::info("registered device '{}' (generation {})", id, *r);
    return true;
  }

  /// Whether `id` is registered, registering it when auto-register is on.
  bool known_device(const std::string& id) {
    if (hub_.has_device(id))
      return true;
    return cfg_.auto_register && register_device(id);
  }

  void on_send(const std::string& sid, const std::string& device, const std::string& rid, message m,
               const std::string& body, time_point now) {
    m.body = body;
    if (!known_device(device))
      return reply(party::service, sid, rid,
                   make_error(errc::device_not_found,
                              "device '" + device +
                                  "' is not registered (register it in the "
                                  "config, with an admin 'add', or run with --auto-register)"));
    const std::string mid = m.message_id.value_or("");
    auto r = hub_.enqueue(device, std::move(m), now);
    if (!r)
      return reply(party::service, sid, rid, r.error());
    spdlog::debug("'{}' sent message {} ('{}') to '{}'", sid, r->sequence_number, mid, device);
    reply_ok(proto::reply_writer(party::service, sid, rid)
                 .add(proto::key_sequence_number, r->sequence_number)
                 .add(proto::key_expiry, codec::format_iso8601(r->expiry_time_utc)));
  }

  void on_purge(const std::string& sid, const std::string& rid, const std::string& device,
                time_point now) {
    auto r = hub_.purge(device, now);
    if (!r)
      return reply(party::service, sid, rid, r.error());
    spdlog::info("'{}' purged {} message(s) of '{}'", sid, *r, device);
    reply_ok(
        proto::reply_writer(party::service, sid, rid).add(proto::key_count, std::uint64_t{*r}));
  }

  void on_depth(const std::string& sid, const std::string& rid, const std::string& device,
                time_point now) {
    auto r = hub_.queue_depth(device, now);
    if (!r)
      return reply(party::service, sid, rid, r.error());
    reply_ok(
        proto::reply_writer(party::service, sid, rid).add(proto::key_depth, std::uint64_t{*r}));
  }

  std::uint32_t window_of(const codec::property_bag& bag) const {
    const std::string* v = proto::find(bag, proto::key_window);
    const auto n = v ? proto::parse_unsigned<std::uint32_t>(*v) : std::nullopt;
    return std::clamp<std::uint32_t>(n.value_or(1), 1,
                                     std::max<std::uint32_t>(cfg_.max_in_flight, 1));
  }

  void on_service_attach(const std::string& sid, const std::string& rid,
                         const codec::property_bag& bag) {
    const std::string* conn = proto::find(bag, proto::key_connection);
    auto& s = services_[sid];
    const std::string c = conn ? *conn : std::string();
    if (s.connection != c) {
      s.pushed.clear();  // the old connection's batches come back when their locks expire
      spdlog::info("back end '{}' attached for feedback", sid);
    }
    s.connection = c;
    s.window = window_of(bag);
    reply_ok(proto::reply_writer(party::service, sid, rid)
                 .add(proto::key_window, std::uint64_t{s.window}));
  }

  void on_service_detach(const std::string& sid, const codec::property_bag& bag) {
    const std::string* conn = proto::find(bag, proto::key_connection);
    auto it = services_.find(sid);
    if (it == services_.end() || !conn || *conn != it->second.connection)
      return;  // a will of an older connection (or no connection id: not ours)
    spdlog::info("back end '{}' detached", sid);
    services_.erase(it);
  }

  void on_feedback_settle(const std::string& sid, const std::string& rid, const lock_token& token,
                          bool complete, time_point now) {
    auto r = complete ? hub_.complete_feedback(token, now) : hub_.abandon_feedback(token, now);
    if (auto it = services_.find(sid); it != services_.end())
      std::erase_if(it->second.pushed, [&](const auto& p) { return p.first == token; });
    if (!r)
      return reply(party::service, sid, rid, r.error());
    spdlog::debug("'{}' {} feedback batch {}", sid, complete ? "completed" : "abandoned",
                  token.to_string());
    reply_ok(proto::reply_writer(party::service, sid, rid));
  }

  void on_device_attach(const std::string& id, const std::string& rid,
                        const codec::property_bag& bag, time_point) {
    if (!known_device(id))
      return reply(party::device, id, rid,
                   make_error(errc::device_not_found, "device '" + id + "' is not registered"));
    auto& d = devices_[id];
    const std::string* conn = proto::find(bag, proto::key_connection);
    const std::string c = conn ? *conn : std::string();
    if (d.mode != presence::extended || d.connection != c) {
      spdlog::info("device '{}' attached (extended, {})", id,
                   d.mode == presence::absent ? "was absent" : to_string(d.mode));
      // Pushes to an older connection are not counted: their locks expire and
      // the messages come again.
      d.pushed.clear();
    }
    d.mode = presence::extended;
    d.connection = c;
    d.window = window_of(bag);
    dirty_.insert(id);
    reply_ok(proto::reply_writer(party::device, id, rid)
                 .add(proto::key_window, std::uint64_t{d.window}));
  }

  void on_device_detach(const std::string& id, const codec::property_bag& bag) {
    auto it = devices_.find(id);
    if (it == devices_.end() || it->second.mode != presence::extended)
      return;
    const std::string* conn = proto::find(bag, proto::key_connection);
    if (!conn || *conn != it->second.connection)
      return;  // the will of an older connection (or no connection id: not ours)
    it->second.mode = presence::absent;
    spdlog::info("device '{}' detached ({} message(s) stay locked until their locks expire)", id,
                 it->second.pushed.size());
  }

  void on_device_settle(const std::string& id, const std::string& rid, const lock_token& token,
                        disposition d, time_point now) {
    auto r = hub_.settle(id, token, d, now);
    if (!r)
      return reply(party::device, id, rid, r.error());
    spdlog::debug("device '{}' {} {}", id, to_string(d), token.to_string());
    reply_ok(proto::reply_writer(party::device, id, rid));
  }

  void on_add(const std::string& aid, const std::string& rid, const std::string& device) {
    auto r = hub_.add_device(device);
    if (!r)
      return reply(party::admin, aid, rid, r.error());
    devices_.try_emplace(device);
    spdlog::info("'{}' registered device '{}' (generation {})", aid, device, *r);
    reply_ok(proto::reply_writer(party::admin, aid, rid).add(proto::key_generation_id, *r));
  }

  void on_remove(const std::string& aid, const std::string& rid, const std::string& device,
                 time_point now) {
    auto r = hub_.remove_device(device, std::nullopt, now);
    if (!r)
      return reply(party::admin, aid, rid, r.error());
    devices_.erase(device);
    dirty_.erase(device);
    spdlog::info("'{}' removed device '{}'", aid, device);
    reply_ok(proto::reply_writer(party::admin, aid, rid));
  }

  // --- broker plugin events ------------------------------------------------------------

  void on_broker_event(const std::string& topic, const std::string& payload, time_point now) {
    const std::string_view rest =
        std::string_view(topic).substr(proto::broker_events_prefix.size());
    const auto slash = rest.find('/');
    if (slash == std::string_view::npos) {
      spdlog::warn("ignored a malformed broker event on {}", topic);
      return;
    }
    const std::string_view kind = rest.substr(0, slash);
    const std::string id(rest.substr(slash + 1));
    if (auto v = validate_device_id(id); !v) {
      spdlog::warn("ignored broker event {}: {}", topic, v.error().message);
      return;
    }
    if (kind == "subscribed") {
      if (!payload.empty() && payload != codec::devicebound_topic_filter(id))
        spdlog::debug("device '{}' subscribed to '{}'", id, payload);
      if (!known_device(id)) {
        spdlog::warn("device '{}' subscribed but is not registered: nothing will be delivered", id);
        return;
      }
      auto& d = devices_[id];
      if (d.mode != presence::stock) {
        const auto depth = hub_.queue_depth(id, now);
        spdlog::info("device '{}' subscribed (stock IoT Hub device; {} message(s) queued)", id,
                     depth ? *depth : 0);
      }
      d.mode = presence::stock;
      d.connection.clear();
      d.window = std::max<std::uint32_t>(cfg_.max_in_flight, 1);
      dirty_.insert(id);
    } else if (kind == "delivered") {
      auto it = devices_.find(id);
      if (it == devices_.end())
        return;
      auto& pushed = it->second.pushed;
      const auto p = std::find_if(pushed.begin(), pushed.end(),
                                  [&](const in_flight& f) { return f.topic == payload; });
      if (p == pushed.end()) {
        spdlog::debug("delivered to '{}' but not in flight (lock expired?): {}", id, payload);
        return;
      }
      // SPEC 6.2.2: a stock SDK PUBACKs on receipt; the broker handing the message
      // to the device's connection is as close to "completed" as MQTT 3.1.1 gets.
      const lock_token token = p->token;
      if (auto r = hub_.complete(id, token, now); !r)
        spdlog::warn("completing a message delivered to '{}': {}", id, r.error().message);
    } else if (kind == "disconnected") {
      auto it = devices_.find(id);
      if (it == devices_.end() || it->second.mode == presence::absent)
        return;
      it->second.mode = presence::absent;
      spdlog::info(
          "device '{}' disconnected ({} message(s) in flight stay locked until their "
          "locks expire)",
          id, it->second.pushed.size());
    } else {
      spdlog::debug("ignored broker event {}", topic);
    }
  }

  // --- outgoing -----------------------------------------------------------------------------

  void pump(time_point now) {
    if (!connected_) {
      dirty_.clear();
      return;
    }
    while (!dirty_.empty()) {
      const std::string id = *dirty_.begin();
      dirty_.erase(dirty_.begin());
      pump_device(id, now);
    }
    pump_feedback(now);
  }

  void pump_device(const std::string& id, time_point now) {
    auto it = devices_.find(id);
    if (it == devices_.end())
      return;
    device_state& d = it->second;
    while (d.mode != presence::absent && d.pushed.size() < d.window) {
      auto r = hub_.receive(id, now);
      if (!r) {
        spdlog::error("receive for '{}': {}", id, r.error().message);
        return;
      }
      if (!*r)
        return;
      message& m = **r;
      in_flight f{m.sequence_number, *m.lock_token, {}};
      std::string topic;
      if (d.mode == presence::stock) {
        topic = codec::encode_devicebound_topic(id, m);
        f.topic = topic;
      } else {
        topic = proto::device_message_topic(id, m, d.connection);
      }
      d.pushed.push_back(std::move(f));
      spdlog::debug("-> '{}' message {} (delivery count {})", id, m.sequence_number,
                    m.delivery_count);
      // A failed publish leaves the message locked: it comes again after the lock expires.
      publish(topic, m.body);
    }
  }

  void pump_feedback(time_point now) {
    if (services_.empty())
      return;
    for (auto& [sid, s] : services_)
      std::erase_if(s.pushed, [&](const auto& p) { return p.second <= now; });
    while (hub_.feedback_queue_depth() > 0) {
      // Round robin over the back ends with room, starting after the last one served.
      auto it = services_.upper_bound(last_feedback_target_);
      service_state* target = nullptr;
      std::string target_id;
      for (std::size_t i = 0; i < services_.size(); ++i, ++it) {
        if (it == services_.end())
          it = services_.begin();
        if (it->second.pushed.size() < it->second.window) {
          target = &it->second;
          target_id = it->first;
          break;
        }
      }
      if (!target)
        return;
      auto b = hub_.receive_feedback(now);
      if (!b || !*b)
        return;
      last_feedback_target_ = target_id;
      target->pushed.emplace_back((*b)->lock_token, now + cfg_.hub.feedback_lock_duration);
      spdlog::debug("-> '{}' feedback batch of {} record(s)", target_id, (*b)->records.size());
      publish(proto::feedback_topic(target_id, **b, target->connection),
              codec::encode_feedback_json((*b)->records));
    }
  }

  daemon_config cfg_;
  std::unique_ptr<sqlite_store> store_;  ///< before hub_: the hub commits to it
  hub hub_;
  std::optional<error> store_error_;
  std::vector<std::pair<std::string, std::string>> outbox_;  ///< the batch's publishes
  event_queue events_;
  std::stop_source stopping_;
  mqtt::detail::session session_;
  retry::controller<reconnect_policy> reconnect_;
  system_clock clock_;
  bool connected_ = false;
  std::unordered_map<std::string, device_state, id_hash, std::equal_to<>> devices_;
  std::set<std::string, std::less<>> dirty_;
  std::map<std::string, service_state, std::less<>> services_;
  std::string last_feedback_target_;
};

// =============================================================================================
// main
// =============================================================================================

std::optional<spdlog::level::level_enum> parse_level(const std::string& s) {
  const auto l = spdlog::level::from_str(s);
  if (l == spdlog::level::off && s != "off")
    return std::nullopt;
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  // Signals go to one thread (below), never to Paho's threads or the main loop.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  CLI::App app{"devicebound-hub: IoT Hub-style cloud-to-device messaging over an MQTT broker"};
  app.set_version_flag("--version", std::string(devicebound::version));
  std::string config_path;
  app.add_option("-c,--config", config_path, "TOML configuration file")->check(CLI::ExistingFile);

  // Flags override the file; so they are read into optionals first.
  std::optional<std::string> host, client_id, username, password, tls_ca, tls_cert, tls_key,
      tls_key_password, hub_name, log_level, lock, ttl, batch_interval, reconnect_initial,
      reconnect_max, feedback_lock, store_path, store_sync;
  std::optional<std::uint16_t> port;
  std::optional<std::uint32_t> max_delivery, max_depth, max_in_flight;
  std::vector<std::string> devices;
  bool auto_register = false, tls = false, tls_insecure = false, in_memory = false;
  app.add_option("--host", host, "broker host (default 127.0.0.1)");
  app.add_option("-p,--port", port, "broker port (default 1883)");
  app.add_option("--client-id", client_id, "MQTT client id (default devicebound-hub)");
  app.add_option("-u,--username", username, "broker user name");
  app.add_option("-P,--password", password, "broker password");
  app.add_flag("--tls", tls, "connect with TLS (ssl://)");
  app.add_option("--tls-ca", tls_ca, "PEM file of trusted CA certificates (implies --tls)");
  app.add_option("--tls-cert", tls_cert, "PEM client certificate (implies --tls)");
  app.add_option("--tls-key", tls_key, "PEM client private key (implies --tls)");
  app.add_option("--tls-key-password", tls_key_password, "password of the private key");
  app.add_flag("--tls-insecure", tls_insecure, "do not verify the broker's certificate");
  app.add_option("-d,--device", devices, "register a device id (repeatable)");
  app.add_flag("--auto-register", auto_register,
               "register unknown devices on their first send, attach or subscribe");
  app.add_option("--hub-name", hub_name, "the hub's name (userId of feedback)");
  app.add_option("--lock-duration", lock, "lock (visibility) timeout, e.g. 60s (1s..5min)");
  app.add_option("--default-ttl", ttl, "default message TTL, e.g. 1h (1min..2d)");
  app.add_option("--max-delivery-count", max_delivery, "max delivery count (1..100)");
  app.add_option("--max-queue-depth", max_depth, "pending messages per device (1..10000)");
  app.add_option("--feedback-batch-interval", batch_interval,
                 "feedback batching interval, e.g. 15s (0s..15s)");
  app.add_option("--feedback-lock-duration", feedback_lock, "feedback lock duration (5s..300s)");
  app.add_option("--max-in-flight", max_in_flight,
                 "locked, unsettled pushes per device or back end (default 4)");
  app.add_option("--reconnect-initial", reconnect_initial, "first reconnect wait (default 100ms)");
  app.add_option("--reconnect-max", reconnect_max, "longest reconnect wait (default 10s)");
  app.add_option("--store", store_path,
                 "SQLite store file (default: $STATE_DIRECTORY, $XDG_STATE_HOME/devicebound or "
                 "~/.local/state/devicebound, file {client-id}.db)");
  app.add_flag("--in-memory", in_memory,
               "no store: keep the queues in memory only (lost when the daemon stops)");
  app.add_option("--store-sync", store_sync,
                 "full (default: survives power loss) or normal (survives a crash of the "
                 "daemon, not of the OS)");
  app.add_option("-l,--log-level", log_level,
                 "trace, debug, info, warn, error, critical or off (default info)");
  CLI11_PARSE(app, argc, argv);

  daemon_config cfg;
  try {
    if (!config_path.empty())
      load_toml(config_path, cfg);
    if (host)
      cfg.broker.host = *host;
    if (port)
      cfg.broker.port = *port;
    if (client_id)
      cfg.broker.client_id = *client_id;
    if (username)
      cfg.broker.username = *username;
    if (password)
      cfg.broker.password = *password;
    if (tls || tls_ca || tls_cert || tls_key || tls_insecure) {
      auto& t = cfg.broker.tls ? *cfg.broker.tls : cfg.broker.tls.emplace();
      if (tls_ca)
        t.ca_file = *tls_ca;
      if (tls_cert)
        t.cert_file = *tls_cert;
      if (tls_key)
        t.key_file = *tls_key;
      if (tls_key_password)
        t.key_password = *tls_key_password;
      if (tls_insecure)
        t.verify_server = false;
    }
    cfg.devices.insert(cfg.devices.end(), devices.begin(), devices.end());
    if (auto_register)
      cfg.auto_register = true;
    if (hub_name)
      cfg.hub.name = *hub_name;
    if (lock)
      cfg.hub.lock_duration = duration_arg(*lock, "--lock-duration");
    if (ttl)
      cfg.hub.default_ttl = duration_arg(*ttl, "--default-ttl");
    if (batch_interval)
      cfg.hub.feedback_batch_interval = duration_arg(*batch_interval, "--feedback-batch-interval");
    if (feedback_lock)
      cfg.hub.feedback_lock_duration = duration_arg(*feedback_lock, "--feedback-lock-duration");
    if (max_delivery)
      cfg.hub.max_delivery_count = *max_delivery;
    if (max_depth)
      cfg.hub.max_queue_depth = *max_depth;
    if (max_in_flight)
      cfg.max_in_flight = *max_in_flight;
    if (reconnect_initial)
      cfg.reconnect.initial = duration_arg(*reconnect_initial, "--reconnect-initial");
    if (reconnect_max)
      cfg.reconnect.cap = duration_arg(*reconnect_max, "--reconnect-max");
    if (log_level)
      cfg.log_level = *log_level;
    if (store_path) {
      cfg.store.path = *store_path;
      cfg.store.in_memory = false;
    }
    if (in_memory)
      cfg.store.in_memory = true;
    if (store_sync) {
      const auto sync = parse_sync(*store_sync);
      if (!sync)
        throw CLI::ValidationError("--store-sync", "must be full or normal");
      cfg.store.sync = *sync;
    }
    if (in_memory && store_path)
      throw CLI::ValidationError("--in-memory", "excludes --store");
  } catch (const config_error& e) {
    std::fprintf(stderr, "devicebound-hub: %s\n", e.what());
    return exit_config;
  } catch (const CLI::Error& e) {
    return app.exit(e);
  }

  const auto level = parse_level(cfg.log_level);
  if (!level) {
    std::fprintf(stderr, "devicebound-hub: unknown log level '%s'\n", cfg.log_level.c_str());
    return exit_config;
  }
  spdlog::set_level(*level);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ %v");
  if (auto v = cfg.hub.validate(); !v) {
    spdlog::critical("bad configuration: {}", v.error().message);
    return exit_config;
  }
  if (auto v = validate_device_id(cfg.broker.client_id); !v) {
    spdlog::critical("bad client id: {}", v.error().message);
    return exit_config;
  }
  if (cfg.max_in_flight < 1) {
    spdlog::critical("bad configuration: max_in_flight must be at least 1");
    return exit_config;
  }

  // The store: opened (created, with its schema, when new) before anything else
  // runs. A store this build cannot use is never replaced by an empty one.
  std::unique_ptr<sqlite_store> store;
  hub h;
  if (!cfg.store.in_memory) {
    const bool default_path = cfg.store.path.empty();
    if (default_path) {
      cfg.store.path = default_store_path(cfg.broker.client_id);
      std::error_code ec;
      const auto dir = std::filesystem::path(cfg.store.path).parent_path();
      if (!dir.empty())
        std::filesystem::create_directories(dir, ec);
      if (ec) {
        spdlog::critical("cannot create the store's directory {}: {} (choose a file with --store)",
                         dir.string(), ec.message());
        return exit_store_open;
      }
    }
    sqlite_options so;
    so.sync = cfg.store.sync;
    auto s = sqlite_store::open(cfg.store.path, so);
    if (!s) {
      spdlog::critical("cannot open the store: {} [{}]; refusing to start (exit code {})",
                       s.error().message, s.error().numeric(), static_cast<int>(exit_store_open));
      return exit_store_open;
    }
    store = std::make_unique<sqlite_store>(std::move(*s));
    auto opened = hub::open(cfg.hub, *store, system_token_source());
    if (!opened) {
      spdlog::critical(
          "cannot open the hub from the store '{}': {} [{}]; refusing to start (exit "
          "code {})",
          cfg.store.path, opened.error().message, opened.error().numeric(),
          static_cast<int>(exit_store_open));
      return exit_store_open;
    }
    h = std::move(*opened);
  } else {
    h = hub(cfg.hub);
  }

  hub_daemon daemon(std::move(cfg), std::move(store), std::move(h));
  std::thread signal_thread([&] {
    int sig = 0;
    if (sigwait(&signals, &sig) == 0) {
      spdlog::info("received {}", sig == SIGINT ? "SIGINT" : "SIGTERM");
      daemon.stop();
    }
  });
  const int code = daemon.run();
  // Wake the signal thread if run() ended for another reason.
  daemon.stop();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  return code;
}
