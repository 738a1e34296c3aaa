/// \file queue.hpp
/// One device's C2D queue: order, lock tokens, limits, timers (SPEC 1.4-1.5, 2.3, 7.1-7.4).
///
/// Single-threaded: the owner (the hub) serialises every call.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lifecycle.hpp"
#include "message.hpp"

namespace devicebound {

namespace detail {

/// The sender's part of a message in one heap block: body, string system
/// properties, creation time and application properties. Keeps a queued
/// message small (docs/architecture.md, "memory").
class packed_message {
 public:
  packed_message() = default;

  static packed_message pack(const message& m) {
    packed_message p;
    const std::optional<std::string>* strs[kStrings] = {&m.message_id, &m.correlation_id,
                                                        &m.user_id, &m.content_type,
                                                        &m.content_encoding};
    std::size_t total = m.body.size();
    for (std::size_t i = 0; i < kStrings; ++i)
      if (*strs[i]) total += (*strs[i])->size();
    if (m.creation_time_utc) total += sizeof(std::int64_t);
    for (const auto& [k, v] : m.app_properties) total += 2 * sizeof(std::uint32_t) + k.size() + v.size();
    p.size_ = static_cast<std::uint32_t>(total);
    if (total) p.blob_ = std::make_unique_for_overwrite<char[]>(total);
    char* out = p.blob_.get();
    auto put = [&out](const void* src, std::size_t n) {
      if (n) std::memcpy(out, src, n);
      out += n;
    };
    p.body_len_ = static_cast<std::uint32_t>(m.body.size());
    put(m.body.data(), m.body.size());
    for (std::size_t i = 0; i < kStrings; ++i) {
      if (!*strs[i]) continue;
      p.present_ |= static_cast<std::uint8_t>(1u << i);
      p.str_len_[i] = static_cast<std::uint32_t>((*strs[i])->size());
      put((*strs[i])->data(), (*strs[i])->size());
    }
    if (m.creation_time_utc) {
      p.present_ |= kCreationBit;
      const std::int64_t ms = m.creation_time_utc->time_since_epoch().count();
      put(&ms, sizeof ms);
    }
    p.n_props_ = static_cast<std::uint32_t>(m.app_properties.size());
    for (const auto& [k, v] : m.app_properties) {
      const std::uint32_t kl = static_cast<std::uint32_t>(k.size());
      const std::uint32_t vl = static_cast<std::uint32_t>(v.size());
      put(&kl, sizeof kl);
      put(&vl, sizeof vl);
      put(k.data(), kl);
      put(v.data(), vl);
    }
    return p;
  }

  /// Rebuilds the sender's fields into `m` (hub-assigned fields untouched).
  void unpack_into(message& m) const {
    const char* in = blob_.get();
    m.body.assign(in, body_len_);
    in += body_len_;
    std::optional<std::string>* strs[kStrings] = {&m.message_id, &m.correlation_id, &m.user_id,
                                                  &m.content_type, &m.content_encoding};
    for (std::size_t i = 0; i < kStrings; ++i) {
      if (present_ & (1u << i)) {
        strs[i]->emplace(in, str_len_[i]);
        in += str_len_[i];
      } else {
        strs[i]->reset();
      }
    }
    if (present_ & kCreationBit) {
      std::int64_t ms;
      std::memcpy(&ms, in, sizeof ms);
      in += sizeof ms;
      m.creation_time_utc = time_point{duration{ms}};
    } else {
      m.creation_time_utc.reset();
    }
    m.app_properties.clear();
    for (std::uint32_t i = 0; i < n_props_; ++i) {
      std::uint32_t kl, vl;
      std::memcpy(&kl, in, sizeof kl);
      std::memcpy(&vl, in + sizeof kl, sizeof vl);
      in += 2 * sizeof(std::uint32_t);
      m.app_properties.emplace(std::string(in, kl), std::string(in + kl, vl));
      in += kl + vl;
    }
  }

  /// The message id, if the sender set one (feedback needs it without unpacking).
  std::optional<std::string_view> message_id() const noexcept {
    if (!(present_ & 1u)) return std::nullopt;
    return std::string_view(blob_.get() + body_len_, str_len_[0]);
  }

 private:
  static constexpr std::size_t kStrings = 5;  // mid, cid, uid, ct, ce
  static constexpr std::uint8_t kCreationBit = 1u << kStrings;

