/// \file hub.hpp
/// The hub engine: device registry, per-device C2D queues, timers and delivery
/// feedback (SPEC 1-4, 7.1-7.5). Sans-I/O: every operation takes `now`; the
/// engine never reads a clock, sleeps or starts a thread.
///
/// Thread model: a hub is single-threaded. Callers serialise access (the
/// in-process transport wraps it in a mutex).
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
#include "lifecycle.hpp"
#include "message.hpp"
#include "queue.hpp"
#include "token_source.hpp"
#include "validate.hpp"

namespace devicebound {

using namespace std::chrono_literals;

/// Longest TTL a C2D message may have (SPEC 2.2).
inline constexpr duration max_message_ttl = std::chrono::hours(48);

/// What to do with a per-message expiry later than enqueue time + 2 days (SPEC 2.2, UNCONFIRMED).
enum class expiry_cap_policy : std::uint8_t {
  clamp,   ///< accept; the message expires at enqueue time + 2 days (default)
  reject,  ///< refuse the send with 400004
};

/// Which acks get a `Purged` feedback record (SPEC 1.4, UNCONFIRMED).
enum class purge_feedback : std::uint8_t {
  negative_acks,  ///< ack `negative` or `full`: purge is a non-delivery (default)
  none,           ///< no feedback for purged messages
};

/// Hub configuration with IoT Hub's defaults (SPEC 2.1). `validate()` checks ranges.
struct hub_config {
  std::string name = "devicebound";  ///< the hub's name: `userId` of feedback messages (SPEC 4.4)
  duration default_ttl = 1h;         ///< defaultTtlAsIso8601: PT1M..P2D
  expiry_cap_policy expiry_over_cap = expiry_cap_policy::clamp;
  std::uint32_t max_delivery_count = 10;  ///< maxDeliveryCount: 1..100
  delivery_count_rule delivery_count = delivery_count_rule::abandon_only;  ///< SPEC 1.4
  /// Lock (visibility) timeout. IoT Hub fixes it at 1 minute (SPEC 1.5); it is
  /// settable (1 s..5 min) so tests and demos need not wait a minute.
  duration lock_duration = 60s;
  std::uint32_t max_queue_depth = 50;  ///< pending messages per device, counting Invisible (SPEC 2.3); 1..10000
  std::size_t max_message_size = default_max_message_size;  ///< SPEC 2.6; 1..1 MiB
  duration feedback_ttl = 1h;                    ///< feedback.ttlAsIso8601: PT1M..P2D
  std::uint32_t feedback_max_delivery_count = 10;  ///< feedback.maxDeliveryCount: 1..100
  duration feedback_lock_duration = 60s;         ///< feedback.lockDurationAsIso8601: 5..300 s
  std::uint32_t feedback_batch_size = 64;        ///< records per batch (SPEC 4.3); 1..64
  duration feedback_batch_interval = 15s;        ///< since the last batch (SPEC 4.3); 0..15 s
  purge_feedback purge_feedback_for = purge_feedback::negative_acks;

