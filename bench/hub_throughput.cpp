/// \file hub_throughput.cpp
/// Throughput and memory of the hub engine, Boost.MSM lifecycle against a
/// hand-written switch with the same interface and rules.
///
/// 1. Throughput: enqueue -> receive -> settle for many devices, ack modes mixed
///    so feedback batches are produced and drained, on `hub` (MSM) and on
///    `basic_hub<switch_lifecycle>`, interleaved, best and median of several
///    runs. Target: MSM at least 0.8x the switch's messages/s.
/// 2. Memory, measured with glibc mallinfo2(): heap bytes per idle device, and
///    heap bytes per queued message beyond the body and strings put in, at a
///    queue fill of 10 and of 50. Target: at most 160 B per queued message.
///    Also heap bytes per registered idle device: a hub entry plus an identity
///    registry entry (registry.hpp, generated 32-byte keys), in total and
///    beyond the key material. Target: at most 300 B beyond keys and ids.
/// 3. Correctness: a locked lifecycle must stay locked when copied or moved
///    (a queue that grows relocates its messages); the two lifecycles must
///    agree, event by event (random sequences under both delivery-count
///    rules); two hubs driven by the same random operations (timers, abandons,
///    rejects, purges, device removal, feedback) must give identical results,
///    transitions and stats(); so must the timed workload. Any failure exits 1.
///
/// DEVICEBOUND_BENCH_SMOKE=1 runs tiny sizes (ctest). DEVICEBOUND_BENCH_ENFORCE=1
/// also exits non-zero when a target is missed (timings are noisy: off by default).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <devicebound/hub.hpp>
#include <devicebound/registry.hpp>
#include <exception>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__has_include)
#if __has_include(<malloc.h>)
#include <malloc.h>
#endif
#endif

// mallinfo2() is glibc >= 2.33. Under a sanitizer (or valgrind) malloc is not
// glibc's, and the memory part reports "n/a" instead of wrong numbers.
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#define DEVICEBOUND_BENCH_MALLINFO2 1
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#undef DEVICEBOUND_BENCH_MALLINFO2
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#undef DEVICEBOUND_BENCH_MALLINFO2
#endif
#endif

namespace db = devicebound;
using namespace std::chrono_literals;

// =============================================================================
// The baseline: the lifecycle of lifecycle.hpp as an enum plus a switch.
// Same interface (state(), process(Event) for every lifecycle_event type), same
// rules (SPEC 1.4: guards on expiry and on the delivery count under both
// delivery_count_rule values), same error for an event that does not apply, and
// like the MSM machine it leaves the fields untouched when it refuses an event.
// =============================================================================
class switch_lifecycle {
 public:
  db::message_state state() const noexcept { return state_; }

  template <class Event>
  db::result<db::message_state> process(const Event& e) {
    const auto before = state_;
    if (!step(e))
      return db::make_error(db::errc::invalid_operation,
                            std::string("event '") + Event::name +
                                "' does not apply to a message in state " +
                                std::string(db::to_string(before)));
    return state_;
  }

 private:
  using S = db::message_state;

  /// Delivery count once a lock ends by abandon or by lock expiry (as lifecycle_def).
  static std::uint32_t count_after_release(const db::lifecycle_event::base& e,
                                           bool by_abandon) noexcept {
    const auto c = e.fields->delivery_count;
    return (by_abandon && e.rules->rule == db::delivery_count_rule::abandon_only) ? c + 1 : c;
  }

  bool step(const db::lifecycle_event::lock& e) noexcept {
    switch (state_) {
      case S::enqueued:
        if (!(e.now < e.fields->expires_at))
          return false;  // an expired message is never handed out
        e.fields->token = e.token;
        e.fields->locked_until = e.now + e.lock_for;
        if (e.rules->rule == db::delivery_count_rule::every_delivery)
          ++e.fields->delivery_count;
        state_ = S::invisible;
        return true;
      default:
        return false;
    }
  }
  bool step(const db::lifecycle_event::complete& e) noexcept {
    switch (state_) {
      case S::invisible:
        e.fields->token = db::lock_token{};
        state_ = S::completed;
        return true;
      default:
        return false;
    }
  }
  bool step(const db::lifecycle_event::reject& e) noexcept {
    switch (state_) {
      case S::invisible:
        e.fields->token = db::lock_token{};
        e.fields->reason = db::dead_letter_reason::rejected;
        state_ = S::dead_lettered;
        return true;
      default:
        return false;
    }
  }
  bool step(const db::lifecycle_event::abandon& e) noexcept {
    switch (state_) {
      case S::invisible: {
        const auto count = count_after_release(e, true);
        e.fields->token = db::lock_token{};
        e.fields->delivery_count = count;
        if (count < e.rules->max_delivery_count) {
          state_ = S::enqueued;
        } else {
          e.fields->reason = db::dead_letter_reason::delivery_count_exceeded;
          state_ = S::dead_lettered;
        }
        return true;
      }
      default:
        return false;
    }
  }
  bool step(const db::lifecycle_event::lock_expired& e) noexcept {
    switch (state_) {
      case S::invisible: {
        const auto count = count_after_release(e, false);
        e.fields->token = db::lock_token{};
        if (count < e.rules->max_delivery_count) {
          state_ = S::enqueued;
        } else {
          e.fields->delivery_count = count;
          e.fields->reason = db::dead_letter_reason::delivery_count_exceeded;
          state_ = S::dead_lettered;
        }
        return true;
      }
      default:
        return false;
    }
  }
  bool step(const db::lifecycle_event::ttl_expired& e) noexcept {
    switch (state_) {
      case S::enqueued:
      case S::invisible:
        e.fields->token = db::lock_token{};
        e.fields->reason = db::dead_letter_reason::expired;
        state_ = S::dead_lettered;
        return true;
      default:
        return false;
    }
  }
  bool step(const db::lifecycle_event::purge& e) noexcept {
    switch (state_) {
      case S::enqueued:
        state_ = S::purged;
        return true;
      case S::invisible:
        e.fields->token = db::lock_token{};
        state_ = S::purged;
        return true;
      default:
        return false;
    }
  }

