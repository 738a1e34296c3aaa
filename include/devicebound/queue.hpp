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

/// The sender's part of a message in one heap block: a small header, then
/// the body, the string system properties, creation time and application
/// properties. The queue entry holds only the pointer, so a queued message
/// stays small (docs/architecture.md, "memory").
///
/// Block layout (lengths as LEB128 varints: one byte below 128):
///   u8 present-bits, body length, length of each present string, property
///   count, then the bytes: body, strings, [i64 creation ms, little-endian],
///   and per property: name length, value length, name, value.
/// The same bytes are what a store persists (`bytes()`, `from_bytes()`), so
/// the layout is part of the store's schema (store/sqlite.hpp).
class packed_message {
 public:
  packed_message() = default;

  static packed_message pack(const message& m) {
    const std::optional<std::string>* strs[kStrings] = {
        &m.message_id, &m.correlation_id, &m.user_id, &m.content_type, &m.content_encoding};
    std::uint8_t present = 0;
    std::size_t total =
        1 + varint_size(m.body.size()) + m.body.size() + varint_size(m.app_properties.size());
    for (std::size_t i = 0; i < kStrings; ++i)
      if (*strs[i]) {
        present |= static_cast<std::uint8_t>(1u << i);
        total += varint_size((*strs[i])->size()) + (*strs[i])->size();
      }
    if (m.creation_time_utc) {
      present |= kCreationBit;
      total += sizeof(std::int64_t);
    }
    for (const auto& [k, v] : m.app_properties)
      total += varint_size(k.size()) + varint_size(v.size()) + k.size() + v.size();

    packed_message p;
    p.blob_ = std::make_unique_for_overwrite<char[]>(total);
    char* out = p.blob_.get();
    auto put = [&out](const void* src, std::size_t n) {
      if (n)
        std::memcpy(out, src, n);
      out += n;
    };
    auto put_u32 = [&out](std::size_t v) {
      while (v >= 0x80) {
        *out++ = static_cast<char>((v & 0x7F) | 0x80);
        v >>= 7;
      }
      *out++ = static_cast<char>(v);
    };
    put(&present, 1);
    put_u32(m.body.size());
    for (std::size_t i = 0; i < kStrings; ++i)
      if (*strs[i])
        put_u32((*strs[i])->size());
    put_u32(m.app_properties.size());
    put(m.body.data(), m.body.size());
    for (std::size_t i = 0; i < kStrings; ++i)
      if (*strs[i])
        put((*strs[i])->data(), (*strs[i])->size());
    if (m.creation_time_utc) {
      const auto ms = static_cast<std::uint64_t>(m.creation_time_utc->time_since_epoch().count());
      for (int i = 0; i < 8; ++i)
        *out++ = static_cast<char>(ms >> (8 * i));
    }
    for (const auto& [k, v] : m.app_properties) {
      put_u32(k.size());
      put_u32(v.size());
      put(k.data(), k.size());
      put(v.data(), v.size());
    }
    return p;
  }

  /// Rebuilds the sender's fields into `m` (hub-assigned fields untouched).
  void unpack_into(message& m) const {
    header h = read_header();
    const char* in = h.data;
    m.body.assign(in, h.body_len);
    in += h.body_len;
    std::optional<std::string>* strs[kStrings] = {&m.message_id, &m.correlation_id, &m.user_id,
                                                  &m.content_type, &m.content_encoding};
    for (std::size_t i = 0; i < kStrings; ++i) {
      if (h.present & (1u << i)) {
        strs[i]->emplace(in, h.str_len[i]);
        in += h.str_len[i];
      } else {
        strs[i]->reset();
      }
    }
    if (h.present & kCreationBit) {
      m.creation_time_utc = time_point{duration{read_i64(in)}};
      in += 8;
    } else {
      m.creation_time_utc.reset();
    }
    m.app_properties.clear();
    for (std::uint32_t i = 0; i < h.n_props; ++i) {
      const auto kl = read_u32(in);
      const auto vl = read_u32(in);
      m.app_properties.emplace(std::string(in, kl), std::string(in + kl, vl));
      in += kl + vl;
    }
  }

