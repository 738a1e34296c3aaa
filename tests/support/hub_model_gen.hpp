/// \file hub_model_gen.hpp
/// rapidcheck generators for hub operations, drawn from the reference model's
/// state (tests/support/hub_model.hpp): a random hub configuration, and the
/// next operation of a sequence. Shared by the model tests
/// (tests/test_hub_model.cpp, tests/test_store_model.cpp).
#pragma once

#include <rapidcheck.h>
#include <rapidcheck/state.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "hub_model.hpp"

namespace devicebound::model::gen {

inline hub_config draw_config() {
  hub_config c;
  c.name = "model-hub";
  c.max_queue_depth = *rc::gen::inRange<std::uint32_t>(1, 7);
  c.max_delivery_count = *rc::gen::inRange<std::uint32_t>(1, 6);
  // enums drawn as small integers so rapidcheck can print the counterexample
  c.delivery_count = *rc::gen::inRange(0, 2) ? delivery_count_rule::every_delivery
                                             : delivery_count_rule::abandon_only;
  c.lock_duration = duration{
      *rc::gen::weightedElement<std::int64_t>({{3, 1000}, {2, 5000}, {2, 60000}, {1, 300000}})};
  c.default_ttl = duration{
      *rc::gen::weightedElement<std::int64_t>({{6, 60000}, {3, 300000}, {1, 48 * 3600000LL}})};
  c.expiry_over_cap =
      *rc::gen::inRange(0, 2) ? expiry_cap_policy::reject : expiry_cap_policy::clamp;
  c.purge_feedback_for =
      *rc::gen::inRange(0, 2) ? purge_feedback::none : purge_feedback::negative_acks;
  c.max_message_size =
      *rc::gen::weightedElement<std::size_t>({{3, default_max_message_size}, {1, 80}});
  c.feedback_batch_size =
      *rc::gen::weightedElement<std::uint32_t>({{4, 1}, {4, 2}, {3, 3}, {2, 5}, {1, 64}});
  c.feedback_batch_interval = duration{*rc::gen::element<std::int64_t>(0, 1000, 15000)};
  c.feedback_ttl = duration{*rc::gen::element<std::int64_t>(60000, 600000)};
  c.feedback_max_delivery_count = *rc::gen::inRange<std::uint32_t>(1, 4);
  c.feedback_lock_duration = duration{*rc::gen::element<std::int64_t>(5000, 30000)};
  return c;
}

/// How far to move time: mostly not at all or a little, often to just around
/// a timer (lock, TTL, batch interval), sometimes days, sometimes backwards.
inline std::int64_t draw_delta(const hub_config& c) {
  const std::int64_t lock = c.lock_duration.count(), ttl = c.default_ttl.count();
  switch (*rc::gen::weightedElement<int>(
      {{45, 0}, {8, 1}, {15, 2}, {8, 3}, {6, 4}, {4, 5}, {3, 6}, {2, 7}, {4, 8}})) {
    case 0:
      return 0;
    case 1:
      return 1;
    case 2:
      return *rc::gen::inRange<std::int64_t>(0, lock + lock / 2);
    case 3:
      return lock + *rc::gen::inRange<std::int64_t>(-1, 2);
    case 4:
      return *rc::gen::inRange<std::int64_t>(0, std::min<std::int64_t>(ttl + ttl / 4, 600000));
    case 5:
      return c.feedback_batch_interval.count() + *rc::gen::inRange<std::int64_t>(-1, 2);
    case 6:
      return c.feedback_lock_duration.count() + *rc::gen::inRange<std::int64_t>(-1, 2);
    case 7:
      return *rc::gen::inRange<std::int64_t>(0, 3 * 24 * 3600 * 1000LL);
    default:
      return -*rc::gen::inRange<std::int64_t>(1, 10000);
  }
}

inline std::uint8_t device_index(std::string_view id) {
  for (std::size_t i = 0; i < model::device_pool.size(); ++i)
    if (model::device_pool[i] == id)
      return static_cast<std::uint8_t>(i);
  return 0;
}

/// Mostly a registered device; sometimes any id of the pool (unknown, invalid).
inline std::uint8_t draw_device(const reference_hub& m) {
  if (!m.devices().empty() && *rc::gen::weightedElement<bool>({{6, true}, {1, false}})) {
    std::vector<std::uint8_t> known;
    for (const auto& [id, d] : m.devices())
      known.push_back(device_index(id));
    return *rc::gen::elementOf(known);
  }
  return *rc::gen::weightedElement<std::uint8_t>({{10, 0}, {8, 1}, {5, 2}, {3, 3}, {1, 4}});
}

inline op draw_op(const reference_hub& m) {
  const auto& c = m.config();
  op o;
  bool enqueued = false;
  for (const auto& [id, d] : m.devices())
    for (const auto& msg : d.queue)
      enqueued = enqueued || !msg.invisible;
  const bool locked = !m.live_locks().empty(), batched = !m.batches().empty();
  const bool fb_locked = !m.live_feedback_locks().empty();
  // in op_kind order: add, remove, enqueue, receive, settle, purge, queue_depth,
  // tick, tick_to_deadline, receive/complete/abandon feedback
  const std::size_t weights[] = {m.devices().size() < 2 ? 20u : 3u,
                                 2,
                                 25,
                                 enqueued ? 20u : 4u,
                                 locked ? 30u : 5u,
                                 2,
                                 3,
                                 8,
                                 5,
                                 batched ? 8u : 2u,
                                 fb_locked ? 8u : 2u,
                                 fb_locked ? 4u : 1u};
  std::size_t total = 0;
  for (auto w : weights)
    total += w;
  std::size_t roll = *rc::gen::inRange<std::size_t>(0, total), kind = 0;
  while (roll >= weights[kind])
    roll -= weights[kind++];
  o.kind = static_cast<op_kind>(kind);
  o.device = draw_device(m);
  o.delta_ms =
      o.kind == op_kind::tick_to_deadline ? *rc::gen::inRange<std::int64_t>(-1, 2) : draw_delta(c);
  switch (o.kind) {
    case op_kind::add_device:
      if (*rc::gen::weightedElement<bool>({{4, true}, {1, false}})) {  // mostly a new device
        std::vector<std::uint8_t> unknown;
        for (std::size_t i = 0; i + 1 < model::device_pool.size(); ++i)
          if (!m.devices().contains(model::device_pool[i]))
            unknown.push_back(static_cast<std::uint8_t>(i));
        if (!unknown.empty())
          o.device = *rc::gen::elementOf(unknown);
      }
      break;
    case op_kind::receive:
      if (enqueued &&
          *rc::gen::weightedElement<bool>({{4, true}, {1, false}})) {  // mostly a device with work
        std::vector<std::uint8_t> ready;
        for (const auto& [id, d] : m.devices())
          if (std::any_of(d.queue.begin(), d.queue.end(),
                          [](const auto& msg) { return !msg.invisible; }))
            ready.push_back(device_index(id));
        o.device = *rc::gen::elementOf(ready);
      }
      break;
    case op_kind::remove_device:
      o.with_now = *rc::gen::weightedElement<bool>({{3, true}, {1, false}});
      o.generation = *rc::gen::weightedElement<std::uint8_t>({{4, 0}, {2, 1}, {1, 2}});
      break;
    case op_kind::enqueue:
      o.ack = static_cast<ack_mode>(*rc::gen::inRange(0, 4));
      o.message_id = *rc::gen::weightedElement<std::uint8_t>({{4, 0}, {12, 1}, {3, 2}, {1, 3}});
      o.id_number = static_cast<std::uint32_t>(m.stats().accepted);
      o.explicit_expiry = *rc::gen::weightedElement<bool>({{2, true}, {3, false}});
      if (o.explicit_expiry) {
        const std::int64_t two_days = 48 * 3600 * 1000LL;
        switch (*rc::gen::weightedElement<int>({{2, 0}, {1, 1}, {6, 2}, {1, 3}, {1, 4}})) {
          case 0:  // already past: dead-lettered as Expired at once
            o.expiry_ms = -*rc::gen::inRange<std::int64_t>(0, 5000);
            break;
          case 1:
            o.expiry_ms = *rc::gen::inRange<std::int64_t>(0, 2);
            break;
          case 2:
            o.expiry_ms = *rc::gen::inRange<std::int64_t>(1, 3 * c.lock_duration.count() + 2);
            break;
          case 3:  // at the 2-day cap, 1 ms either side
            o.expiry_ms = two_days + *rc::gen::inRange<std::int64_t>(-1, 2);
            break;
          default:  // beyond 2 days: clamped or refused (expiry_over_cap)
            o.expiry_ms = two_days + *rc::gen::inRange<std::int64_t>(2, two_days);
            break;
        }
      }
      o.to = *rc::gen::weightedElement<std::uint8_t>({{16, 0}, {2, 1}, {2, 2}, {1, 3}});
      o.body_size = *rc::gen::inRange<std::uint8_t>(0, 40);
      o.property = *rc::gen::weightedElement<std::uint8_t>({{16, 0}, {3, 1}, {1, 2}});
      break;
    case op_kind::settle: {
      o.how = static_cast<disposition>(*rc::gen::weightedElement<int>({{5, 0}, {2, 1}, {4, 2}}));
      o.via_settle = *rc::gen::weightedElement<bool>({{1, true}, {4, false}});
      const auto live = m.live_locks();
      const int pick = *rc::gen::weightedElement<int>({{16, 0}, {2, 1}, {2, 2}});
      if (pick == 0 && !live.empty()) {
        o.handle = static_cast<std::uint32_t>(*rc::gen::elementOf(live));
      } else if (pick <= 1 && !m.locks().empty()) {  // any lock so far: mostly stale ones
        o.handle =
            *rc::gen::inRange<std::uint32_t>(0, static_cast<std::uint32_t>(m.locks().size()));
      } else {
        o.random_token = true;
        o.token_bits = *rc::gen::weightedElement<std::uint64_t>(
            {{1, 0}, {4, 1 + *rc::gen::arbitrary<std::uint32_t>()}});
      }
      if (!o.random_token && *rc::gen::weightedElement<bool>({{8, true}, {1, false}}))
        o.device = device_index(m.locks()[o.handle].device);  // mostly the device the lock is for
      break;
    }
    case op_kind::complete_feedback:
    case op_kind::abandon_feedback: {
      const auto live = m.live_feedback_locks();
      const int pick = *rc::gen::weightedElement<int>({{16, 0}, {2, 1}, {2, 2}});
      if (pick == 0 && !live.empty()) {
        o.handle = static_cast<std::uint32_t>(*rc::gen::elementOf(live));
      } else if (pick <= 1 && m.feedback_lock_count() > 0) {
        o.handle = *rc::gen::inRange<std::uint32_t>(
            0, static_cast<std::uint32_t>(m.feedback_lock_count()));
      } else {
        o.random_token = true;
        o.token_bits = *rc::gen::arbitrary<std::uint64_t>();
      }
      break;
    }
    default:
      break;
  }
  return o;
}

/// One command of a rapidcheck state test: an operation drawn from the model,
/// run on the model and on the harness. With `CrashOneIn` > 0, about one
/// operation in that many is a crash (the harness needs a store).
template <unsigned CrashOneIn = 0>
struct step final : rc::state::Command<reference_hub, harness> {
  op o;

  explicit step(const reference_hub& m) : o(draw(m)) {}

  static op draw(const reference_hub& m) {
    if constexpr (CrashOneIn > 0) {
      if (*rc::gen::weightedElement<bool>({{1, true}, {CrashOneIn - 1, false}})) {
        op crash;
        crash.kind = op_kind::crash;
        return crash;
      }
    }
    return draw_op(m);
  }

  void checkPreconditions(const reference_hub& m) const override {
    // after shrinking, a handle may point past the locks handed out so far
    if (o.kind == op_kind::settle && !o.random_token)
      RC_PRE(o.handle < m.locks().size());
    if ((o.kind == op_kind::complete_feedback || o.kind == op_kind::abandon_feedback) &&
        !o.random_token)
      RC_PRE(o.handle < m.feedback_lock_count());
  }
  void apply(reference_hub& m) const override { (void)m.apply(o, m.time_for(o)); }
  void run(const reference_hub&, harness& h) const override {
    const std::string broken = h.step(o);
    if (!broken.empty())
      RC_FAIL(broken);
  }
  void show(std::ostream& os) const override { os << describe(o); }
};

}  // namespace devicebound::model::gen