  S state_ = S::enqueued;
};

using msm_hub = db::hub;
using switch_hub = db::basic_hub<switch_lifecycle>;

namespace {

// --- helpers -------------------------------------------------------------------

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string_view(v) != "0";
}

/// A cross-check found the two hubs (or lifecycles) disagreeing.
struct check_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& what) {
  throw check_failure(what);
}

/// A fixed start instant; the benchmark advances its own fake `now`.
const db::time_point t0 = db::time_point{std::chrono::sys_days{std::chrono::year{2024} / 1 / 1}};

std::uint64_t mix(std::uint64_t h, std::uint64_t v) noexcept {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  return h;
}
std::uint64_t mix_token(std::uint64_t h, const db::lock_token& t) noexcept {
  std::uint64_t a = 0;
  for (std::size_t i = 0; i < 8; ++i)
    a = a << 8 | t.bytes[i];
  return mix(h, a);
}

bool same_stats(const db::hub_stats& a, const db::hub_stats& b) {
  return a.accepted == b.accepted && a.completed == b.completed && a.rejected == b.rejected &&
         a.expired == b.expired && a.delivery_count_exceeded == b.delivery_count_exceeded &&
         a.purged == b.purged && a.removed_with_device == b.removed_with_device &&
         a.feedback_records == b.feedback_records &&
         a.feedback_records_dropped == b.feedback_records_dropped &&
         a.feedback_batches == b.feedback_batches;
}

std::string stats_text(const db::hub_stats& s) {
  char buf[320];
  std::snprintf(
      buf, sizeof buf,
      "accepted=%llu completed=%llu rejected=%llu expired=%llu dce=%llu purged=%llu removed=%llu "
      "fb_records=%llu fb_dropped=%llu fb_batches=%llu",
      static_cast<unsigned long long>(s.accepted), static_cast<unsigned long long>(s.completed),
      static_cast<unsigned long long>(s.rejected), static_cast<unsigned long long>(s.expired),
      static_cast<unsigned long long>(s.delivery_count_exceeded),
      static_cast<unsigned long long>(s.purged),
      static_cast<unsigned long long>(s.removed_with_device),
      static_cast<unsigned long long>(s.feedback_records),
      static_cast<unsigned long long>(s.feedback_records_dropped),
      static_cast<unsigned long long>(s.feedback_batches));
  return buf;
}

std::vector<std::string> make_device_ids(std::size_t n) {
  std::vector<std::string> ids;
  ids.reserve(n);
  char buf[32];
  for (std::size_t i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof buf, "device-%06zu", i);  // 13 chars: fits std::string's SSO
    ids.emplace_back(buf);
  }
  return ids;
}

/// The message every send uses: 64-byte body, a 36-character message id (GUID
/// shape), content type; no application properties.
constexpr std::size_t kBodyBytes = 64;
constexpr std::string_view kContentType = "application/json";

db::message make_message(std::uint64_t n, db::ack_mode ack) {
  // No snprintf: the harness should cost little next to the hub.
  static constexpr char hex[] = "0123456789abcdef";
  char id[36];
  std::uint64_t hi = n & 0xffffffffu, lo = n;
  for (int i = 7; i >= 0; --i, hi >>= 4)
    id[i] = hex[hi & 0xF];
  std::memcpy(id + 8, "-0000-4000-8000-", 16);
  for (int i = 35; i >= 24; --i, lo >>= 4)
    id[i] = hex[lo & 0xF];
  db::message m;
  m.body.assign(kBodyBytes, static_cast<char>('a' + n % 26));
  m.message_id.emplace(id, sizeof id);
  m.content_type.emplace(kContentType);
  m.ack = ack;
  return m;
}
constexpr std::size_t kContentBytes = kBodyBytes + 36 + kContentType.size();