  /// The block's bytes, for a store to persist; empty for a default-constructed message.
  std::string_view bytes() const noexcept {
    if (!blob_)
      return {};
    const header h = read_header();
    const char* in = h.data + h.body_len;
    for (std::size_t i = 0; i < kStrings; ++i)
      in += h.str_len[i];
    if (h.present & kCreationBit)
      in += 8;
    for (std::uint32_t i = 0; i < h.n_props; ++i) {
      const auto kl = read_u32(in);
      const auto vl = read_u32(in);
      in += kl + vl;
    }
    return std::string_view(blob_.get(), static_cast<std::size_t>(in - blob_.get()));
  }

  /// Rebuilds a message from `bytes()` read back from a store. The bytes are
  /// untrusted (a damaged file): every length is checked, and anything but an
  /// exact, well-formed block gives nullopt.
  static std::optional<packed_message> from_bytes(std::string_view b) {
    std::size_t pos = 0;
    auto varint = [&](std::size_t& v) {
      v = 0;
      for (int shift = 0; shift < 35; shift += 7) {
        if (pos >= b.size())
          return false;
        const auto c = static_cast<unsigned char>(b[pos++]);
        v |= static_cast<std::size_t>(c & 0x7F) << shift;
        if (!(c & 0x80))
          return v <= 0xFFFFFFFFu;
      }
      return false;
    };
    auto skip = [&](std::size_t n) {
      if (n > b.size() - pos)
        return false;
      pos += n;
      return true;
    };
    if (b.empty())
      return std::nullopt;
    const auto present = static_cast<std::uint8_t>(b[pos++]);
    if (present & ~static_cast<unsigned>(kCreationBit | ((1u << kStrings) - 1)))
      return std::nullopt;
    std::size_t body = 0, props = 0, lens[kStrings] = {};
    if (!varint(body))
      return std::nullopt;
    for (std::size_t i = 0; i < kStrings; ++i)
      if ((present & (1u << i)) && !varint(lens[i]))
        return std::nullopt;
    if (!varint(props) || !skip(body))
      return std::nullopt;
    for (std::size_t i = 0; i < kStrings; ++i)
      if (!skip(lens[i]))
        return std::nullopt;
    if ((present & kCreationBit) && !skip(8))
      return std::nullopt;
    for (std::size_t i = 0; i < props; ++i) {
      std::size_t kl = 0, vl = 0;
      if (!varint(kl) || !varint(vl) || !skip(kl) || !skip(vl))
        return std::nullopt;
    }
    if (pos != b.size())
      return std::nullopt;
    packed_message p;
    p.blob_ = std::make_unique_for_overwrite<char[]>(b.size());
    std::memcpy(p.blob_.get(), b.data(), b.size());
    return p;
  }

  /// The message id, if the sender set one (feedback needs it without unpacking).
  std::optional<std::string_view> message_id() const noexcept {
    if (!blob_)
      return std::nullopt;
    header h = read_header();
    if (!(h.present & 1u))
      return std::nullopt;
    return std::string_view(h.data + h.body_len, h.str_len[0]);
  }

 private:
  static constexpr std::size_t kStrings = 5;  // mid, cid, uid, ct, ce
  static constexpr std::uint8_t kCreationBit = 1u << kStrings;

  struct header {
    std::uint8_t present = 0;
    std::uint32_t body_len = 0;
    std::uint32_t str_len[kStrings] = {};
    std::uint32_t n_props = 0;
    const char* data = nullptr;  // first byte after the header
  };

  static constexpr std::size_t varint_size(std::size_t v) noexcept {
    std::size_t n = 1;
    while (v >= 0x80) {
      v >>= 7;
      ++n;
    }
    return n;
  }

