/// \file feedback.hpp
/// Delivery feedback: records, batches (SPEC 4).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "feedback_batch.hpp"
#include "lifecycle.hpp"
#include "message.hpp"
#include "queue.hpp"

namespace devicebound {

/// The feedback queue's own settings (SPEC 2.1, 4.2).
struct feedback_queue_rules {
  duration ttl = std::chrono::hours(1);               ///< feedback retention, 1 min .. 2 days
  std::uint32_t max_delivery_count = 10;              ///< 1 .. 100
  duration lock_duration = std::chrono::seconds(60);  ///< 5 .. 300 s
};

/// One batch of the feedback queue changed state or lock: what the queue
/// reports to an optional callback, so the hub can journal it for its store
/// (journal.hpp). A terminal `state` means the batch left the queue.
struct feedback_batch_update {
  std::uint64_t id = 0;  ///< the batch's id in this queue (assigned by `push`)
  message_state state = message_state::enqueued;
  const lifecycle_fields* fields = nullptr;  ///< valid during the callback only
};

/// The service-facing feedback queue (SPEC 4.2): batches wait here until the
/// back end receives (locks) and completes them. Same lifecycle machine as C2D
/// messages, under Service Bus counting (every delivery counts) because the
/// feedback queue is a plain service queue. Batches that expire or exceed the
/// delivery count are dropped and counted. Single-threaded.
template <class Lifecycle>
class basic_feedback_queue {
 public:
  explicit basic_feedback_queue(feedback_queue_rules rules = {}) : rules_(rules) {
    lrules_.max_delivery_count = rules.max_delivery_count;
    lrules_.rule = delivery_count_rule::every_delivery;
  }

  const feedback_queue_rules& rules() const noexcept { return rules_; }

  /// Adds a batch created at `now`; returns its id (ids increase, never reused).
  /// It expires at `now + rules().ttl`.
  std::uint64_t push(feedback_batch batch, time_point now) {
    deadline_cache_.reset();
    entry e;
    batch.enqueued_time_utc = now;
    batch.lock_token = {};
    batch.delivery_count = 0;
    e.batch = std::move(batch);
    e.fields.expires_at = now + rules_.ttl;
    e.id = next_id_++;
    entries_.push_back(std::move(e));
    return entries_.back().id;
  }

  /// Locks the oldest available batch with `token`; nullopt when none is available.
  std::optional<feedback_batch> receive(time_point now, const lock_token& token) {
    return receive(now, token, [](const feedback_batch_update&) {});
  }
  /// As above; `on_update(const feedback_batch_update&)` hears of every batch that changed.
  template <class OnUpdate>
  std::optional<feedback_batch> receive(time_point now, const lock_token& token,
                                        OnUpdate&& on_update) {
    deadline_cache_.reset();
    apply_timers(now, on_update);
    for (auto& e : entries_) {
      if (e.machine.state() != message_state::enqueued)
        continue;
      if (!e.machine.process(
              lifecycle_event::lock{{&e.fields, &lrules_, now}, token, rules_.lock_duration}))
        continue;
      on_update(feedback_batch_update{e.id, e.machine.state(), &e.fields});
      feedback_batch out = e.batch;
      out.lock_token = token;
      out.delivery_count = e.fields.delivery_count;
      return out;
    }
    return std::nullopt;
  }

  /// Completes a locked batch: it leaves the queue (SPEC 4.8).
  result<void> complete(const lock_token& token, time_point now) {
    return complete(token, now, [](const feedback_batch_update&) {});
  }
  template <class OnUpdate>
  result<void> complete(const lock_token& token, time_point now, OnUpdate&& on_update) {
    return settle<lifecycle_event::complete>(token, now, on_update);
  }

  /// Abandons a locked batch: available again, or dropped at the delivery limit.
  result<void> abandon(const lock_token& token, time_point now) {
    return abandon(token, now, [](const feedback_batch_update&) {});
  }
  template <class OnUpdate>
  result<void> abandon(const lock_token& token, time_point now, OnUpdate&& on_update) {
    return settle<lifecycle_event::abandon>(token, now, on_update);
  }