  /// Checks every value against its range; the error names the field.
  result<void> validate() const {
    auto bad = [](std::string what) { return make_error(errc::argument_invalid, std::move(what)); };
    if (default_ttl < 1min || default_ttl > max_message_ttl)
      return bad("default_ttl must be between 1 minute and 2 days (SPEC 2.1)");
    if (max_delivery_count < 1 || max_delivery_count > 100)
      return bad("max_delivery_count must be between 1 and 100 (SPEC 2.1)");
    if (lock_duration < 1s || lock_duration > 5min)
      return bad("lock_duration must be between 1 second and 5 minutes (IoT Hub uses 1 minute)");
    if (max_queue_depth < 1 || max_queue_depth > 10000)
      return bad("max_queue_depth must be between 1 and 10000 (IoT Hub uses 50)");
    if (max_message_size < 1 || max_message_size > 1024 * 1024)
      return bad("max_message_size must be between 1 byte and 1 MiB (IoT Hub uses 64 KB)");
    if (feedback_ttl < 1min || feedback_ttl > max_message_ttl)
      return bad("feedback_ttl must be between 1 minute and 2 days (SPEC 2.1)");
    if (feedback_max_delivery_count < 1 || feedback_max_delivery_count > 100)
      return bad("feedback_max_delivery_count must be between 1 and 100 (SPEC 2.1)");
    if (feedback_lock_duration < 5s || feedback_lock_duration > 300s)
      return bad("feedback_lock_duration must be between 5 and 300 seconds (SPEC 2.1)");
    if (feedback_batch_size < 1 || feedback_batch_size > 64)
      return bad("feedback_batch_size must be between 1 and 64 (SPEC 4.3)");
    if (feedback_batch_interval < 0s || feedback_batch_interval > 15s)
      return bad("feedback_batch_interval must be between 0 and 15 seconds (SPEC 4.3)");
    return {};
  }
};

/// What made a message change state; reported to the transition observer.
enum class transition_cause : std::uint8_t {
  accepted, lock, complete, reject, abandon, lock_expired, ttl_expired, purge, device_removed,
};

constexpr std::string_view to_string(transition_cause c) noexcept {
  switch (c) {
    case transition_cause::accepted: return "accepted";
    case transition_cause::lock: return "lock";
    case transition_cause::complete: return "complete";
    case transition_cause::reject: return "reject";
    case transition_cause::abandon: return "abandon";
    case transition_cause::lock_expired: return "lock_expired";
    case transition_cause::ttl_expired: return "ttl_expired";
    case transition_cause::purge: return "purge";
    case transition_cause::device_removed: return "device_removed";
  }
  return "accepted";
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

/// Receipt of an accepted send.
struct enqueue_receipt {
  std::uint64_t sequence_number = 0;
  time_point expiry_time_utc{};  ///< when the message expires (after any clamping)
};

/// Running totals; every accepted message is counted in exactly one outcome
/// once it leaves its queue.
struct hub_stats {
  std::uint64_t accepted = 0;
  std::uint64_t completed = 0;
  std::uint64_t rejected = 0;
  std::uint64_t expired = 0;
  std::uint64_t delivery_count_exceeded = 0;
  std::uint64_t purged = 0;
  std::uint64_t removed_with_device = 0;  ///< dropped because their device was removed
  std::uint64_t feedback_records = 0;     ///< records created
  std::uint64_t feedback_records_dropped = 0;  ///< pending records dropped with their device
  std::uint64_t feedback_batches = 0;     ///< batches created
};

/// Settlement a device sends for a locked message.
enum class disposition : std::uint8_t { complete, reject, abandon };

constexpr std::string_view to_string(disposition d) noexcept {
  switch (d) {
    case disposition::complete: return "complete";
    case disposition::reject: return "reject";
    case disposition::abandon: return "abandon";
  }
  return "complete";
}

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
    if (auto r = config.validate(); !r) return r.error();
    return basic_hub(std::move(config), std::move(tokens));
  }

  const hub_config& config() const noexcept { return config_; }
  const hub_stats& stats() const noexcept { return stats_; }

  /// Calls `f` for every message state change (acceptance included). Costs a
  /// call per change while set; pass `nullptr` to stop.
  void set_observer(observer f) { observer_ = std::move(f); }

  // --- device registry ----------------------------------------------------------

  /// Registers a device; returns its new generation id.
  result<std::string> add_device(std::string_view device_id) {
    if (auto r = validate_device_id(device_id); !r) return r.error();
    if (devices_.find(device_id) != devices_.end())
      return make_error(errc::device_already_exists, "device '" + std::string(device_id) + "' already exists");
    auto gen = new_generation_id();
    devices_.emplace(std::string(device_id), device_entry{gen, {}, time_point::max()});
    return gen;
  }

