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
#include <devicebound/registry.hpp>
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
#include "identity_view.hpp"
#include "throttle.hpp"

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
  /// IoT Hub's C2D throttles (SPEC 2.7; `--throttle`): every door's sends, and
  /// HTTPS device receives, over the tier's rate get 429001 and change nothing.
  throttle_config throttle;
  /// Where log lines go; empty: nowhere. `log_enabled(level)` says whether a
  /// line of that level is wanted (lines are only built then).
  std::function<void(log_level, std::string_view)> log;
  std::function<bool(log_level)> log_enabled;

  // --- the identity registry (SPEC 12) ---------------------------------------------------
  /// The hub's one registry (on the engine thread, like the hub); null: registry
  /// requests are answered `not_supported` and devices get no identity.
  registry* identities = nullptr;
  /// Commits the registry's change records to the hub's store (inside the
  /// batch's commit group); empty: not stored (an in-memory hub).
  std::function<result<void>(const journal::change_set&)> commit_identities;
  /// Where the doors read identities; written after each committed batch.
  identity_view* view = nullptr;
  /// Random keys for devices registered without keys (32 bytes each).
  key_source new_key;
};

/// What the registry is seeded with where it has nothing (first start, or a
/// store from before the registry): the auth file's policies or IoT Hub's
/// default ones when it has no policy, and the auth file's devices it lacks.
struct identity_seed {
  std::vector<auth::shared_access_policy> policies;
  /// With no `policies`: create IoT Hub's default policies with generated keys.
  bool default_policies = false;
  struct device {
    std::string id;
    auth::shared_access_key primary_key;
    auth::shared_access_key secondary_key;
  };
  std::vector<device> devices;
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
      : hub_(&h),
        options_(std::move(options)),
        group_(std::move(group)),
        throttle_(options_.throttle, time_point{}) {
    if (options_.max_in_flight < 1)
      options_.max_in_flight = 1;
    hub_->set_observer([this](const transition& t) { observe(t); });
  }
  router(const router&) = delete;
  router& operator=(const router&) = delete;
  ~router() { hub_->set_observer(nullptr); }

  /// Devices of the configuration are registered at start only if absent: a
  /// restart keeps their generation ids and queues. Inside a batch.
  void register_configured(const std::vector<std::string>& devices, time_point now = {}) {
    for (const auto& id : devices) {
      if (!hub_->has_device(id)) {
        (void)register_device(id, {}, now);
        continue;
      }
      ensure_identity(id, now);
      devices_.try_emplace(id);
      const auto gen = hub_->generation_id(id);
      log(log_level::info, "device '", id, "' is registered (generation ",
          gen ? std::string_view(*gen) : std::string_view("?"), ")");
    }
  }

  /// Seeds what the registry lacks (`seed`: policies when it has none, the
  /// auth file's devices it does not have), then gives every device of the engine
  /// an identity (generated keys) and publishes the whole registry to the
  /// identity view once the batch commits. Call it at start, inside a batch,
  /// before `register_configured`.
  void seed_identities(const identity_seed& seed, time_point now) {
    registry* reg = options_.identities;
    if (!reg)
      return;
    if (reg->policy_count() == 0) {
      auto policies = seed.policies;
      if (policies.empty() && seed.default_policies && options_.new_key)
        policies = auth::make_default_policies(options_.new_key);
      for (auto& p : policies) {
        const std::string name = p.name;
        if (auto r = reg->put_policy(std::move(p)); !r)
          log(log_level::error, "cannot seed policy '", name, "': ", r.error().message);
        else
          log(log_level::info, "seeded policy '", name, "'");
      }
    }
    // the auth file's devices, where the registry has none of that id (it never overrides)
    for (const auto& d : seed.devices) {
      if (reg->contains(d.id))
        continue;
      auto g = hub_->has_device(d.id) ? hub_->generation_id(d.id) : hub_->add_device(d.id);
      if (!g) {
        log(log_level::error, "cannot seed device '", d.id, "': ", g.error().message);
        continue;
      }
      devices_.try_emplace(d.id);
      auto r = reg->add(d.id, *g, d.primary_key, d.secondary_key, now, options_.new_key);
      if (!r)
        log(log_level::error, "cannot seed device '", d.id, "': ", r.error().message);
      else
        log(log_level::info, "seeded device '", d.id, "' from the auth file");
    }
    commit_identities();
    // a store from before the registry (or devices the engine had without one)
    if (reg->size() != hub_->device_count()) {
      for (const auto& d : hub_->snapshot().devices)
        ensure_identity(d.device_id, now);
    }
    full_view_ = true;
  }