// =============================================================================
// Part 3a: the two lifecycles agree on every event, in every state, under both rules.
// =============================================================================
struct lifecycle_pair {
  db::lifecycle msm;
  switch_lifecycle sw;
  db::lifecycle_fields fm, fs;
};

bool same_fields(const db::lifecycle_fields& a, const db::lifecycle_fields& b) {
  return a.expires_at == b.expires_at && a.locked_until == b.locked_until && a.token == b.token &&
         a.delivery_count == b.delivery_count && a.reason == b.reason;
}

template <class Event, class... Extra>
void step_both(lifecycle_pair& p, const db::lifecycle_rules& rules, db::time_point now,
               Extra... extra) {
  auto rm = p.msm.process(Event{{&p.fm, &rules, now}, extra...});
  auto rs = p.sw.process(Event{{&p.fs, &rules, now}, extra...});
  if (rm.has_value() != rs.has_value())
    fail(std::string("lifecycle: event '") + Event::name + "' accepted by one machine only");
  if (!rm.has_value() && !(rm.error() == rs.error()))
    fail("lifecycle: different errors: '" + rm.error().message + "' vs '" + rs.error().message +
         "'");
  if (rm.has_value() && *rm != *rs)
    fail(std::string("lifecycle: event '") + Event::name + "' different states");
  if (p.msm.state() != p.sw.state() || !same_fields(p.fm, p.fs))
    fail(std::string("lifecycle: event '") + Event::name + "' left different state or fields");
}

std::uint64_t check_lifecycles(std::size_t sequences, std::size_t length) {
  std::mt19937_64 rng(20240101);
  std::uint64_t steps = 0;
  for (auto rule :
       {db::delivery_count_rule::abandon_only, db::delivery_count_rule::every_delivery}) {
    for (std::uint32_t max : {1u, 2u, 3u, 10u}) {
      const db::lifecycle_rules rules{max, rule};
      for (std::size_t s = 0; s < sequences; ++s) {
        lifecycle_pair p;
        p.fm.expires_at = p.fs.expires_at = t0 + std::chrono::milliseconds(rng() % 20);
        for (std::size_t i = 0; i < length; ++i, ++steps) {
          const auto now =
              t0 + std::chrono::milliseconds(rng() % 24);  // before, at and after expiry
          db::lock_token tok;
          tok.bytes[0] = static_cast<std::uint8_t>(1 + rng() % 255);
          switch (rng() % 7) {
            case 0:
              step_both<db::lifecycle_event::lock>(p, rules, now, tok, db::duration(5));
              break;
            case 1:
              step_both<db::lifecycle_event::complete>(p, rules, now);
              break;
            case 2:
              step_both<db::lifecycle_event::reject>(p, rules, now);
              break;
            case 3:
              step_both<db::lifecycle_event::abandon>(p, rules, now);
              break;
            case 4:
              step_both<db::lifecycle_event::lock_expired>(p, rules, now);
              break;
            case 5:
              step_both<db::lifecycle_event::ttl_expired>(p, rules, now);
              break;
            default:
              step_both<db::lifecycle_event::purge>(p, rules, now);
              break;
          }
          // Favour long lives: a terminal machine only ever refuses.
          if (db::is_terminal(p.msm.state()) && rng() % 2)
            break;
        }
      }
    }
  }
  return steps;
}

/// A message's lifecycle must survive being moved and copied: the queue is a
/// vector, so a push that grows it, and every erase, relocates the messages.
template <class Lifecycle>
void check_relocation(const char* name) {
  const db::lifecycle_rules rules{};
  db::lifecycle_fields f;
  f.expires_at = t0 + 1h;
  auto locked = [&] {
    Lifecycle l;
    db::lock_token tok;
    tok.bytes[0] = 1;
    l.process(db::lifecycle_event::lock{{&f, &rules, t0}, tok, db::duration(60000)}).value();
    return l;
  };
  auto expect = [&](const Lifecycle& l, const char* how) {
    if (l.state() != db::message_state::invisible)
      fail(std::string(name) + ": a locked (Invisible) lifecycle is " +
           std::string(db::to_string(l.state())) + " after " + how +
           "; a queue that grows or erases relocates its messages and so loses their locks");
  };
  {
    Lifecycle a = locked();
    Lifecycle b(a);
    expect(b, "copy construction");
  }
  {
    Lifecycle a = locked();
    Lifecycle b(std::move(a));
    expect(b, "move construction");
  }
  {
    Lifecycle a = locked(), b;
    b = a;
    expect(b, "copy assignment");
  }
  {
    Lifecycle a = locked(), b;
    b = std::move(a);
    expect(b, "move assignment");
  }
  // The same through a hub: lock the oldest of 4, then a 5th send grows the queue.
  db::basic_hub<Lifecycle> h({}, db::seeded_token_source(5));
  h.add_device("relocate").value();
  for (int i = 0; i < 4; ++i)
    h.enqueue("relocate", make_message(1, db::ack_mode::none), t0).value();
  auto got = h.receive("relocate", t0).value();
  for (int i = 0; i < 16; ++i)
    h.enqueue("relocate", make_message(1, db::ack_mode::none), t0).value();
  if (auto r = h.complete("relocate", *got->lock_token, t0); !r)
    fail(std::string(name) +
         ": completing a message locked before its queue grew failed: " + r.error().message);
}

