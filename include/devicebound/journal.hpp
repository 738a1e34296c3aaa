/// \file journal.hpp
/// What the engine tells a store (SPEC 1.2): the change records a hub emits
/// and the snapshot it is rebuilt from, plus the `hub_store` concept a store
/// meets. Plain values beside the engine, so the engine never includes `store/`:
/// stores depend on the engine and this journal, never the other way round.
///
/// Each hub operation appends typed change records to a journal and hands the
/// whole journal to `store.apply(changes)` before it returns: a store applies
/// one change set atomically (one transaction), or fails and the hub refuses
/// every later operation until it is reopened (docs/architecture.md,
/// "Durability"). `basic_hub::open(config, store, tokens)` rebuilds a hub from
/// `store.load()`.
#pragma once

#include <concepts>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "auth/policy.hpp"
#include "errors.hpp"
#include "feedback_batch.hpp"
#include "hub_config.hpp"
#include "identity.hpp"
#include "lifecycle.hpp"
#include "message.hpp"

namespace devicebound {

namespace journal {

// --- change records ---------------------------------------------------------------
// Messages are keyed by sequence number (one counter per hub: unique, never
// reused), feedback records and batches by ids the hub assigns the same way.

/// A device was registered.
struct device_added {
  std::string device_id;
  std::string generation_id;
  friend bool operator==(const device_added&, const device_added&) = default;
};

/// A device was removed, and with it its queued messages and its feedback
/// records not yet in a batch (SPEC 1.4, 4.9). Batched records stay.
struct device_removed {
  std::string device_id;
  friend bool operator==(const device_removed&, const device_removed&) = default;
};

/// A send was accepted: the message is Enqueued, delivery count 0, no lock.
struct message_accepted {
  std::string device_id;
  std::uint64_t sequence_number = 0;
  std::string content;  ///< the sender's part, `detail::packed_message::bytes()`
  time_point enqueued_time{};
  time_point expires_at{};
  ack_mode ack = ack_mode::none;
  friend bool operator==(const message_accepted&, const message_accepted&) = default;
};

/// A queued message changed state (Enqueued <-> Invisible), lock or delivery count.
struct message_changed {
  std::uint64_t sequence_number = 0;
  message_state state = message_state::enqueued;  ///< Enqueued or Invisible
  std::uint32_t delivery_count = 0;
  lock_token token{};         ///< nil unless Invisible
  time_point locked_until{};  ///< meaningful while Invisible
  friend bool operator==(const message_changed&, const message_changed&) = default;
};

/// A message left its queue (terminal outcome or purge; its feedback record,
/// if any, is a `feedback_pending` of the same change set).
struct message_removed {
  std::uint64_t sequence_number = 0;
  friend bool operator==(const message_removed&, const message_removed&) = default;
};

/// A feedback record was created and waits for a batch.
struct feedback_pending {
  std::uint64_t record_id = 0;  ///< increasing: pending records are in id order
  feedback_record record;
  friend bool operator==(const feedback_pending&, const feedback_pending&) = default;
};

/// A feedback batch was formed from every pending record with an id up to
/// `last_record_id` (the oldest ones, SPEC 4.3) and entered the feedback queue.
struct feedback_batched {
  std::uint64_t batch_id = 0;
  std::uint64_t last_record_id = 0;
  time_point enqueued_time{};
  time_point expires_at{};
  std::string user_id;
  friend bool operator==(const feedback_batched&, const feedback_batched&) = default;
};

/// A batch in the feedback queue was locked, abandoned or its lock expired.
struct batch_changed {
  std::uint64_t batch_id = 0;
  message_state state = message_state::enqueued;  ///< Enqueued or Invisible
  std::uint32_t delivery_count = 0;
  lock_token token{};
  time_point locked_until{};
  friend bool operator==(const batch_changed&, const batch_changed&) = default;
};

/// A batch left the feedback queue (completed, expired or over its delivery limit), with its
/// records.
struct batch_removed {
  std::uint64_t batch_id = 0;
  friend bool operator==(const batch_removed&, const batch_removed&) = default;
};

/// Hub-wide counters: the last record of every change set (and, alone, of an
/// operation that only moved the clock).
struct counters {
  std::uint64_t last_sequence = 0;       ///< high-water mark: sequence numbers never repeat
  time_point last_now{};                 ///< times never go backwards, across restarts too
  std::optional<time_point> last_flush;  ///< when the last feedback batch went out (SPEC 4.3)
  std::uint64_t next_record_id = 1;
  std::uint64_t next_batch_id = 1;
  hub_stats stats;
  std::uint64_t feedback_batches_dropped = 0;
  friend bool operator==(const counters&, const counters&) = default;
};

/// The hub was opened with this configuration (first open, or a changed one).
struct config_changed {
  hub_config config;
  friend bool operator==(const config_changed&, const config_changed&) = default;
};

/// The identity registry (registry.hpp) stored a device identity: created or
/// replaced whole (SPEC 12.2).
struct identity_put {
  device_identity identity;
  friend bool operator==(const identity_put&, const identity_put&) = default;
};

/// A device identity was deleted (its engine side is a `device_removed`).
struct identity_removed {
  std::string device_id;
  friend bool operator==(const identity_removed&, const identity_removed&) = default;
};

/// A shared access policy was created or replaced (SPEC 12.9).
struct policy_put {
  auth::shared_access_policy policy;
  friend bool operator==(const policy_put&, const policy_put&) = default;
};

/// A shared access policy was deleted.
struct policy_removed {
  std::string name;
  friend bool operator==(const policy_removed&, const policy_removed&) = default;
};

/// One change. Applied in order; a `change_set` is atomic.
using change =
    std::variant<device_added, device_removed, message_accepted, message_changed, message_removed,
                 feedback_pending, feedback_batched, batch_changed, batch_removed, counters,
                 config_changed, identity_put, identity_removed, policy_put, policy_removed>;

/// The changes of one hub operation: a store applies all of them or none.
using change_set = std::vector<change>;

// --- the snapshot a hub is rebuilt from ---------------------------------------------

/// A queued message as stored.
struct stored_message {
  std::string device_id;
  std::uint64_t sequence_number = 0;
  std::string content;
  time_point enqueued_time{};
  time_point expires_at{};
  ack_mode ack = ack_mode::none;
  message_state state = message_state::enqueued;
  std::uint32_t delivery_count = 0;
  lock_token token{};
  time_point locked_until{};
  friend bool operator==(const stored_message&, const stored_message&) = default;
};

/// A feedback batch as stored, with its records in order.
struct stored_batch {
  std::uint64_t batch_id = 0;
  std::vector<feedback_record> records;
  time_point enqueued_time{};
  time_point expires_at{};
  std::string user_id;
  message_state state = message_state::enqueued;
  std::uint32_t delivery_count = 0;
  lock_token token{};
  time_point locked_until{};
  friend bool operator==(const stored_batch&, const stored_batch&) = default;
};

/// Everything durable. `counters` is nullopt for a store no hub has written.
struct snapshot {
  std::optional<hub_config> config;
  std::optional<journal::counters> counters;
  std::vector<device_added> devices;      ///< by device id
  std::vector<stored_message> messages;   ///< by sequence number
  std::vector<feedback_pending> pending;  ///< by record id
  std::vector<stored_batch> batches;      ///< by batch id
  /// The identity registry: devices by device id, policies by name.
  std::vector<device_identity> identities;
  std::vector<auth::shared_access_policy> policies;
  friend bool operator==(const snapshot&, const snapshot&) = default;
};

/// A short name of a change record, for error messages.
inline const char* name_of(const change& c) noexcept {
  static constexpr const char* names[] = {"device_added",     "device_removed",  "message_accepted",
                                          "message_changed",  "message_removed", "feedback_pending",
                                          "feedback_batched", "batch_changed",   "batch_removed",
                                          "counters",         "config_changed",  "identity_put",
                                          "identity_removed", "policy_put",      "policy_removed"};
  static_assert(std::size(names) == std::variant_size_v<change>);
  return names[c.index()];
}

}  // namespace journal

/// A place the hub's state lives. `apply` commits one change set atomically
/// (all of it or nothing) and returns only once it is as durable as the store
/// promises; `load` reads back everything applied so far.
template <class S>
concept hub_store = requires(S& s, const journal::change_set& changes) {
  { s.apply(changes) } -> std::same_as<result<void>>;
  { s.load() } -> std::same_as<result<journal::snapshot>>;
};

}  // namespace devicebound
