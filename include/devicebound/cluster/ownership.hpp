/// \file cluster/ownership.hpp
/// `ownership_controller`: which partitions one hub instance of a partitioned hub
/// owns (docs/scale-out.md, "Partitions and ownership"). Sans-I/O: it reads time
/// from an injected clock and reaches the lease rows through an injected
/// `lease_table` (store/postgres.hpp's `postgres_store` through
/// cluster/postgres_leases.hpp, or a fake in tests); it starts no thread, never
/// sleeps and includes no database header.
///
/// The daemon calls `tick()` about every `renew_interval` (`next_tick_at()`
/// says when), `report_lost` when a partition's store refuses a commit because
/// the lease is gone, and `shutdown()` on SIGTERM once its partitions have
/// stopped taking work; it acts on the events these return:
///
/// - `claimed k at epoch e`: open partition k's store under (owner, e) and load it;
/// - `lost k`: stop partition k at once, acknowledge nothing more of it, drop it;
/// - `released k`: partition k was given up cleanly (shutdown).
///
/// Each partition is, in this instance's view, `free` (not held here; maybe
/// held by another instance) or `held` (at an epoch, believed valid until
/// `valid_until`); the controller is `running` until `shutdown()`, then
/// `stopped`. Transitions (in the order one `tick` takes them):
///
/// | from | on | to | emits |
/// |---|---|---|---|
/// | held | renewal due, renew accepted | held (valid_until = request start + ttl) | - |
/// | held | renewal due, refused as lease lost | free | lost k |
/// | held | renewal due, other failure, valid_until not reached | held (retried next tick) | - |
/// | held | renewal due, other failure, valid_until reached | free | lost k |
/// | free | claim round, claim accepted | held (valid_until = request start + ttl) | claimed k at e
/// | | free | claim round, claim refused | free | - | | held | report_lost(k, e) at its epoch |
/// free | lost k | | held | shutdown, release accepted | free, stopped | released k | | held |
/// shutdown, release refused as lease lost | free, stopped | lost k | | held | shutdown, release
/// failed otherwise | free, stopped | released k (with why: ends by ttl) |
///
/// Renewals run before claims and every `lost` of a tick precedes its first
/// `claimed`; a partition lost in a tick is not claimed again in that tick.
/// A belief is never longer than the lease row: `valid_until` counts the ttl
/// from the moment the request was *sent* (the clock is read before each call),
/// while the lease table counts it from when it ran.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../message.hpp"
#include "partition.hpp"