// =============================================================================
// Part 3b: two hubs driven by the same random operations give the same answers.
// =============================================================================
struct seen_transition {
  std::string device_id;
  std::uint64_t sequence_number;
  db::transition_cause cause;
  db::message_state from, to;
  db::dead_letter_reason reason;
  std::uint32_t delivery_count;
  db::time_point at;
  friend bool operator==(const seen_transition&, const seen_transition&) = default;
};

template <class Hub>
void record_transitions(Hub& h, std::vector<seen_transition>& out) {
  h.set_observer([&out](const db::transition& t) {
    out.push_back({std::string(t.device_id), t.sequence_number, t.cause, t.from, t.to, t.reason,
                   t.delivery_count, t.at});
  });
}

template <class T>
void same_result(const db::result<T>& a, const db::result<T>& b, const char* op) {
  if (a.has_value() != b.has_value())
    fail(std::string("hubs: '") + op + "' succeeded on one hub only");
  if (!a.has_value()) {
    if (!(a.error() == b.error()))
      fail(std::string("hubs: '") + op + "' errors differ: " + a.error().message + " / " +
           b.error().message);
    return;
  }
  if constexpr (std::is_same_v<T, db::enqueue_receipt>) {
    if (a->sequence_number != b->sequence_number || a->expiry_time_utc != b->expiry_time_utc)
      fail("hubs: enqueue receipts differ");
  } else if constexpr (!std::is_void_v<T>) {
    if (!(*a == *b))
      fail(std::string("hubs: '") + op + "' results differ");
  }
}

struct walk_result {
  std::uint64_t transitions = 0;
  db::hub_stats stats;
  std::uint64_t feedback_batches_dropped = 0;
};

