/// \file lifecycle.hpp
/// One C2D message's lifecycle as a Boost.MSM state machine (SPEC 1.3-1.5, 7.3-7.4).
///
/// The transition table below *is* the rule set: hold it next to SPEC 1.4.
/// The machine keeps only the state; the data the guards and actions read and
/// write (delivery count, lock, expiry) travels with each event as a reference
/// to the message's `lifecycle_fields`. Not thread-safe: one owner at a time.
#pragma once

#include <boost/mpl/vector/vector20.hpp>
#include <boost/msm/back/state_machine.hpp>
#include <boost/msm/back/tools.hpp>
#include <boost/msm/front/functor_row.hpp>
#include <boost/msm/front/state_machine_def.hpp>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

#include "errors.hpp"
#include "message.hpp"

namespace devicebound {

/// Where a message is in its lifecycle (SPEC 1.3). Completed, dead_lettered
/// and purged are terminal.
enum class message_state : std::uint8_t { enqueued, invisible, completed, dead_lettered, purged };

constexpr std::string_view to_string(message_state s) noexcept {
  switch (s) {
    case message_state::enqueued:
      return "Enqueued";
    case message_state::invisible:
      return "Invisible";
    case message_state::completed:
      return "Completed";
    case message_state::dead_lettered:
      return "DeadLettered";
    case message_state::purged:
      return "Purged";
  }
  return "Enqueued";
}

/// Parses a state's `to_string` spelling exactly (`DeadLettered`); nullopt otherwise.
constexpr std::optional<message_state> parse_message_state(std::string_view s) noexcept {
  for (auto v : {message_state::enqueued, message_state::invisible, message_state::completed,
                 message_state::dead_lettered, message_state::purged})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

constexpr bool is_terminal(message_state s) noexcept {
  return s == message_state::completed || s == message_state::dead_lettered ||
         s == message_state::purged;
}

/// Why a message was dead-lettered (SPEC 1.4; feedback statusCode).
enum class dead_letter_reason : std::uint8_t { none, rejected, expired, delivery_count_exceeded };

constexpr std::string_view to_string(dead_letter_reason r) noexcept {
  switch (r) {
    case dead_letter_reason::none:
      return "None";
    case dead_letter_reason::rejected:
      return "Rejected";
    case dead_letter_reason::expired:
      return "Expired";
    case dead_letter_reason::delivery_count_exceeded:
      return "DeliveryCountExceeded";
  }
  return "None";
}

/// Parses a reason's `to_string` spelling exactly (`DeliveryCountExceeded`); nullopt otherwise.
constexpr std::optional<dead_letter_reason> parse_dead_letter_reason(std::string_view s) noexcept {
  for (auto v : {dead_letter_reason::none, dead_letter_reason::rejected,
                 dead_letter_reason::expired, dead_letter_reason::delivery_count_exceeded})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// Which transitions count toward max delivery count (SPEC 1.4).
enum class delivery_count_rule : std::uint8_t {
  /// Current docs: only abandon counts; a lock expiry re-enqueues without counting,
  /// so a message may cycle until its TTL.
  abandon_only,
  /// Docs of 2017-2022: every Enqueued -> Invisible counts (every delivery).
  every_delivery,
};

/// `abandon_only` or `every_delivery`: the spelling of stores, config files and bindings.
constexpr std::string_view to_string(delivery_count_rule r) noexcept {
  switch (r) {
    case delivery_count_rule::abandon_only:
      return "abandon_only";
    case delivery_count_rule::every_delivery:
      return "every_delivery";
  }
  return "abandon_only";
}

/// Parses `abandon_only` or `every_delivery` (exact spelling); nullopt otherwise.
constexpr std::optional<delivery_count_rule> parse_delivery_count_rule(
    std::string_view s) noexcept {
  for (auto v : {delivery_count_rule::abandon_only, delivery_count_rule::every_delivery})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// The rules one lifecycle runs under.
struct lifecycle_rules {
  std::uint32_t max_delivery_count = 10;  ///< 1..100 (SPEC 2.1)
  delivery_count_rule rule = delivery_count_rule::abandon_only;
};

/// The per-message data the lifecycle reads and writes.
struct lifecycle_fields {
  time_point expires_at{};    ///< absolute expiry (TTL)
  time_point locked_until{};  ///< lock expiry, valid while Invisible
  lock_token token{};         ///< current lock, nil unless Invisible
  std::uint32_t delivery_count = 0;
  dead_letter_reason reason = dead_letter_reason::none;
};

/// Events of the lifecycle machine (SPEC 1.4). Each carries the message's
/// fields, the rules, and the instant it happens at.
namespace lifecycle_event {
struct base {
  lifecycle_fields* fields;
  const lifecycle_rules* rules;
  time_point now;
};
/// The device receives: the hub locks the message (Enqueued -> Invisible).
struct lock : base {
  lock_token token;
  duration lock_for;
  static constexpr const char* name = "lock";
};
struct complete : base {
  static constexpr const char* name = "complete";
};
struct reject : base {
  static constexpr const char* name = "reject";
};
struct abandon : base {
  static constexpr const char* name = "abandon";
};
/// The lock timed out without a settlement (SPEC 1.5).
struct lock_expired : base {
  static constexpr const char* name = "lock_expired";
};
/// The message's expiry time passed (SPEC 1.4).
struct ttl_expired : base {
  static constexpr const char* name = "ttl_expired";
};
struct purge : base {
  static constexpr const char* name = "purge";
};
}  // namespace lifecycle_event

namespace detail {

namespace msm = boost::msm;
namespace mpl = boost::mpl;

struct lifecycle_def : msm::front::state_machine_def<lifecycle_def> {
  using no_exception_thrown = int;
  using no_message_queue = int;

  // --- states ---------------------------------------------------------------
  struct enqueued : msm::front::state<> {
    static constexpr message_state id = message_state::enqueued;
    static constexpr const char* name = "Enqueued";
  };
  struct invisible : msm::front::state<> {
    static constexpr message_state id = message_state::invisible;
    static constexpr const char* name = "Invisible";
  };
  struct completed : msm::front::state<> {
    static constexpr message_state id = message_state::completed;
    static constexpr const char* name = "Completed";
  };
  struct dead_lettered : msm::front::state<> {
    static constexpr message_state id = message_state::dead_lettered;
    static constexpr const char* name = "DeadLettered";
  };
  struct purged : msm::front::state<> {
    static constexpr message_state id = message_state::purged;
    static constexpr const char* name = "Purged";
  };
  using initial_state = enqueued;

  // --- guards ---------------------------------------------------------------
  /// Not past its expiry: an expired message is never handed out (SPEC 1.4).
  struct not_expired {
    static constexpr const char* name = "now < expires_at";
    template <class E, class M, class S, class T>
    bool operator()(const E& e, M&, S&, T&) const {
      return e.now < e.fields->expires_at;
    }
  };
  /// This abandon leaves the delivery count below the maximum.
  struct abandon_within_max {
    static constexpr const char* name = "count after abandon < max";
    template <class E, class M, class S, class T>
    bool operator()(const E& e, M&, S&, T&) const {
      return count_after_release(e, true) < e.rules->max_delivery_count;
    }
  };
  struct abandon_reaches_max {
    static constexpr const char* name = "count after abandon >= max";
    template <class E, class M, class S, class T>
    bool operator()(const E& e, M& m, S& s, T& t) const {
      return !abandon_within_max{}(e, m, s, t);
    }
  };
  /// A lock expiry leaves the delivery count below the maximum (always true
  /// under the current rule, which does not count lock expiries).
  struct expiry_within_max {
    static constexpr const char* name = "count after lock expiry < max";
    template <class E, class M, class S, class T>
    bool operator()(const E& e, M&, S&, T&) const {
      return count_after_release(e, false) < e.rules->max_delivery_count;
    }
  };
  struct expiry_reaches_max {
    static constexpr const char* name = "count after lock expiry >= max";
    template <class E, class M, class S, class T>
    bool operator()(const E& e, M& m, S& s, T& t) const {
      return !expiry_within_max{}(e, m, s, t);
    }
  };

  // --- actions --------------------------------------------------------------
  struct take_lock {
    static constexpr const char* name = "take lock";
    template <class M, class S, class T>
    void operator()(const lifecycle_event::lock& e, M&, S&, T&) const {
      e.fields->token = e.token;
      e.fields->locked_until = e.now + e.lock_for;
      if (e.rules->rule == delivery_count_rule::every_delivery)
        ++e.fields->delivery_count;
    }
  };
  struct drop_lock {
    static constexpr const char* name = "drop lock";
    template <class E, class M, class S, class T>
    void operator()(const E& e, M&, S&, T&) const {
      e.fields->token = lock_token{};
    }
  };
  struct count_abandon {
    static constexpr const char* name = "drop lock, count";
    template <class E, class M, class S, class T>
    void operator()(const E& e, M&, S&, T&) const {
      e.fields->token = lock_token{};
      e.fields->delivery_count = count_after_release(e, true);
    }
  };
  template <dead_letter_reason Reason>
  struct dead_letter {
    static constexpr const char* name = Reason == dead_letter_reason::rejected ? "reason=Rejected"
                                        : Reason == dead_letter_reason::expired
                                            ? "reason=Expired"
                                            : "reason=DeliveryCountExceeded";
    template <class E, class M, class S, class T>
    void operator()(const E& e, M&, S&, T&) const {
      e.fields->token = lock_token{};
      e.fields->reason = Reason;
    }
  };
  struct dead_letter_exceeded {
    static constexpr const char* name = "count, reason=DeliveryCountExceeded";
    template <class E, class M, class S, class T>
    void operator()(const E& e, M&, S&, T&) const {
      e.fields->token = lock_token{};
      e.fields->delivery_count =
          count_after_release(e, std::is_same_v<E, lifecycle_event::abandon>);
      e.fields->reason = dead_letter_reason::delivery_count_exceeded;
    }
  };
  using reject_reason = dead_letter<dead_letter_reason::rejected>;
  using expire_reason = dead_letter<dead_letter_reason::expired>;

  /// Delivery count once a lock ends by abandon (`by_abandon`) or by expiry:
  /// the current rule counts abandons only; the older rule counted at lock time.
  static std::uint32_t count_after_release(const lifecycle_event::base& e, bool by_abandon) {
    const auto c = e.fields->delivery_count;
    return (by_abandon && e.rules->rule == delivery_count_rule::abandon_only) ? c + 1 : c;
  }

  using lock = lifecycle_event::lock;
  using complete = lifecycle_event::complete;
  using reject = lifecycle_event::reject;
  using abandon = lifecycle_event::abandon;
  using lock_expired = lifecycle_event::lock_expired;
  using ttl_expired = lifecycle_event::ttl_expired;
  using purge = lifecycle_event::purge;
  template <class... R>
  using row = msm::front::Row<R...>;
  using none = msm::front::none;

  // --- the table: SPEC 1.4, one row per transition ----------------------------
  // clang-format off
  struct transition_table : mpl::vector11<
  //      source     event         target         action                guard
  row<enqueued,  lock,         invisible,     take_lock,            not_expired>,         // receive
  row<invisible, complete,     completed,     drop_lock,            none>,                // -> Success
  row<invisible, reject,       dead_lettered, reject_reason,        none>,                // -> Rejected
  row<invisible, abandon,      enqueued,      count_abandon,        abandon_within_max>,  // count +1
  row<invisible, abandon,      dead_lettered, dead_letter_exceeded, abandon_reaches_max>, // -> DeliveryCountExceeded
  row<invisible, lock_expired, enqueued,      drop_lock,            expiry_within_max>,   // SPEC 1.5
  row<invisible, lock_expired, dead_lettered, dead_letter_exceeded, expiry_reaches_max>,  // older rule only
  row<enqueued,  ttl_expired,  dead_lettered, expire_reason,        none>,                // -> Expired
  row<invisible, ttl_expired,  dead_lettered, expire_reason,        none>,                // -> Expired
  row<enqueued,  purge,        purged,        none,                 none>,                // -> Purged
  row<invisible, purge,        purged,        drop_lock,            none>                 // -> Purged
  > {};
  // clang-format on

  /// An event that does not apply in the current state: report, change nothing.
  template <class FSM, class Event>
  void no_transition(const Event&, FSM&, int) {
    rejected_event = true;
  }
  bool rejected_event = false;
};

using lifecycle_machine = msm::back::state_machine<lifecycle_def>;

}  // namespace detail

/// One message's lifecycle machine: the state, plus the table above. Events
/// that do not apply return `errc::invalid_operation` and change nothing.
class lifecycle {
 public:
  using machine = detail::lifecycle_machine;
  using definition = detail::lifecycle_def;

  lifecycle() { m_.start(); }
  // Boost.MSM's state_machine has no real move constructor: its forwarding
  // constructor takes an rvalue machine as a front-end argument and restarts
  // in the initial state. Copy instead (the machine holds only its state), so
  // a lifecycle survives std::vector growth and erase.
  lifecycle(const lifecycle& o) : m_(o.m_) {}
  lifecycle(lifecycle&& o) noexcept : m_(std::as_const(o.m_)) {}
  lifecycle& operator=(const lifecycle& o) {
    m_ = o.m_;
    return *this;
  }
  lifecycle& operator=(lifecycle&& o) noexcept {
    m_ = std::as_const(o.m_);
    return *this;
  }

  message_state state() const noexcept { return state_of(m_.current_state()[0]); }

  /// Applies one event; on an event that does not apply in this state (or a
  /// guard that rejects it) returns an error and leaves the fields unchanged.
  template <class Event>
  result<message_state> process(const Event& e) {
    m_.rejected_event = false;
    const auto before = state();
    const auto handled = m_.process_event(e);
    if (handled != boost::msm::back::HANDLED_TRUE || m_.rejected_event) {
      m_.rejected_event = false;
      return make_error(errc::invalid_operation, std::string("event '") + Event::name +
                                                     "' does not apply to a message in state " +
                                                     std::string(to_string(before)));
    }
    return state();
  }

 private:
  template <class S>
  static constexpr int id_of = boost::msm::back::get_state_id<machine::stt, S>::type::value;

  static message_state state_of(int id) noexcept {
    using d = definition;
    if (id == id_of<d::enqueued>)
      return message_state::enqueued;
    if (id == id_of<d::invisible>)
      return message_state::invisible;
    if (id == id_of<d::completed>)
      return message_state::completed;
    if (id == id_of<d::dead_lettered>)
      return message_state::dead_lettered;
    return message_state::purged;
  }

  machine m_;
};

}  // namespace devicebound
