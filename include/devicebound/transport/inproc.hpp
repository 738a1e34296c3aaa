/// \file transport/inproc.hpp
/// The embedded hub: a thread-safe `hub_host` that owns a `devicebound::hub`,
/// and device and service connections to it. Clients on any thread, no broker.
///
/// Time. The host reads its clock (`manual_clock` in tests, `system_clock` in
/// programs) and hands `now` to the sans-I/O hub. The hub applies lock and TTL
/// expiries whenever it is brought up to a later `now`, and every operation does
/// that first; a connection waiting in `receive` also wakes at the hub's next
/// deadline. So lock expiry redelivers to a waiting device, and due feedback
/// batches reach a waiting back end, without anything else running. Something
/// must still call `tick` when nobody is waiting and timers should fire on time
/// (an observer that watches expiries, feedback that should be batched while the
/// back end is away):
///
/// - `pump()` ticks the hub once at `clock.now()` (tests, or your own loop);
/// - `start_driver()` starts a thread that sleeps on the clock until the hub's
///   next deadline (or until an operation or a clock advance wakes it) and ticks.
///
/// Connections must not outlive their host.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include "../clock.hpp"
#include "../errors.hpp"
#include "../feedback_batch.hpp"
#include "../hub.hpp"
#include "../message.hpp"
#include "../settlement.hpp"
#include "../token_source.hpp"
#include "../transport.hpp"

