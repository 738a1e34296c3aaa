// IoT Hub's C2D throttles (SPEC 2.7, 2.8) as the daemon's router applies them:
// opt-in (`--throttle off|free|S1|S2|S3`, `--throttle-units N`), per hub, one
// token bucket for C2D sends and one for HTTPS device receives.
//
// Sans-I/O: no clock, no thread. Every call takes `now`; the same calls at the
// same times give the same answers, so tests drive it with made-up instants.
//
// The bucket holds at most one minute of the tier's rate (the burst) and
// refills continuously at that rate. IoT Hub shapes bursts (SPEC 2.8: it queues
// what is over the rate and answers 429 only when that queue is full); the
// daemon does not queue: what finds the bucket empty is refused at once with
// 429001 ThrottlingException and changes nothing. docs/security.md, "Throttles".
#pragma once

#include <cstdint>
#include <devicebound/auth/rights.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/message.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace devicebound::hubd {

/// An IoT Hub tier whose throttles the daemon applies; `off`: none (the default).
enum class throttle_tier : std::uint8_t { off, free, s1, s2, s3 };

constexpr std::string_view to_string(throttle_tier t) noexcept {
  switch (t) {
    case throttle_tier::off:
      return "off";
    case throttle_tier::free:
      return "free";
    case throttle_tier::s1:
      return "S1";
    case throttle_tier::s2:
      return "S2";
    case throttle_tier::s3:
      return "S3";
  }
  return "?";
}

/// `off`, `free`, `S1`, `S2`, `S3` (the tier names are accepted in any case).
constexpr std::optional<throttle_tier> parse_throttle_tier(std::string_view s) noexcept {
  for (auto t : {throttle_tier::off, throttle_tier::free, throttle_tier::s1, throttle_tier::s2,
                 throttle_tier::s3})
    if (auth::iequals(s, to_string(t)))
      return t;
  return std::nullopt;
}

/// Operations per minute per unit of a tier (SPEC 2.7).
struct throttle_rates {
  std::uint64_t sends_per_minute = 0;     ///< C2D sends
  std::uint64_t receives_per_minute = 0;  ///< C2D receives by devices over HTTPS
};

/// SPEC 2.7: free, S1, S2: 100 sends and 1,000 receives a minute per unit; S3:
/// 5,000 and 50,000. `off`: zero (no throttle).
constexpr throttle_rates rates_of(throttle_tier t) noexcept {
  switch (t) {
    case throttle_tier::off:
      return {0, 0};
    case throttle_tier::free:
    case throttle_tier::s1:
    case throttle_tier::s2:
      return {100, 1000};
    case throttle_tier::s3:
      return {5000, 50000};
  }
  return {0, 0};
}

/// The largest `--throttle-units`: IoT Hub sells at most 200 units of S1/S2 and
/// 10 of S3; a larger number is taken as a typing mistake.
constexpr std::uint32_t max_throttle_units = 200;

struct throttle_config {
  throttle_tier tier = throttle_tier::off;
  std::uint32_t units = 1;  ///< 1..max_throttle_units; `free` has one unit whatever is given

  /// The configuration's problem, or nothing.
  std::optional<std::string> problem() const {
    if (units < 1 || units > max_throttle_units)
      return "--throttle-units must be 1.." + std::to_string(max_throttle_units) + ", not " +
             std::to_string(units);
    return std::nullopt;
  }
};

/// A token bucket: `per_minute` operations a minute, at most `per_minute` at once.
/// Integer arithmetic: one operation costs 60,000 credit units and a millisecond
/// refills `per_minute` units, so the rate is exact at any rate and time step.
class token_bucket {
 public:
  token_bucket() = default;
  /// A full bucket at `now` (a hub starts with a minute's burst available).
  token_bucket(std::uint64_t per_minute, time_point now)
      : rate_(per_minute), credit_(capacity()), last_(now) {}

  /// Whether the bucket limits anything (a zero rate does not).
  bool limited() const noexcept { return rate_ != 0; }
  std::uint64_t per_minute() const noexcept { return rate_; }

  /// Whole operations available at `now`.
  std::uint64_t available(time_point now) const noexcept { return credit_at(now) / cost; }

  /// Whether one operation may run at `now`; changes nothing.
  bool admits(time_point now) const noexcept { return !limited() || credit_at(now) >= cost; }

  /// Takes one operation at `now`: true, or false and nothing changed.
  bool take(time_point now) noexcept {
    if (!limited())
      return true;
    const std::uint64_t c = credit_at(now);
    if (c < cost)
      return false;
    credit_ = c - cost;
    if (now > last_)
      last_ = now;
    return true;
  }

  /// How long from `now` until one operation is admitted (zero if it is now).
  duration wait(time_point now) const noexcept {
    if (admits(now))
      return duration::zero();
    const std::uint64_t missing = cost - credit_at(now);
    return duration{static_cast<duration::rep>((missing + rate_ - 1) / rate_)};
  }

 private:
  static constexpr std::uint64_t cost = 60'000;  ///< credit of one operation (ms a minute)

  std::uint64_t capacity() const noexcept { return rate_ * cost; }

  /// The credit at `now`: refilled since `last_`, never over the capacity. A
  /// clock that went back refills nothing.
  std::uint64_t credit_at(time_point now) const noexcept {
    if (now <= last_)
      return credit_;
    const auto ms = static_cast<std::uint64_t>((now - last_).count());
    const std::uint64_t room = capacity() - credit_;
    // ms * rate_ could overflow after a very long pause: compare before multiplying.
    if (ms >= room / rate_ + 1)
      return capacity();
    return credit_ + ms * rate_;
  }

  std::uint64_t rate_ = 0;
  std::uint64_t credit_ = 0;
  time_point last_{};
};

/// The hub's two C2D throttles of a tier and a number of units.
class c2d_throttle {
 public:
  c2d_throttle() = default;
  c2d_throttle(throttle_config c, time_point now) : config_(c) {
    const auto r = rates_of(c.tier);
    const std::uint64_t units = c.tier == throttle_tier::free ? 1 : (c.units < 1 ? 1 : c.units);
    sends_ = token_bucket(r.sends_per_minute * units, now);
    receives_ = token_bucket(r.receives_per_minute * units, now);
  }

  const throttle_config& config() const noexcept { return config_; }
  bool on() const noexcept { return sends_.limited(); }

  /// Whether a send may go ahead at `now` (nothing taken: see `took_send`), or
  /// the 429001 error to answer.
  result<void> check_send(time_point now) const { return check(sends_, "send", now); }
  /// A send was accepted at `now`: it takes its token.
  void took_send(time_point now) noexcept { (void)sends_.take(now); }

  result<void> check_receive(time_point now) const { return check(receives_, "receive", now); }
  void took_receive(time_point now) noexcept { (void)receives_.take(now); }

  const token_bucket& sends() const noexcept { return sends_; }
  const token_bucket& receives() const noexcept { return receives_; }

 private:
  result<void> check(const token_bucket& b, std::string_view what, time_point now) const {
    if (b.admits(now))
      return {};
    const auto ms = b.wait(now).count();
    return make_error(errc::throttling, "the hub's C2D " + std::string(what) + " throttle (" +
                                            std::string(to_string(config_.tier)) + ", " +
                                            std::to_string(b.per_minute()) +
                                            " a minute) is exceeded; the next is admitted in " +
                                            std::to_string(ms) + " ms");
  }

  throttle_config config_;
  token_bucket sends_;
  token_bucket receives_;
};

}  // namespace devicebound::hubd
