/// \file retry/machine.hpp
/// The retry machine (SPEC 8.9) as a Boost.MSM machine, its transition table generated from
/// the rows of retry/table.hpp, and `msm_controller`, which drives it. The only retry header
/// that includes Boost.MSM. The clients run the same table through `controller`
/// (retry/controller.hpp); tests/test_retry_equivalence.cpp checks that the two executors
/// answer every event sequence alike, and tests/test_retry.cpp runs against both.
#pragma once

#include <boost/mpl/vector.hpp>
#include <boost/msm/back/state_machine.hpp>
#include <boost/msm/front/functor_row.hpp>
#include <boost/msm/front/state_machine_def.hpp>
#include <cstddef>
#include <string_view>
#include <type_traits>
#include <utility>

#include "controller.hpp"
#include "decision.hpp"
#include "episode.hpp"
#include "random.hpp"
#include "table.hpp"

namespace devicebound::retry {

namespace detail {

namespace msmf = boost::msm::front;

/// One MSM event type per `event_kind`, carrying the event.
template <event_kind K>
struct msm_event {
  retry::event ev;
  static constexpr std::string_view name = to_string(K);
};

template <class Policy, class Random>
struct machine_def : msmf::state_machine_def<machine_def<Policy, Random>> {
  typedef int no_exception_thrown;
  typedef int no_message_queue;

  machine_def() = default;
  machine_def(Policy p, Random r) : data(std::move(p), std::move(r)) {}

  /// One MSM state per `retry::state`.
  template <retry::state S>
  struct state_t : msmf::state<> {
    static constexpr retry::state id = S;
  };
  using initial_state = state_t<retry::state::idle>;

  /// The table's guards and actions, as MSM functors over the shared episode.
  template <retry::guard G>
  struct guard_fn {
    template <class E, class F, class S, class T>
    bool operator()(const E& e, F& f, S&, T&) const {
      return f.data.holds(G, e.ev);
    }
  };
  template <retry::action A>
  struct action_fn {
    template <class E, class F, class S, class T>
    void operator()(const E& e, F& f, S&, T&) const {
      f.data.run(A, e.ev);
    }
  };

  /// Row `I` of retry/table.hpp as an MSM functor row.
  template <std::size_t I>
  struct row_of {
    static constexpr row r = retry::transition_table[I];
    using target = std::conditional_t<r.target.has_value(),
                                      state_t<r.target.value_or(retry::state::idle)>, msmf::none>;
    using when = std::conditional_t<r.when == retry::guard::none, msmf::none, guard_fn<r.when>>;
    using type = msmf::Row<state_t<r.source>, msm_event<r.on>, target, action_fn<r.act>, when>;
  };
  template <std::size_t... I>
  static auto rows(std::index_sequence<I...>) -> boost::mpl::vector<typename row_of<I>::type...>;

  /// The MSM transition table: retry/table.hpp's rows, in order.
  struct transition_table
      : decltype(rows(std::make_index_sequence<retry::transition_table.size()>{})) {};

  /// The public state for an MSM state id.
  template <class Fsm>
  static retry::state state_of(int id) {
    using stt = typename Fsm::stt;
    retry::state found = retry::state::idle;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (void)((id == boost::msm::back::get_state_id<stt, state_t<state_values[I]>>::value
                  ? (found = state_values[I], true)
                  : false) ||
             ...);
    }
    (std::make_index_sequence<state_values.size()>{});
    return found;
  }

  /// Any event without a row: a typed error; the state does not change.
  template <class Fsm, class Event>
  void no_transition(const Event& e, Fsm&, int id) {
    data.refuse(e.ev, state_of<Fsm>(id));
  }

  episode<Policy, Random> data;
};

template <class Policy, class Random>
using machine = boost::msm::back::state_machine<machine_def<Policy, Random>>;

/// Runs the table as the Boost.MSM machine.
template <class Policy, class Random>
class msm_executor {
 public:
  msm_executor() { sm_.start(); }
  msm_executor(Policy p, Random r) : sm_(std::move(p), std::move(r)) { sm_.start(); }
  // Boost.MSM's state_machine has no real move constructor (its forwarding constructor would
  // take the rvalue machine as a constructor argument and restart it): copy the machine,
  // state and data, instead.
  msm_executor(const msm_executor& o) : sm_(o.sm_) {}
  msm_executor(msm_executor&& o) : sm_(std::as_const(o.sm_)) {}
  msm_executor& operator=(const msm_executor& o) {
    sm_ = o.sm_;
    return *this;
  }
  msm_executor& operator=(msm_executor&& o) {
    sm_ = std::as_const(o.sm_);
    return *this;
  }

  void dispatch(const event& e) {
    switch (e.kind) {
      case event_kind::start:
        sm_.process_event(msm_event<event_kind::start>{e});
        return;
      case event_kind::attempt_failed:
        sm_.process_event(msm_event<event_kind::attempt_failed>{e});
        return;
      case event_kind::attempt_succeeded:
        sm_.process_event(msm_event<event_kind::attempt_succeeded>{e});
        return;
      case event_kind::timer_fired:
        sm_.process_event(msm_event<event_kind::timer_fired>{e});
        return;
      case event_kind::reset:
        sm_.process_event(msm_event<event_kind::reset>{e});
        return;
    }
  }

  retry::state current() const {
    return sm_.template state_of<machine<Policy, Random>>(sm_.current_state()[0]);
  }
  episode<Policy, Random>& data() noexcept { return sm_.data; }
  const episode<Policy, Random>& data() const noexcept { return sm_.data; }

 private:
  machine<Policy, Random> sm_;
};

}  // namespace detail

/// Drives one retry policy by the Boost.MSM machine generated from retry/table.hpp. Answers
/// exactly as `controller` does (tests/test_retry_equivalence.cpp).
template <class Policy = policy, unit_random Random = default_random>
class msm_controller
    : public basic_controller<Policy, Random, detail::msm_executor<Policy, Random>> {
  using base = basic_controller<Policy, Random, detail::msm_executor<Policy, Random>>;

 public:
  explicit msm_controller(Policy p = Policy{}, Random r = Random{})
      : base(std::move(p), std::move(r)) {}
};

}  // namespace devicebound::retry