  /// Removes a device with its queue and its pending (not yet batched) feedback
  /// (SPEC 1.4, 4.9). With `generation_id`, removes only that generation (412001 otherwise).
  result<void> remove_device(std::string_view device_id,
                             std::optional<std::string_view> generation_id = std::nullopt,
                             std::optional<time_point> now = std::nullopt) {
    // like every operation given a `now`, first apply the timers due by then:
    // a message that expired before the removal is Expired, not removed
    const time_point at = now ? advance(*now) : last_now_;
    auto it = devices_.find(device_id);
    if (it == devices_.end()) return not_found(device_id);
    if (generation_id && *generation_id != it->second.generation_id)
      return make_error(errc::precondition_failed,
                        "device '" + std::string(device_id) + "' has generation id '" +
                            it->second.generation_id + "', not '" + std::string(*generation_id) + "'");
    unschedule(*it);
    it->second.queue.clear([&](queued_message& m) {
      const auto from = m.state();
      ++stats_.removed_with_device;
      notify(it->first, m, transition_cause::device_removed, from, message_state::purged, at);
    });
    const auto before = pending_.size();
    std::erase_if(pending_, [&](const feedback_record& r) { return r.device_id == device_id; });
    stats_.feedback_records_dropped += before - pending_.size();
    devices_.erase(it);
    return {};
  }

  bool has_device(std::string_view device_id) const { return devices_.find(device_id) != devices_.end(); }
  std::size_t device_count() const noexcept { return devices_.size(); }

  result<std::string> generation_id(std::string_view device_id) const {
    auto it = devices_.find(device_id);
    if (it == devices_.end()) return not_found(device_id);
    return it->second.generation_id;
  }

  // --- C2D operations -------------------------------------------------------------

  /// Accepts a message for `device_id` (SPEC 7.2). Errors, in the order checked:
  /// 400004 bad id/properties/expiry, 413001 too large, 404001 unknown device,
  /// 403004 queue full. An error changes nothing.
  result<enqueue_receipt> enqueue(std::string_view device_id, message msg, time_point now) {
    now = advance(now);
    if (auto r = validate_device_id(device_id); !r) return r.error();
    if (msg.to && !is_device_bound_address(*msg.to, device_id))
      return make_error(errc::argument_invalid, "'to' is '" + *msg.to + "' but the message is sent to device '" +
                                                    std::string(device_id) + "'");
    msg.to = device_bound_address(device_id);
    if (auto r = validate_message(msg, config_.max_message_size); !r) return r.error();
    time_point expires = msg.expiry_time_utc.value_or(now + config_.default_ttl);
    if (expires > now + max_message_ttl) {
      if (config_.expiry_over_cap == expiry_cap_policy::reject)
        return make_error(errc::argument_invalid, "expiry time is more than 2 days after enqueue time (SPEC 2.2)");
      expires = now + max_message_ttl;
    }
    expires = std::max(expires, now);  // already past: dead-letters as Expired at once
    auto it = devices_.find(device_id);
    if (it == devices_.end()) return not_found(device_id);
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
    if (observer_) {
      const auto& back = dev.queue.entries().back();
      notify(it->first, back, transition_cause::accepted, message_state::enqueued, message_state::enqueued, now);
    }
    if (expires <= now) {
      run_device_timers(*it, now);
      flush_feedback(now);
    }
    reschedule(*it);
    return enqueue_receipt{seq, expires};
  }