namespace devicebound::cluster {

/// Lease rows of a partitioned hub, one per partition: `claim` takes a free,
/// released or expired lease for `owner` for `ttl` and returns its new epoch
/// (bumped by every claim); `renew` extends the lease `owner` holds at `epoch`
/// (it may also revive an expired lease nobody claimed since); `release` gives it
/// up at once. `is_lease_lost(e)` tells a refusal because the lease is no longer
/// (owner, epoch)'s apart from other failures (a database that cannot be reached).
template <class L>
concept lease_table = requires(L& l, const L& cl, std::uint32_t k, std::string_view owner,
                               std::uint64_t epoch, std::chrono::milliseconds ttl, const error& e) {
  { l.claim(k, owner, ttl) } -> std::same_as<result<std::uint64_t>>;
  { l.renew(k, owner, epoch, ttl) } -> std::same_as<result<void>>;
  { l.release(k, owner, epoch) } -> std::same_as<result<void>>;
  { cl.is_lease_lost(e) } -> std::convertible_to<bool>;
};

/// Anything with `now()` (clock.hpp's clocks have it). It should not go back:
/// give the controller a monotonic clock; a reading earlier than the previous one
/// is taken as the previous one.
template <class C>
concept time_source = requires(const C& c) {
  { c.now() } -> std::same_as<time_point>;
};

/// Limits of `ownership_options`.
inline constexpr std::chrono::milliseconds min_renew_interval{10};
inline constexpr std::chrono::milliseconds max_renew_interval{60'000};
inline constexpr std::chrono::milliseconds max_lease_ttl{600'000};
inline constexpr std::size_t max_owner_length = 200;

/// Settings of an `ownership_controller`.
struct ownership_options {
  /// This instance's name in the lease rows: one process incarnation (host,
  /// PID, start time), 1..200 bytes. Two instances must never share one.
  std::string owner;
  /// K, the hub's partition count (1..max_partitions).
  std::uint32_t partitions = 1;
  /// How long a claim or renewal holds the lease: more than twice
  /// `renew_interval`, at most 10 min.
  std::chrono::milliseconds ttl{5'000};
  /// How often a held lease is renewed: 10 ms..60 s.
  std::chrono::milliseconds renew_interval{1'000};
  /// How many instances the hub is meant to run, if known (>= 1). Unset: the
  /// fair share is every partition (take all that are free). Set to n: claim
  /// up to ceil(K / n) at once, and more only on an overflow round.
  std::optional<std::uint32_t> expected_instances;
  /// With `expected_instances`: how often an instance that has its fair share
  /// takes the free partitions left over (peers that never started, or died):
  /// `renew_interval`..10 min. The first overflow round is `startup_grace`
  /// after the first tick.
  std::chrono::milliseconds overflow_after{5'000};
  /// With `expected_instances`: how long after its first tick an instance waits
  /// before its first overflow round, so that peers starting together each get
  /// their share first (a slow peer's start must fit in it). Unset: `overflow_after`.
  /// `renew_interval`..10 min.
  std::optional<std::chrono::milliseconds> startup_grace;
};

/// Checks `o`; 400004 naming the first setting out of range.
inline result<void> validate(const ownership_options& o) {
  auto bad = [](std::string what) {
    return make_error(errc::argument_invalid, std::move(what));
  };
  auto ms = [](std::chrono::milliseconds d) {
    return std::to_string(d.count()) + " ms";
  };
  if (o.owner.empty())
    return bad("ownership: the owner name is empty");
  if (o.owner.size() > max_owner_length)
    return bad("ownership: the owner name is " + std::to_string(o.owner.size()) +
               " bytes long; the limit is " + std::to_string(max_owner_length));
  if (auto r = validate_partition_count(o.partitions); !r)
    return bad("ownership: " + r.error().message);
  if (o.renew_interval < min_renew_interval || o.renew_interval > max_renew_interval)
    return bad("ownership: renew_interval " + ms(o.renew_interval) + " is outside " +
               ms(min_renew_interval) + ".." + ms(max_renew_interval));
  if (o.ttl <= 2 * o.renew_interval || o.ttl > max_lease_ttl)
    return bad("ownership: ttl " + ms(o.ttl) + " must be more than twice renew_interval (" +
               ms(o.renew_interval) + ") and at most " + ms(max_lease_ttl));
  if (o.expected_instances && *o.expected_instances == 0)
    return bad("ownership: expected_instances is 0; a hub runs at least 1");
  if (o.overflow_after < o.renew_interval || o.overflow_after > max_lease_ttl)
    return bad("ownership: overflow_after " + ms(o.overflow_after) +
               " is outside renew_interval (" + ms(o.renew_interval) + ").." + ms(max_lease_ttl));
  if (o.startup_grace && (*o.startup_grace < o.renew_interval || *o.startup_grace > max_lease_ttl))
    return bad("ownership: startup_grace " + ms(*o.startup_grace) + " is outside renew_interval (" +
               ms(o.renew_interval) + ").." + ms(max_lease_ttl));
  return {};
}

/// What the daemon must act on.
enum class ownership_event_kind : std::uint8_t {
  claimed,   ///< this instance holds the partition at `epoch`: open it under that epoch and load it
  lost,      ///< this instance no longer holds it: stop it and acknowledge nothing more of it
  released,  ///< given up on shutdown
};

/// `claimed`, `lost`, `released`.
constexpr std::string_view to_string(ownership_event_kind k) noexcept {
  switch (k) {
    case ownership_event_kind::claimed:
      return "claimed";
    case ownership_event_kind::lost:
      return "lost";
    case ownership_event_kind::released:
      return "released";
  }
  return "claimed";
}

/// One event: what happened to which partition, at which epoch (for `lost` and
/// `released`, the epoch that was held), and for `lost` (and a `released` whose
/// release call failed) the error that caused it.
struct ownership_event {
  ownership_event_kind kind = ownership_event_kind::claimed;
  std::uint32_t partition = 0;
  std::uint64_t epoch = 0;
  std::optional<error> why;
  friend bool operator==(const ownership_event&, const ownership_event&) = default;
};

/// A partition in one instance's view.
enum class partition_state : std::uint8_t {
  free,  ///< not held by this instance
  held,  ///< held at an epoch (valid until `valid_until`)
};

/// The controller's own state.
enum class controller_state : std::uint8_t {
  running,  ///< ticking
  stopped,  ///< after shutdown(): holds nothing, refuses tick and report_lost
};

/// Partition ownership of one hub instance (see the file comment for the table).
template <lease_table Leases, time_source Clock>
class ownership_controller {
 public:
  /// Checks the options (400004 naming the problem).
  static result<ownership_controller> create(ownership_options o, Leases leases, Clock clock) {
    if (auto r = validate(o); !r)
      return r.error();
    return ownership_controller(std::move(o), std::move(leases), std::move(clock));
  }

  /// Renews the leases due, steps down from those that cannot be renewed, then
  /// claims free partitions up to the fair share (or all that are free on an
  /// overflow round). Every `lost` comes before every `claimed`. Refused (409002)
  /// once stopped.
  result<std::vector<ownership_event>> tick() {
    if (state_ == controller_state::stopped)
      return stopped_error("tick");
    std::vector<ownership_event> events;
    const time_point start = now();
    if (!first_tick_) {
      first_tick_ = start;
      next_overflow_ =
          saturating_add(start, options_.startup_grace.value_or(options_.overflow_after));
    }
    last_tick_ = start;
    std::vector<bool> lost_now(slots_.size(), false);

    // 1. renewals (and step-downs)
    for (std::uint32_t k = 0; k < slots_.size(); ++k) {
      slot& s = slots_[k];
      if (!s.held || now() < saturating_add(s.renewed_at, options_.renew_interval))
        continue;
      const time_point sent = now();
      auto r = leases_.renew(k, options_.owner, s.epoch, options_.ttl);
      if (r) {
        s.renewed_at = sent;
        s.valid_until = saturating_add(sent, options_.ttl);
        continue;
      }
      if (leases_.is_lease_lost(r.error())) {
        events.push_back(step_down(k, r.error()));
        lost_now[k] = true;
        continue;
      }
      last_error_ = r.error();
      if (now() >= s.valid_until) {
        events.push_back(step_down(
            k, make_error(r.error().code, "lease of partition " + std::to_string(k) +
                                              " ran out without a renewal: " + r.error().message)));
        lost_now[k] = true;
      }
    }

    // 2. claims: up to the fair share, or every free partition on an overflow round
    const std::uint32_t share = fair_share();
    std::uint32_t holding = held_count();
    const bool overflow =
        options_.expected_instances && holding >= share && now() >= next_overflow_;
    if (overflow)
      next_overflow_ = saturating_add(now(), options_.overflow_after);
    const std::uint32_t K = options_.partitions;
    for (std::uint32_t i = 0; i < K; ++i) {
      if (!overflow && holding >= share)
        break;
      const std::uint32_t k = (rotation_ + i) % K;
      if (slots_[k].held || lost_now[k])
        continue;
      const time_point sent = now();
      auto r = leases_.claim(k, options_.owner, options_.ttl);
      if (!r)
        continue;  // held by another instance, or the table could not be reached: next tick
      slot& s = slots_[k];
      s.held = true;
      s.epoch = *r;
      s.renewed_at = sent;
      s.valid_until = saturating_add(sent, options_.ttl);
      ++holding;
      events.push_back({ownership_event_kind::claimed, k, *r, std::nullopt});
    }
    return events;
  }

  /// The daemon's store refused a commit of partition `k` at `epoch` because
  /// the lease is gone (store/postgres.hpp's `is_lease_lost`): step down now.
  /// Returns `lost k`, or nothing if `k` is not held at `epoch` (already stepped
  /// down, or held again at a newer epoch). 400004 for `k` out of range, 409002
  /// once stopped.
  result<std::vector<ownership_event>> report_lost(std::uint32_t k, std::uint64_t epoch,
                                                   error why) {
    if (state_ == controller_state::stopped)
      return stopped_error("report_lost");
    if (k >= options_.partitions)
      return make_error(errc::argument_invalid, "ownership: partition " + std::to_string(k) +
                                                    " is out of range (0.." +
                                                    std::to_string(options_.partitions - 1) + ")");
    std::vector<ownership_event> events;
    if (slots_[k].held && slots_[k].epoch == epoch)
      events.push_back(step_down(k, std::move(why)));
    return events;
  }

  /// Releases every held lease (clean shutdown: another instance may claim them
  /// at once) and stops. Call it once this instance's partitions have stopped
  /// taking work and committed. A lease whose release fails still ends when its
  /// ttl runs out. `lost` events come first. A second call returns nothing.
  std::vector<ownership_event> shutdown() {
    std::vector<ownership_event> lost, released;
    if (state_ == controller_state::stopped)
      return lost;
    for (std::uint32_t k = 0; k < slots_.size(); ++k) {
      slot& s = slots_[k];
      if (!s.held)
        continue;
      auto r = leases_.release(k, options_.owner, s.epoch);
      if (!r && leases_.is_lease_lost(r.error())) {
        lost.push_back(step_down(k, r.error()));
        continue;
      }
      ownership_event e{ownership_event_kind::released, k, s.epoch, std::nullopt};
      if (!r)
        e.why = make_error(r.error().code, "release of partition " + std::to_string(k) +
                                               " failed; its lease ends when its ttl runs out: " +
                                               r.error().message);
      s = slot{};
      released.push_back(std::move(e));
    }
    state_ = controller_state::stopped;
    lost.insert(lost.end(), std::make_move_iterator(released.begin()),
                std::make_move_iterator(released.end()));
    return lost;
  }

  /// Whether this instance holds `k` with a lease it may still believe valid at
  /// `now` (its belief never outlasts the lease row).
  bool owns(std::uint32_t k, time_point now) const {
    return k < slots_.size() && slots_[k].held && now < slots_[k].valid_until;
  }
  bool owns(std::uint32_t k) const { return owns(k, clock_.now()); }
  /// The partition's state in this instance's view (`held` even once its
  /// validity ran out, until a tick steps down).
  partition_state state_of(std::uint32_t k) const {
    return k < slots_.size() && slots_[k].held ? partition_state::held : partition_state::free;
  }
  /// The epoch `k` is held at, if held.
  std::optional<std::uint64_t> epoch(std::uint32_t k) const {
    if (state_of(k) != partition_state::held)
      return std::nullopt;
    return slots_[k].epoch;
  }
  /// Until when this instance believes it holds `k`, if held.
  std::optional<time_point> valid_until(std::uint32_t k) const {
    if (state_of(k) != partition_state::held)
      return std::nullopt;
    return slots_[k].valid_until;
  }
  /// The partitions held, ascending.
  std::vector<std::uint32_t> held() const {
    std::vector<std::uint32_t> out;
    for (std::uint32_t k = 0; k < slots_.size(); ++k)
      if (slots_[k].held)
        out.push_back(k);
    return out;
  }
  /// How many partitions this instance claims without waiting for an overflow
  /// round: ceil(K / expected_instances), or K.
  std::uint32_t fair_share() const {
    const std::uint32_t K = options_.partitions;
    if (!options_.expected_instances)
      return K;
    const std::uint32_t n = *options_.expected_instances;
    return K / n + (K % n != 0 ? 1 : 0);
  }
  /// Changes `expected_instances` (the daemon learned the cluster's size);
  /// 400004 for 0. Nothing is released: a share only limits claims.
  result<void> set_expected_instances(std::optional<std::uint32_t> n) {
    ownership_options o = options_;
    o.expected_instances = n;
    if (auto r = validate(o); !r)
      return r;
    options_ = std::move(o);
    return {};
  }
  /// When `tick` should run next: the earliest renewal due, and at least every
  /// `renew_interval` (claims are tried on every tick). `time_point::max()` once stopped.
  time_point next_tick_at() const {
    if (state_ == controller_state::stopped)
      return time_point::max();
    if (!last_tick_)
      return clock_.now();
    time_point t = saturating_add(*last_tick_, options_.renew_interval);
    for (const slot& s : slots_)
      if (s.held)
        t = std::min(t, saturating_add(s.renewed_at, options_.renew_interval));
    return t;
  }
  controller_state state() const noexcept { return state_; }
  const ownership_options& options() const noexcept { return options_; }
  /// The last renewal failure that was not a lost lease (kept for logs).
  const std::optional<error>& last_error() const noexcept { return last_error_; }
  Leases& leases() noexcept { return leases_; }

 private:
  struct slot {
    bool held = false;
    std::uint64_t epoch = 0;
    time_point renewed_at{};   ///< when the last accepted claim or renewal was sent
    time_point valid_until{};  ///< renewed_at + ttl
  };

  ownership_controller(ownership_options o, Leases leases, Clock clock)
      : options_(std::move(o)),
        leases_(std::move(leases)),
        clock_(std::move(clock)),
        slots_(options_.partitions),
        // instances starting together try the partitions in different orders
        rotation_(
            static_cast<std::uint32_t>(partition_hash(options_.owner) % options_.partitions)) {}

  time_point now() {
    const time_point t = clock_.now();
    if (!last_now_ || t > *last_now_)
      last_now_ = t;
    return *last_now_;
  }
  std::uint32_t held_count() const {
    return static_cast<std::uint32_t>(
        std::count_if(slots_.begin(), slots_.end(), [](const slot& s) { return s.held; }));
  }
  ownership_event step_down(std::uint32_t k, error why) {
    ownership_event e{ownership_event_kind::lost, k, slots_[k].epoch, std::move(why)};
    slots_[k] = slot{};
    return e;
  }
  error stopped_error(const char* what) const {
    return make_error(errc::invalid_operation, std::string("ownership: cannot ") + what +
                                                   " after shutdown (owner '" + options_.owner +
                                                   "')");
  }

  ownership_options options_;
  Leases leases_;
  Clock clock_;
  std::vector<slot> slots_;
  std::uint32_t rotation_ = 0;
  controller_state state_ = controller_state::running;
  std::optional<time_point> first_tick_;
  std::optional<time_point> last_tick_;
  std::optional<time_point> last_now_;
  time_point next_overflow_{};
  std::optional<error> last_error_;
};

}  // namespace devicebound::cluster
