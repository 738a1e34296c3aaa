/// \file hub_model.hpp
/// A reference model of the hub engine, and a harness that runs one operation
/// on both the model and a real `hub` and compares them. Shared by the
/// rapidcheck state test (tests/test_hub_model.cpp) and the fuzz target
/// (fuzz/hub_ops_fuzz.cpp).
///
/// The model is written from SPEC 1-4 and the engine's documented semantics,
/// with plain structs: a sorted map of devices, each a vector of messages in
/// sequence order, a vector of pending feedback records and a vector of
/// feedback batches. It has no timer index and no state machine. Everything it
/// knows is derived from the operations alone, so a test generator can use it
/// to pick operations (lock handles, deadlines) before the hub runs them.
///
/// Orders the model fixes (the engine must match them exactly, so feedback
/// batches can be compared record by record):
/// - bringing the hub up to `now` runs the timers of each device whose
///   earliest timer is due, in order of that earliest instant, ties broken by
///   device id; within a device, messages in sequence order, each message's
///   due timers in time order (a lock expiry at or before the TTL first);
/// - every transition and feedback record is stamped with its own due instant;
/// - feedback is batched after the timers, at `now`;
/// - enqueue with an expiry already past dead-letters the message at once and
///   batches its feedback like any other operation.
///
/// Durability (SPEC 1.2): a harness given a store (`durability`) also runs
/// `crash`, which drops the hub and reopens it from its store. A crash changes
/// nothing in the model: everything, locks included, must come back as it was.
/// After every operation such a harness also checks that the store holds
/// exactly the hub's state (`hub::snapshot()`).
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <devicebound/hub.hpp>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace devicebound::model {

/// Device ids the operations use. The last one is not a valid id (`/`).
inline constexpr std::array<std::string_view, 5> device_pool = {"d0", "d1", "d2", "d3", "bad/id"};

/// The instant every model run starts at (2024-01-01T00:00:00Z).
inline constexpr time_point start_time{duration{1704067200000}};

enum class op_kind : std::uint8_t {
  add_device,
  remove_device,
  enqueue,
  receive,
  settle,
  purge,
  queue_depth,
  tick,
  tick_to_deadline,  ///< tick at the hub's next deadline (+ delta_ms, -1..+1)
  receive_feedback,
  complete_feedback,
  abandon_feedback,
  crash,  ///< drop the hub and reopen it from its store (a harness with `durability` only)
};

/// One operation, with every argument fixed, so the model alone decides its outcome.
struct op {
  op_kind kind = op_kind::tick;
  std::uint8_t device = 0;    ///< index into device_pool
  std::int64_t delta_ms = 0;  ///< now = latest now + delta_ms; negative: an earlier (clamped) time

  // remove_device
  bool with_now = true;         ///< pass `now` (else the hub uses its latest now)
  std::uint8_t generation = 0;  ///< 0: none, 1: the current generation id, 2: a wrong one

  // enqueue
  ack_mode ack = ack_mode::none;
  std::uint8_t message_id = 0;  ///< 0: none, 1: "m<id_number>", 2: "dup" (shared), 3: invalid
  std::uint32_t id_number = 0;
  bool explicit_expiry = false;
  std::int64_t expiry_ms = 0;  ///< expiry = now + expiry_ms (may be past, or beyond 2 days)
  std::uint8_t to = 0;  ///< 0: unset, 1: canonical, 2: "deviceBound" spelling, 3: another device's
  std::uint8_t body_size = 0;
  std::uint8_t property = 0;  ///< 0: none, 1: a valid one, 2: a reserved name (400004)

  // settle / complete_feedback / abandon_feedback
  disposition how = disposition::complete;
  bool via_settle = false;    ///< call settle(d) instead of complete/reject/abandon
  bool random_token = false;  ///< a made-up token (0: the nil token) instead of a handle
  std::uint32_t handle = 0;   ///< index of a lock (or feedback lock) handed out earlier
  std::uint64_t token_bits = 0;
};

inline std::string_view to_string(op_kind k) {
  switch (k) {
    case op_kind::add_device:
      return "add_device";
    case op_kind::remove_device:
      return "remove_device";
    case op_kind::enqueue:
      return "enqueue";
    case op_kind::receive:
      return "receive";
    case op_kind::settle:
      return "settle";
    case op_kind::purge:
      return "purge";
    case op_kind::queue_depth:
      return "queue_depth";
    case op_kind::tick:
      return "tick";
    case op_kind::tick_to_deadline:
      return "tick_to_deadline";
    case op_kind::receive_feedback:
      return "receive_feedback";
    case op_kind::complete_feedback:
      return "complete_feedback";
    case op_kind::abandon_feedback:
      return "abandon_feedback";
    case op_kind::crash:
      return "crash";
  }
  return "?";
}

/// One line per operation, for rapidcheck's counterexample and fuzz crash reports.
inline std::string describe(const op& o) {
  std::ostringstream s;
  s << to_string(o.kind);
  const bool has_device = o.kind == op_kind::add_device || o.kind == op_kind::remove_device ||
                          o.kind == op_kind::enqueue || o.kind == op_kind::receive ||
                          o.kind == op_kind::settle || o.kind == op_kind::purge ||
                          o.kind == op_kind::queue_depth;
  if (has_device)
    s << ' ' << device_pool[o.device % device_pool.size()];
  if (o.kind == op_kind::crash)
    return "crash (drop the hub, reopen it from its store)";
  if (o.kind != op_kind::add_device)
    s << " dt=" << o.delta_ms << "ms";
  switch (o.kind) {
    case op_kind::remove_device:
      s << (o.with_now ? " with-now" : " no-now") << " gen="
        << (o.generation == 0   ? "none"
            : o.generation == 1 ? "current"
                                : "wrong");
      break;
    case op_kind::enqueue:
      s << " ack=" << to_string(o.ack) << " id="
        << (o.message_id == 0   ? std::string("none")
            : o.message_id == 1 ? "m" + std::to_string(o.id_number)
            : o.message_id == 2 ? std::string("dup")
                                : std::string("invalid"));
      if (o.explicit_expiry)
        s << " expiry=now" << (o.expiry_ms >= 0 ? "+" : "") << o.expiry_ms << "ms";
      if (o.to)
        s << " to=" << (o.to == 1 ? "canonical" : o.to == 2 ? "deviceBound" : "other-device");
      s << " body=" << int(o.body_size);
      if (o.property)
        s << " prop=" << (o.property == 1 ? "valid" : "reserved");
      break;
    case op_kind::settle:
      s << ' ' << to_string(o.how) << (o.via_settle ? " (settle)" : "");
      [[fallthrough]];
    case op_kind::complete_feedback:
    case op_kind::abandon_feedback:
      if (o.random_token)
        s << " token=random:" << o.token_bits;
      else
        s << " token=lock#" << o.handle;
      break;
    default:
      break;
  }
  return s.str();
}

/// The configuration fields the model depends on, on one line.
inline std::string describe(const hub_config& c) {
  std::ostringstream s;
  s << "config: max_queue_depth=" << c.max_queue_depth
    << " max_delivery_count=" << c.max_delivery_count << " rule=" << to_string(c.delivery_count)
    << " lock=" << c.lock_duration.count() << "ms ttl=" << c.default_ttl.count()
    << "ms over_cap=" << to_string(c.expiry_over_cap)
    << " purge_feedback=" << to_string(c.purge_feedback_for) << " max_size=" << c.max_message_size
    << " batch=" << c.feedback_batch_size << "/" << c.feedback_batch_interval.count()
    << "ms feedback_ttl=" << c.feedback_ttl.count()
    << "ms feedback_max_delivery=" << c.feedback_max_delivery_count
    << " feedback_lock=" << c.feedback_lock_duration.count() << "ms";
  return s.str();
}

// --- the reference model --------------------------------------------------------

struct ref_message {
  std::uint64_t seq = 0;
  std::optional<std::string> message_id;
  ack_mode ack = ack_mode::none;
  std::string body;
  properties props;
  time_point enqueued_at{};
  time_point expires_at{};
  bool invisible = false;
  time_point locked_until{};
  std::size_t lock = 0;  ///< lock handle while invisible
  std::uint32_t delivery_count = 0;
};

struct ref_device {
  std::uint32_t incarnation = 0;   ///< how many times this id was added before
  std::vector<ref_message> queue;  ///< Enqueued and Invisible, in sequence order
};

struct ref_record {
  std::string message_id;  ///< "" when the message had none
  time_point at{};
  feedback_status status = feedback_status::success;
  std::string device;
  std::uint32_t incarnation = 0;
  std::uint64_t seq = 0;  ///< the message it reports on (model bookkeeping, not on the wire)
};

struct ref_batch {
  std::vector<ref_record> records;
  time_point created{};
  time_point expires_at{};
  bool invisible = false;
  time_point locked_until{};
  std::size_t lock = 0;
  std::uint32_t delivery_count = 0;
};

/// A lock handed out by receive: identifies the message it locked.
struct ref_lock {
  std::string device;
  std::uint32_t incarnation = 0;
  std::uint64_t seq = 0;
};

/// What the model expects an operation to return.
struct outcome {
  errc error{};  ///< errc{} on success
  enqueue_receipt receipt{};
  std::optional<ref_message> received;  ///< receive: the message (lock = its handle)
  std::size_t count = 0;                ///< purge, queue_depth
  std::optional<ref_batch> batch;       ///< receive_feedback (lock = its handle)
};

/// Feedback status text, written out here rather than taken from the engine (SPEC 4.5).
inline std::string_view status_text(feedback_status s) {
  switch (s) {
    case feedback_status::success:
      return "Success";
    case feedback_status::expired:
      return "Expired";
    case feedback_status::delivery_count_exceeded:
      return "DeliveryCountExceeded";
    case feedback_status::rejected:
      return "Rejected";
    case feedback_status::purged:
      return "Purged";
  }
  return "?";
}

/// SPEC 4.1: positive asks for Success, negative for every other outcome, full for all.
inline bool ack_asks(ack_mode ack, feedback_status s) {
  switch (ack) {
    case ack_mode::none:
      return false;
    case ack_mode::positive:
      return s == feedback_status::success;
    case ack_mode::negative:
      return s != feedback_status::success;
    case ack_mode::full:
      return true;
  }
  return false;
}

inline std::string device_bound_address(std::string_view id) {
  return "/devices/" + std::string(id) + "/messages/devicebound";
}

/// The model. Copyable: rapidcheck copies it while generating a sequence.
class reference_hub {
 public:
  explicit reference_hub(hub_config cfg) : cfg_(std::move(cfg)) {}

  const hub_config& config() const noexcept { return cfg_; }
  time_point now() const noexcept { return now_; }
  const std::map<std::string, ref_device, std::less<>>& devices() const noexcept {
    return devices_;
  }
  const std::vector<ref_record>& pending() const noexcept { return pending_; }
  const std::vector<ref_batch>& batches() const noexcept { return batches_; }
  const std::vector<ref_lock>& locks() const noexcept { return locks_; }
  std::size_t feedback_lock_count() const noexcept { return feedback_locks_; }
  const hub_stats& stats() const noexcept { return stats_; }
  std::uint64_t feedback_batches_dropped() const noexcept { return batches_dropped_; }
  /// Every record ever created, with the message it reports on.
  const std::vector<ref_record>& all_records() const noexcept { return all_records_; }

  /// How often each id was added (the incarnation the next add gets).
  std::uint32_t incarnations(std::string_view id) const {
    auto it = added_.find(id);
    return it == added_.end() ? 0 : it->second;
  }

  /// The message a lock handle locked, if it still holds that lock.
  const ref_message* live_lock(std::size_t handle) const {
    if (handle >= locks_.size())
      return nullptr;
    const auto& l = locks_[handle];
    auto it = devices_.find(l.device);
    if (it == devices_.end() || it->second.incarnation != l.incarnation)
      return nullptr;
    for (const auto& m : it->second.queue)
      if (m.seq == l.seq)
        return m.invisible && m.lock == handle ? &m : nullptr;
    return nullptr;
  }

  /// Handles of locks that are live now.
  std::vector<std::size_t> live_locks() const {
    std::vector<std::size_t> out;
    for (const auto& [id, d] : devices_)
      for (const auto& m : d.queue)
        if (m.invisible)
          out.push_back(m.lock);
    return out;
  }
  std::vector<std::size_t> live_feedback_locks() const {
    std::vector<std::size_t> out;
    for (const auto& b : batches_)
      if (b.invisible)
        out.push_back(b.lock);
    return out;
  }

  /// The hub's next_deadline(): earliest message timer, feedback flush when
  /// records wait, feedback queue timers (applied lazily, like the engine).
  std::optional<time_point> next_deadline() const {
    time_point t = time_point::max();
    for (const auto& [id, d] : devices_)
      t = std::min(t, deadline(d));
    if (!pending_.empty())
      t = std::min(t, flush_due());
    for (const auto& b : batches_) {
      t = std::min(t, b.expires_at);
      if (b.invisible)
        t = std::min(t, b.locked_until);
    }
    if (t == time_point::max())
      return std::nullopt;
    return t;
  }

  /// The `now` an operation runs at.
  time_point time_for(const op& o) const {
    time_point base = now_;
    if (o.kind == op_kind::tick_to_deadline) {
      if (auto d = next_deadline())
        base = std::max(*d, now_);
    }
    return base + duration{o.delta_ms};
  }

  /// Applies `o` at `at` and returns what the hub must return.
  outcome apply(const op& o, time_point at) {
    const std::string_view id = device_pool[o.device % device_pool.size()];
    switch (o.kind) {
      case op_kind::add_device:
        return add_device(id);
      case op_kind::remove_device:
        return remove_device(id, o, at);
      case op_kind::enqueue:
        return enqueue(id, o, at);
      case op_kind::receive:
        return receive(id, at);
      case op_kind::settle:
        return settle(id, o, at);
      case op_kind::purge:
        return purge(id, at);
      case op_kind::queue_depth: {
        advance(at);
        outcome r;
        auto it = devices_.find(id);
        if (it == devices_.end())
          return error(errc::device_not_found);
        r.count = it->second.queue.size();
        return r;
      }
      case op_kind::tick:
      case op_kind::tick_to_deadline:
        advance(at);
        feedback_timers();
        return {};
      case op_kind::receive_feedback:
        return receive_feedback(at);
      case op_kind::complete_feedback:
      case op_kind::abandon_feedback:
        return settle_feedback(o, at);
      case op_kind::crash:
        return {};  // a crash and reopen must be invisible
    }
    return {};
  }

 private:
  static outcome error(errc e) {
    outcome r;
    r.error = e;
    return r;
  }

  static time_point deadline(const ref_message& m) {
    return m.invisible ? std::min(m.locked_until, m.expires_at) : m.expires_at;
  }
  static time_point deadline(const ref_device& d) {
    time_point t = time_point::max();
    for (const auto& m : d.queue)
      t = std::min(t, deadline(m));
    return t;
  }
  time_point flush_due() const {
    return last_flush_ ? *last_flush_ + cfg_.feedback_batch_interval : time_point::min();
  }

  /// Times never go backwards; then every due timer; then feedback batching.
  void advance(time_point at) {
    now_ = std::max(now_, at);
    std::vector<std::pair<time_point, std::string>> due;
    for (const auto& [id, d] : devices_)
      if (const auto t = deadline(d); t <= now_)
        due.emplace_back(t, id);
    std::sort(due.begin(), due.end());
    for (const auto& [t, id] : due)
      run_timers(id, devices_.find(id)->second);
    flush();
    feedback_timers();  // the feedback queue's own locks and TTL, like the engine
  }

  void run_timers(const std::string& id, ref_device& d) {
    for (std::size_t i = 0; i < d.queue.size();) {
      auto& m = d.queue[i];
      std::optional<std::pair<feedback_status, time_point>> end;
      while (!end && deadline(m) <= now_) {
        if (m.invisible && m.locked_until <= m.expires_at) {
          // SPEC 1.5: lock expiry re-enqueues; it counts only under the old rule,
          // where the count was taken at lock time and may already be at the limit
          m.invisible = false;
          if (m.delivery_count >= cfg_.max_delivery_count)
            end.emplace(feedback_status::delivery_count_exceeded, m.locked_until);
        } else {
          m.invisible = false;
          end.emplace(feedback_status::expired, m.expires_at);
        }
      }
      if (end) {
        finish(id, d, m, end->first, end->second);
        d.queue.erase(d.queue.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }

  /// A message reached a terminal outcome: count it; a record if its ack asks.
  void finish(const std::string& id, const ref_device& d, const ref_message& m, feedback_status s,
              time_point at) {
    switch (s) {
      case feedback_status::success:
        ++stats_.completed;
        break;
      case feedback_status::expired:
        ++stats_.expired;
        break;
      case feedback_status::delivery_count_exceeded:
        ++stats_.delivery_count_exceeded;
        break;
      case feedback_status::rejected:
        ++stats_.rejected;
        break;
      case feedback_status::purged:
        ++stats_.purged;
        break;
    }
    if (s == feedback_status::purged && cfg_.purge_feedback_for == purge_feedback::none)
      return;
    if (!ack_asks(m.ack, s))
      return;
    ref_record r{m.message_id.value_or(""), at, s, id, d.incarnation, m.seq};
    pending_.push_back(r);
    all_records_.push_back(std::move(r));
    ++stats_.feedback_records;
  }

  /// SPEC 4.3: full batches at once; the rest once the interval since the last batch passed.
  void flush() {
    while (pending_.size() >= cfg_.feedback_batch_size)
      emit(cfg_.feedback_batch_size);
    if (!pending_.empty() && now_ >= flush_due())
      emit(pending_.size());
  }
  void emit(std::size_t n) {
    ref_batch b;
    b.records.assign(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
    b.created = now_;
    b.expires_at = now_ + cfg_.feedback_ttl;
    batches_.push_back(std::move(b));
    ++stats_.feedback_batches;
    last_flush_ = now_;
  }

  /// The feedback queue: every delivery counts (Service Bus rule); expired or
  /// over-delivered batches are dropped.
  void feedback_timers() {
    for (std::size_t i = 0; i < batches_.size();) {
      auto& b = batches_[i];
      bool dropped = false;
      while (!dropped) {
        const time_point due = b.invisible ? std::min(b.locked_until, b.expires_at) : b.expires_at;
        if (due > now_)
          break;
        if (b.invisible && b.locked_until <= b.expires_at) {
          b.invisible = false;
          dropped = b.delivery_count >= cfg_.feedback_max_delivery_count;
        } else {
          dropped = true;
        }
      }
      if (dropped) {
        ++batches_dropped_;
        batches_.erase(batches_.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }

  static bool valid_device_id(std::string_view id) {
    if (id.empty() || id.size() > 128)
      return false;
    for (char c : id) {
      const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      if (!alnum && std::string_view("-.%_*?!(),:=@$'").find(c) == std::string_view::npos)
        return false;
    }
    return true;
  }

  outcome add_device(std::string_view id) {
    if (!valid_device_id(id))
      return error(errc::argument_invalid);
    if (devices_.find(id) != devices_.end())
      return error(errc::device_already_exists);
    auto& n = added_[std::string(id)];
    devices_.emplace(std::string(id), ref_device{n, {}});
    ++n;
    return {};
  }

  outcome remove_device(std::string_view id, const op& o, time_point at) {
    if (o.with_now)
      advance(at);  // every operation given a `now` first brings the hub up to it
    auto it = devices_.find(id);
    if (it == devices_.end())
      return error(errc::device_not_found);
    if (o.generation == 2)
      return error(errc::precondition_failed);
    stats_.removed_with_device += it->second.queue.size();
    // SPEC 4.9: records not yet batched go with the device; batched ones stay
    const auto before = pending_.size();
    std::erase_if(pending_, [&](const ref_record& r) { return r.device == id; });
    stats_.feedback_records_dropped += before - pending_.size();
    devices_.erase(it);
    return {};
  }

  outcome enqueue(std::string_view id, const op& o, time_point at) {
    advance(at);
    if (!valid_device_id(id))
      return error(errc::argument_invalid);
    if (o.to == 3)
      return error(errc::argument_invalid);  // addressed to another device
    if (o.message_id == 3 || o.property == 2)
      return error(errc::argument_invalid);
    // SPEC 2.6 size rule: body + system property values (the hub's `to`, the
    // ack text, a 24-character expiry) + application property names and values
    std::size_t size = o.body_size + device_bound_address(id).size();
    if (o.message_id == 1)
      size += 1 + std::to_string(o.id_number).size();
    if (o.message_id == 2)
      size += 3;
    if (o.ack != ack_mode::none)
      size += to_string(o.ack).size();
    if (o.explicit_expiry)
      size += 24;
    if (o.property == 1)
      size += 5;  // "color" + ""
    if (size > cfg_.max_message_size)
      return error(errc::message_too_large);
    time_point expires = o.explicit_expiry ? now_ + duration{o.expiry_ms} : now_ + cfg_.default_ttl;
    if (expires > now_ + std::chrono::hours(48)) {
      if (cfg_.expiry_over_cap == expiry_cap_policy::reject)
        return error(errc::argument_invalid);
      expires = now_ + std::chrono::hours(48);
    }
    expires = std::max(expires, now_);
    auto it = devices_.find(id);
    if (it == devices_.end())
      return error(errc::device_not_found);
    auto& d = it->second;
    if (d.queue.size() >= cfg_.max_queue_depth)
      return error(errc::device_maximum_queue_depth_exceeded);
    ref_message m;
    m.seq = ++last_seq_;
    if (o.message_id == 1)
      m.message_id = "m" + std::to_string(o.id_number);
    if (o.message_id == 2)
      m.message_id = "dup";
    m.ack = o.ack;
    m.body = std::string(o.body_size, 'b');
    if (o.property == 1)
      m.props["color"] = "";
    m.enqueued_at = now_;
    m.expires_at = expires;
    d.queue.push_back(m);
    ++stats_.accepted;
    // an expiry already past dead-letters at once, and its record is batched
    if (expires <= now_) {
      run_timers(it->first, d);
      flush();
    }
    outcome r;
    r.receipt = enqueue_receipt{m.seq, expires};
    return r;
  }

  outcome receive(std::string_view id, time_point at) {
    advance(at);
    auto it = devices_.find(id);
    if (it == devices_.end())
      return error(errc::device_not_found);
    outcome r;
    for (auto& m : it->second.queue) {
      if (m.invisible)
        continue;
      // SPEC 1.4: the oldest Enqueued message is locked
      m.invisible = true;
      m.locked_until = now_ + cfg_.lock_duration;
      m.lock = locks_.size();
      if (cfg_.delivery_count == delivery_count_rule::every_delivery)
        ++m.delivery_count;
      locks_.push_back(ref_lock{it->first, it->second.incarnation, m.seq});
      r.received = m;
      break;
    }
    return r;
  }

  outcome settle(std::string_view id, const op& o, time_point at) {
    advance(at);
    auto it = devices_.find(id);
    if (it == devices_.end())
      return error(errc::device_not_found);
    auto& d = it->second;
    auto found = d.queue.end();
    if (!o.random_token) {
      for (auto m = d.queue.begin(); m != d.queue.end(); ++m)
        if (m->invisible && m->lock == o.handle)
          found = m;
    }
    if (found == d.queue.end())
      return error(errc::device_message_lock_lost);
    auto& m = *found;
    std::optional<feedback_status> end;
    switch (o.how) {
      case disposition::complete:
        end = feedback_status::success;
        break;
      case disposition::reject:
        end = feedback_status::rejected;
        break;
      case disposition::abandon:
        // SPEC 1.4: abandon counts (current rule; the old rule counted at lock time)
        if (cfg_.delivery_count == delivery_count_rule::abandon_only)
          ++m.delivery_count;
        m.invisible = false;
        if (m.delivery_count >= cfg_.max_delivery_count)
          end = feedback_status::delivery_count_exceeded;
        break;
    }
    if (end) {
      m.invisible = false;
      finish(it->first, d, m, *end, now_);
      d.queue.erase(found);
    }
    flush();
    return {};
  }

  outcome purge(std::string_view id, time_point at) {
    advance(at);
    auto it = devices_.find(id);
    if (it == devices_.end())
      return error(errc::device_not_found);
    outcome r;
    r.count = it->second.queue.size();
    for (const auto& m : it->second.queue)
      finish(it->first, it->second, m, feedback_status::purged, now_);
    it->second.queue.clear();
    flush();
    return r;
  }

  outcome receive_feedback(time_point at) {
    advance(at);
    feedback_timers();
    outcome r;
    for (auto& b : batches_) {
      if (b.invisible)
        continue;
      b.invisible = true;
      b.locked_until = now_ + cfg_.feedback_lock_duration;
      b.lock = feedback_locks_++;
      ++b.delivery_count;
      r.batch = b;
      break;
    }
    return r;
  }

  outcome settle_feedback(const op& o, time_point at) {
    advance(at);
    feedback_timers();
    for (auto b = batches_.begin(); b != batches_.end(); ++b) {
      if (o.random_token || !b->invisible || b->lock != o.handle)
        continue;
      b->invisible = false;
      if (o.kind == op_kind::complete_feedback) {
        batches_.erase(b);
      } else if (b->delivery_count >= cfg_.feedback_max_delivery_count) {
        ++batches_dropped_;
        batches_.erase(b);
      }
      return {};
    }
    return error(errc::device_message_lock_lost);
  }

  hub_config cfg_;
  time_point now_ = start_time;
  std::map<std::string, ref_device, std::less<>> devices_;
  std::map<std::string, std::uint32_t, std::less<>> added_;
  std::vector<ref_record> pending_;
  std::vector<ref_record> all_records_;
  std::vector<ref_batch> batches_;
  std::optional<time_point> last_flush_;
  std::vector<ref_lock> locks_;
  std::size_t feedback_locks_ = 0;
  hub_stats stats_;
  std::uint64_t batches_dropped_ = 0;
  std::uint64_t last_seq_ = 0;
};

// --- the harness: the model next to a real hub ------------------------------------

/// A token nobody was given: the nil token for 0, else 128 bits derived from `bits`.
inline lock_token made_up_token(std::uint64_t bits) {
  lock_token t;
  if (bits == 0)
    return t;
  std::uint64_t a = bits * 0x9E3779B97F4A7C15ull,
                b = (bits ^ 0xD1B54A32D192ED03ull) * 0xBF58476D1CE4E5B9ull;
  for (std::size_t i = 0; i < 8; ++i) {
    t.bytes[i] = static_cast<std::uint8_t>(a >> (8 * i));
    t.bytes[8 + i] = static_cast<std::uint8_t>(b >> (8 * i));
  }
  t.bytes[0] |= 1;  // never nil
  return t;
}

/// A store behind the hub, for a harness that runs `crash`.
struct durability {
  /// Opens a hub on the store with the given token source: at the start, and
  /// after each crash (the store holds whatever the dropped hub committed).
  std::function<result<hub>(const hub_config&, token_source)> open;
  /// What the store holds now, checked against `hub::snapshot()` after every operation.
  std::function<result<journal::snapshot>()> load;
};

/// The first difference between what a store holds and a hub's own state, or "".
inline std::string snapshot_difference(const journal::snapshot& stored,
                                       const journal::snapshot& live) {
  if (stored == live)
    return {};
  if (stored.config != live.config)
    return "stored configuration differs";
  if (stored.counters != live.counters) {
    if (!stored.counters || !live.counters)
      return "stored counters missing";
    const auto &a = *stored.counters, &b = *live.counters;
    return "stored counters differ: last_sequence " + std::to_string(a.last_sequence) + "/" +
           std::to_string(b.last_sequence) + ", last_now " +
           std::to_string((a.last_now - start_time).count()) + "/" +
           std::to_string((b.last_now - start_time).count()) + ", records " +
           std::to_string(a.next_record_id) + "/" + std::to_string(b.next_record_id) +
           ", batches " + std::to_string(a.next_batch_id) + "/" + std::to_string(b.next_batch_id) +
           (a.stats == b.stats ? "" : ", stats") +
           (a.last_flush == b.last_flush ? "" : ", last_flush");
  }
  if (stored.devices != live.devices)
    return "stored devices differ (" + std::to_string(stored.devices.size()) + " stored, " +
           std::to_string(live.devices.size()) + " in the hub)";
  if (stored.messages.size() != live.messages.size())
    return "the store holds " + std::to_string(stored.messages.size()) + " messages, the hub " +
           std::to_string(live.messages.size());
  for (std::size_t i = 0; i < stored.messages.size(); ++i)
    if (stored.messages[i] != live.messages[i])
      return "stored message seq " + std::to_string(stored.messages[i].sequence_number) +
             " differs from the hub's seq " + std::to_string(live.messages[i].sequence_number);
  if (stored.pending != live.pending)
    return "stored pending feedback records differ (" + std::to_string(stored.pending.size()) +
           " stored, " + std::to_string(live.pending.size()) + " in the hub)";
  if (stored.batches.size() != live.batches.size())
    return "the store holds " + std::to_string(stored.batches.size()) +
           " feedback batches, the hub " + std::to_string(live.batches.size());
  for (std::size_t i = 0; i < stored.batches.size(); ++i)
    if (stored.batches[i] != live.batches[i])
      return "stored feedback batch " + std::to_string(stored.batches[i].batch_id) + " differs";
  return "stored state differs";
}

/// Runs operations on a `hub` and on the reference model and reports the first
/// disagreement or broken invariant. Not copyable or movable: the hub's
/// observer points at it.
class harness {
 public:
  harness(const hub_config& cfg, std::uint64_t seed)
      : model_(cfg), seed_(seed), hub_(std::in_place, cfg, seeded_token_source(seed)) {
    hub_->set_observer([this](const transition& t) { seen_.push_back(copy(t)); });
    hub_->tick(start_time);
  }
  /// A hub opened on a store: `crash` drops it and reopens it from there.
  harness(const hub_config& cfg, std::uint64_t seed, durability d)
      : model_(cfg), seed_(seed), durable_(std::move(d)) {
    hub_.emplace(durable_.open(cfg, seeded_token_source(seed)).value());
    hub_->set_observer([this](const transition& t) { seen_.push_back(copy(t)); });
    hub_->tick(start_time);
  }
  harness(const harness&) = delete;
  harness& operator=(const harness&) = delete;

  const reference_hub& model() const noexcept { return model_; }
  const hub& engine() const noexcept { return *hub_; }
  /// Crashes survived so far.
  std::size_t crashes() const noexcept { return crashes_; }

  /// Runs `o` on both; "" if they agree and every invariant holds, else what broke.
  std::string step(const op& o) {
    error_.clear();
    seen_.clear();
    const time_point at = model_.time_for(o);
    const outcome want = model_.apply(o, at);
    run_on_hub(o, at, want);
    check_transitions(o, want);
    check_state();
    check_store();
    if (error_.empty())
      return {};
    return describe(o) + " (at +" + std::to_string((at - start_time).count()) + "ms): " + error_;
  }

 private:
  struct seen_transition {
    std::string device;
    std::uint64_t seq = 0;
    std::optional<std::string> message_id;
    transition_cause cause{};
    message_state from{}, to{};
    dead_letter_reason reason{};
    std::uint32_t delivery_count = 0;
    time_point at{};
  };
  struct tracked {
    message_state state = message_state::enqueued;
    ack_mode ack = ack_mode::none;
    std::string device;
  };

  static seen_transition copy(const transition& t) {
    seen_transition s;
    s.device = std::string(t.device_id);
    s.seq = t.sequence_number;
    if (t.message_id)
      s.message_id = std::string(*t.message_id);
    s.cause = t.cause;
    s.from = t.from;
    s.to = t.to;
    s.reason = t.reason;
    s.delivery_count = t.delivery_count;
    s.at = t.at;
    return s;
  }

  template <class F>
  void expect(bool ok, F&& what) {
    if (!ok && error_.empty())
      error_ = what();
  }

  static std::string code(errc e) {
    return e == errc{} ? "ok" : std::to_string(static_cast<std::uint32_t>(e));
  }
  static std::string ms(time_point t) {
    return "+" + std::to_string((t - start_time).count()) + "ms";
  }

  template <class R>
  void expect_code(const R& got, errc want) {
    expect(got.code() == want,
           [&] { return "returned " + code(got.code()) + ", model expects " + code(want); });
  }

  std::string gen_of(const std::string& device, std::uint32_t incarnation) const {
    auto it = generations_.find({device, incarnation});
    return it == generations_.end() ? std::string("?") : it->second;
  }

  /// Drops the hub and opens a new one on the store. Lock tokens to come are
  /// drawn from a fresh stream, so they cannot repeat those handed out before.
  void crash_and_reopen() {
    if (!durable_.open) {
      expect(false, [] { return "crash on a harness without a store"; });
      return;
    }
    hub_.reset();
    ++crashes_;
    auto reopened = durable_.open(model_.config(),
                                  seeded_token_source(seed_ ^ (0x9E3779B97F4A7C15ull * crashes_)));
    if (!reopened) {
      error_ = "reopening from the store failed: " + reopened.error().message;
      hub_.emplace(model_.config(), seeded_token_source(seed_));  // keep the harness usable
      return;
    }
    hub_.emplace(std::move(*reopened));
    hub_->set_observer([this](const transition& t) { seen_.push_back(copy(t)); });
  }

  /// The store holds exactly the hub's state (a harness with `durability.load`).
  void check_store() {
    if (!durable_.load || !error_.empty())
      return;
    expect(!hub_->store_failure(),
           [&] { return "the hub's store failed: " + hub_->store_failure()->message; });
    auto stored = durable_.load();
    if (!stored) {
      expect(false, [&] { return "loading the store failed: " + stored.error().message; });
      return;
    }
    const auto diff = snapshot_difference(*stored, hub_->snapshot());
    expect(diff.empty(), [&] { return diff; });
  }

  void run_on_hub(const op& o, time_point at, const outcome& want) {
    const std::string id(device_pool[o.device % device_pool.size()]);
    switch (o.kind) {
      case op_kind::add_device: {
        auto r = hub_->add_device(id);
        expect_code(r, want.error);
        if (r) {
          expect(r->size() == 18, [&] { return "generation id '" + *r + "' is not 18 digits"; });
          generations_[{id, model_.incarnations(id) - 1}] = *r;
        }
        break;
      }
      case op_kind::remove_device: {
        std::optional<std::string> gen;
        if (o.generation == 1) {
          auto g = hub_->generation_id(id);
          gen = g ? *g : std::string("100000000000000000");
        } else if (o.generation == 2) {
          gen = "000000000000000000";  // never a generation id (they start at 1e17)
        }
        std::optional<std::string_view> gv;
        if (gen)
          gv = *gen;
        auto r = o.with_now ? hub_->remove_device(id, gv, at) : hub_->remove_device(id, gv);
        expect_code(r, want.error);
        break;
      }
      case op_kind::enqueue: {
        message m;
        if (o.message_id == 1)
          m.message_id = "m" + std::to_string(o.id_number);
        if (o.message_id == 2)
          m.message_id = "dup";
        if (o.message_id == 3)
          m.message_id = "not valid";
        m.ack = o.ack;
        m.body = std::string(o.body_size, 'b');
        if (o.property == 1)
          m.app_properties["color"] = "";
        if (o.property == 2)
          m.app_properties["iothub-color"] = "x";
        if (o.explicit_expiry)
          m.expiry_time_utc =
              model_.now() + duration{o.expiry_ms};  // the model already moved to `at`
        if (o.to == 1)
          m.to = device_bound_address(id);
        if (o.to == 2)
          m.to = "/devices/" + id + "/messages/deviceBound";
        if (o.to == 3)
          m.to = device_bound_address(id == "d0" ? "d1" : "d0");
        auto r = hub_->enqueue(id, std::move(m), at);
        expect_code(r, want.error);
        if (r && want.error == errc{}) {
          expect(r->sequence_number == want.receipt.sequence_number, [&] {
            return "sequence number " + std::to_string(r->sequence_number) + ", model expects " +
                   std::to_string(want.receipt.sequence_number);
          });
          expect(r->expiry_time_utc == want.receipt.expiry_time_utc, [&] {
            return "expiry " + ms(r->expiry_time_utc) + ", model expects " +
                   ms(want.receipt.expiry_time_utc);
          });
        }
        break;
      }
      case op_kind::receive: {
        auto r = hub_->receive(id, at);
        expect_code(r, want.error);
        if (!r || want.error != errc{})
          break;
        expect(r->has_value() == want.received.has_value(), [&] {
          return std::string(r->has_value() ? "handed out a message" : "handed out nothing") +
                 ", model expects " +
                 (want.received ? "seq " + std::to_string(want.received->seq)
                                : std::string("nothing"));
        });
        if (!r->has_value() || !want.received)
          break;
        const message& got = **r;
        const ref_message& w = *want.received;
        // SPEC 1.4 / 1.10: the oldest Enqueued message, by sequence number
        expect(got.sequence_number == w.seq, [&] {
          return "handed out seq " + std::to_string(got.sequence_number) +
                 ", the oldest Enqueued is seq " + std::to_string(w.seq);
        });
        expect(got.message_id == w.message_id && got.ack == w.ack && got.body == w.body &&
                   got.app_properties == w.props && got.to == device_bound_address(id),
               [&] { return "received message content differs from what was sent"; });
        expect(got.expiry_time_utc == w.expires_at && got.enqueued_time_utc == w.enqueued_at,
               [&] { return "received message times differ from the model"; });
        expect(got.delivery_count == w.delivery_count, [&] {
          return "delivery count " + std::to_string(got.delivery_count) + ", model expects " +
                 std::to_string(w.delivery_count);
        });
        expect(got.lock_token && !got.lock_token->is_nil(),
               [] { return "received message has no lock token"; });
        expect(tokens_.size() == w.lock, [] { return "lock handle bookkeeping out of step"; });
        tokens_.push_back(got.lock_token.value_or(lock_token{}));
        break;
      }
      case op_kind::settle: {
        const lock_token t = o.random_token || o.handle >= tokens_.size()
                                 ? made_up_token(o.token_bits)
                                 : tokens_[o.handle];
        result<void> r;
        if (o.via_settle) {
          r = hub_->settle(id, t, o.how, at);
        } else {
          switch (o.how) {
            case disposition::complete:
              r = hub_->complete(id, t, at);
              break;
            case disposition::reject:
              r = hub_->reject(id, t, at);
              break;
            case disposition::abandon:
              r = hub_->abandon(id, t, at);
              break;
          }
        }
        expect_code(r, want.error);
        break;
      }
      case op_kind::purge: {
        auto r = hub_->purge(id, at);
        expect_code(r, want.error);
        if (r && want.error == errc{})
          expect(*r == want.count, [&] {
            return "purged " + std::to_string(*r) + ", model expects " + std::to_string(want.count);
          });
        break;
      }
      case op_kind::queue_depth: {
        auto r = hub_->queue_depth(id, at);
        expect_code(r, want.error);
        if (r && want.error == errc{})
          expect(*r == want.count, [&] {
            return "queue depth " + std::to_string(*r) + ", model expects " +
                   std::to_string(want.count);
          });
        break;
      }
      case op_kind::tick:
      case op_kind::tick_to_deadline:
        hub_->tick(at);
        break;
      case op_kind::receive_feedback: {
        auto r = hub_->receive_feedback(at);
        expect_code(r, want.error);
        if (!r)
          break;
        expect(r->has_value() == want.batch.has_value(), [&] {
          return std::string(r->has_value() ? "handed out a feedback batch"
                                            : "handed out no feedback batch") +
                 ", model expects " + (want.batch ? "one" : "none");
        });
        if (!r->has_value() || !want.batch)
          break;
        check_batch(**r, *want.batch);
        expect(feedback_tokens_.size() == want.batch->lock,
               [] { return "feedback lock bookkeeping out of step"; });
        feedback_tokens_.push_back((*r)->lock_token);
        break;
      }
      case op_kind::complete_feedback:
      case op_kind::abandon_feedback: {
        const lock_token t = o.random_token || o.handle >= feedback_tokens_.size()
                                 ? made_up_token(o.token_bits)
                                 : feedback_tokens_[o.handle];
        auto r = o.kind == op_kind::complete_feedback ? hub_->complete_feedback(t, at)
                                                      : hub_->abandon_feedback(t, at);
        expect_code(r, want.error);
        break;
      }
      case op_kind::crash:
        crash_and_reopen();
        break;
    }
  }

  void check_batch(const feedback_batch& got, const ref_batch& want) {
    expect(got.user_id == model_.config().name,
           [&] { return "feedback batch user id '" + got.user_id + "'"; });
    expect(!got.lock_token.is_nil(), [] { return "feedback batch without a lock token"; });
    expect(got.enqueued_time_utc == want.created, [&] {
      return "feedback batch enqueued " + ms(got.enqueued_time_utc) + ", model expects " +
             ms(want.created);
    });
    expect(got.delivery_count == want.delivery_count, [&] {
      return "feedback batch delivery count " + std::to_string(got.delivery_count) +
             ", model expects " + std::to_string(want.delivery_count);
    });
    expect(got.records.size() == want.records.size(), [&] {
      return "feedback batch has " + std::to_string(got.records.size()) +
             " records, model expects " + std::to_string(want.records.size());
    });
    for (std::size_t i = 0; i < std::min(got.records.size(), want.records.size()); ++i) {
      const auto& g = got.records[i];
      const auto& w = want.records[i];
      expect(
          g.original_message_id == w.message_id && g.enqueued_time_utc == w.at &&
              g.status_code == w.status && g.description == status_text(w.status) &&
              g.device_id == w.device && g.device_generation_id == gen_of(w.device, w.incarnation),
          [&] {
            return "feedback record " + std::to_string(i) + " is {" + g.original_message_id + ", " +
                   ms(g.enqueued_time_utc) + ", " + std::string(to_string(g.status_code)) + ", " +
                   g.device_id + "}, model expects {" + w.message_id + ", " + ms(w.at) + ", " +
                   std::string(status_text(w.status)) + ", " + w.device + "} (seq " +
                   std::to_string(w.seq) + ")";
          });
    }
  }

  /// The observer's view, checked without the model: legal transitions only,
  /// one terminal outcome per message, and a feedback record for exactly the
  /// outcomes whose ack asks for one.
  void check_transitions(const op& o, const outcome& want) {
    const auto& cfg = model_.config();
    for (const auto& t : seen_) {
      auto describe_t = [&] {
        return "transition seq " + std::to_string(t.seq) + " " + std::string(to_string(t.cause)) +
               " " + std::string(to_string(t.from)) + "->" + std::string(to_string(t.to));
      };
      expect(t.delivery_count <= cfg.max_delivery_count, [&] {
        return describe_t() + ": delivery count " + std::to_string(t.delivery_count) +
               " over the max";
      });
      expect(t.at <= hub_->last_now(),
             [&] { return describe_t() + ": stamped after the hub's now"; });
      if (t.cause == transition_cause::accepted) {
        expect(!tracked_.contains(t.seq),
               [&] { return describe_t() + ": sequence number reused"; });
        expect(o.kind == op_kind::enqueue && want.receipt.sequence_number == t.seq,
               [&] { return describe_t() + ": accepted outside its enqueue"; });
        tracked_[t.seq] = tracked{message_state::enqueued, o.ack, t.device};
        ++live_;
        continue;
      }
      auto it = tracked_.find(t.seq);
      if (it == tracked_.end()) {
        expect(false, [&] { return describe_t() + ": for a message never accepted"; });
        continue;
      }
      auto& tr = it->second;
      expect(!is_terminal(tr.state),
             [&] { return describe_t() + ": after the message's terminal outcome"; });
      expect(t.from == tr.state && t.device == tr.device, [&] {
        return describe_t() + ": the message was " + std::string(to_string(tr.state)) + " on " +
               tr.device;
      });
      bool legal = false;
      std::optional<feedback_status> status;
      switch (t.cause) {
        case transition_cause::accepted:
          break;
        case transition_cause::lock:
          legal = t.from == message_state::enqueued && t.to == message_state::invisible;
          break;
        case transition_cause::complete:
          legal = t.from == message_state::invisible && t.to == message_state::completed;
          status = feedback_status::success;
          break;
        case transition_cause::reject:
          legal = t.from == message_state::invisible && t.to == message_state::dead_lettered &&
                  t.reason == dead_letter_reason::rejected;
          status = feedback_status::rejected;
          break;
        case transition_cause::abandon:
        case transition_cause::lock_expired:
          legal = t.from == message_state::invisible &&
                  (t.to == message_state::enqueued ||
                   (t.to == message_state::dead_lettered &&
                    t.reason == dead_letter_reason::delivery_count_exceeded));
          if (t.to == message_state::dead_lettered)
            status = feedback_status::delivery_count_exceeded;
          if (t.to == message_state::dead_lettered)
            legal = legal &&
                    t.delivery_count == cfg.max_delivery_count;  // dead-lettered exactly at the max
          break;
        case transition_cause::ttl_expired:
          legal = !is_terminal(t.from) && t.to == message_state::dead_lettered &&
                  t.reason == dead_letter_reason::expired;
          status = feedback_status::expired;
          break;
        case transition_cause::purge:
          legal = !is_terminal(t.from) && t.to == message_state::purged;
          if (cfg.purge_feedback_for == purge_feedback::negative_acks)
            status = feedback_status::purged;
          break;
        case transition_cause::device_removed:
          legal = !is_terminal(t.from) && t.to == message_state::purged;
          break;
      }
      expect(legal, [&] { return describe_t() + ": not a legal transition"; });
      tr.state = t.to;
      if (is_terminal(t.to)) {
        --live_;
        if (status && ack_asks(tr.ack, *status))
          ++records_expected_;
      }
    }
    expect(records_expected_ == hub_->stats().feedback_records, [&] {
      return "hub created " + std::to_string(hub_->stats().feedback_records) +
             " feedback records; its terminal transitions and their acks ask for " +
             std::to_string(records_expected_);
    });
  }

  /// Hub state against the model, and invariants that hold after every operation.
  void check_state() {
    const auto& cfg = model_.config();
    const time_point now = hub_->last_now();
    expect(now == model_.now(),
           [&] { return "hub time " + ms(now) + ", model " + ms(model_.now()); });
    expect(hub_->device_count() == model_.devices().size(), [&] {
      return "hub has " + std::to_string(hub_->device_count()) + " devices, model " +
             std::to_string(model_.devices().size());
    });
    std::size_t queued = 0;
    for (const auto& entry : model_.devices()) {
      const std::string& id = entry.first;  // not a structured binding: lambdas below capture it
      const ref_device& d = entry.second;
      const auto* q = hub_->find_queue(id);
      if (!q) {
        expect(false, [&] { return "device " + id + " missing from the hub"; });
        continue;
      }
      auto gen = hub_->generation_id(id);
      expect(gen && *gen == gen_of(id, d.incarnation),
             [&] { return "generation id of " + id + " changed"; });
      const auto& e = q->entries();
      queued += e.size();
      expect(e.size() == d.queue.size(), [&] {
        return id + " queue holds " + std::to_string(e.size()) + ", model " +
               std::to_string(d.queue.size());
      });
      std::uint64_t prev_seq = 0;
      for (std::size_t i = 0; i < e.size(); ++i) {
        const auto& h = e[i];
        const auto where = [&] {
          return id + " seq " + std::to_string(h.sequence_number) + ": ";
        };
        // invariants, independent of the model
        expect(h.sequence_number > prev_seq,
               [&] { return where() + "queue not in sequence order"; });
        prev_seq = h.sequence_number;
        expect(!is_terminal(h.state()), [&] { return where() + "terminal message still queued"; });
        expect(h.fields.delivery_count <= cfg.max_delivery_count, [&] {
          return where() + "delivery count " + std::to_string(h.fields.delivery_count) +
                 " over the max";
        });
        expect(h.fields.expires_at > now,
               [&] { return where() + "past its expiry but still queued"; });
        if (h.state() == message_state::invisible) {
          expect(!h.fields.token.is_nil() && h.fields.locked_until > now, [&] {
            return where() + "Invisible without a live lock (locked until " +
                   ms(h.fields.locked_until) + ")";
          });
        } else {
          expect(h.fields.token.is_nil(),
                 [&] { return where() + "Enqueued but still holds a lock token"; });
        }
        auto tr = tracked_.find(h.sequence_number);
        expect(tr != tracked_.end() && tr->second.state == h.state(),
               [&] { return where() + "the observer saw a different state"; });
        if (i >= d.queue.size())
          continue;
        // against the model
        const auto& w = d.queue[i];
        expect(h.sequence_number == w.seq,
               [&] { return where() + "model has seq " + std::to_string(w.seq) + " here"; });
        expect((h.state() == message_state::invisible) == w.invisible, [&] {
          return where() + std::string(to_string(h.state())) + ", model says " +
                 (w.invisible ? "Invisible" : "Enqueued");
        });
        expect(h.fields.delivery_count == w.delivery_count, [&] {
          return where() + "delivery count " + std::to_string(h.fields.delivery_count) +
                 ", model " + std::to_string(w.delivery_count);
        });
        expect(h.fields.expires_at == w.expires_at,
               [&] { return where() + "expiry differs from the model"; });
        if (w.invisible && h.state() == message_state::invisible) {
          expect(h.fields.locked_until == w.locked_until,
                 [&] { return where() + "lock expiry differs from the model"; });
          expect(w.lock < tokens_.size() && h.fields.token == tokens_[w.lock],
                 [&] { return where() + "locked with a token other than the one handed out"; });
        }
      }
    }
    expect(live_ == queued, [&] {
      return "the observer sees " + std::to_string(live_) + " pending messages, the queues hold " +
             std::to_string(queued);
    });

    // every accepted message is queued or in exactly one outcome
    const auto& s = hub_->stats();
    const auto& w = model_.stats();
    expect(s.accepted == queued + s.completed + s.rejected + s.expired + s.delivery_count_exceeded +
                             s.purged + s.removed_with_device,
           [&] {
             return "accepted messages are neither queued nor in an outcome (conservation broken)";
           });
    expect(s.accepted == w.accepted && s.completed == w.completed && s.rejected == w.rejected &&
               s.expired == w.expired && s.delivery_count_exceeded == w.delivery_count_exceeded &&
               s.purged == w.purged && s.removed_with_device == w.removed_with_device,
           [&] {
             auto f = [](const hub_stats& x) {
               return "{acc " + std::to_string(x.accepted) + " cpl " + std::to_string(x.completed) +
                      " rej " + std::to_string(x.rejected) + " exp " + std::to_string(x.expired) +
                      " dce " + std::to_string(x.delivery_count_exceeded) + " prg " +
                      std::to_string(x.purged) + " rm " + std::to_string(x.removed_with_device) +
                      "}";
             };
             return "stats " + f(s) + ", model " + f(w);
           });
    expect(s.feedback_records == w.feedback_records &&
               s.feedback_records_dropped == w.feedback_records_dropped &&
               s.feedback_batches == w.feedback_batches,
           [&] {
             return "feedback stats records/dropped/batches " + std::to_string(s.feedback_records) +
                    "/" + std::to_string(s.feedback_records_dropped) + "/" +
                    std::to_string(s.feedback_batches) + ", model " +
                    std::to_string(w.feedback_records) + "/" +
                    std::to_string(w.feedback_records_dropped) + "/" +
                    std::to_string(w.feedback_batches);
           });

    // feedback: each record once; records pending + batched + dropped with their device account for
    // all
    expect(hub_->pending_feedback_records() == model_.pending().size(), [&] {
      return "hub has " + std::to_string(hub_->pending_feedback_records()) +
             " pending feedback records, model " + std::to_string(model_.pending().size());
    });
    expect(hub_->feedback_queue_depth() == model_.batches().size(), [&] {
      return "feedback queue holds " + std::to_string(hub_->feedback_queue_depth()) +
             " batches, model " + std::to_string(model_.batches().size());
    });
    expect(hub_->feedback_batches_dropped() == model_.feedback_batches_dropped(),
           [&] { return "feedback batches dropped differ from the model"; });
    std::size_t in_batches = 0;
    for (const auto& b : model_.batches())
      in_batches += b.records.size();
    expect(in_batches <= s.feedback_records, [] { return "more records batched than created"; });
    const auto next = hub_->next_deadline();
    const auto want_next = model_.next_deadline();
    expect(next == want_next, [&] {
      return "next deadline " + (next ? ms(*next) : std::string("none")) + ", model " +
             (want_next ? ms(*want_next) : std::string("none"));
    });
  }

  reference_hub model_;
  std::uint64_t seed_ = 0;
  durability durable_;
  std::size_t crashes_ = 0;
  std::optional<hub> hub_;
  std::vector<lock_token> tokens_;           ///< by lock handle
  std::vector<lock_token> feedback_tokens_;  ///< by feedback lock handle
  std::map<std::pair<std::string, std::uint32_t>, std::string> generations_;
  std::vector<seen_transition> seen_;
  std::map<std::uint64_t, tracked> tracked_;
  std::size_t live_ = 0;
  std::uint64_t records_expected_ = 0;
  std::string error_;
};

}  // namespace devicebound::model