namespace devicebound::inproc {

/// Which settlements a device connection offers.
enum class settlement : std::uint8_t {
  full,           ///< complete, reject, abandon (AMQP, HTTPS)
  complete_only,  ///< complete only, like MQTT to IoT Hub (SPEC 1.6, 6.4.2)
};

/// `full` or `complete_only`: the spelling of the bindings' `settlement` option.
constexpr std::string_view to_string(settlement s) noexcept {
  return s == settlement::full ? "full" : "complete_only";
}

/// Parses `full` or `complete_only` (exact spelling); nullopt otherwise.
constexpr std::optional<settlement> parse_settlement(std::string_view s) noexcept {
  for (auto v : {settlement::full, settlement::complete_only})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

template <devicebound::clock Clock>
class hub_host;

/// A device's connection to a `hub_host`. Closed until `open()`.
template <devicebound::clock Clock, settlement Settlement = settlement::full>
class device_connection {
 public:
  using clock_type = Clock;
  static constexpr bool can_reject = Settlement == settlement::full;
  static constexpr bool can_abandon = Settlement == settlement::full;

  device_connection(device_connection&& o) noexcept
      : host_(std::exchange(o.host_, nullptr)), id_(std::move(o.id_)), open_(o.open_) {}
  device_connection& operator=(device_connection&&) = delete;
  device_connection(const device_connection&) = delete;
  ~device_connection() {
    if (host_)
      close();
  }

  std::string_view device_id() const noexcept { return id_; }
  Clock clock() const { return host_->clock(); }

  /// Connects. An id the hub does not know is refused like bad credentials (401000).
  result<void> open() {
    std::lock_guard<std::mutex> g(host_->mutex_);
    if (!host_->hub_.has_device(id_))
      return make_error(errc::unauthorized, "device '" + id_ + "' is not registered with hub '" +
                                                host_->hub_.config().name +
                                                "': connection refused");
    open_ = true;
    return {};
  }

  /// Disconnects; a `receive` blocked on this connection returns `not_connected`.
  void close() {
    {
      std::lock_guard<std::mutex> g(host_->mutex_);
      open_ = false;
    }
    host_->cv_.notify_all();
  }

  bool is_open() const {
    std::lock_guard<std::mutex> g(host_->mutex_);
    return open_;
  }

  /// Locks and returns the device's next message, waiting up to `timeout` on the
  /// host's clock; nullopt on timeout or when `stop` is requested.
  result<std::optional<message>> receive(duration timeout, std::stop_token stop = {}) {
    auto& h = *host_;
    std::stop_callback wake(stop, [&h] { h.notify(); });
    std::unique_lock<std::mutex> lock(h.mutex_);
    const time_point deadline = saturating_add(h.clock_.now(), timeout);
    for (;;) {
      if (!open_)
        return not_connected();
      const time_point now = h.clock_.now();
      auto r = h.hub_.receive(id_, now);
      if (!r || r->has_value()) {
        if (r)
          h.cv_.notify_all();  // the driver's next deadline may have changed
        return r;
      }
      if (now >= deadline || stop.stop_requested())
        return std::optional<message>{};
      h.clock_.wait_until(lock, h.cv_, h.wake_time(now, deadline));
    }
  }

  result<void> complete(const lock_token& token) { return settle(token, disposition::complete); }

  result<void> reject(const lock_token& token) requires(Settlement == settlement::full) {
    return settle(token, disposition::reject);
  }

  result<void> abandon(const lock_token& token) requires(Settlement == settlement::full) {
    return settle(token, disposition::abandon);
  }

 private:
  friend class hub_host<Clock>;
  device_connection(hub_host<Clock>* host, std::string id) : host_(host), id_(std::move(id)) {}

  error not_connected() const {
    return make_error(errc::not_connected, "device '" + id_ + "' is not connected");
  }

  result<void> settle(const lock_token& token, disposition d) {
    auto& h = *host_;
    std::lock_guard<std::mutex> g(h.mutex_);
    if (!open_)
      return not_connected();
    auto r = h.hub_.settle(id_, token, d, h.clock_.now());
    if (r)
      h.cv_.notify_all();  // abandon makes a message available; feedback may be due
    return r;
  }

  hub_host<Clock>* host_;
  std::string id_;
  bool open_ = false;  ///< guarded by the host's mutex
};

/// Like MQTT to IoT Hub: the device can only complete (SPEC 1.6).
template <devicebound::clock Clock>
using complete_only_device_connection = device_connection<Clock, settlement::complete_only>;

/// The back end's connection to a `hub_host`. Closed until `open()`.
template <devicebound::clock Clock>
class service_connection {
 public:
  using clock_type = Clock;
  static constexpr bool can_purge = true;
  static constexpr bool can_query_queue_depth = true;

  service_connection(service_connection&& o) noexcept
      : host_(std::exchange(o.host_, nullptr)), open_(o.open_) {}
  service_connection& operator=(service_connection&&) = delete;
  service_connection(const service_connection&) = delete;
  ~service_connection() {
    if (host_)
      close();
  }

  Clock clock() const { return host_->clock(); }

  result<void> open() {
    std::lock_guard<std::mutex> g(host_->mutex_);
    open_ = true;
    return {};
  }

  void close() {
    {
      std::lock_guard<std::mutex> g(host_->mutex_);
      open_ = false;
    }
    host_->cv_.notify_all();
  }

  bool is_open() const {
    std::lock_guard<std::mutex> g(host_->mutex_);
    return open_;
  }

  /// Enqueues a copy of `msg` for `device_id` (SPEC 7.2).
  result<enqueue_receipt> send(std::string_view device_id, const message& msg) {
    auto& h = *host_;
    std::lock_guard<std::mutex> g(h.mutex_);
    if (!open_)
      return not_connected();
    auto r = h.hub_.enqueue(device_id, msg, h.clock_.now());
    if (r)
      h.cv_.notify_all();
    return r;
  }

  /// Removes every pending message of a device; returns how many (SPEC 5.19).
  result<std::size_t> purge(std::string_view device_id) {
    auto& h = *host_;
    std::lock_guard<std::mutex> g(h.mutex_);
    if (!open_)
      return not_connected();
    auto r = h.hub_.purge(device_id, h.clock_.now());
    if (r)
      h.cv_.notify_all();
    return r;
  }

  /// Pending messages of a device, Enqueued plus Invisible (SPEC 2.10).
  result<std::size_t> queue_depth(std::string_view device_id) {
    auto& h = *host_;
    std::lock_guard<std::mutex> g(h.mutex_);
    if (!open_)
      return not_connected();
    return h.hub_.queue_depth(device_id, h.clock_.now());
  }

  /// Locks and returns the oldest feedback batch, waiting up to `timeout`.
  result<std::optional<feedback_batch>> receive_feedback(duration timeout,
                                                         std::stop_token stop = {}) {
    auto& h = *host_;
    std::stop_callback wake(stop, [&h] { h.notify(); });
    std::unique_lock<std::mutex> lock(h.mutex_);
    const time_point deadline = saturating_add(h.clock_.now(), timeout);
    for (;;) {
      if (!open_)
        return not_connected();
      const time_point now = h.clock_.now();
      auto r = h.hub_.receive_feedback(now);
      if (!r || r->has_value()) {
        if (r)
          h.cv_.notify_all();
        return r;
      }
      if (now >= deadline || stop.stop_requested())
        return std::optional<feedback_batch>{};
      h.clock_.wait_until(lock, h.cv_, h.wake_time(now, deadline));
    }
  }

  result<void> complete_feedback(const lock_token& token) {
    auto& h = *host_;
    std::lock_guard<std::mutex> g(h.mutex_);
    if (!open_)
      return not_connected();
    return h.hub_.complete_feedback(token, h.clock_.now());
  }

  result<void> abandon_feedback(const lock_token& token) {
    auto& h = *host_;
    std::lock_guard<std::mutex> g(h.mutex_);
    if (!open_)
      return not_connected();
    auto r = h.hub_.abandon_feedback(token, h.clock_.now());
    if (r)
      h.cv_.notify_all();
    return r;
  }

 private:
  friend class hub_host<Clock>;
  explicit service_connection(hub_host<Clock>* host) : host_(host) {}

  static error not_connected() {
    return make_error(errc::not_connected, "the service connection is not open");
  }

  hub_host<Clock>* host_;
  bool open_ = false;  ///< guarded by the host's mutex
};

/// A hub shared by threads: a `devicebound::hub`, a mutex, one condition
/// variable that every change notifies, and a clock. Not movable: connections
/// point at it.
template <devicebound::clock Clock = system_clock>
class hub_host {
 public:
  using clock_type = Clock;
  using device_connection_type = device_connection<Clock>;
  using complete_only_device_connection_type = device_connection<Clock, settlement::complete_only>;
  using service_connection_type = service_connection<Clock>;

  /// A host for a hub with `config` (throws `exception` with 400004 if out of range).
  explicit hub_host(hub_config config = {}, Clock clock = Clock{},
                    token_source tokens = system_token_source())
      : clock_(std::move(clock)), hub_(std::move(config), std::move(tokens)) {}

  hub_host(const hub_host&) = delete;
  hub_host& operator=(const hub_host&) = delete;
  ~hub_host() { stop_driver(); }

  Clock clock() const { return clock_; }

  // --- registry -------------------------------------------------------------------

  /// Registers a device; returns its generation id.
  result<std::string> add_device(std::string_view device_id) {
    std::lock_guard<std::mutex> g(mutex_);
    return hub_.add_device(device_id);
  }

  /// Removes a device, its queue and its pending feedback (SPEC 1.4, 4.9).
  result<void> remove_device(std::string_view device_id) {
    std::lock_guard<std::mutex> g(mutex_);
    auto r = hub_.remove_device(device_id, std::nullopt, clock_.now());
    if (r)
      cv_.notify_all();
    return r;
  }

  // --- connections ----------------------------------------------------------------

  /// A (closed) device connection with complete, reject and abandon.
  device_connection_type device(std::string device_id) {
    return device_connection_type(this, std::move(device_id));
  }
  /// A (closed) device connection that can only complete, like MQTT to IoT Hub.
  complete_only_device_connection_type complete_only_device(std::string device_id) {
    return complete_only_device_connection_type(this, std::move(device_id));
  }
  /// A (closed) service connection.
  service_connection_type service() { return service_connection_type(this); }

  // --- time -----------------------------------------------------------------------

  /// Applies every timer due at `clock.now()`; returns the hub's next deadline.
  std::optional<time_point> pump() {
    std::optional<time_point> next;
    {
      std::lock_guard<std::mutex> g(mutex_);
      hub_.tick(clock_.now());
      next = hub_.next_deadline();
    }
    cv_.notify_all();
    return next;
  }

  /// Starts the driver thread (idempotent): it ticks the hub at each of its
  /// deadlines, as measured by the clock, until `stop_driver()` or destruction.
  void start_driver() {
    std::lock_guard<std::mutex> g(driver_mutex_);
    if (driver_.joinable())
      return;
    {
      std::lock_guard<std::mutex> lk(mutex_);
      stop_driver_ = false;
    }
    driver_ = std::thread([this] { drive(); });
  }

  /// Stops and joins the driver thread, if running.
  void stop_driver() {
    std::lock_guard<std::mutex> g(driver_mutex_);
    if (!driver_.joinable())
      return;
    {
      std::lock_guard<std::mutex> lk(mutex_);
      stop_driver_ = true;
    }
    cv_.notify_all();
    driver_.join();
  }

  bool driver_running() const {
    std::lock_guard<std::mutex> g(driver_mutex_);
    return driver_.joinable();
  }

  // --- inspection -----------------------------------------------------------------

  /// Calls `f(hub&)` under the host's lock and returns what it returns. `f` must
  /// not call back into the host or its connections.
  template <class F>
  decltype(auto) with_hub(F&& f) {
    std::lock_guard<std::mutex> g(mutex_);
    return std::forward<F>(f)(hub_);
  }

  hub_stats stats() const {
    std::lock_guard<std::mutex> g(mutex_);
    return hub_.stats();
  }

  /// Sets the hub's transition observer. It runs under the host's lock: it must
  /// not call back into the host or its connections.
  void set_observer(hub::observer f) {
    std::lock_guard<std::mutex> g(mutex_);
    hub_.set_observer(std::move(f));
  }

 private:
  template <devicebound::clock, settlement>
  friend class device_connection;
  template <devicebound::clock>
  friend class service_connection;

  /// Wakes every waiter (they re-check their condition).
  void notify() {
    { std::lock_guard<std::mutex> g(mutex_); }  // a waiter is either waiting or will re-check
    cv_.notify_all();
  }

  /// When a waiter with `deadline` should wake: its deadline, or earlier when the
  /// hub has a timer due (a lock expiry may make a message available). Called
  /// with the lock held, after the hub was brought up to `now`.
  time_point wake_time(time_point now, time_point deadline) {
    auto next = hub_.next_deadline();
    if (next && *next <= now) {  // the feedback queue's timers run only in tick
      hub_.tick(now);
      next = hub_.next_deadline();
    }
    return next && *next > now ? std::min(*next, deadline) : deadline;
  }

  void drive() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_driver_) {
      const time_point now = clock_.now();
      hub_.tick(now);
      const auto next = hub_.next_deadline();
      // Waiters wake at the hub's deadlines by themselves (wake_time), so the
      // driver does not notify them: it only keeps timers firing on time.
      clock_.wait_until(lock, cv_, next && *next > now ? *next : time_point::max());
    }
  }

  Clock clock_;
  mutable std::mutex mutex_;
  std::condition_variable_any cv_;
  hub hub_;
  bool stop_driver_ = false;  ///< guarded by mutex_
  mutable std::mutex driver_mutex_;
  std::thread driver_;
};

static_assert(device_transport<device_connection<manual_clock>>);
static_assert(device_transport<device_connection<manual_clock, settlement::complete_only>>);
static_assert(service_transport<service_connection<manual_clock>>);
static_assert(transport_traits<device_connection<system_clock>>::can_reject);
static_assert(!transport_traits<complete_only_device_connection<system_clock>>::can_reject);

}  // namespace devicebound::inproc
