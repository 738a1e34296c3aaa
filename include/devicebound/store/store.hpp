/// \file store/store.hpp
/// Where the hub's state lives (SPEC 1.2): `memory_store`. The change records
/// a store applies, the snapshot it loads and the `hub_store` concept it meets
/// are the engine's journal (journal.hpp): a store depends on the journal,
/// the journal never on a store.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "../errors.hpp"
#include "../hub_config.hpp"
#include "../journal.hpp"

namespace devicebound {

/// A store in memory: survives the hub (drop the hub, reopen it from here) but
/// not the process. For tests, and for embedded use where the process is the
/// unit of failure. Single-threaded, like the hub.
class memory_store {
 public:
  /// Applies one change set. A change that does not fit the stored state (a hub
  /// bug) is refused with 500001; the changes before it in the set stay applied.
  result<void> apply(const journal::change_set& changes) {
    if (fail_next_) {
      auto e = std::move(*fail_next_);
      fail_next_.reset();
      return e;
    }
    for (const auto& c : changes)
      if (auto r = std::visit([this](const auto& x) { return apply_one(x); }, c); !r)
        return make_error(errc::server_error, std::string("memory store: ") + journal::name_of(c) +
                                                  ": " + r.error().message);
    ++commits_;
    return {};
  }

  result<journal::snapshot> load() const {
    journal::snapshot s;
    s.config = config_;
    s.counters = counters_;
    for (const auto& [id, gen] : devices_)
      s.devices.push_back({id, gen});
    for (const auto& [seq, m] : messages_)
      s.messages.push_back(m);
    for (const auto& [id, r] : pending_)
      s.pending.push_back(r);
    for (const auto& [id, b] : batches_)
      s.batches.push_back(b);
    for (const auto& [id, d] : identities_)
      s.identities.push_back(d);
    for (const auto& [name, p] : policies_)
      s.policies.push_back(p);
    return s;
  }

  /// Only the identity registry (identities and policies), like `sqlite_store`'s.
  result<journal::snapshot> load_identities() const {
    journal::snapshot s;
    for (const auto& [id, d] : identities_)
      s.identities.push_back(d);
    for (const auto& [name, p] : policies_)
      s.policies.push_back(p);
    return s;
  }

  /// Makes the next `apply` fail with `e` and change nothing (fault injection for tests).
  void fail_next_apply(error e) { fail_next_ = std::move(e); }

  /// Change sets applied so far.
  std::uint64_t commits() const noexcept { return commits_; }

 private:
  static error bad(std::string what) { return make_error(errc::server_error, std::move(what)); }

  result<void> apply_one(const journal::device_added& c) {
    if (!devices_.emplace(c.device_id, c.generation_id).second)
      return bad("device '" + c.device_id + "' is already stored");
    return {};
  }
  result<void> apply_one(const journal::device_removed& c) {
    if (!devices_.erase(c.device_id))
      return bad("device '" + c.device_id + "' is not stored");
    std::erase_if(messages_, [&](const auto& kv) { return kv.second.device_id == c.device_id; });
    std::erase_if(pending_,
                  [&](const auto& kv) { return kv.second.record.device_id == c.device_id; });
    return {};
  }
  result<void> apply_one(const journal::message_accepted& c) {
    if (!devices_.contains(c.device_id))
      return bad("device '" + c.device_id + "' is not stored");
    journal::stored_message m;
    m.device_id = c.device_id;
    m.sequence_number = c.sequence_number;
    m.content = c.content;
    m.enqueued_time = c.enqueued_time;
    m.expires_at = c.expires_at;
    m.ack = c.ack;
    if (!messages_.emplace(c.sequence_number, std::move(m)).second)
      return bad("message " + std::to_string(c.sequence_number) + " is already stored");
    return {};
  }
  result<void> apply_one(const journal::message_changed& c) {
    auto it = messages_.find(c.sequence_number);
    if (it == messages_.end())
      return bad("message " + std::to_string(c.sequence_number) + " is not stored");
    it->second.state = c.state;
    it->second.delivery_count = c.delivery_count;
    it->second.token = c.token;
    it->second.locked_until = c.locked_until;
    return {};
  }
  result<void> apply_one(const journal::message_removed& c) {
    if (!messages_.erase(c.sequence_number))
      return bad("message " + std::to_string(c.sequence_number) + " is not stored");
    return {};
  }
  result<void> apply_one(const journal::feedback_pending& c) {
    if (!pending_.emplace(c.record_id, c).second)
      return bad("feedback record " + std::to_string(c.record_id) + " is already stored");
    return {};
  }
  result<void> apply_one(const journal::feedback_batched& c) {
    journal::stored_batch b;
    b.batch_id = c.batch_id;
    b.enqueued_time = c.enqueued_time;
    b.expires_at = c.expires_at;
    b.user_id = c.user_id;
    auto end = pending_.upper_bound(c.last_record_id);
    for (auto it = pending_.begin(); it != end; ++it)
      b.records.push_back(it->second.record);
    pending_.erase(pending_.begin(), end);
    if (!batches_.emplace(c.batch_id, std::move(b)).second)
      return bad("feedback batch " + std::to_string(c.batch_id) + " is already stored");
    return {};
  }
  result<void> apply_one(const journal::batch_changed& c) {
    auto it = batches_.find(c.batch_id);
    if (it == batches_.end())
      return bad("feedback batch " + std::to_string(c.batch_id) + " is not stored");
    it->second.state = c.state;
    it->second.delivery_count = c.delivery_count;
    it->second.token = c.token;
    it->second.locked_until = c.locked_until;
    return {};
  }
  result<void> apply_one(const journal::batch_removed& c) {
    if (!batches_.erase(c.batch_id))
      return bad("feedback batch " + std::to_string(c.batch_id) + " is not stored");
    return {};
  }
  result<void> apply_one(const journal::counters& c) {
    counters_ = c;
    return {};
  }
  result<void> apply_one(const journal::config_changed& c) {
    config_ = c.config;
    return {};
  }

  result<void> apply_one(const journal::identity_put& c) {
    identities_.insert_or_assign(c.identity.device_id, c.identity);
    return {};
  }
  result<void> apply_one(const journal::identity_removed& c) {
    if (!identities_.erase(c.device_id))
      return bad("identity '" + c.device_id + "' is not stored");
    return {};
  }
  result<void> apply_one(const journal::policy_put& c) {
    policies_.insert_or_assign(c.policy.name, c.policy);
    return {};
  }
  result<void> apply_one(const journal::policy_removed& c) {
    if (!policies_.erase(c.name))
      return bad("policy '" + c.name + "' is not stored");
    return {};
  }

  std::optional<hub_config> config_;
  std::optional<journal::counters> counters_;
  std::map<std::string, device_identity, std::less<>> identities_;
  std::map<std::string, auth::shared_access_policy, std::less<>> policies_;
  std::map<std::string, std::string, std::less<>> devices_;
  std::map<std::uint64_t, journal::stored_message> messages_;
  std::map<std::uint64_t, journal::feedback_pending> pending_;
  std::map<std::uint64_t, journal::stored_batch> batches_;
  std::optional<error> fail_next_;
  std::uint64_t commits_ = 0;
};

static_assert(hub_store<memory_store>);

}  // namespace devicebound
