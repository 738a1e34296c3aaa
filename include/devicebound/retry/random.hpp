/// \file retry/random.hpp
/// Sources of the random part of a backoff (SPEC 8.9): anything returning doubles in [0, 1).
#pragma once

#include <cmath>
#include <concepts>
#include <random>
#include <utility>

namespace devicebound::retry {

/// A source of doubles in [0, 1): a callable returning a floating-point value. Values outside
/// [0, 1) (or NaN) are clamped into it. Integer-returning generators are refused on purpose:
/// wrap a UniformRandomBitGenerator in `urbg_random`.
template <class R>
concept unit_random = requires(R& r) {
  { r() } -> std::floating_point;
};

/// Always returns `value` (clamped into [0, 1)); for tests and for bounds.
struct fixed_random {
  double value = 0.0;
  double operator()() const noexcept { return value; }
};

/// Adapts a UniformRandomBitGenerator (`std::mt19937_64`, ...) to `unit_random`.
template <std::uniform_random_bit_generator G>
class urbg_random {
 public:
  urbg_random() = default;
  explicit urbg_random(G g) : g_(std::move(g)) {}
  double operator()() { return std::generate_canonical<double, 53>(g_); }
  G& generator() noexcept { return g_; }

 private:
  G g_{};
};

/// The controller's default source. Seed it per client (from `std::random_device` at the I/O
/// edge): the default seed is fixed, so unseeded clients would jitter in lock-step.
using default_random = urbg_random<std::mt19937_64>;

namespace detail {

/// One draw from `r`, clamped into [0, 1).
template <unit_random R>
double draw(R& r) {
  const double x = static_cast<double>(r());
  if (!(x >= 0.0))
    return 0.0;
  if (x >= 1.0)
    return std::nextafter(1.0, 0.0);
  return x;
}

}  // namespace detail

}  // namespace devicebound::retry
