// The daemon's router: typed requests in, engine calls, typed replies and
// pushes out. Sans-I/O: no sockets, no threads, no clock (every call takes
// `now`), no protocol. Whatever door a request came through, the same rules
// apply (DESIGN.md, principle 6).
//
// The router works in batches. `begin_batch` opens the store's commit group;
// `handle` and `tick` call the hub and append replies and pushes to the
// outbox; `end_batch` commits the group and only then hands the outbox out, so
// an acknowledgement always follows the commit of what it acknowledges. When
// the commit (or any operation's write) fails, `end_batch` returns the error
// and releases nothing: the daemon stops (exit code 4) and its supervisor
// restarts it from the store, which holds every acknowledged operation.
#pragma once

#include <cstdint>
#include <deque>
#include <devicebound/hub.hpp>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "front_door.hpp"

namespace devicebound::hubd {

/// How loud a router log line is (the daemon maps these to its logger).
enum class log_level : std::uint8_t { trace, debug, info, warn, error };

/// The store's commit group as the router drives it. Both empty: no group (no
/// store, or a store that commits every operation on its own).
struct commit_group {
  std::function<result<void>()> begin;
  std::function<result<void>()> commit;
};

struct router_options {
  std::uint32_t max_in_flight = 4;  ///< locked, unsettled pushes per device or back end
  bool auto_register = false;       ///< register unknown devices on send / presence
  /// Where log lines go; empty: nowhere. `log_enabled(level)` says whether a
  /// line of that level is wanted (lines are only built then).
  std::function<void(log_level, std::string_view)> log;
  std::function<bool(log_level)> log_enabled;
};

/// How a device takes its messages right now.
enum class presence : std::uint8_t {
  absent,  ///< not connected (or not known to be): nothing is pushed
  pushed,  ///< present through a door: messages are pushed to it
};

class router {
 public:
  /// A router over `h`, which must outlive it; `group` is the store's commit group.
  router(hub& h, router_options options, commit_group group = {})
      : hub_(&h), options_(std::move(options)), group_(std::move(group)) {
    if (options_.max_in_flight < 1)
      options_.max_in_flight = 1;
    hub_->set_observer([this](const transition& t) { observe(t); });
  }
  router(const router&) = delete;
  router& operator=(const router&) = delete;
  ~router() { hub_->set_observer(nullptr); }

  /// Devices of the configuration are registered at start only if absent: a
  /// restart keeps their generation ids and queues. Inside a batch.
  void register_configured(const std::vector<std::string>& devices) {
    for (const auto& id : devices) {
      if (!hub_->has_device(id)) {
        (void)register_device(id, {});
        continue;
      }
      devices_.try_emplace(id);
      const auto gen = hub_->generation_id(id);
      log(log_level::info, "device '", id, "' is registered (generation ",
          gen ? std::string_view(*gen) : std::string_view("?"), ")");
    }
  }

  /// Opens a batch: the store's commit group.
  result<void> begin_batch() {
    if (in_batch_)
      return make_error(errc::invalid_operation, "a batch is already open");
    if (const auto& f = hub_->store_failure())
      return *f;
    if (group_.begin)
      if (auto r = group_.begin(); !r)
        return r;
    in_batch_ = true;
    return {};
  }

  /// Applies one request; its reply and the pushes it causes wait in the outbox.
  void handle(inbound in, time_point now) {
    if (hub_->store_failure())
      return;  // the batch fails at end_batch; nothing more is done
    std::visit([&](auto& r) { on(in.from, r, now); }, in.what);
  }

  /// Applies the hub's timers (lock and TTL expiries, feedback batches) and
  /// pushes what present devices and attached back ends have room for.
  void tick(time_point now) {
    if (hub_->store_failure())
      return;
    hub_->tick(now);
    pump(now);
  }