  /// Locks the oldest Enqueued message of a device and returns it (SPEC 1.4),
  /// or nullopt when none is available.
  result<std::optional<message>> receive(std::string_view device_id, time_point now) {
    now = advance(now);
    auto it = devices_.find(device_id);
    if (it == devices_.end()) return not_found(device_id);
    auto& dev = it->second;
    auto* q = dev.queue.oldest_enqueued();
    if (!q) return std::optional<message>{};
    auto token = new_lock_token(dev.queue);
    if (!token) return token.error();
    const auto from = q->state();
    auto r = q->machine.process(lifecycle_event::lock{{&q->fields, &rules_, now}, *token, config_.lock_duration});
    if (!r) return r.error();
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

  /// Settles a locked message. Unknown, stale or expired token: 412002, nothing changes.
  result<void> settle(std::string_view device_id, const lock_token& token, disposition d, time_point now) {
    switch (d) {
      case disposition::complete: return apply<lifecycle_event::complete>(device_id, token, now, transition_cause::complete);
      case disposition::reject: return apply<lifecycle_event::reject>(device_id, token, now, transition_cause::reject);
      case disposition::abandon: return apply<lifecycle_event::abandon>(device_id, token, now, transition_cause::abandon);
    }
    return make_error(errc::argument_invalid, "unknown disposition");
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
    now = advance(now);
    auto it = devices_.find(device_id);
    if (it == devices_.end()) return not_found(device_id);
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

  /// Pending messages of a device, Enqueued plus Invisible (cloudToDeviceMessageCount, SPEC 2.10).
  result<std::size_t> queue_depth(std::string_view device_id, time_point now) {
    now = advance(now);
    auto it = devices_.find(device_id);
    if (it == devices_.end()) return not_found(device_id);
    return it->second.queue.depth();
  }

  /// Applies every lock expiry and TTL expiry due at or before `now`, and sends
  /// due feedback batches (SPEC 4.3). Call it at `next_deadline()` or regularly.
  void tick(time_point now) {
    now = advance(now);
    feedback_.apply_timers(now);
  }

  /// The next instant at which `tick` has work, or nullopt if none is scheduled.
  std::optional<time_point> next_deadline() const {
    time_point t = timers_.empty() ? time_point::max() : timers_.begin()->first;
    if (!pending_.empty()) t = std::min(t, std::max(flush_due(), last_now_));
    t = std::min(t, feedback_.next_deadline());
    if (t == time_point::max()) return std::nullopt;
    return t;
  }

  // --- feedback (service side, SPEC 4.2, 4.8) -------------------------------------

  /// Locks the oldest feedback batch for the service; nullopt if none.
  result<std::optional<feedback_batch>> receive_feedback(time_point now) {
    now = advance(now);
    lock_token t{};
    for (int i = 0; i < 16; ++i) {
      t = tokens_();
      if (!t.is_nil() && !feedback_.token_in_use(t)) break;
      if (i == 15) return make_error(errc::server_error, "token source keeps repeating lock tokens");
    }
    return feedback_.receive(now, t);
  }
  result<void> complete_feedback(const lock_token& token, time_point now) {
    return feedback_.complete(token, advance(now));
  }
  result<void> abandon_feedback(const lock_token& token, time_point now) {
    return feedback_.abandon(token, advance(now));
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
  struct device_entry {
    std::string generation_id;
    queue_type queue;
    time_point scheduled = time_point::max();  ///< key in timers_, or max
  };
  struct id_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  using device_map = std::unordered_map<std::string, device_entry, id_hash, std::equal_to<>>;
  using device_node = typename device_map::value_type;
  using timer = std::pair<time_point, device_node*>;
  /// Due time, then device id: devices due at the same instant run their
  /// timers (and create their feedback records) in id order, not heap-address order.
  struct timer_order {
    bool operator()(const timer& a, const timer& b) const noexcept {
      if (a.first != b.first) return a.first < b.first;
      return a.second->first < b.second->first;
    }
  };

  static hub_config checked(hub_config c) {
    c.validate().value();
    return c;
  }

  static error not_found(std::string_view device_id) {
    return make_error(errc::device_not_found, "device '" + std::string(device_id) + "' is not registered");
  }

  static bool is_device_bound_address(std::string_view to, std::string_view device_id) {
    // SPEC 7.7: accept both `devicebound` and `deviceBound`
    const std::string prefix = "/devices/" + std::string(device_id) + "/messages/device";
    if (!to.starts_with(prefix)) return false;
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
    return now;
  }

  void run_device_timers(device_node& node, time_point now) {
    node.second.queue.apply_timers(now, rules_, [&](queued_message& m, message_state from, time_point at) {
      const auto to = m.state();
      const auto cause = from == message_state::invisible && to != message_state::dead_lettered
                             ? transition_cause::lock_expired
                         : (to == message_state::dead_lettered &&
                            m.fields.reason == dead_letter_reason::delivery_count_exceeded)
                             ? transition_cause::lock_expired
                             : transition_cause::ttl_expired;
      notify(node.first, m, cause, from, to, at);
      if (is_terminal(to)) outcome(node, m, at);
    });
  }

  template <class Event>
  result<void> apply(std::string_view device_id, const lock_token& token, time_point now, transition_cause cause) {
    now = advance(now);
    auto it = devices_.find(device_id);
    if (it == devices_.end()) return not_found(device_id);
    auto& dev = it->second;
    auto* q = dev.queue.find_locked(token);
    if (!q)
      return make_error(errc::device_message_lock_lost, "lock token " + token.to_string() +
                                                            " is unknown, expired or already settled for device '" +
                                                            std::string(device_id) + "' (SPEC 1.5)");
    const auto from = q->state();
    if (auto r = q->machine.process(Event{{&q->fields, &rules_, now}}); !r) return r.error();
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
      default: break;
    }
  }

  /// SPEC 4.1: positive -> Success only; negative -> dead-letter outcomes (and Purged); full -> all.
  void add_feedback(const std::string& device_id, const device_entry& dev, const queued_message& m,
                    feedback_status s, time_point at) {
    const bool positive_outcome = s == feedback_status::success;
    const bool wanted = m.ack == ack_mode::full || (positive_outcome && m.ack == ack_mode::positive) ||
                        (!positive_outcome && m.ack == ack_mode::negative);
    if (!wanted) return;
    feedback_record r;
    if (auto id = m.content.message_id()) r.original_message_id = std::string(*id);
    r.enqueued_time_utc = at;
    r.status_code = s;
    r.description = std::string(to_string(s));
    r.device_id = device_id;
    r.device_generation_id = dev.generation_id;
    pending_.push_back(std::move(r));
    ++stats_.feedback_records;
  }

  time_point flush_due() const noexcept {
    return last_flush_ ? *last_flush_ + config_.feedback_batch_interval : time_point::min();
  }

  /// SPEC 4.3: a batch goes out when it has 64 records, or 15 s after the last one.
  void flush_feedback(time_point now) {
    while (pending_.size() >= config_.feedback_batch_size) emit_batch(config_.feedback_batch_size, now);
    if (!pending_.empty() && now >= flush_due()) emit_batch(pending_.size(), now);
  }

  void emit_batch(std::size_t n, time_point now) {
    feedback_batch b;
    b.user_id = config_.name;
    b.records.assign(std::make_move_iterator(pending_.begin()),
                     std::make_move_iterator(pending_.begin() + static_cast<std::ptrdiff_t>(n)));
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
    feedback_.push(std::move(b), now);
    ++stats_.feedback_batches;
    last_flush_ = now;
  }

  void notify(std::string_view device_id, const queued_message& m, transition_cause cause, message_state from,
              message_state to, time_point at) {
    if (!observer_) return;
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
    if (node.second.scheduled != time_point::max()) timers_.erase({node.second.scheduled, &node});
    node.second.scheduled = time_point::max();
  }

  void reschedule(device_node& node) {
    const auto next = node.second.queue.next_deadline();
    if (next == node.second.scheduled) return;
    unschedule(node);
    if (next != time_point::max()) {
      timers_.emplace(next, &node);
      node.second.scheduled = next;
    }
  }

  result<lock_token> new_lock_token(const queue_type& q) {
    for (int i = 0; i < 16; ++i) {
      auto t = tokens_();
      if (!t.is_nil() && !q.token_in_use(t)) return t;
    }
    return make_error(errc::server_error, "token source keeps repeating lock tokens");
  }

  std::string new_generation_id() {
    // 18 decimal digits, like IoT Hub's generation ids
    const auto t = tokens_();
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | t.bytes[static_cast<std::size_t>(i)];
    std::string s = std::to_string(100000000000000000ull + v % 900000000000000000ull);
    return s;
  }

  hub_config config_;
  token_source tokens_;
  lifecycle_rules rules_;
  device_map devices_;
  std::set<timer, timer_order> timers_;
  std::vector<feedback_record> pending_;
  std::optional<time_point> last_flush_;
  basic_feedback_queue<Lifecycle> feedback_;
  observer observer_;
  hub_stats stats_;
  std::uint64_t last_sequence_ = 0;
  time_point last_now_{};
};

/// The hub engine with the Boost.MSM lifecycle.
using hub = basic_hub<lifecycle>;

}  // namespace devicebound