  /// Opens a batch: the store's commit group.
  result<void> begin_batch() {
    if (in_batch_)
      return make_error(errc::invalid_operation, "a batch is already open");
    if (const auto& f = hub_->store_failure())
      return *f;
    if (registry_failed_)
      return *registry_failed_;
    if (group_.begin)
      if (auto r = group_.begin(); !r)
        return r;
    in_batch_ = true;
    return {};
  }

  /// Applies one request; its reply and the pushes it causes wait in the outbox.
  void handle(inbound in, time_point now) {
    if (hub_->store_failure() || registry_failed_)
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
    auto view = std::exchange(view_changes_, {});
    const bool full = std::exchange(full_view_, false);
    auto changed = std::exchange(credentials_, {});
    if (const auto& f = hub_->store_failure())
      return *f;
    if (registry_failed_)
      return *registry_failed_;
    if (was_open && group_.commit)
      if (auto r = group_.commit(); !r)
        return r.error();
    publish(view, full);
    if (changed.policies || !changed.devices.empty())
      out.emplace_back(std::move(changed));  // after the view took the change
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
    time_point state_changed{};  ///< `connectionStateUpdatedTime`
    time_point last_activity{};  ///< `lastActivityTime`
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

  // --- the identity registry ------------------------------------------------------------

  /// A change the identity view takes after the commit.
  struct view_change {
    std::string device;
    std::optional<device_identity> identity;  ///< nullopt: erased
  };

  /// Commits the registry's records; a failure stops the router like a hub
  /// store failure does (nothing of the batch is acknowledged).
  void commit_identities() {
    registry* reg = options_.identities;
    if (!reg || !reg->has_changes())
      return;
    auto changes = reg->take_changes();
    for (const auto& c : changes) {
      if (const auto* p = std::get_if<journal::identity_put>(&c))
        view_changes_.push_back({p->identity.device_id, p->identity});
      else if (const auto* x = std::get_if<journal::identity_removed>(&c))
        view_changes_.push_back({x->device_id, std::nullopt});
      else
        policies_changed_ = true;
    }
    if (!options_.commit_identities)
      return;
    if (auto r = options_.commit_identities(changes); !r) {
      log(log_level::error, "the store refused the registry's change: ", r.error().message);
      registry_failed_ = r.error();
    }
  }

  /// Writes the committed identity changes to the doors' view.
  void publish(const std::vector<view_change>& changes, bool full) {
    identity_view* v = options_.view;
    const bool policies = std::exchange(policies_changed_, false);
    if (!v || !options_.identities)
      return;
    if (full) {
      options_.identities->for_each([&](const device_identity& d) { v->put_device(d); });
      v->set_policies(options_.identities->policies());
      return;
    }
    for (const auto& c : changes) {
      if (c.identity)
        v->put_device(*c.identity);
      else
        v->erase_device(c.device);
    }
    if (policies)
      v->set_policies(options_.identities->policies());
  }

  /// Gives a device of the engine an identity with generated keys, if it has none.
  void ensure_identity(const std::string& id, time_point now) {
    registry* reg = options_.identities;
    if (!reg || reg->contains(id))
      return;
    auto g = hub_->generation_id(id);
    if (!g)
      return;
    if (auto r = reg->add(id, *g, now, options_.new_key); !r) {
      log(log_level::error, "cannot give device '", id, "' an identity: ", r.error().message);
      return;
    }
    log(log_level::info, "device '", id, "' has an identity (generated keys)");
    commit_identities();
  }

  device_view view_of(const device_identity& d, time_point now) {
    device_view v;
    v.identity = d;
    if (auto it = devices_.find(d.device_id); it != devices_.end()) {
      v.connected = it->second.mode != presence::absent;
      v.connection_state_updated = it->second.state_changed;
      v.last_activity = it->second.last_activity;
    }
    if (auto n = hub_->queue_depth(d.device_id, now))
      v.cloud_to_device_count = *n;
    return v;
  }

  /// The engine and router side of a deleted device (its identity is gone or going).
  void forget_device(const std::string& id, bool deleted) {
    if (deleted) {
      if (auto it = devices_.find(id); it != devices_.end())
        devices_.erase(it);
      if (auto it = dirty_.find(id); it != dirty_.end())
        dirty_.erase(it);
    }
    outbox_.emplace_back(device_revoked{every_door, id, deleted});
  }

  // --- devices ---------------------------------------------------------------------------

  bool register_device(const std::string& id, std::string_view by, time_point now = {}) {
    auto r = hub_->add_device(id);
    if (!r) {
      log(log_level::error, "cannot register device '", id, "': ", r.error().message);
      return false;
    }
    devices_.try_emplace(id);
    ensure_identity(id, now);
    if (by.empty())
      log(log_level::info, "registered device '", id, "' (generation ", *r, ")");
    else
      log(log_level::info, "'", by, "' registered device '", id, "' (generation ", *r, ")");
    return true;
  }

  /// Whether `id` is registered, registering it when auto-register is on.
  bool known_device(const std::string& id, time_point now) {
    if (hub_->has_device(id))
      return true;
    return options_.auto_register && register_device(id, {}, now);
  }

  /// A device did something: its `lastActivityTime`.
  void touch(const std::string& id, time_point now) {
    if (auto it = devices_.find(id); it != devices_.end())
      it->second.last_activity = now;
  }

  std::uint32_t clamp_window(std::uint32_t asked) const {
    return std::clamp<std::uint32_t>(asked, 1, options_.max_in_flight);
  }

  // --- requests --------------------------------------------------------------------------

  void on(const reply_to& from, send_request& r, time_point now) {
    // The throttle first: a refused send changes nothing, not even the bucket.
    if (auto t = throttle_.check_send(now); !t) {
      log(log_level::debug, "'", r.service, "' throttled: ", t.error().message);
      return fail(from, t.error());
    }
    if (!known_device(r.device, now))
      return fail(from,
                  make_error(errc::device_not_found,
                             "device '" + r.device +
                                 "' is not registered (register it in the "
                                 "config, with an admin 'add', or run with --auto-register)"));
    const std::string mid = r.msg.message_id.value_or("");
    auto e = hub_->enqueue(r.device, std::move(r.msg), now);
    if (!e)
      return fail(from, e.error());
    throttle_.took_send(now);
    log(log_level::debug, "'", r.service, "' sent message ", e->sequence_number, " ('", mid,
        "') to '", r.device, "'");
    answer(from, sent_reply{e->sequence_number, e->expiry_time_utc});
  }

  void on(const reply_to& from, receive_request& r, time_point now) {
    if (auto t = throttle_.check_receive(now); !t) {
      log(log_level::debug, "device '", r.device, "' throttled: ", t.error().message);
      return fail(from, t.error());
    }
    if (!known_device(r.device, now))
      return fail(
          from, make_error(errc::device_not_found, "device '" + r.device + "' is not registered"));
    auto m = hub_->receive(r.device, now);
    if (!m)
      return fail(from, m.error());
    throttle_.took_receive(now);
    touch(r.device, now);
    answer(from, message_reply{std::move(*m)});
  }

  void on(const reply_to& from, settle_request& r, time_point now) {
    auto s = hub_->settle(r.device, r.token, r.how, now);
    if (!s)
      return fail(from, s.error());
    touch(r.device, now);
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

  void on(const reply_to& from, add_device_request& r, time_point now) {
    if (options_.identities && options_.identities->contains(r.device))
      return fail(from, make_error(errc::device_already_exists,
                                   "device '" + r.device + "' already exists"));
    auto g = hub_->add_device(r.device);
    if (!g)
      return fail(from, g.error());
    devices_.try_emplace(r.device);
    ensure_identity(r.device, now);
    log(log_level::info, "'", r.admin, "' registered device '", r.device, "' (generation ", *g,
        ")");
    answer(from, generation_reply{std::move(*g)});
  }

  void on(const reply_to& from, remove_device_request& r, time_point now) {
    auto x = hub_->remove_device(r.device, std::nullopt, now);
    if (!x)
      return fail(from, x.error());
    if (options_.identities && options_.identities->contains(r.device)) {
      (void)options_.identities->remove(r.device, std::nullopt);
      commit_identities();
      credentials_.devices.push_back(r.device);
    }
    forget_device(r.device, true);
    log(log_level::info, "'", r.admin, "' removed device '", r.device, "'");
    answer(from, done_reply{});
  }

  void on(const reply_to& from, ping_request&, time_point) { answer(from, done_reply{}); }

  static error no_registry() {
    return make_error(errc::not_supported, "the identity registry is not available");
  }

  void on(const reply_to& from, registry_put_request& r, time_point now) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    const bool was_enabled = [&] {
      auto d = reg->get(r.update.device_id);
      return d && d->status == device_status::enabled;
    }();
    // the engine side of a new device: registered last, after every check of the registry
    auto generation = [this](std::string_view id) -> result<std::string> {
      if (hub_->has_device(id))
        return hub_->generation_id(id);
      return hub_->add_device(id);
    };
    auto p = reg->put(r.update, r.if_match, generation, now, options_.new_key);
    if (!p)
      return fail(from, p.error());
    devices_.try_emplace(p->device.device_id);
    commit_identities();
    if (!p->created)
      credentials_.devices.push_back(p->device.device_id);  // its keys may have changed
    log(log_level::info, "'", r.admin, "' ", p->created ? "created" : "updated", " device '",
        p->device.device_id, "' (etag ", etag_of(p->device), ", ", to_string(p->device.status),
        ")");
    const bool disabled = p->device.status == device_status::disabled;
    answer(from, device_reply{view_of(p->device, now)});
    if (disabled && was_enabled)
      forget_device(p->device.device_id, false);
  }

  void on(const reply_to& from, registry_get_request& r, time_point now) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    auto d = reg->get(r.device);
    if (!d)
      return fail(from, d.error());
    answer(from, device_reply{view_of(*d, now)});
  }

