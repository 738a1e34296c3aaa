/// \file token_source.hpp
/// Where lock tokens and generation ids come from: an injected random source.
#pragma once

#include <cstdint>
#include <functional>
#include <random>

#include "message.hpp"

namespace devicebound {

/// Makes 128-bit lock tokens. The hub calls it; it never reads a clock.
using token_source = std::function<lock_token()>;

/// Unguessable tokens from the operating system's random source
/// (`std::random_device`: getrandom or RDRAND on Linux). The default.
inline token_source system_token_source() {
  return [dev = std::make_shared<std::random_device>()]() {
    lock_token t;
    for (std::size_t i = 0; i < 16; i += 4) {
      const auto v = static_cast<std::uint32_t>((*dev)());
      t.bytes[i] = static_cast<std::uint8_t>(v);
      t.bytes[i + 1] = static_cast<std::uint8_t>(v >> 8);
      t.bytes[i + 2] = static_cast<std::uint8_t>(v >> 16);
      t.bytes[i + 3] = static_cast<std::uint8_t>(v >> 24);
    }
    return t;
  };
}

/// Reproducible tokens from a seed (SplitMix64). For tests and benchmarks
/// only: anyone who sees a few tokens can predict the next.
inline token_source seeded_token_source(std::uint64_t seed) {
  return [state = seed]() mutable {
    auto next = [&state] {
      std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    lock_token t;
    const std::uint64_t a = next(), b = next();
    for (std::size_t i = 0; i < 8; ++i) {
      t.bytes[i] = static_cast<std::uint8_t>(a >> (8 * i));
      t.bytes[8 + i] = static_cast<std::uint8_t>(b >> (8 * i));
    }
    return t;
  };
}

}  // namespace devicebound