walk_result check_hubs(std::size_t ops, db::delivery_count_rule rule, std::uint64_t seed) {
  db::hub_config cfg;
  cfg.max_delivery_count = 3;
  cfg.delivery_count = rule;
  cfg.lock_duration = 2s;
  cfg.max_queue_depth = 6;
  cfg.feedback_batch_size = 4;
  cfg.feedback_batch_interval = 3s;
  cfg.feedback_lock_duration = 5s;
  cfg.feedback_max_delivery_count = 2;
  cfg.feedback_ttl = 1min;
  msm_hub a(cfg, db::seeded_token_source(seed));
  switch_hub b(cfg, db::seeded_token_source(seed));
  std::vector<seen_transition> ta, tb;
  record_transitions(a, ta);
  record_transitions(b, tb);

  std::mt19937_64 rng(seed);
  const auto ids = make_device_ids(6);
  for (const auto& id : ids)
    same_result(a.add_device(id), b.add_device(id), "add_device");
  std::vector<std::pair<std::string, db::lock_token>> locks;  // received, maybe settled since
  std::vector<db::lock_token> feedback_locks;
  db::time_point now = t0;
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < ops; ++i) {
    now += std::chrono::milliseconds(rng() % 1500);
    const std::size_t dev = rng() % ids.size();
    const auto& id = ids[dev];
    // Device `dev` is sent to and received from only at instants = dev (mod 8),
    // and every TTL and lock duration is a multiple of 8 ms, so two devices
    // never have a timer due at the same instant: how the engine orders such
    // ties (once by node address, which differs between the two hubs) is no
    // business of the lifecycle comparison.
    const auto align = [&] {
      const auto c = (now - t0).count();
      now += std::chrono::milliseconds((static_cast<long long>(dev) - c % 8 + 8) % 8);
    };
    const auto op = rng() % 100;
    if (op < 30) {
      align();
      auto m = make_message(++n, static_cast<db::ack_mode>(rng() % 4));
      if (rng() % 2)
        m.expiry_time_utc = now + std::chrono::milliseconds(8 * (rng() % 2500));
      same_result(a.enqueue(id, m, now), b.enqueue(id, m, now), "enqueue");
    } else if (op < 55) {
      align();
      auto ra = a.receive(id, now);
      auto rb = b.receive(id, now);
      same_result(ra, rb, "receive");
      if (ra && *ra)
        locks.emplace_back(id, *(*ra)->lock_token);
      if (locks.size() > 16)
        locks.erase(locks.begin());
    } else if (op < 75 && !locks.empty()) {
      // mostly a recent lock (likely still valid), sometimes a stale one
      const auto k =
          locks.size() - 1 - rng() % std::min<std::size_t>(locks.size(), rng() % 8 ? 2 : 16);
      const auto d = static_cast<db::disposition>(rng() % 3);
      same_result(a.settle(locks[k].first, locks[k].second, d, now),
                  b.settle(locks[k].first, locks[k].second, d, now), "settle");
      if (rng() % 8)
        locks.erase(locks.begin() + static_cast<std::ptrdiff_t>(k));
    } else if (op < 80) {
      a.tick(now);
      b.tick(now);
    } else if (op < 82) {
      same_result(a.purge(id, now), b.purge(id, now), "purge");
    } else if (op < 83) {
      same_result(a.remove_device(id, std::nullopt, now), b.remove_device(id, std::nullopt, now),
                  "remove_device");
      auto ga = a.add_device(id);
      auto gb = b.add_device(id);
      same_result(ga, gb, "add_device");
    } else if (op < 92) {
      auto ra = a.receive_feedback(now);
      auto rb = b.receive_feedback(now);
      same_result(ra, rb, "receive_feedback");
      if (ra && *ra)
        feedback_locks.push_back((*ra)->lock_token);
    } else if (!feedback_locks.empty()) {
      const auto k = rng() % feedback_locks.size();
      if (rng() % 3)
        same_result(a.complete_feedback(feedback_locks[k], now),
                    b.complete_feedback(feedback_locks[k], now), "complete_feedback");
      else
        same_result(a.abandon_feedback(feedback_locks[k], now),
                    b.abandon_feedback(feedback_locks[k], now), "abandon_feedback");
      feedback_locks.erase(feedback_locks.begin() + static_cast<std::ptrdiff_t>(k));
    }
    if (a.next_deadline() != b.next_deadline())
      fail("hubs: next_deadline differs");
  }
  now += 1h;
  a.tick(now);
  b.tick(now);
  if (!same_stats(a.stats(), b.stats()))
    fail("hubs: stats differ:\n  msm    " + stats_text(a.stats()) + "\n  switch " +
         stats_text(b.stats()));
  if (a.feedback_queue_depth() != b.feedback_queue_depth() ||
      a.pending_feedback_records() != b.pending_feedback_records() ||
      a.feedback_batches_dropped() != b.feedback_batches_dropped())
    fail("hubs: feedback queues differ");
  if (ta != tb) {
    std::size_t i = 0;
    while (i < ta.size() && i < tb.size() && ta[i] == tb[i])
      ++i;
    auto show = [](const std::vector<seen_transition>& v, std::size_t k) -> std::string {
      if (k >= v.size())
        return "<none>";
      const auto& t = v[k];
      char buf[200];
      std::snprintf(
          buf, sizeof buf, "%s seq %llu %s %s->%s at +%lld ms", t.device_id.c_str(),
          static_cast<unsigned long long>(t.sequence_number),
          std::string(db::to_string(t.cause)).c_str(), std::string(db::to_string(t.from)).c_str(),
          std::string(db::to_string(t.to)).c_str(), static_cast<long long>((t.at - t0).count()));
      return buf;
    };
    fail("hubs: transition #" + std::to_string(i) + " differs: msm [" + show(ta, i) + "] switch [" +
         show(tb, i) + "]");
  }
  const auto& s = a.stats();
  // The random walk must reach every kind of outcome, or it proves little.
  if (ops >= 5000 &&
      (s.completed == 0 || s.rejected == 0 || s.expired == 0 || s.delivery_count_exceeded == 0 ||
       s.purged == 0 || s.feedback_batches == 0 || a.feedback_batches_dropped() == 0))
    fail("hubs: the random walk missed an outcome: " + stats_text(s));
  return {ta.size(), s, a.feedback_batches_dropped()};
}

// =============================================================================
// Part 1: throughput.
// =============================================================================
struct workload {
  std::size_t devices;
  std::size_t fill;  ///< messages per device queue per round
  std::size_t rounds;
};

struct run_result {
  double seconds = 0;
  db::hub_stats stats;
  std::uint64_t checksum = 0;
  std::uint64_t feedback_records = 0;
  std::uint64_t deliveries = 0;
};