  /// Commits the batch, then returns its replies and pushes in order. On a failed
  /// write or commit, returns the error and drops the outbox: nothing of the
  /// batch is acknowledged.
  result<std::vector<outbound>> end_batch() {
    const bool was_open = std::exchange(in_batch_, false);
    std::vector<outbound> out = std::exchange(outbox_, {});
    if (const auto& f = hub_->store_failure())
      return *f;
    if (was_open && group_.commit)
      if (auto r = group_.commit(); !r)
        return r.error();
    return out;
  }

  /// When the hub next needs a `tick`.
  std::optional<time_point> next_deadline() const { return hub_->next_deadline(); }

  const hub& engine() const noexcept { return *hub_; }
  presence presence_of(std::string_view device) const {
    auto it = devices_.find(device);
    return it == devices_.end() ? presence::absent : it->second.mode;
  }
  /// Pushed, unsettled messages of a device.
  std::size_t in_flight(std::string_view device) const {
    auto it = devices_.find(device);
    return it == devices_.end() ? 0 : it->second.pushed.size();
  }

 private:
  /// A message pushed to a device and still locked.
  struct in_flight_message {
    std::uint64_t sequence_number = 0;
    lock_token token;
    std::string tag;  ///< devices that do not settle: how the door reports delivery
  };

  struct device_state {
    presence mode = presence::absent;
    door_id door = 0;
    std::string connection;
    std::uint32_t window = 0;
    std::string (*delivery_tag)(std::string_view, const message&) = nullptr;
    std::deque<in_flight_message> pushed;
  };

  /// A back end attached for pushed feedback.
  struct service_state {
    door_id door = 0;
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

  // --- logging ---------------------------------------------------------------------------

  static void append(std::string& s, std::string_view v) { s += v; }
  static void append(std::string& s, const char* v) { s += v; }
  static void append(std::string& s, const std::string& v) { s += v; }
  template <class T>
  requires std::is_arithmetic_v<T>
  static void append(std::string& s, T v) { s += std::to_string(v); }

  template <class... Parts>
  void log(log_level level, const Parts&... parts) const {
    if (!options_.log || (options_.log_enabled && !options_.log_enabled(level)))
      return;
    std::string line;
    (append(line, parts), ...);
    options_.log(level, line);
  }

  // --- the outbox ------------------------------------------------------------------------

  template <class Reply>
  void answer(const reply_to& to, Reply r) {
    if (!to.address.empty())
      outbox_.emplace_back(reply{to, std::move(r)});
  }
  void fail(const reply_to& to, const error& e) { answer(to, e); }

  // --- the engine's transitions ----------------------------------------------------------