  std::unique_ptr<char[]> blob_;
  std::uint32_t size_ = 0;
  std::uint32_t body_len_ = 0;
  std::uint32_t str_len_[kStrings] = {};
  std::uint32_t n_props_ = 0;
  std::uint8_t present_ = 0;
};

}  // namespace detail

/// A message in a device queue (SPEC 7.1): its lifecycle machine, its fields
/// and the packed sender content.
template <class Lifecycle>
struct basic_queued_message {
  detail::packed_message content;
  Lifecycle machine;
  lifecycle_fields fields;
  std::uint64_t sequence_number = 0;
  time_point enqueued_time{};
  ack_mode ack = ack_mode::none;

  message_state state() const noexcept { return machine.state(); }

  /// The earliest instant at which a timer (lock expiry or TTL) fires.
  time_point next_deadline() const noexcept {
    return state() == message_state::invisible ? std::min(fields.locked_until, fields.expires_at)
                                               : fields.expires_at;
  }
};

/// One device's queue of pending (Enqueued or Invisible) messages, oldest first.
/// Terminal messages leave the queue at once; the caller is told through an
/// `on_outcome(const queued_message&, time_point at)` callback.
template <class Lifecycle>
class basic_device_queue {
 public:
  using queued_message = basic_queued_message<Lifecycle>;

  /// Pending messages: Enqueued plus Invisible (cloudToDeviceMessageCount, SPEC 2.10).
  std::size_t depth() const noexcept { return entries_.size(); }
  bool empty() const noexcept { return entries_.empty(); }
  const std::vector<queued_message>& entries() const noexcept { return entries_; }

  /// Appends an accepted message as Enqueued. Limits are checked by the caller.
  void push(queued_message&& m, std::size_t max_depth) {
    if (entries_.size() == entries_.capacity()) {
      // grow by half, never past the depth limit: a queue is small and bounded
      const std::size_t want = std::max<std::size_t>(4, entries_.capacity() + entries_.capacity() / 2);
      entries_.reserve(std::max(entries_.size() + 1, std::min(want, max_depth)));
    }
    entries_.push_back(std::move(m));
  }

  /// The oldest Enqueued message (lowest sequence number), or null.
  queued_message* oldest_enqueued() noexcept {
    for (auto& e : entries_)
      if (e.state() == message_state::enqueued) return &e;
    return nullptr;
  }

  /// The Invisible message holding `token`, or null.
  queued_message* find_locked(const lock_token& token) noexcept {
    for (auto& e : entries_)
      if (e.state() == message_state::invisible && e.fields.token == token) return &e;
    return nullptr;
  }

  bool token_in_use(const lock_token& token) const noexcept {
    for (const auto& e : entries_)
      if (e.state() == message_state::invisible && e.fields.token == token) return true;
    return false;
  }

  /// Earliest timer of any pending message; `time_point::max()` if none.
  time_point next_deadline() const noexcept {
    time_point t = time_point::max();
    for (const auto& e : entries_) t = std::min(t, e.next_deadline());
    return t;
  }

  /// Applies every timer due at or before `now`, each at its own instant and in
  /// order per message, so the outcome does not depend on how often tick runs.
  template <class OnTransition>
  void apply_timers(time_point now, const lifecycle_rules& rules, OnTransition&& on_transition) {
    for (std::size_t i = 0; i < entries_.size();) {
      auto& e = entries_[i];
      while (!is_terminal(e.state())) {
        const time_point due = e.next_deadline();
        if (due > now) break;
        const auto from = e.state();
        if (from == message_state::invisible && e.fields.locked_until <= e.fields.expires_at &&
            e.fields.locked_until <= now) {
          (void)e.machine.process(lifecycle_event::lock_expired{{&e.fields, &rules, e.fields.locked_until}});
          on_transition(e, from, e.fields.locked_until);
        } else {
          (void)e.machine.process(lifecycle_event::ttl_expired{{&e.fields, &rules, e.fields.expires_at}});
          on_transition(e, from, e.fields.expires_at);
        }
      }
      if (is_terminal(e.state()))
        erase_at(i);
      else
        ++i;
    }
  }

  /// Removes the entry at `p` (which must point into this queue), keeping order.
  void erase(queued_message* p) { erase_at(static_cast<std::size_t>(p - entries_.data())); }

  /// Removes every entry, calling `f(entry)` on each first (purge, device removal).
  template <class F>
  std::size_t clear(F&& f) {
    for (auto& e : entries_) f(e);
    const std::size_t n = entries_.size();
    entries_.clear();
    entries_.shrink_to_fit();
    return n;
  }

 private:
  void erase_at(std::size_t i) { entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i)); }

  std::vector<queued_message> entries_;
};

using queued_message = basic_queued_message<lifecycle>;
using device_queue = basic_device_queue<lifecycle>;

}  // namespace devicebound