  /// Reads one varint and advances `p` past it.
  static std::uint32_t read_u32(const char*& p) noexcept {
    std::uint32_t v = 0;
    for (int shift = 0;; shift += 7) {
      const auto b = static_cast<unsigned char>(*p++);
      v |= static_cast<std::uint32_t>(b & 0x7F) << shift;
      if (!(b & 0x80))
        return v;
    }
  }

  static std::int64_t read_i64(const char* p) noexcept {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
      v = v << 8 | static_cast<unsigned char>(p[i]);
    return static_cast<std::int64_t>(v);
  }

  header read_header() const noexcept {
    header h;
    const char* in = blob_.get();
    h.present = static_cast<std::uint8_t>(*in++);
    h.body_len = read_u32(in);
    for (std::size_t i = 0; i < kStrings; ++i)
      if (h.present & (1u << i))
        h.str_len[i] = read_u32(in);
    h.n_props = read_u32(in);
    h.data = in;
    return h;
  }

  std::unique_ptr<char[]> blob_;
};

/// A fresh machine brought to `state` (Enqueued or Invisible): a message or a
/// feedback batch read back from a store. The machine holds only its state;
/// the caller restores the fields (lock, delivery count) next to it.
template <class Lifecycle>
Lifecycle lifecycle_in(message_state state) {
  Lifecycle l;
  if (state == message_state::invisible) {
    lifecycle_fields scratch;  // the lock event's action writes here, not into the stored fields
    scratch.expires_at = time_point::max();
    const lifecycle_rules rules{};
    (void)l.process(
        lifecycle_event::lock{{&scratch, &rules, time_point{}}, lock_token{}, duration{0}});
  }
  return l;
}

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
      // grow in steps of a quarter (at least 4), never past the depth limit: a
      // queue is small and bounded, so slack matters more than reallocations
      const std::size_t want =
          entries_.capacity() + std::max<std::size_t>(4, entries_.capacity() / 4);
      entries_.reserve(std::max(entries_.size() + 1, std::min(want, max_depth)));
    }
    entries_.push_back(std::move(m));
  }

  /// The oldest Enqueued message (lowest sequence number), or null.
  queued_message* oldest_enqueued() noexcept {
    for (auto& e : entries_)
      if (e.state() == message_state::enqueued)
        return &e;
    return nullptr;
  }

  /// The Invisible message holding `token`, or null.
  queued_message* find_locked(const lock_token& token) noexcept {
    for (auto& e : entries_)
      if (e.state() == message_state::invisible && e.fields.token == token)
        return &e;
    return nullptr;
  }

  bool token_in_use(const lock_token& token) const noexcept {
    for (const auto& e : entries_)
      if (e.state() == message_state::invisible && e.fields.token == token)
        return true;
    return false;
  }

  /// Earliest timer of any pending message; `time_point::max()` if none.
  time_point next_deadline() const noexcept {
    time_point t = time_point::max();
    for (const auto& e : entries_)
      t = std::min(t, e.next_deadline());
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
        if (due > now)
          break;
        const auto from = e.state();
        if (from == message_state::invisible && e.fields.locked_until <= e.fields.expires_at &&
            e.fields.locked_until <= now) {
          (void)e.machine.process(
              lifecycle_event::lock_expired{{&e.fields, &rules, e.fields.locked_until}});
          on_transition(e, from, e.fields.locked_until);
        } else {
          (void)e.machine.process(
              lifecycle_event::ttl_expired{{&e.fields, &rules, e.fields.expires_at}});
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
    for (auto& e : entries_)
      f(e);
    const std::size_t n = entries_.size();
    entries_.clear();
    entries_.shrink_to_fit();
    return n;
  }

 private:
  void erase_at(std::size_t i) {
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
  }

  std::vector<queued_message> entries_;
};

using queued_message = basic_queued_message<lifecycle>;
using device_queue = basic_device_queue<lifecycle>;

}  // namespace devicebound
