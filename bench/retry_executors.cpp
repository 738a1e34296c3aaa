// The retry table's two executors on the same event stream: `controller` (a loop over the 16
// constexpr rows; what the clients run) against `msm_controller` (the Boost.MSM machine
// generated from the same rows), in one process. Prints events per second for each and the
// ratio table / MSM, best of several rounds. Both must end with the same checksum.
//
//   ./build/bench/bench_retry_executors        (DEVICEBOUND_BENCH_SMOKE=1: tiny sizes)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <devicebound/retry.hpp>
#include <devicebound/retry/machine.hpp>
#include <optional>
#include <random>
#include <vector>

namespace {

namespace rt = devicebound::retry;
using devicebound::duration;
using devicebound::time_point;

/// One scripted step: what happens to the running attempt.
enum class step : std::uint8_t { fail_transient, fail_throttled, succeed, fail_fatal };

std::vector<step> make_script(std::size_t n) {
  std::mt19937_64 gen(42);
  std::vector<step> s;
  s.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto r = gen() % 100;
    s.push_back(r < 60   ? step::fail_transient
                : r < 75 ? step::fail_throttled
                : r < 98 ? step::succeed
                         : step::fail_fatal);
  }
  return s;
}

/// Drives one controller through the script: start, then each step's event, firing the timer
/// when asked and resetting after a give-up. Returns a checksum of the answers and counts the
/// events it fed in `events`.
template <class Controller>
std::uint64_t drive(Controller& c, const std::vector<step>& script, std::uint64_t& events) {
  std::uint64_t sum = 0;
  time_point t{std::chrono::seconds(1)};
  // Counts the event and folds its answer into the checksum; returns the answer.
  auto feed = [&](devicebound::result<rt::decision> d) -> std::optional<rt::decision> {
    ++events;
    if (!d)
      return std::nullopt;
    sum = sum * 31 + static_cast<std::uint64_t>(d->what) +
          static_cast<std::uint64_t>(d->at.time_since_epoch().count());
    return *d;
  };
  feed(c.start(t));
  for (const step s : script) {
    t += duration{7};
    if (s == step::succeed) {
      feed(c.attempt_succeeded(t));
      feed(c.start(t));
      continue;
    }
    const auto cls = s == step::fail_fatal       ? rt::error_class::fatal
                     : s == step::fail_throttled ? rt::error_class::throttled
                                                 : rt::error_class::transient;
    const auto d = feed(c.attempt_failed(cls, t));
    if (d && d->what == rt::verdict::attempt_at) {
      t = d->at;
      const auto f = feed(c.timer_fired(t));
      if (f && f->what == rt::verdict::attempt_now)
        continue;
    }
    if (c.state() == rt::state::exhausted || c.state() == rt::state::fatal) {
      feed(c.reset(t));
      feed(c.start(t));
    }
  }
  return sum;
}

template <class Controller>
double run(const std::vector<step>& script, int rounds, std::uint64_t& checksum) {
  double best = 0;
  for (int r = 0; r < rounds; ++r) {
    Controller c{rt::profiles::node(), rt::fixed_random{0.5}};
    std::uint64_t events = 0;
    const auto start = std::chrono::steady_clock::now();
    checksum = drive(c, script, events);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::max(best, static_cast<double>(events) / took.count());
  }
  return best;
}

}  // namespace

int main() {
  const bool smoke = std::getenv("DEVICEBOUND_BENCH_SMOKE") != nullptr;
  const std::vector<step> script = make_script(smoke ? 1000 : 2'000'000);
  const int rounds = smoke ? 1 : 5;
  using table_t = rt::controller<rt::policy, rt::fixed_random>;
  using msm_t = rt::msm_controller<rt::policy, rt::fixed_random>;
  std::uint64_t sum_table = 0, sum_msm = 0;
  const double msm = run<msm_t>(script, rounds, sum_msm);
  const double table = run<table_t>(script, rounds, sum_table);
  std::printf("retry executors, %zu scripted attempts, best of %d (events/s)\n", script.size(),
              rounds);
  std::printf("  %-34s %14.0f\n", "msm_controller (Boost.MSM)", msm);
  std::printf("  %-34s %14.0f\n", "controller (table; the clients')", table);
  std::printf("  ratio table / MSM: %.2f\n", table / msm);
  if (sum_table != sum_msm) {
    std::printf("checksums differ: %llu vs %llu\n", static_cast<unsigned long long>(sum_table),
                static_cast<unsigned long long>(sum_msm));
    return 1;
  }
  return 0;
}
