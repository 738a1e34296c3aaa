/// \file hub.hpp
/// The hub engine: device registry, per-device C2D queues, timers and delivery
/// feedback (SPEC 1-4, 7.1-7.5). Sans-I/O: every operation takes `now`; the
/// engine never reads a clock, sleeps or starts a thread.
///
/// Thread model: a hub is single-threaded. Callers serialise access (the
/// in-process transport wraps it in a mutex).
///
/// Durability (SPEC 1.2): a hub opened on a store (`open`, journal.hpp)
/// journals every change and commits the journal to the store, one change set
/// per operation, before the operation returns. Without a store the journal is
/// off and costs one branch per operation.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "feedback.hpp"
#include "hub_config.hpp"
#include "journal.hpp"
#include "lifecycle.hpp"
#include "message.hpp"
#include "queue.hpp"
#include "settlement.hpp"
#include "token_source.hpp"
#include "validate.hpp"

// The wrapper every operation goes through must not cost a call of its own
// (bench/hub_throughput.cpp measures the engine without a store).
#if defined(__GNUC__) || defined(__clang__)
#define DEVICEBOUND_ALWAYS_INLINE [[gnu::always_inline]] inline
#else
#define DEVICEBOUND_ALWAYS_INLINE inline
#endif

namespace devicebound {

using namespace std::chrono_literals;

/// What made a message change state; reported to the transition observer.
enum class transition_cause : std::uint8_t {
  accepted,
  lock,
  complete,
  reject,
  abandon,
  lock_expired,
  ttl_expired,
  purge,
  device_removed,
};

constexpr std::string_view to_string(transition_cause c) noexcept {
  switch (c) {
    case transition_cause::accepted:
      return "accepted";
    case transition_cause::lock:
      return "lock";
    case transition_cause::complete:
      return "complete";
    case transition_cause::reject:
      return "reject";
    case transition_cause::abandon:
      return "abandon";
    case transition_cause::lock_expired:
      return "lock_expired";
    case transition_cause::ttl_expired:
      return "ttl_expired";
    case transition_cause::purge:
      return "purge";
    case transition_cause::device_removed:
      return "device_removed";
  }
  return "accepted";
}

/// Parses a cause's `to_string` spelling exactly (`lock_expired`); nullopt otherwise.
constexpr std::optional<transition_cause> parse_transition_cause(std::string_view s) noexcept {
  for (auto v :
       {transition_cause::accepted, transition_cause::lock, transition_cause::complete,
        transition_cause::reject, transition_cause::abandon, transition_cause::lock_expired,
        transition_cause::ttl_expired, transition_cause::purge, transition_cause::device_removed})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// One state change of one message, as the observer sees it. For `accepted`,
/// `from` and `to` are both Enqueued. Views are valid during the callback only.
struct transition {
  std::string_view device_id;
  std::uint64_t sequence_number = 0;
  std::optional<std::string_view> message_id;
  transition_cause cause = transition_cause::accepted;
  message_state from = message_state::enqueued;
  message_state to = message_state::enqueued;
  dead_letter_reason reason = dead_letter_reason::none;
  std::uint32_t delivery_count = 0;
  time_point at{};
};

/// The hub engine, over a lifecycle machine type (`lifecycle` by default; the
/// benchmark swaps in a hand-written switch with the same interface).
template <class Lifecycle>
class basic_hub {
 public:
  using queue_type = basic_device_queue<Lifecycle>;
  using queued_message = typename queue_type::queued_message;
  using observer = std::function<void(const transition&)>;

  /// A hub with `config` (throws `exception` with 400004 if it is out of range)
  /// and a lock-token source (unguessable system randomness by default).
  explicit basic_hub(hub_config config = {}, token_source tokens = system_token_source())
      : config_(checked(std::move(config))),
        tokens_(std::move(tokens)),
        feedback_(feedback_queue_rules{config_.feedback_ttl, config_.feedback_max_delivery_count,
                                       config_.feedback_lock_duration}) {
    rules_.max_delivery_count = config_.max_delivery_count;
    rules_.rule = config_.delivery_count;
  }

  /// Like the constructor, but returns the configuration error instead of throwing.
  static result<basic_hub> create(hub_config config, token_source tokens = system_token_source()) {
    if (auto r = config.validate(); !r)
      return r.error();
    return basic_hub(std::move(config), std::move(tokens));
  }

  // --- durability (journal.hpp, docs/architecture.md "Durability") -------------------

  /// Opens a hub on `store`: rebuilds it from what the store holds (an empty
  /// store gives an empty hub), then commits every later operation to the store
  /// before returning from it. `config` replaces any stored configuration (and
  /// is stored). The store must outlive the hub. Errors: 400004 bad config, the
  /// store's own error if it cannot be read, 400005 if its contents are inconsistent.
  template <hub_store Store>
  static result<basic_hub> open(hub_config config, Store& store,
                                token_source tokens = system_token_source()) {
    if (auto r = config.validate(); !r)
      return r.error();
    return open_with(std::optional<hub_config>(std::move(config)), store, std::move(tokens));
  }

  /// Opens a hub on `store` with the stored configuration (the defaults if none is stored).
  template <hub_store Store>
  static result<basic_hub> open(Store& store, token_source tokens = system_token_source()) {
    return open_with(std::nullopt, store, std::move(tokens));
  }

  /// Rebuilds a hub from a snapshot, without a store attached. Locks come back
  /// as they were (Invisible, same token, same expiry); a lock or TTL that has
  /// passed by the next operation's `now` applies then, at its own instant.
  static result<basic_hub> restore(hub_config config, journal::snapshot snap,
                                   token_source tokens = system_token_source()) {
    if (auto r = config.validate(); !r)
      return r.error();
    basic_hub h(std::move(config), std::move(tokens));
    if (auto r = h.restore_from(std::move(snap)); !r)
      return r.error();
    return h;
  }

  /// Everything durable, as a store would hold it after this hub's operations.
  journal::snapshot snapshot() const {
    journal::snapshot s;
    s.config = config_;
    s.counters = counters_record();
    for (const auto& [id, dev] : devices_) {
      s.devices.push_back({id, dev.generation_id});
      for (const auto& m : dev.queue.entries()) {
        journal::stored_message sm;
        sm.device_id = id;
        sm.sequence_number = m.sequence_number;
        sm.content = std::string(m.content.bytes());
        sm.enqueued_time = m.enqueued_time;
        sm.expires_at = m.fields.expires_at;
        sm.ack = m.ack;
        sm.state = m.state();
        sm.delivery_count = m.fields.delivery_count;
        sm.token = m.fields.token;
        sm.locked_until = m.fields.locked_until;
        s.messages.push_back(std::move(sm));
      }
    }
    std::sort(s.devices.begin(), s.devices.end(),
              [](const auto& a, const auto& b) { return a.device_id < b.device_id; });
    std::sort(s.messages.begin(), s.messages.end(),
              [](const auto& a, const auto& b) { return a.sequence_number < b.sequence_number; });
    for (const auto& p : pending_)
      s.pending.push_back({p.id, p.record});
    feedback_.for_each([&](std::uint64_t id, const feedback_batch& b, message_state st,
                           const lifecycle_fields& f) {
      s.batches.push_back({id, b.records, b.enqueued_time_utc, f.expires_at, b.user_id, st,
                           f.delivery_count, f.token, f.locked_until});
    });
    return s;
  }

  /// Whether the hub commits to a store.
  bool has_store() const noexcept { return link_.apply != nullptr; }

  /// Set once a commit to the store failed. The hub's memory is then ahead of
  /// its store, so every later operation is refused with 500001 (a `tick` does
  /// nothing); reopen the hub from the store (`open`) to go on.
  const std::optional<error>& store_failure() const noexcept { return store_failed_; }

  const hub_config& config() const noexcept { return config_; }
  const hub_stats& stats() const noexcept { return stats_; }

  /// Calls `f` for every message state change (acceptance included). Costs a
  /// call per change while set; pass `nullptr` to stop.
  void set_observer(observer f) { observer_ = std::move(f); }

  // --- device registry ----------------------------------------------------------

  /// Registers a device; returns its new generation id.
  result<std::string> add_device(std::string_view device_id) {
    return committed([&] { return add_device_(device_id); });
  }

  /// Removes a device with its queue and its pending (not yet batched) feedback
  /// (SPEC 1.4, 4.9). With `generation_id`, removes only that generation (412001 otherwise).
  result<void> remove_device(std::string_view device_id,
                             std::optional<std::string_view> generation_id = std::nullopt,
                             std::optional<time_point> now = std::nullopt) {
    return committed([&] { return remove_device_(device_id, generation_id, now); });
  }

  bool has_device(std::string_view device_id) const {
    return devices_.find(device_id) != devices_.end();
  }
  std::size_t device_count() const noexcept { return devices_.size(); }

  result<std::string> generation_id(std::string_view device_id) const {
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    return it->second.generation_id;
  }

  // --- C2D operations -------------------------------------------------------------

  /// Accepts a message for `device_id` (SPEC 7.2). Errors, in the order checked:
  /// 400004 bad id/properties/expiry, 413001 too large, 404001 unknown device,
  /// 403004 queue full. An error changes nothing. With a store, the message is
  /// committed to it before this returns (SPEC 1.2).
  result<enqueue_receipt> enqueue(std::string_view device_id, message msg, time_point now) {
    return committed([&] { return enqueue_(device_id, msg, now); });
  }

  /// Locks the oldest Enqueued message of a device and returns it (SPEC 1.4),
  /// or nullopt when none is available.
  result<std::optional<message>> receive(std::string_view device_id, time_point now) {
    return committed([&] { return receive_(device_id, now); });
  }

  /// Settles a locked message. Unknown, stale or expired token: 412002, nothing changes.
  result<void> settle(std::string_view device_id, const lock_token& token, disposition d,
                      time_point now) {
    return committed([&] { return settle_(device_id, token, d, now); });
  }
  /// Completed: leaves the queue; feedback `Success` for positive/full (SPEC 1.4).
  result<void> complete(std::string_view device_id, const lock_token& token, time_point now) {
    return settle(device_id, token, disposition::complete, now);
  }
  /// Dead-lettered as Rejected; feedback for negative/full (SPEC 1.4).
  result<void> reject(std::string_view device_id, const lock_token& token, time_point now) {
    return settle(device_id, token, disposition::reject, now);
  }
  /// Back to Enqueued with delivery count +1, or DeliveryCountExceeded at the limit.
  result<void> abandon(std::string_view device_id, const lock_token& token, time_point now) {
    return settle(device_id, token, disposition::abandon, now);
  }

  /// Removes every pending message of a device; returns how many (SPEC 5.19).
  result<std::size_t> purge(std::string_view device_id, time_point now) {
    return committed([&] { return purge_(device_id, now); });
  }

  /// Pending messages of a device, Enqueued plus Invisible (cloudToDeviceMessageCount, SPEC 2.10).
  result<std::size_t> queue_depth(std::string_view device_id, time_point now) {
    return committed([&]() -> result<std::size_t> {
      now = advance(now);
      auto it = devices_.find(device_id);
      if (it == devices_.end())
        return not_found(device_id);
      return it->second.queue.depth();
    });
  }

  /// Applies every lock expiry and TTL expiry due at or before `now`, and sends
  /// due feedback batches (SPEC 4.3). Call it at `next_deadline()` or regularly.
  /// With a store, a failed commit shows in `store_failure()`.
  void tick(time_point now) {
    if (store_failed_) [[unlikely]]
      return;
    now = advance(now);
    feedback_.apply_timers(now, batch_journal());
    if (has_store()) [[unlikely]]
      (void)commit();  // a failure shows in store_failure()
  }

  /// The next instant at which `tick` has work, or nullopt if none is scheduled
  /// (also once the store failed: the hub does no more work until it is reopened).
  std::optional<time_point> next_deadline() const {
    if (store_failed_) [[unlikely]]
      return std::nullopt;
    time_point t = timers_.empty() ? time_point::max() : timers_.begin()->first;
    if (!pending_.empty())
      t = std::min(t, std::max(flush_due(), last_now_));
    t = std::min(t, feedback_.next_deadline());
    if (t == time_point::max())
      return std::nullopt;
    return t;
  }

  // --- feedback (service side, SPEC 4.2, 4.8) -------------------------------------

  /// Locks the oldest feedback batch for the service; nullopt if none.
  result<std::optional<feedback_batch>> receive_feedback(time_point now) {
    return committed([&]() -> result<std::optional<feedback_batch>> {
      now = advance(now);
      lock_token t{};
      for (int i = 0; i < 16; ++i) {
        t = tokens_();
        if (!t.is_nil() && !feedback_.token_in_use(t))
          break;
        if (i == 15)
          return make_error(errc::server_error, "token source keeps repeating lock tokens");
      }
      return feedback_.receive(now, t, batch_journal());
    });
  }
  result<void> complete_feedback(const lock_token& token, time_point now) {
    return committed([&] { return feedback_.complete(token, advance(now), batch_journal()); });
  }
  result<void> abandon_feedback(const lock_token& token, time_point now) {
    return committed([&] { return feedback_.abandon(token, advance(now), batch_journal()); });
  }
  /// Feedback records created but not yet in a batch.
  std::size_t pending_feedback_records() const noexcept { return pending_.size(); }
  /// Feedback batches waiting or locked in the feedback queue.
  std::size_t feedback_queue_depth() const noexcept { return feedback_.depth(); }
  /// Feedback batches dropped by the feedback queue's TTL or delivery limit.
  std::uint64_t feedback_batches_dropped() const noexcept { return feedback_.dropped(); }

  /// Read-only view of a device's queue (for inspection and tests).
  const queue_type* find_queue(std::string_view device_id) const {
    auto it = devices_.find(device_id);
    return it == devices_.end() ? nullptr : &it->second.queue;
  }

  /// The latest `now` the hub has seen; times never go backwards.
  time_point last_now() const noexcept { return last_now_; }

  /// `/devices/{id}/messages/devicebound` (SPEC 1.1).
  static std::string device_bound_address(std::string_view device_id) {
    std::string s = "/devices/";
    s += device_id;
    s += "/messages/devicebound";
    return s;
  }

 private:
  struct pending_record {
    feedback_record record;
    std::uint64_t id = 0;  ///< the store's key; increasing, so pending records are in id order
  };
  /// The store a hub commits to, type-erased: the hub stays one type whatever backs it.
  struct store_link {
    void* self = nullptr;
    result<void> (*apply)(void*, const journal::change_set&) = nullptr;
  };

  struct device_entry {
    std::string generation_id;
    queue_type queue;
    time_point scheduled = time_point::max();  ///< key in timers_, or max
  };
  struct id_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  using device_map = std::unordered_map<std::string, device_entry, id_hash, std::equal_to<>>;
  using device_node = typename device_map::value_type;
  using timer = std::pair<time_point, device_node*>;
  /// Due time, then device id: devices due at the same instant run their
  /// timers (and create their feedback records) in id order, not heap-address order.
  struct timer_order {
    bool operator()(const timer& a, const timer& b) const noexcept {
      if (a.first != b.first)
        return a.first < b.first;
      return a.second->first < b.second->first;
    }
  };

  // --- the operations (the public wrappers commit their journal) -------------------

  result<std::string> add_device_(std::string_view device_id) {
    if (auto r = validate_device_id(device_id); !r)
      return r.error();
    if (devices_.find(device_id) != devices_.end())
      return make_error(errc::device_already_exists,
                        "device '" + std::string(device_id) + "' already exists");
    auto gen = new_generation_id();
    devices_.emplace(std::string(device_id), device_entry{gen, {}, time_point::max()});
    if (has_store()) [[unlikely]]
      journal_.push_back(journal::device_added{std::string(device_id), gen});
    return gen;
  }

  result<void> remove_device_(std::string_view device_id,
                              std::optional<std::string_view> generation_id,
                              std::optional<time_point> now) {
    // like every operation given a `now`, first apply the timers due by then:
    // a message that expired before the removal is Expired, not removed
    const time_point at = now ? advance(*now) : last_now_;
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    if (generation_id && *generation_id != it->second.generation_id)
      return make_error(errc::precondition_failed, "device '" + std::string(device_id) +
                                                       "' has generation id '" +
                                                       it->second.generation_id + "', not '" +
                                                       std::string(*generation_id) + "'");
    unschedule(*it);
    it->second.queue.clear([&](queued_message& m) {
      const auto from = m.state();
      ++stats_.removed_with_device;
      notify(it->first, m, transition_cause::device_removed, from, message_state::purged, at);
    });
    const auto before = pending_.size();
    std::erase_if(pending_,
                  [&](const pending_record& r) { return r.record.device_id == device_id; });
    stats_.feedback_records_dropped += before - pending_.size();
    if (has_store()) [[unlikely]]
      journal_.push_back(journal::device_removed{it->first});
    devices_.erase(it);
    return {};
  }

  result<enqueue_receipt> enqueue_(std::string_view device_id, message& msg, time_point now) {
    now = advance(now);
    if (auto r = validate_device_id(device_id); !r)
      return r.error();
    if (msg.to && !is_device_bound_address(*msg.to, device_id))
      return make_error(errc::argument_invalid, "'to' is '" + *msg.to +
                                                    "' but the message is sent to device '" +
                                                    std::string(device_id) + "'");
    msg.to = device_bound_address(device_id);
    if (auto r = validate_message(msg, config_.max_message_size); !r)
      return r.error();
    time_point expires = msg.expiry_time_utc.value_or(now + config_.default_ttl);
    if (expires > now + max_message_ttl) {
      if (config_.expiry_over_cap == expiry_cap_policy::reject)
        return make_error(errc::argument_invalid,
                          "expiry time is more than 2 days after enqueue time (SPEC 2.2)");
      expires = now + max_message_ttl;
    }
    expires = std::max(expires, now);  // already past: dead-letters as Expired at once
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    auto& dev = it->second;
    if (dev.queue.depth() >= config_.max_queue_depth)
      return make_error(errc::device_maximum_queue_depth_exceeded,
                        "device '" + std::string(device_id) + "' already has " +
                            std::to_string(dev.queue.depth()) + " pending messages (limit " +
                            std::to_string(config_.max_queue_depth) + ", SPEC 2.3)");
    queued_message q;
    q.content = detail::packed_message::pack(msg);
    q.sequence_number = ++last_sequence_;
    q.enqueued_time = now;
    q.ack = msg.ack;
    q.fields.expires_at = expires;
    const auto seq = q.sequence_number;
    dev.queue.push(std::move(q), config_.max_queue_depth);
    ++stats_.accepted;
    if (has_store()) [[unlikely]] {
      const auto& back = dev.queue.entries().back();
      journal_.push_back(
          journal::message_accepted{it->first, seq, std::string(back.content.bytes()),
                                    back.enqueued_time, back.fields.expires_at, back.ack});
    }
    if (observer_) {
      const auto& back = dev.queue.entries().back();
      notify(it->first, back, transition_cause::accepted, message_state::enqueued,
             message_state::enqueued, now);
    }
    if (expires <= now) {
      run_device_timers(*it, now);
      flush_feedback(now);
    }
    reschedule(*it);
    return enqueue_receipt{seq, expires};
  }

  result<std::optional<message>> receive_(std::string_view device_id, time_point now) {
    now = advance(now);
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    auto& dev = it->second;
    auto* q = dev.queue.oldest_enqueued();
    if (!q)
      return std::optional<message>{};
    auto token = new_lock_token(dev.queue);
    if (!token)
      return token.error();
    const auto from = q->state();
    auto r = q->machine.process(
        lifecycle_event::lock{{&q->fields, &rules_, now}, *token, config_.lock_duration});
    if (!r)
      return r.error();
    notify(it->first, *q, transition_cause::lock, from, q->state(), now);
    std::optional<message> out(std::in_place);
    q->content.unpack_into(*out);
    out->to = device_bound_address(device_id);
    out->expiry_time_utc = q->fields.expires_at;
    out->ack = q->ack;
    out->sequence_number = q->sequence_number;
    out->enqueued_time_utc = q->enqueued_time;
    out->delivery_count = q->fields.delivery_count;
    out->lock_token = *token;
    reschedule(*it);
    return out;
  }

  result<void> settle_(std::string_view device_id, const lock_token& token, disposition d,
                       time_point now) {
    switch (d) {
      case disposition::complete:
        return apply<lifecycle_event::complete>(device_id, token, now, transition_cause::complete);
      case disposition::reject:
        return apply<lifecycle_event::reject>(device_id, token, now, transition_cause::reject);
      case disposition::abandon:
        return apply<lifecycle_event::abandon>(device_id, token, now, transition_cause::abandon);
    }
    return make_error(errc::argument_invalid, "unknown disposition");
  }

  result<std::size_t> purge_(std::string_view device_id, time_point now) {
    now = advance(now);
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    unschedule(*it);
    const auto n = it->second.queue.clear([&](queued_message& m) {
      const auto from = m.state();
      (void)m.machine.process(lifecycle_event::purge{{&m.fields, &rules_, now}});
      ++stats_.purged;
      notify(it->first, m, transition_cause::purge, from, m.state(), now);
      if (config_.purge_feedback_for == purge_feedback::negative_acks)
        add_feedback(it->first, it->second, m, feedback_status::purged, now);
    });
    flush_feedback(now);
    return n;
  }

  static hub_config checked(hub_config c) {
    c.validate().value();
    return c;
  }

  static error not_found(std::string_view device_id) {
    return make_error(errc::device_not_found,
                      "device '" + std::string(device_id) + "' is not registered");
  }

  static bool is_device_bound_address(std::string_view to, std::string_view device_id) {
    // SPEC 7.7: accept both `devicebound` and `deviceBound`
    const std::string prefix = "/devices/" + std::string(device_id) + "/messages/device";
    if (!to.starts_with(prefix))
      return false;
    const auto rest = to.substr(prefix.size());
    return rest == "bound" || rest == "Bound";
  }

  /// Times never go backwards: an earlier `now` is taken as the latest seen.
  time_point clamp_now(time_point now) noexcept { return std::max(now, last_now_); }

  /// Brings the hub up to `now`: due timers of every device, then feedback batching.
  time_point advance(time_point now) {
    now = clamp_now(now);
    last_now_ = now;
    while (!timers_.empty() && timers_.begin()->first <= now) {
      auto* node = timers_.begin()->second;
      run_device_timers(*node, now);
      reschedule(*node);
    }
    flush_feedback(now);
    // the feedback queue's own lock and TTL expiries, so that next_deadline()
    // is always in the future after an operation (drivers wait on it)
    if (feedback_.next_deadline() <= now)
      feedback_.apply_timers(now, batch_journal());
    return now;
  }

  void run_device_timers(device_node& node, time_point now) {
    node.second.queue.apply_timers(
        now, rules_, [&](queued_message& m, message_state from, time_point at) {
          const auto to = m.state();
          const auto cause = from == message_state::invisible && to != message_state::dead_lettered
                                 ? transition_cause::lock_expired
                             : (to == message_state::dead_lettered &&
                                m.fields.reason == dead_letter_reason::delivery_count_exceeded)
                                 ? transition_cause::lock_expired
                                 : transition_cause::ttl_expired;
          notify(node.first, m, cause, from, to, at);
          if (is_terminal(to))
            outcome(node, m, at);
        });
  }

  template <class Event>
  result<void> apply(std::string_view device_id, const lock_token& token, time_point now,
                     transition_cause cause) {
    now = advance(now);
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    auto& dev = it->second;
    auto* q = dev.queue.find_locked(token);
    if (!q)
      return make_error(errc::device_message_lock_lost,
                        "lock token " + token.to_string() +
                            " is unknown, expired or already settled for device '" +
                            std::string(device_id) + "' (SPEC 1.5)");
    const auto from = q->state();
    if (auto r = q->machine.process(Event{{&q->fields, &rules_, now}}); !r)
      return r.error();
    const auto to = q->state();
    notify(it->first, *q, cause, from, to, now);
    if (is_terminal(to)) {
      outcome(*it, *q, now);
      dev.queue.erase(q);
    }
    reschedule(*it);
    flush_feedback(now);
    return {};
  }

  /// A message reached a terminal state: count it and create its feedback record.
  void outcome(device_node& node, const queued_message& m, time_point at) {
    switch (m.state()) {
      case message_state::completed:
        ++stats_.completed;
        add_feedback(node.first, node.second, m, feedback_status::success, at);
        break;
      case message_state::dead_lettered: {
        feedback_status s = feedback_status::rejected;
        if (m.fields.reason == dead_letter_reason::expired) {
          ++stats_.expired;
          s = feedback_status::expired;
        } else if (m.fields.reason == dead_letter_reason::delivery_count_exceeded) {
          ++stats_.delivery_count_exceeded;
          s = feedback_status::delivery_count_exceeded;
        } else {
          ++stats_.rejected;
        }
        add_feedback(node.first, node.second, m, s, at);
        break;
      }
      default:
        break;
    }
  }

  /// SPEC 4.1: positive -> Success only; negative -> dead-letter outcomes (and Purged); full ->
  /// all.
  void add_feedback(const std::string& device_id, const device_entry& dev, const queued_message& m,
                    feedback_status s, time_point at) {
    const bool positive_outcome = s == feedback_status::success;
    const bool wanted = m.ack == ack_mode::full ||
                        (positive_outcome && m.ack == ack_mode::positive) ||
                        (!positive_outcome && m.ack == ack_mode::negative);
    if (!wanted)
      return;
    auto& p = pending_.emplace_back();
    p.id = next_record_id_++;
    feedback_record& r = p.record;
    if (auto id = m.content.message_id())
      r.original_message_id = std::string(*id);
    r.enqueued_time_utc = at;
    r.status_code = s;
    r.description = std::string(to_string(s));
    r.device_id = device_id;
    r.device_generation_id = dev.generation_id;
    if (has_store()) [[unlikely]]
      journal_.push_back(journal::feedback_pending{p.id, r});
    ++stats_.feedback_records;
  }

  time_point flush_due() const noexcept {
    return last_flush_ ? *last_flush_ + config_.feedback_batch_interval : time_point::min();
  }

  /// SPEC 4.3: a batch goes out when it has 64 records, or 15 s after the last one.
  void flush_feedback(time_point now) {
    while (pending_.size() >= config_.feedback_batch_size)
      emit_batch(config_.feedback_batch_size, now);
    if (!pending_.empty() && now >= flush_due())
      emit_batch(pending_.size(), now);
  }

  void emit_batch(std::size_t n, time_point now) {
    feedback_batch b;
    b.user_id = config_.name;
    b.records.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
      b.records.push_back(std::move(pending_[i].record));
    const auto last_id = pending_[n - 1].id;
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
    const auto id = feedback_.push(std::move(b), now);
    if (has_store()) [[unlikely]]
      journal_.push_back(
          journal::feedback_batched{id, last_id, now, now + feedback_.rules().ttl, config_.name});
    ++stats_.feedback_batches;
    last_flush_ = now;
  }

  void notify(std::string_view device_id, const queued_message& m, transition_cause cause,
              message_state from, message_state to, time_point at) {
    if (has_store()) [[unlikely]]
      journal_transition(m, cause);
    if (!observer_)
      return;
    transition t;
    t.device_id = device_id;
    t.sequence_number = m.sequence_number;
    t.message_id = m.content.message_id();
    t.cause = cause;
    t.from = from;
    t.to = to;
    t.reason = m.fields.reason;
    t.delivery_count = m.fields.delivery_count;
    t.at = at;
    observer_(t);
  }

  void unschedule(device_node& node) {
    if (node.second.scheduled != time_point::max())
      timers_.erase({node.second.scheduled, &node});
    node.second.scheduled = time_point::max();
  }

  void reschedule(device_node& node) {
    const auto next = node.second.queue.next_deadline();
    if (next == node.second.scheduled)
      return;
    unschedule(node);
    if (next != time_point::max()) {
      timers_.emplace(next, &node);
      node.second.scheduled = next;
    }
  }

  result<lock_token> new_lock_token(const queue_type& q) {
    for (int i = 0; i < 16; ++i) {
      auto t = tokens_();
      if (!t.is_nil() && !q.token_in_use(t))
        return t;
    }
    return make_error(errc::server_error, "token source keeps repeating lock tokens");
  }

  std::string new_generation_id() {
    // 18 decimal digits, like IoT Hub's generation ids
    const auto t = tokens_();
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
      v = v << 8 | t.bytes[static_cast<std::size_t>(i)];
    std::string s = std::to_string(100000000000000000ull + v % 900000000000000000ull);
    return s;
  }

  // --- journal and store -----------------------------------------------------------

  /// What the caller gets once the store failed.
  error refused() const {
    return make_error(errc::server_error,
                      "the hub's store failed (" + store_failed_->message +
                          "); the hub refuses operations until it is reopened from its store");
  }

  /// A message changed state: journal its new state, or its removal once terminal.
  /// Acceptance and device removal have records of their own.
  void journal_transition(const queued_message& m, transition_cause cause) {
    if (cause == transition_cause::accepted || cause == transition_cause::device_removed)
      return;
    if (is_terminal(m.state()))
      journal_.push_back(journal::message_removed{m.sequence_number});
    else
      journal_.push_back(journal::message_changed{m.sequence_number, m.state(),
                                                  m.fields.delivery_count, m.fields.token,
                                                  m.fields.locked_until});
  }

  /// The feedback queue's change callback: journals batch changes when a store is attached.
  auto batch_journal() {
    return [this](const feedback_batch_update& u) {
      if (!has_store())
        return;
      if (is_terminal(u.state))
        journal_.push_back(journal::batch_removed{u.id});
      else
        journal_.push_back(journal::batch_changed{u.id, u.state, u.fields->delivery_count,
                                                  u.fields->token, u.fields->locked_until});
    };
  }

  journal::counters counters_record() const {
    return journal::counters{last_sequence_,      last_now_, last_flush_,        next_record_id_,
                             feedback_.next_id(), stats_,    feedback_.dropped()};
  }

  /// Runs one operation and commits its journal: every public operation goes
  /// through here. Refused once the store failed; a failed commit turns the
  /// result into the commit's error. Without a store this is one branch (the
  /// result is returned in place).
  template <class Op>
  DEVICEBOUND_ALWAYS_INLINE auto committed(Op&& op) -> decltype(op()) {
    if (!has_store()) [[likely]]
      return op();  // no store: no journal, nothing to commit
    if (store_failed_)
      return refused();
    auto r = op();
    if (auto c = commit(); !c)
      return c.error();
    return r;
  }

  /// Commits the journal of one operation (plus the counters) as one change set.
  /// An operation that changed nothing and did not move the clock commits nothing.
  result<void> commit() {
    if (journal_.empty() && last_now_ == committed_now_)
      return {};
    journal_.push_back(counters_record());
    auto r = link_.apply(link_.self, journal_);
    journal_.clear();
    if (!r) {
      store_failed_ = r.error();
      return make_error(errc::server_error,
                        "the change was not committed to the hub's store (" + r.error().message +
                            "); the hub refuses operations until it is reopened from its store");
    }
    committed_now_ = last_now_;
    return {};
  }

  template <hub_store Store>
  static result<basic_hub> open_with(std::optional<hub_config> config, Store& store,
                                     token_source tokens) {
    auto snap = store.load();
    if (!snap)
      return snap.error();
    const bool store_config = !config || !snap->config || *config != *snap->config;
    if (!config)
      config = snap->config.value_or(hub_config{});
    auto h = restore(std::move(*config), std::move(*snap), std::move(tokens));
    if (!h)
      return h.error();
    h->link_.self = &store;
    h->link_.apply = [](void* self, const journal::change_set& c) {
      return static_cast<Store*>(self)->apply(c);
    };
    if (store_config) {
      h->journal_.push_back(journal::config_changed{h->config_});
      if (auto c = h->commit(); !c)
        return c.error();
    }
    return h;
  }

  /// Rebuilds this (empty) hub from a snapshot, checking it: a damaged or
  /// hand-edited store gives 400005 naming the problem, never a broken hub.
  result<void> restore_from(journal::snapshot snap) {
    auto bad = [](std::string what) {
      return make_error(errc::malformed, "store holds an inconsistent state: " + what);
    };
    if (snap.counters) {
      const auto& c = *snap.counters;
      last_sequence_ = c.last_sequence;
      last_now_ = c.last_now;
      last_flush_ = c.last_flush;
      next_record_id_ = c.next_record_id;
      stats_ = c.stats;
      feedback_.restore_counters(c.next_batch_id, c.feedback_batches_dropped);
    } else if (!snap.devices.empty() || !snap.messages.empty() || !snap.pending.empty() ||
               !snap.batches.empty()) {
      return bad("devices, messages or feedback but no hub counters");
    }
    committed_now_ = last_now_;
    for (auto& d : snap.devices) {
      if (auto r = validate_device_id(d.device_id); !r)
        return bad(r.error().message);
      if (d.generation_id.empty())
        return bad("device '" + d.device_id + "' has no generation id");
      if (!devices_
               .emplace(d.device_id,
                        device_entry{std::move(d.generation_id), {}, time_point::max()})
               .second)
        return bad("device '" + d.device_id + "' is stored twice");
    }
    std::sort(snap.messages.begin(), snap.messages.end(),
              [](const auto& a, const auto& b) { return a.sequence_number < b.sequence_number; });
    std::uint64_t prev = 0;
    for (auto& m : snap.messages) {
      const auto seq = std::to_string(m.sequence_number);
      if (m.sequence_number == 0 || m.sequence_number == prev)
        return bad("message sequence number " + seq + " is zero or repeated");
      if (m.sequence_number > last_sequence_)
        return bad("message " + seq + " is above the sequence high-water mark " +
                   std::to_string(last_sequence_));
      prev = m.sequence_number;
      auto it = devices_.find(m.device_id);
      if (it == devices_.end())
        return bad("message " + seq + " belongs to unknown device '" + m.device_id + "'");
      if (m.state != message_state::enqueued && m.state != message_state::invisible)
        return bad("message " + seq + " is in state " + std::string(to_string(m.state)) +
                   ", not Enqueued or Invisible");
      if (m.ack > ack_mode::full)
        return bad("message " + seq + " has an unknown ack mode");
      auto content = detail::packed_message::from_bytes(m.content);
      if (!content)
        return bad("message " + seq + " has damaged content");
      auto& queue = it->second.queue;
      if ((m.state == message_state::invisible) ==
          (m.token.is_nil() || queue.token_in_use(m.token)))
        return bad("message " + seq + " has a lock token that does not fit its state " +
                   std::string(to_string(m.state)));
      queued_message q;
      q.content = std::move(*content);
      q.machine = detail::lifecycle_in<Lifecycle>(m.state);
      q.sequence_number = m.sequence_number;
      q.enqueued_time = m.enqueued_time;
      q.ack = m.ack;
      q.fields.expires_at = m.expires_at;
      q.fields.delivery_count = m.delivery_count;
      q.fields.token = m.token;
      q.fields.locked_until = m.locked_until;
      // a lowered max_queue_depth leaves a longer stored queue as it is: it refuses sends until it
      // drains
      queue.push(std::move(q), std::max<std::size_t>(config_.max_queue_depth, queue.depth() + 1));
    }
    std::sort(snap.pending.begin(), snap.pending.end(),
              [](const auto& a, const auto& b) { return a.record_id < b.record_id; });
    for (auto& p : snap.pending) {
      if (p.record_id >= next_record_id_ ||
          (!pending_.empty() && pending_.back().id == p.record_id))
        return bad("feedback record " + std::to_string(p.record_id) +
                   " is repeated or above the id counter");
      if (p.record.status_code > feedback_status::purged)
        return bad("feedback record " + std::to_string(p.record_id) + " has an unknown status");
      pending_.push_back({std::move(p.record), p.record_id});
    }
    std::sort(snap.batches.begin(), snap.batches.end(),
              [](const auto& a, const auto& b) { return a.batch_id < b.batch_id; });
    std::uint64_t prev_batch = 0;
    for (auto& b : snap.batches) {
      const auto id = std::to_string(b.batch_id);
      if (b.batch_id == 0 || b.batch_id == prev_batch || b.batch_id >= feedback_.next_id())
        return bad("feedback batch " + id + " is zero, repeated or above the id counter");
      prev_batch = b.batch_id;
      if (b.state != message_state::enqueued && b.state != message_state::invisible)
        return bad("feedback batch " + id + " is in state " + std::string(to_string(b.state)));
      if ((b.state == message_state::invisible) ==
          (b.token.is_nil() || feedback_.token_in_use(b.token)))
        return bad("feedback batch " + id + " has a lock token that does not fit its state " +
                   std::string(to_string(b.state)));
      for (const auto& r : b.records)
        if (r.status_code > feedback_status::purged)
          return bad("feedback batch " + id + " has a record with an unknown status");
      lifecycle_fields f;
      f.expires_at = b.expires_at;
      f.delivery_count = b.delivery_count;
      f.token = b.token;
      f.locked_until = b.locked_until;
      feedback_batch fb;
      fb.records = std::move(b.records);
      fb.enqueued_time_utc = b.enqueued_time;
      fb.user_id = std::move(b.user_id);
      feedback_.restore(b.batch_id, std::move(fb), b.state, f);
    }
    for (auto& node : devices_)
      reschedule(node);
    return {};
  }

  hub_config config_;
  token_source tokens_;
  lifecycle_rules rules_;
  device_map devices_;
  std::set<timer, timer_order> timers_;
  std::vector<pending_record> pending_;
  std::optional<time_point> last_flush_;
  basic_feedback_queue<Lifecycle> feedback_;
  observer observer_;
  hub_stats stats_;
  std::uint64_t last_sequence_ = 0;
  time_point last_now_{};
  std::uint64_t next_record_id_ = 1;
  // durability: the journal of the running operation, and where it is committed
  store_link link_;
  journal::change_set journal_;
  time_point committed_now_{};
  std::optional<error> store_failed_;
};

/// The hub engine with the Boost.MSM lifecycle.
using hub = basic_hub<lifecycle>;

}  // namespace devicebound
