// Fuzz target: bytes -> a hub configuration and a sequence of hub operations
// (add/remove device, enqueue, receive, complete/reject/abandon, purge,
// queue_depth, tick, feedback receive/complete/abandon), run on a real hub and
// on the reference model of tests/support/hub_model.hpp. Any disagreement or
// broken invariant is printed and abort()s.
//
// Input layout: 7 bytes of configuration and seed, then one operation per
// group of bytes (kind, device, time step, then what the kind needs). Missing
// bytes read as zero, so every input is valid.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../tests/support/hub_model.hpp"

namespace {

using namespace devicebound;
using model::op;
using model::op_kind;

class byte_reader {
 public:
  byte_reader(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}
  bool empty() const noexcept { return n_ == 0; }
  std::uint8_t u8() noexcept {
    if (n_ == 0)
      return 0;
    --n_;
    return *p_++;
  }
  std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(u8() | u8() << 8); }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
};

hub_config read_config(byte_reader& in) {
  hub_config c;
  c.name = "fuzz-hub";
  const auto a = in.u8(), b = in.u8(), d = in.u8(), e = in.u8(), f = in.u8();
  c.max_queue_depth = 1u + a % 6u;
  c.max_delivery_count = 1u + (b & 0x0f) % 5u;
  c.delivery_count =
      (b >> 4) & 1 ? delivery_count_rule::every_delivery : delivery_count_rule::abandon_only;
  static constexpr std::int64_t locks[] = {1000, 5000, 60000, 300000};
  static constexpr std::int64_t ttls[] = {60000, 300000, 48 * 3600000LL};
  c.lock_duration = duration{locks[d % 4]};
  c.default_ttl = duration{ttls[(d >> 2) % 3]};
  c.expiry_over_cap = (d >> 4) & 1 ? expiry_cap_policy::reject : expiry_cap_policy::clamp;
  c.purge_feedback_for = (d >> 5) & 1 ? purge_feedback::none : purge_feedback::negative_acks;
  c.max_message_size = (d >> 6) & 1 ? 80 : default_max_message_size;
  c.feedback_batch_size = e % 8 < 6 ? 1u + e % 5u : 1u + e % 64u;
  static constexpr std::int64_t intervals[] = {0, 1000, 15000};
  c.feedback_batch_interval = duration{intervals[f % 3]};
  c.feedback_ttl = duration{(f >> 2) & 1 ? 600000 : 60000};
  c.feedback_max_delivery_count = 1u + (f >> 3) % 3u;
  c.feedback_lock_duration = duration{(f >> 5) & 1 ? 30000 : 5000};
  return c;
}

std::int64_t read_delta(byte_reader& in, const hub_config& c) {
  const auto code = in.u8();
  const std::int64_t mag = in.u16();
  const std::int64_t lock = c.lock_duration.count();
  switch (code % 12) {
    case 0:
    case 1:
    case 2:
      return 0;
    case 3:
      return 1;
    case 4:
      return mag % (lock + lock / 2);
    case 5:
      return lock + mag % 3 - 1;
    case 6:
      return mag * 20 % (c.default_ttl.count() + c.default_ttl.count() / 4);
    case 7:
      return c.feedback_batch_interval.count() + mag % 3 - 1;
    case 8:
      return c.feedback_lock_duration.count() + mag % 3 - 1;
    case 9:
      return mag * 4000;  // up to ~3 days
    case 10:
      return -(mag % 10000);
    default:
      return mag;
  }
}

/// A lock handle for `b`: mostly a live one, sometimes any, else a made-up token.
template <class Live>
void read_handle(byte_reader& in, op& o, const Live& live, std::size_t handed_out) {
  const auto b = in.u8();
  if (!live.empty() && b < 200) {
    o.handle = static_cast<std::uint32_t>(live[b % live.size()]);
  } else if (handed_out > 0 && b < 230) {
    o.handle = static_cast<std::uint32_t>(b % handed_out);
  } else {
    o.random_token = true;
    o.token_bits = in.u8();  // 0: the nil token
  }
}

op read_op(byte_reader& in, const model::reference_hub& m) {
  const auto& c = m.config();
  op o;
  o.kind = static_cast<op_kind>(in.u8() % 12);
  o.device = static_cast<std::uint8_t>(in.u8() % model::device_pool.size());
  o.delta_ms = o.kind == op_kind::tick_to_deadline ? in.u8() % 3 - 1 : read_delta(in, c);
  switch (o.kind) {
    case op_kind::remove_device: {
      const auto b = in.u8();
      o.with_now = (b & 3) != 0;
      o.generation = static_cast<std::uint8_t>((b >> 2) % 3);
      break;
    }
    case op_kind::enqueue: {
      const auto b = in.u8(), x = in.u8();
      o.ack = static_cast<ack_mode>(b & 3);
      o.message_id = static_cast<std::uint8_t>((b >> 2) & 3);
      o.id_number = static_cast<std::uint32_t>(m.stats().accepted);
      o.explicit_expiry = (b >> 4) & 1;
      if (o.explicit_expiry) {
        const std::int64_t two_days = 48 * 3600000LL, v = in.u16();
        switch (x % 5) {
          case 0:
            o.expiry_ms = -(v % 5000);
            break;
          case 1:
            o.expiry_ms = v % 2;
            break;
          case 2:
            o.expiry_ms = 1 + v * 10 % (3 * c.lock_duration.count() + 1);
            break;
          case 3:
            o.expiry_ms = two_days + v % 3 - 1;
            break;
          default:
            o.expiry_ms = two_days + 2 + v * 1000;
            break;
        }
      }
      o.to = (x >> 3) % 8 < 5 ? 0 : static_cast<std::uint8_t>(1 + (x >> 3) % 3);
      o.property = (b >> 5) % 8 < 6 ? 0 : static_cast<std::uint8_t>(1 + (b >> 5) % 2);
      o.body_size = static_cast<std::uint8_t>(in.u8() % 40);
      break;
    }
    case op_kind::settle: {
      const auto b = in.u8();
      o.how = static_cast<disposition>((b & 3) % 3);
      o.via_settle = (b >> 2) & 1;
      read_handle(in, o, m.live_locks(), m.locks().size());
      if (!o.random_token && (b >> 3) % 8 != 0) {  // mostly the device the lock is for
        const auto& dev = m.locks()[o.handle].device;
        for (std::size_t i = 0; i < model::device_pool.size(); ++i)
          if (model::device_pool[i] == dev)
            o.device = static_cast<std::uint8_t>(i);
      }
      break;
    }
    case op_kind::complete_feedback:
    case op_kind::abandon_feedback:
      read_handle(in, o, m.live_feedback_locks(), m.feedback_lock_count());
      break;
    default:
      break;
  }
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  byte_reader in(data, size);
  const hub_config cfg = read_config(in);
  const std::uint64_t seed = in.u16();
  model::harness h(cfg, seed);
  std::vector<op> done;
  for (int i = 0; i < 2000 && !in.empty(); ++i) {
    const op o = read_op(in, h.model());
    const std::string broken = h.step(o);
    done.push_back(o);
    if (!broken.empty()) {
      std::fprintf(stderr, "hub_ops_fuzz: %s\n%s\noperations:\n", broken.c_str(),
                   model::describe(cfg).c_str());
      for (const auto& d : done)
        std::fprintf(stderr, "  %s\n", model::describe(d).c_str());
      std::abort();
    }
  }
  return 0;
}