  void observe(const transition& t) {
    if (options_.log_enabled && options_.log_enabled(log_level::trace))
      log(log_level::trace, "message ", t.sequence_number, " of '", t.device_id, "' (",
          t.message_id.value_or("no id"), "): ", to_string(t.cause), " ", to_string(t.from), " -> ",
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
    const auto p = std::find_if(pushed.begin(), pushed.end(), [&](const in_flight_message& f) {
      return f.sequence_number == t.sequence_number;
    });
    if (p != pushed.end()) {
      pushed.erase(p);
      mark_dirty(t.device_id);
    }
    if (t.cause == transition_cause::lock_expired)
      log(log_level::debug, "lock of message ", t.sequence_number, " of '", t.device_id,
          "' expired: it will be delivered again");
  }

  void mark_dirty(std::string_view id) {
    auto it = devices_.find(id);
    if (it != devices_.end() && it->second.mode != presence::absent)
      dirty_.insert(it->first);
  }

  // --- devices ---------------------------------------------------------------------------

  bool register_device(const std::string& id, std::string_view by) {
    auto r = hub_->add_device(id);
    if (!r) {
      log(log_level::error, "cannot register device '", id, "': ", r.error().message);
      return false;
    }
    devices_.try_emplace(id);
    if (by.empty())
      log(log_level::info, "registered device '", id, "' (generation ", *r, ")");
    else
      log(log_level::info, "'", by, "' registered device '", id, "' (generation ", *r, ")");
    return true;
  }

  /// Whether `id` is registered, registering it when auto-register is on.
  bool known_device(const std::string& id) {
    if (hub_->has_device(id))
      return true;
    return options_.auto_register && register_device(id, {});
  }

  std::uint32_t clamp_window(std::uint32_t asked) const {
    return std::clamp<std::uint32_t>(asked, 1, options_.max_in_flight);
  }

  // --- requests --------------------------------------------------------------------------

  void on(const reply_to& from, send_request& r, time_point now) {
    if (!known_device(r.device))
      return fail(from,
                  make_error(errc::device_not_found,
                             "device '" + r.device +
                                 "' is not registered (register it in the "
                                 "config, with an admin 'add', or run with --auto-register)"));
    const std::string mid = r.msg.message_id.value_or("");
    auto e = hub_->enqueue(r.device, std::move(r.msg), now);
    if (!e)
      return fail(from, e.error());
    log(log_level::debug, "'", r.service, "' sent message ", e->sequence_number, " ('", mid,
        "') to '", r.device, "'");
    answer(from, sent_reply{e->sequence_number, e->expiry_time_utc});
  }

  void on(const reply_to& from, receive_request& r, time_point now) {
    if (!known_device(r.device))
      return fail(
          from, make_error(errc::device_not_found, "device '" + r.device + "' is not registered"));
    auto m = hub_->receive(r.device, now);
    if (!m)
      return fail(from, m.error());
    answer(from, message_reply{std::move(*m)});
  }

  void on(const reply_to& from, settle_request& r, time_point now) {
    auto s = hub_->settle(r.device, r.token, r.how, now);
    if (!s)
      return fail(from, s.error());
    log(log_level::debug, "device '", r.device, "' ", to_string(r.how), " ", r.token.to_string());
    answer(from, done_reply{});
  }

  void on(const reply_to& from, purge_request& r, time_point now) {
    auto n = hub_->purge(r.device, now);
    if (!n)
      return fail(from, n.error());
    log(log_level::info, "'", r.service, "' purged ", *n, " message(s) of '", r.device, "'");
    answer(from, count_reply{*n});
  }

  void on(const reply_to& from, queue_depth_request& r, time_point now) {
    auto n = hub_->queue_depth(r.device, now);
    if (!n)
      return fail(from, n.error());
    answer(from, depth_reply{*n});
  }

  void on(const reply_to& from, feedback_receive_request&, time_point now) {
    auto b = hub_->receive_feedback(now);
    if (!b)
      return fail(from, b.error());
    answer(from, feedback_reply{std::move(*b)});
  }

  void on(const reply_to& from, feedback_settle_request& r, time_point now) {
    auto s =
        r.complete ? hub_->complete_feedback(r.token, now) : hub_->abandon_feedback(r.token, now);
    if (auto it = services_.find(r.service); it != services_.end())
      std::erase_if(it->second.pushed, [&](const auto& p) { return p.first == r.token; });
    if (!s)
      return fail(from, s.error());
    log(log_level::debug, "'", r.service, "' ", r.complete ? "completed" : "abandoned",
        " feedback batch ", r.token.to_string());
    answer(from, done_reply{});
  }

  void on(const reply_to& from, feedback_attach_request& r, time_point) {
    auto& s = services_[r.service];
    if (s.connection != r.connection || s.door != from.door) {
      s.pushed.clear();  // the old connection's batches come back when their locks expire
      log(log_level::info, "back end '", r.service, "' attached for feedback");
    }
    s.door = from.door;
    s.connection = r.connection;
    s.window = clamp_window(r.window);
    answer(from, window_reply{s.window});
  }

  void on(const reply_to& from, feedback_detach_request& r, time_point) {
    auto it = services_.find(r.service);
    if (it == services_.end() || it->second.door != from.door ||
        r.connection != it->second.connection)
      return;  // a will of an older connection: not the current attach
    log(log_level::info, "back end '", r.service, "' detached");
    services_.erase(it);
  }

  void on(const reply_to& from, add_device_request& r, time_point) {
    auto g = hub_->add_device(r.device);
    if (!g)
      return fail(from, g.error());
    devices_.try_emplace(r.device);
    log(log_level::info, "'", r.admin, "' registered device '", r.device, "' (generation ", *g,
        ")");
    answer(from, generation_reply{std::move(*g)});
  }

  void on(const reply_to& from, remove_device_request& r, time_point now) {
    auto x = hub_->remove_device(r.device, std::nullopt, now);
    if (!x)
      return fail(from, x.error());
    if (auto it = devices_.find(r.device); it != devices_.end())
      devices_.erase(it);
    if (auto it = dirty_.find(r.device); it != dirty_.end())
      dirty_.erase(it);
    log(log_level::info, "'", r.admin, "' removed device '", r.device, "'");
    answer(from, done_reply{});
  }

  void on(const reply_to& from, ping_request&, time_point) { answer(from, done_reply{}); }

  // The identity registry (step 9): not wired yet.
  template <class Registry>
  requires std::same_as<Registry, registry_put_request> ||
           std::same_as<Registry, registry_get_request> ||
           std::same_as<Registry, registry_list_request> ||
           std::same_as<Registry, registry_delete_request>
  void on(const reply_to& from, Registry&, time_point) {
    fail(from, make_error(errc::not_supported, "the identity registry is not available"));
  }

  void on(const reply_to& from, refused_request& r, time_point) { fail(from, r.why); }

  // --- presence --------------------------------------------------------------------------

  void on(const reply_to& from, device_present& p, time_point now) {
    if (!known_device(p.device)) {
      if (p.delivery_tag)
        log(log_level::warn, "device '", p.device,
            "' subscribed but is not registered: nothing will be delivered");
      return fail(
          from, make_error(errc::device_not_found, "device '" + p.device + "' is not registered"));
    }
    auto& d = devices_[p.device];
    const bool same = d.mode == presence::pushed && d.door == from.door &&
                      d.connection == p.connection && d.delivery_tag == p.delivery_tag;
    if (!same) {
      if (p.delivery_tag) {
        const auto depth = hub_->queue_depth(p.device, now);
        log(log_level::info, "device '", p.device, "' subscribed (stock IoT Hub device; ",
            depth ? *depth : 0, " message(s) queued)");
      } else {
        log(log_level::info, "device '", p.device, "' attached (extended, ",
            d.mode == presence::absent ? "was absent"
            : d.delivery_tag           ? "was stock"
                                       : "was extended",
            ")");
        // Pushes to an older connection are not counted: their locks expire and
        // the messages come again.
        d.pushed.clear();
      }
    }
    d.mode = presence::pushed;
    d.door = from.door;
    d.connection = p.connection;
    d.delivery_tag = p.delivery_tag;
    d.window = p.window == 0 ? options_.max_in_flight : clamp_window(p.window);
    dirty_.insert(p.device);
    answer(from, window_reply{d.window});
  }

  void on(const reply_to& from, device_absent& a, time_point) {
    auto it = devices_.find(a.device);
    if (it == devices_.end() || it->second.mode == presence::absent || it->second.door != from.door)
      return;
    if (a.connection && *a.connection != it->second.connection)
      return;  // the will of an older connection: not the current presence
    it->second.mode = presence::absent;
    log(log_level::info, "device '", a.device, a.connection ? "' detached (" : "' disconnected (",
        it->second.pushed.size(), " message(s) in flight stay locked until their locks expire)");
  }

  void on(const reply_to&, device_delivered& d, time_point now) {
    auto it = devices_.find(d.device);
    if (it == devices_.end())
      return;
    auto& pushed = it->second.pushed;
    const auto p = std::find_if(pushed.begin(), pushed.end(),
                                [&](const in_flight_message& f) { return f.tag == d.tag; });
    if (p == pushed.end()) {
      log(log_level::debug, "delivered to '", d.device,
          "' but not in flight (lock expired?): ", d.tag);
      return;
    }
    // SPEC 6.2.2: a stock SDK PUBACKs on receipt; the broker handing the message
    // to the device's connection is as close to "completed" as MQTT 3.1.1 gets.
    const lock_token token = p->token;
    if (auto r = hub_->complete(d.device, token, now); !r)
      log(log_level::warn, "completing a message delivered to '", d.device,
          "': ", r.error().message);
  }

  void on(const reply_to& from, door_status& s, time_point) {
    auto& up = doors_up_[from.door];
    up = s.up;
    if (!s.up)
      return;
    if (s.peers_forgot) {
      for (auto& [id, d] : devices_)
        if (d.door == from.door && d.mode != presence::absent) {
          log(log_level::info, "device '", id, "' presumed disconnected (its door restarted)");
          d.mode = presence::absent;
        }
      std::erase_if(services_, [&](const auto& s2) { return s2.second.door == from.door; });
    }
    for (const auto& [id, d] : devices_)
      if (d.door == from.door && d.mode != presence::absent)
        dirty_.insert(id);
  }

  bool door_up(door_id door) const {
    auto it = doors_up_.find(door);
    return it != doors_up_.end() && it->second;
  }

  // --- pushes ----------------------------------------------------------------------------

  void pump(time_point now) {
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
    if (!door_up(d.door))
      return;  // marked again when the door comes back
    while (d.mode != presence::absent && d.pushed.size() < d.window) {
      auto r = hub_->receive(id, now);
      if (!r) {
        log(log_level::error, "receive for '", id, "': ", r.error().message);
        return;
      }
      if (!*r)
        return;
      message& m = **r;
      in_flight_message f{m.sequence_number, *m.lock_token, {}};
      if (d.delivery_tag)
        f.tag = d.delivery_tag(id, m);
      std::string tag = f.tag;
      d.pushed.push_back(std::move(f));
      log(log_level::debug, "-> '", id, "' message ", m.sequence_number, " (delivery count ",
          m.delivery_count, ")");
      // A push that cannot go out leaves the message locked: it comes again after the lock expires.
      outbox_.emplace_back(device_push{d.door, id, d.connection, d.delivery_tag == nullptr,
                                       std::move(tag), std::move(m)});
    }
  }

  void pump_feedback(time_point now) {
    if (services_.empty())
      return;
    for (auto& [sid, s] : services_)
      std::erase_if(s.pushed, [&](const auto& p) { return p.second <= now; });
    while (hub_->feedback_queue_depth() > 0) {
      // Round robin over the back ends with room, starting after the last one served.
      auto it = services_.upper_bound(last_feedback_target_);
      service_state* target = nullptr;
      std::string target_id;
      for (std::size_t i = 0; i < services_.size(); ++i, ++it) {
        if (it == services_.end())
          it = services_.begin();
        if (it->second.pushed.size() < it->second.window && door_up(it->second.door)) {
          target = &it->second;
          target_id = it->first;
          break;
        }
      }
      if (!target)
        return;
      auto b = hub_->receive_feedback(now);
      if (!b || !*b)
        return;
      last_feedback_target_ = target_id;
      target->pushed.emplace_back((*b)->lock_token, now + hub_->config().feedback_lock_duration);
      log(log_level::debug, "-> '", target_id, "' feedback batch of ", (*b)->records.size(),
          " record(s)");
      outbox_.emplace_back(
          feedback_push{target->door, target_id, target->connection, std::move(**b)});
    }
  }

  hub* hub_;
  router_options options_;
  commit_group group_;
  bool in_batch_ = false;
  std::vector<outbound> outbox_;
  std::unordered_map<std::string, device_state, id_hash, std::equal_to<>> devices_;
  std::set<std::string, std::less<>> dirty_;
  std::map<std::string, service_state, std::less<>> services_;
  std::string last_feedback_target_;
  std::map<door_id, bool> doors_up_;
};

}  // namespace devicebound::hubd