  /// Lock expiries and TTL expiries due at or before `now`.
  void apply_timers(time_point now) {
    apply_timers(now, [](const feedback_batch_update&) {});
  }
  template <class OnUpdate>
  void apply_timers(time_point now, OnUpdate&& on_update) {
    deadline_cache_.reset();
    for (std::size_t i = 0; i < entries_.size();) {
      auto& e = entries_[i];
      bool changed = false;
      while (!is_terminal(e.machine.state())) {
        const auto st = e.machine.state();
        const bool locked = st == message_state::invisible;
        const time_point due =
            locked ? std::min(e.fields.locked_until, e.fields.expires_at) : e.fields.expires_at;
        if (due > now)
          break;
        changed = true;
        if (locked && e.fields.locked_until <= e.fields.expires_at)
          (void)e.machine.process(
              lifecycle_event::lock_expired{{&e.fields, &lrules_, e.fields.locked_until}});
        else
          (void)e.machine.process(
              lifecycle_event::ttl_expired{{&e.fields, &lrules_, e.fields.expires_at}});
      }
      if (changed)
        on_update(feedback_batch_update{e.id, e.machine.state(), &e.fields});
      if (is_terminal(e.machine.state())) {
        ++dropped_;
        entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }

  /// Earliest timer of any batch; `time_point::max()` if none.
  time_point next_deadline() const noexcept {
    // cached: the hub asks on every operation; every mutation resets it
    if (deadline_cache_)
      return *deadline_cache_;
    time_point t = time_point::max();
    for (const auto& e : entries_) {
      t = std::min(t, e.fields.expires_at);
      if (e.machine.state() == message_state::invisible)
        t = std::min(t, e.fields.locked_until);
    }
    deadline_cache_ = t;
    return t;
  }

  /// Batches waiting or locked.
  std::size_t depth() const noexcept { return entries_.size(); }
  /// Batches dropped because they expired or exceeded the delivery count.
  std::uint64_t dropped() const noexcept { return dropped_; }
  bool token_in_use(const lock_token& t) const noexcept {
    for (const auto& e : entries_)
      if (e.machine.state() == message_state::invisible && e.fields.token == t)
        return true;
    return false;
  }

  // --- persistence (journal.hpp): read out and put back -----------------------------

  /// The id the next `push` assigns.
  std::uint64_t next_id() const noexcept { return next_id_; }

  /// Calls `f(id, batch, state, fields)` for every batch, oldest first. `batch`
  /// has no lock token and delivery count: they are in `fields`.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& e : entries_)
      f(e.id, e.batch, e.machine.state(), e.fields);
  }

  /// Puts back a batch read from a store (Enqueued or Invisible, with its lock
  /// and delivery count in `fields`). Batches must come back oldest first.
  void restore(std::uint64_t id, feedback_batch batch, message_state state,
               const lifecycle_fields& fields) {
    deadline_cache_.reset();
    entry e;
    batch.lock_token = {};
    batch.delivery_count = 0;
    e.batch = std::move(batch);
    e.machine = detail::lifecycle_in<Lifecycle>(state);
    e.fields = fields;
    e.id = id;
    entries_.push_back(std::move(e));
    next_id_ = std::max(next_id_, id + 1);
  }

  /// Puts back the id counter and the count of dropped batches.
  void restore_counters(std::uint64_t next_id, std::uint64_t dropped) noexcept {
    next_id_ = std::max(next_id_, next_id);
    dropped_ = dropped;
  }

 private:
  struct entry {
    feedback_batch batch;
    Lifecycle machine;
    lifecycle_fields fields;
    std::uint64_t id = 0;
  };

  template <class Event, class OnUpdate>
  result<void> settle(const lock_token& token, time_point now, OnUpdate& on_update) {
    deadline_cache_.reset();
    apply_timers(now, on_update);
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      auto& e = entries_[i];
      if (e.machine.state() != message_state::invisible || e.fields.token != token)
        continue;
      if (auto r = e.machine.process(Event{{&e.fields, &lrules_, now}}); !r)
        return r.error();
      const auto st = e.machine.state();
      on_update(feedback_batch_update{e.id, st, &e.fields});
      if (is_terminal(st)) {
        if (st != message_state::completed)
          ++dropped_;
        entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
      }
      return {};
    }
    return make_error(
        errc::device_message_lock_lost,
        "feedback lock token " + token.to_string() + " is unknown, expired or already settled");
  }

  feedback_queue_rules rules_;
  lifecycle_rules lrules_;
  std::vector<entry> entries_;
  mutable std::optional<time_point> deadline_cache_;
  std::uint64_t dropped_ = 0;
  std::uint64_t next_id_ = 1;
};

using feedback_queue = basic_feedback_queue<lifecycle>;

}  // namespace devicebound