  void on(const reply_to& from, registry_list_request& r, time_point now) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    devices_reply out;
    for (auto& d : reg->list(r.top))
      out.devices.push_back(view_of(d, now));
    answer(from, std::move(out));
  }

  void on(const reply_to& from, registry_delete_request& r, time_point now) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    if (auto c = reg->check_remove(r.device, r.if_match); !c)
      return fail(from, c.error());
    if (hub_->has_device(r.device))
      if (auto x = hub_->remove_device(r.device, std::nullopt, now); !x)
        return fail(from, x.error());
    (void)reg->remove(r.device, r.if_match);
    commit_identities();
    credentials_.devices.push_back(r.device);
    forget_device(r.device, true);
    log(log_level::info, "'", r.admin, "' deleted device '", r.device, "'");
    answer(from, done_reply{});
  }

  // --- shared access policies (devicebound's admin API) ----------------------------------

  /// Whether a policy can administer the hub: it holds all four rights.
  static bool administers(const auth::shared_access_policy& p) {
    return auth::includes(p.rights, auth::access_rights::all);
  }

  /// Refuses a change to the policy `name`, which holds all four rights, that
  /// leaves no policy with all four: nobody could administer the policies any
  /// more (`replacement`: the policy as it would be; nullopt: it is deleted).
  std::optional<error> keeps_an_administrator(
      std::string_view name, const std::optional<auth::shared_access_policy>& replacement) const {
    for (const auto& p : options_.identities->policies())
      if (p.name != name && administers(p))
        return std::nullopt;
    if (replacement && administers(*replacement))
      return std::nullopt;
    return make_error(errc::invalid_operation,
                      "policy '" + std::string(name) +
                          "' is the last policy with all four rights (RegistryWrite, "
                          "ServiceConnect, DeviceConnect); " +
                          (replacement ? "reducing its rights" : "deleting it") +
                          " would leave the hub with no policy that can administer it");
  }

  void on(const reply_to& from, policy_list_request&, time_point) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    answer(from, policies_reply{reg->policies()});
  }

  void on(const reply_to& from, policy_get_request& r, time_point) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    auto p = reg->get_policy(r.name);
    if (!p)
      return fail(from, p.error());
    answer(from, policy_reply{std::move(*p), false});
  }

  void on(const reply_to& from, policy_put_request& r, time_point) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    auto old = reg->get_policy(r.policy.name);
    if (old && r.create_only)
      return fail(from, make_error(errc::invalid_operation,
                                   "policy '" + r.policy.name + "' already exists"));
    auth::shared_access_policy p = r.policy;
    // empty keys: kept on a replace, generated on a create
    for (auto [key, was] : {std::pair{&p.primary_key, old ? &old->primary_key : nullptr},
                            std::pair{&p.secondary_key, old ? &old->secondary_key : nullptr}}) {
      if (!key->empty())
        continue;
      if (was && !was->empty())
        *key = *was;
      else if (options_.new_key)
        *key = options_.new_key();
      else
        return fail(from, make_error(errc::server_error, "the hub has no key source"));
    }
    if (p.primary_key == p.secondary_key)
      return fail(from, make_error(errc::argument_invalid,
                                   "secondaryKey: the same as primaryKey (the two keys must "
                                   "differ; one was kept from policy '" +
                                       p.name + "')"));
    if (old && administers(*old))
      if (auto e = keeps_an_administrator(p.name, p))
        return fail(from, *e);
    if (auto w = reg->put_policy(p); !w)
      return fail(from, w.error());
    commit_identities();
    credentials_.policies = true;
    log(log_level::info, "'", r.admin, "' ", old ? "replaced" : "created", " policy '", p.name,
        "' (", auth::to_string(p.rights), ")");
    answer(from, policy_reply{std::move(p), !old});
  }

  void on(const reply_to& from, policy_renew_request& r, time_point) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    auto p = reg->get_policy(r.name);
    if (!p)
      return fail(from, p.error());
    if (r.which != renew_key::swap && !options_.new_key)
      return fail(from, make_error(errc::server_error, "the hub has no key source"));
    switch (r.which) {
      case renew_key::primary:
        p->primary_key = options_.new_key();
        break;
      case renew_key::secondary:
        p->secondary_key = options_.new_key();
        break;
      case renew_key::swap:
        if (p->secondary_key.empty())
          return fail(from, make_error(errc::invalid_operation,
                                       "policy '" + r.name + "' has no secondary key to swap"));
        std::swap(p->primary_key, p->secondary_key);
        break;
    }
    if (auto w = reg->put_policy(*p); !w)
      return fail(from, w.error());
    commit_identities();
    credentials_.policies = true;
    log(log_level::info, "'", r.admin, "' renewed the ",
        r.which == renew_key::primary     ? "primary key"
        : r.which == renew_key::secondary ? "secondary key"
                                          : "keys (swapped)",
        " of policy '", r.name, "'");
    answer(from, policy_reply{std::move(*p), false});
  }

  void on(const reply_to& from, policy_delete_request& r, time_point) {
    registry* reg = options_.identities;
    if (!reg)
      return fail(from, no_registry());
    auto p = reg->get_policy(r.name);
    if (!p)
      return fail(from, p.error());
    if (administers(*p))
      if (auto e = keeps_an_administrator(r.name, std::nullopt))
        return fail(from, *e);
    if (auto x = reg->remove_policy(r.name); !x)
      return fail(from, x.error());
    commit_identities();
    credentials_.policies = true;
    log(log_level::info, "'", r.admin, "' deleted policy '", r.name, "'");
    answer(from, done_reply{});
  }

  void on(const reply_to& from, refused_request& r, time_point) { fail(from, r.why); }

  // --- presence --------------------------------------------------------------------------

  void on(const reply_to& from, device_present& p, time_point now) {
    if (!known_device(p.device, now)) {
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
    if (d.mode != presence::pushed)
      d.state_changed = now;
    d.last_activity = now;
    d.mode = presence::pushed;
    d.door = from.door;
    d.connection = p.connection;
    d.delivery_tag = p.delivery_tag;
    d.window = p.window == 0 ? options_.max_in_flight : clamp_window(p.window);
    dirty_.insert(p.device);
    answer(from, window_reply{d.window});
  }

  void on(const reply_to& from, device_absent& a, time_point now) {
    auto it = devices_.find(a.device);
    if (it == devices_.end() || it->second.mode == presence::absent || it->second.door != from.door)
      return;
    if (a.connection && *a.connection != it->second.connection)
      return;  // the will of an older connection: not the current presence
    it->second.mode = presence::absent;
    it->second.state_changed = now;
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
  // the identity registry: what the view takes after the commit
  std::vector<view_change> view_changes_;
  bool policies_changed_ = false;
  bool full_view_ = false;
  credentials_changed credentials_;  ///< what the doors re-verify after the commit
  std::optional<error> registry_failed_;
  c2d_throttle throttle_;
};

}  // namespace devicebound::hubd
