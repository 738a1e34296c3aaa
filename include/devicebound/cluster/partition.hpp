/// \file cluster/partition.hpp
/// Which partition a device belongs to: the one hash of devicebound's partitioned
/// hubs (docs/scale-out.md, "Partitions and ownership"). Every component that
/// routes by device (the hub instances, the event router, request routing, the
/// Python and Node bindings) computes
///
///     partition_of(id, K) = fmix64(fnv1a64(id)) mod K
///
/// - `fnv1a64`: FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime
///   0x100000001b3), over the device id's bytes as given. Device ids are ASCII
///   (SPEC 2.11, device_id.hpp), so their bytes are their UTF-8 bytes, and they
///   are case-sensitive: `Dev1` and `dev1` are two devices and may land in two
///   partitions. No normalisation of any kind.
/// - `fmix64`: the 64-bit finaliser of MurmurHash3 (xor-shift 33, multiply by
///   0xff51afd7ed558ccd, xor-shift 33, multiply by 0xc4ceb9fe1a85ec53, xor-shift
///   33). FNV-1a alone is weak modulo a power of two: its low m bits depend only
///   on the low m bits of each byte, so `a1` and `q1` (0x61, 0x71) would always
///   share a partition when K divides 16. The finaliser mixes the high bits down.
/// - `mod K`: the remainder of the unsigned 64-bit value. Its bias is below
///   K / 2^64, nothing for K <= `max_partitions`.
///
/// Test vectors: tests/data/partition_vectors.txt (checked by
/// tests/test_cluster_partition.cpp; the bindings check the same file).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "../device_id.hpp"
#include "../errors.hpp"

namespace devicebound::cluster {

/// The largest partition count K. Each partition is one engine, one lease row
/// renewed every second and one request queue: thousands of them would cost
/// more than they spread.
inline constexpr std::uint32_t max_partitions = 1024;

/// FNV-1a, 64-bit, over `bytes`.
constexpr std::uint64_t fnv1a64(std::string_view bytes) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : bytes) {
    h ^= static_cast<std::uint64_t>(static_cast<unsigned char>(c));
    h *= 0x100000001b3ULL;
  }
  return h;
}

/// The 64-bit finaliser of MurmurHash3: a bijection that spreads every input bit
/// over every output bit.
constexpr std::uint64_t fmix64(std::uint64_t k) noexcept {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

/// The partition hash of a device id: `fmix64(fnv1a64(id))`. Not validated
/// (`partition_of` validates).
constexpr std::uint64_t partition_hash(std::string_view device_id) noexcept {
  return fmix64(fnv1a64(device_id));
}

/// Checks a partition count: 1..`max_partitions`, else 400004 naming it.
inline result<void> validate_partition_count(std::uint32_t partitions) {
  if (partitions == 0)
    return make_error(errc::argument_invalid, "partition count is 0; a hub has at least 1");
  if (partitions > max_partitions)
    return make_error(errc::argument_invalid, "partition count " + std::to_string(partitions) +
                                                  " is above the limit of " +
                                                  std::to_string(max_partitions));
  return {};
}

/// The partition (0..partitions-1) of `device_id`: `partition_hash(id) mod partitions`.
/// Errors (400004): a partition count of 0 or above `max_partitions`, and a
/// device id that breaks the device id rule (validate_device_id).
inline result<std::uint32_t> partition_of(std::string_view device_id, std::uint32_t partitions) {
  if (auto r = validate_partition_count(partitions); !r)
    return r.error();
  if (auto r = validate_device_id(device_id); !r)
    return r.error();
  return static_cast<std::uint32_t>(partition_hash(device_id) % partitions);
}

}  // namespace devicebound::cluster