/// One run: register the devices (untimed), then `rounds` times fill every
/// queue and empty it again through receive + settle, draining feedback as it
/// comes. Settlement: every 16th message (by sequence number) is rejected,
/// every 8th other one abandoned once (and so delivered twice), the rest
/// completed. Ack modes cycle none/positive/negative/full.
template <class Hub>
run_result run_workload(const workload& w, const std::vector<std::string>& ids) {
  db::hub_config cfg;
  cfg.max_queue_depth = static_cast<std::uint32_t>(std::max<std::size_t>(50, w.fill));
  Hub hub(cfg, db::seeded_token_source(7));
  for (std::size_t d = 0; d < w.devices; ++d)
    hub.add_device(ids[d]).value();

  run_result r;
  db::time_point now = t0;
  std::uint64_t n = 0;
  auto drain_feedback = [&] {
    for (;;) {
      auto got = hub.receive_feedback(now);
      auto& batch = got.value();
      if (!batch)
        break;
      r.feedback_records += batch->records.size();
      for (const auto& rec : batch->records)
        r.checksum = mix(r.checksum, static_cast<std::uint64_t>(rec.status_code));
      hub.complete_feedback(batch->lock_token, now).value();
    }
  };

  const auto start = std::chrono::steady_clock::now();
  for (std::size_t round = 0; round < w.rounds; ++round) {
    for (std::size_t d = 0; d < w.devices; ++d) {
      for (std::size_t k = 0; k < w.fill; ++k) {
        ++n;
        hub.enqueue(ids[d], make_message(n, static_cast<db::ack_mode>(n % 4)), now).value();
      }
      now += 1ms;
    }
    for (std::size_t d = 0; d < w.devices; ++d) {
      for (;;) {
        auto got = hub.receive(ids[d], now);
        auto& m = got.value();
        if (!m)
          break;
        ++r.deliveries;
        const auto seq = m->sequence_number;
        r.checksum = mix(mix(mix_token(r.checksum, *m->lock_token), seq), m->delivery_count);
        if (seq % 16 == 7)
          hub.reject(ids[d], *m->lock_token, now).value();
        else if (seq % 8 == 3 && m->delivery_count == 0)
          hub.abandon(ids[d], *m->lock_token, now).value();
        else
          hub.complete(ids[d], *m->lock_token, now).value();
      }
      now += 1ms;
      if (d % 32 == 31)
        drain_feedback();
    }
    now += 16s;  // past the feedback batch interval: the last partial batch goes out
    hub.tick(now);
    drain_feedback();
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.stats = hub.stats();
  if (hub.pending_feedback_records() != 0 || hub.feedback_queue_depth() != 0)
    fail("workload: feedback not drained");
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// =============================================================================
// Part 2: memory.
// =============================================================================
std::int64_t heap_in_use() {
#ifdef DEVICEBOUND_BENCH_MALLINFO2
  const auto mi = mallinfo2();
  return static_cast<std::int64_t>(mi.uordblks +
                                   mi.hblkhd);  // arena chunks in use + mmapped chunks
#else
  return 0;
#endif
}

struct memory_result {
  double per_idle_device = 0;
  double per_message_total = 0;  ///< heap per message, content included
  double per_message_overhead = 0;
};

template <class Hub>
memory_result measure_memory(const std::vector<std::string>& ids, std::size_t devices,
                             std::size_t fill) {
  db::hub_config cfg;
  cfg.max_queue_depth = static_cast<std::uint32_t>(std::max<std::size_t>(50, fill));
  memory_result out;
  {
    Hub hub(cfg, db::seeded_token_source(11));
    const auto m0 = heap_in_use();
    for (std::size_t d = 0; d < devices; ++d)
      hub.add_device(ids[d]).value();
    const auto m1 = heap_in_use();
    std::uint64_t n = 0;
    const db::time_point now = t0;
    for (std::size_t k = 0; k < fill; ++k)  // round-robin, as traffic arrives
      for (std::size_t d = 0; d < devices; ++d)
        hub.enqueue(ids[d], make_message(++n, db::ack_mode::full), now).value();
    const auto m2 = heap_in_use();
    const double msgs = static_cast<double>(devices * fill);
    out.per_idle_device = static_cast<double>(m1 - m0) / static_cast<double>(devices);
    out.per_message_total = static_cast<double>(m2 - m1) / msgs;
    out.per_message_overhead = out.per_message_total - static_cast<double>(kContentBytes);
  }
  return out;
}

/// Heap per device registered in the hub and in the identity registry (what
/// devicebound-hub holds for an idle device), and the share of its key block.
struct registry_memory {
  double hub_only = 0;          ///< hub entry alone (as `per_idle_device`)
  double hub_and_registry = 0;  ///< hub entry + registry entry, keys included
  double key_block = 0;         ///< the registry's block holding both keys (2 x 32 B + 2)
};

registry_memory measure_registry_memory(const std::vector<std::string>& ids, std::size_t devices) {
  registry_memory out;
  const auto keys = db::keys_from(db::seeded_token_source(17));
  {
    db::hub hub(db::hub_config{}, db::seeded_token_source(11));
    db::registry reg;
    const auto m0 = heap_in_use();
    for (std::size_t d = 0; d < devices; ++d)
      hub.add_device(ids[d]).value();
    const auto m1 = heap_in_use();
    for (std::size_t d = 0; d < devices; ++d) {
      reg.add(ids[d], hub.generation_id(ids[d]).value(), t0, keys).value();
      (void)reg.take_changes();  // the router commits them to the store at once
    }
    const auto m2 = heap_in_use();
    out.hub_only = static_cast<double>(m1 - m0) / static_cast<double>(devices);
    out.hub_and_registry = static_cast<double>(m2 - m0) / static_cast<double>(devices);
  }
  {
    // what a block of two 32-byte keys and their two lengths costs the allocator
    std::vector<std::unique_ptr<char[]>> blocks;
    blocks.reserve(devices);
    const auto m0 = heap_in_use();
    for (std::size_t d = 0; d < devices; ++d)
      blocks.push_back(std::make_unique<char[]>(2 + 2 * db::registry::generated_key_bytes));
    const auto m1 = heap_in_use();
    out.key_block = static_cast<double>(m1 - m0) / static_cast<double>(devices);
  }
  return out;
}

}  // namespace

int main() {
  int failures = 0;
  auto guarded = [&failures](const char* what, auto&& f) {
    try {
      f();
      return true;
    } catch (const check_failure& e) {
      std::fprintf(stderr, "hub_throughput: FAILED (%s): %s\n", what, e.what());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "hub_throughput: FAILED (%s): unexpected error: %s\n", what, e.what());
    }
    ++failures;
    return false;
  };

  const bool smoke = env_flag("DEVICEBOUND_BENCH_SMOKE");
  const bool enforce = env_flag("DEVICEBOUND_BENCH_ENFORCE");
  const workload w = smoke ? workload{64, 4, 2} : workload{10000, 10, 3};
  const std::size_t reps = smoke ? 1 : 7;
  const std::size_t mem_devices = smoke ? 200 : 10000;
  const auto ids = make_device_ids(std::max(w.devices, mem_devices));

  std::printf("devicebound hub_throughput%s\n", smoke ? " (smoke sizes)" : "");
#ifndef NDEBUG
  std::printf("note: assertions on (no NDEBUG): timings are not representative\n");
#endif

  // --- 3: correctness first -----------------------------------------------------
  guarded("switch_lifecycle relocation",
          [] { check_relocation<switch_lifecycle>("switch_lifecycle"); });
  guarded("lifecycle relocation",
          [] { check_relocation<db::lifecycle>("devicebound::lifecycle (Boost.MSM)"); });
  guarded("lifecycle cross-check", [&] {
    const auto steps = check_lifecycles(smoke ? 200 : 20000, 12);
    std::printf(
        "cross-check: the lifecycles agree on %llu random events (both rules, max 1/2/3/10)\n",
        static_cast<unsigned long long>(steps));
  });
  for (auto rule : {db::delivery_count_rule::abandon_only, db::delivery_count_rule::every_delivery})
    for (std::uint64_t seed : {1ull, 2ull, 3ull})
      guarded("hub cross-check", [&] {
        const auto r = check_hubs(smoke ? 1500 : 20000, rule, seed);
        auto u = [](std::uint64_t v) {
          return static_cast<unsigned long long>(v);
        };
        std::printf(
            "cross-check: hubs agree on %llu transitions (%s, seed %llu: completed %llu, rejected "
            "%llu, "
            "expired %llu, dce %llu, purged %llu, feedback batches %llu, dropped %llu)\n",
            u(r.transitions), std::string(to_string(rule)).c_str(), u(seed), u(r.stats.completed),
            u(r.stats.rejected), u(r.stats.expired), u(r.stats.delivery_count_exceeded),
            u(r.stats.purged), u(r.stats.feedback_batches), u(r.feedback_batches_dropped));
      });

  // --- 1: throughput --------------------------------------------------------------
  std::vector<double> t_msm, t_sw;
  run_result last_msm, last_sw;
  bool speed_ok = true;
  const bool ran = guarded("throughput workload", [&] {
    for (std::size_t rep = 0; rep < reps; ++rep) {
      // ABBA order, so drift (frequency, neighbours) hits both alike
      if (rep % 2 == 0) {
        last_msm = run_workload<msm_hub>(w, ids);
        last_sw = run_workload<switch_hub>(w, ids);
      } else {
        last_sw = run_workload<switch_hub>(w, ids);
        last_msm = run_workload<msm_hub>(w, ids);
      }
      t_msm.push_back(last_msm.seconds);
      t_sw.push_back(last_sw.seconds);
      if (!same_stats(last_msm.stats, last_sw.stats))
        fail("workload: stats differ:\n  msm    " + stats_text(last_msm.stats) + "\n  switch " +
             stats_text(last_sw.stats));
      if (last_msm.checksum != last_sw.checksum ||
          last_msm.feedback_records != last_sw.feedback_records ||
          last_msm.deliveries != last_sw.deliveries)
        fail("workload: deliveries or feedback differ between the hubs");
    }
  });
  if (ran) {
    const double msgs = static_cast<double>(w.devices * w.fill * w.rounds);
    const double best_msm = msgs / *std::min_element(t_msm.begin(), t_msm.end());
    const double best_sw = msgs / *std::min_element(t_sw.begin(), t_sw.end());
    const double med_msm = msgs / median(t_msm);
    const double med_sw = msgs / median(t_sw);
    const double ratio_best = best_msm / best_sw;
    const double ratio_med = med_msm / med_sw;
    speed_ok = ratio_best >= 0.8;
    std::printf(
        "\nthroughput: %zu devices x %zu msgs x %zu rounds = %.0f messages/run "
        "(%llu deliveries, %llu feedback records), %zu runs each, interleaved\n",
        w.devices, w.fill, w.rounds, msgs, static_cast<unsigned long long>(last_msm.deliveries),
        static_cast<unsigned long long>(last_msm.feedback_records), reps);
    std::printf("  stats (identical on both): %s\n", stats_text(last_msm.stats).c_str());
    std::printf("  %-28s %14s %14s\n", "lifecycle", "best msgs/s", "median msgs/s");
    std::printf("  %-28s %14.0f %14.0f\n", "hub (Boost.MSM)", best_msm, med_msm);
    std::printf("  %-28s %14.0f %14.0f\n", "basic_hub<switch_lifecycle>", best_sw, med_sw);
    std::printf("  %-28s %14.3f %14.3f   target >= 0.80: %s\n", "ratio MSM / switch", ratio_best,
                ratio_med,
                smoke      ? "(smoke sizes: not meaningful)"
                : speed_ok ? "met"
                           : "MISSED");
  }

  // --- 2: memory ------------------------------------------------------------------
  std::printf(
      "\nmemory: sizeof(queued_message) = %zu B (MSM), %zu B (switch); sizeof(lifecycle) = %zu B, "
      "sizeof(switch_lifecycle) = %zu B\n",
      sizeof(msm_hub::queued_message), sizeof(switch_hub::queued_message), sizeof(db::lifecycle),
      sizeof(switch_lifecycle));
  bool memory_ok = true;
  if (heap_in_use() == 0) {
    std::printf(
        "  n/a: mallinfo2() not available with this allocator (sanitizer, valgrind or not "
        "glibc)\n");
  } else {
    guarded("memory", [&] {
      std::printf(
          "  measured with glibc mallinfo2() (uordblks + hblkhd), %zu devices, ids of %zu chars;\n"
          "  per message %zu B of content (body %zu + message id 36 + content type %zu) "
          "subtracted\n",
          mem_devices, ids[0].size(), kContentBytes, kBodyBytes, kContentType.size());
      const auto m10 = measure_memory<msm_hub>(ids, mem_devices, 10);
      const auto s10 = measure_memory<switch_hub>(ids, mem_devices, 10);
      const auto m50 = measure_memory<msm_hub>(ids, mem_devices, 50);
      const auto s50 = measure_memory<switch_hub>(ids, mem_devices, 50);
      memory_ok = m10.per_message_overhead <= 160 && m50.per_message_overhead <= 160;
      std::printf("  %-34s %12s %12s\n", "", "MSM", "switch");
      std::printf("  %-34s %12.1f %12.1f\n", "bytes per idle device", m10.per_idle_device,
                  s10.per_idle_device);
      std::printf("  %-34s %12.1f %12.1f\n", "heap per message, fill 10", m10.per_message_total,
                  s10.per_message_total);
      std::printf("  %-34s %12.1f %12.1f   target <= 160: %s\n", "overhead per message, fill 10",
                  m10.per_message_overhead, s10.per_message_overhead,
                  m10.per_message_overhead <= 160 ? "met" : "MISSED");
      std::printf("  %-34s %12.1f %12.1f\n", "heap per message, fill 50", m50.per_message_total,
                  s50.per_message_total);
      std::printf("  %-34s %12.1f %12.1f   target <= 160: %s\n", "overhead per message, fill 50",
                  m50.per_message_overhead, s50.per_message_overhead,
                  m50.per_message_overhead <= 160 ? "met" : "MISSED");
      const auto reg = measure_registry_memory(ids, mem_devices);
      const double beyond_keys = reg.hub_and_registry - reg.key_block;
      memory_ok = memory_ok && beyond_keys <= 300;
      std::printf("  %-34s %12.1f\n", "bytes per idle device (hub only)", reg.hub_only);
      std::printf("  %-34s %12.1f\n", "bytes per registered idle device", reg.hub_and_registry);
      std::printf("  %-34s %12.1f   target <= 300: %s\n", "  beyond keys (hub + registry)",
                  beyond_keys, beyond_keys <= 300 ? "met" : "MISSED");
      std::printf("  %-34s %12.1f\n", "  of which the key block", reg.key_block);
    });
  }

  if (failures) {
    std::fprintf(stderr, "hub_throughput: %d check(s) FAILED\n", failures);
    return 1;
  }
  if (enforce && !smoke && !(speed_ok && memory_ok)) {
    std::fprintf(stderr, "hub_throughput: a target was missed (DEVICEBOUND_BENCH_ENFORCE=1)\n");
    return 2;
  }
  return 0;
}
