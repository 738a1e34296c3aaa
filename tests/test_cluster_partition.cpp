// The partition hash of partitioned hubs (cluster/partition.hpp, docs/scale-out.md,
// "Partitions and ownership"): the published test vectors of tests/data/partition_vectors.txt,
// FNV-1a's own reference values, typed refusals, case-sensitivity, why the finaliser is
// there, and properties: stable, in range, and about uniform over random and sequential ids
// (chi-square against a bound loose enough never to flake).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <devicebound/cluster/partition.hpp>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#ifndef DEVICEBOUND_PARTITION_VECTORS
#define DEVICEBOUND_PARTITION_VECTORS "tests/data/partition_vectors.txt"
#endif

using namespace devicebound;
namespace cl = devicebound::cluster;

namespace {

constexpr std::string_view id_alphabet =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.%_*?!(),:=@$'";

struct vector_line {
  std::string id;
  std::uint64_t fnv = 0;
  std::uint64_t hash = 0;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> parts;  // (K, partition)
};

std::vector<vector_line> read_vectors() {
  std::ifstream in(DEVICEBOUND_PARTITION_VECTORS);
  EXPECT_TRUE(in) << "cannot open " << DEVICEBOUND_PARTITION_VECTORS;
  std::vector<vector_line> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    std::istringstream fields(line);
    vector_line v;
    std::string fnv, hash, kp;
    fields >> v.id >> fnv >> hash;
    v.fnv = std::stoull(fnv, nullptr, 16);
    v.hash = std::stoull(hash, nullptr, 16);
    while (fields >> kp) {
      const auto colon = kp.find(':');
      v.parts.emplace_back(static_cast<std::uint32_t>(std::stoul(kp.substr(0, colon))),
                           static_cast<std::uint32_t>(std::stoul(kp.substr(colon + 1))));
    }
    out.push_back(std::move(v));
  }
  return out;
}

/// Pearson's chi-square statistic of `counts` against a uniform expectation.
double chi_square(const std::vector<std::uint64_t>& counts, std::uint64_t n) {
  const double expected = static_cast<double>(n) / static_cast<double>(counts.size());
  double chi = 0;
  for (auto c : counts) {
    const double d = static_cast<double>(c) - expected;
    chi += d * d / expected;
  }
  return chi;
}

/// A bound chi-square with `df` degrees of freedom exceeds with a probability
/// far below 1e-9 (mean df, standard deviation sqrt(2 df); ten of them, plus 20).
double loose_bound(std::uint32_t df) {
  return df + 10.0 * std::sqrt(2.0 * df) + 20.0;
}

std::string random_id(std::mt19937_64& rng) {
  std::uniform_int_distribution<std::size_t> len(1, max_device_id_length);
  std::uniform_int_distribution<std::size_t> ch(0, id_alphabet.size() - 1);
  std::string id(len(rng), '\0');
  for (auto& c : id)
    c = id_alphabet[ch(rng)];
  return id;
}

}  // namespace

TEST(ClusterPartition, FnvMatchesItsReferenceValues) {
  static_assert(cl::fnv1a64("") == 0xcbf29ce484222325ULL);
  static_assert(cl::fnv1a64("a") == 0xaf63dc4c8601ec8cULL);
  static_assert(cl::fnv1a64("foobar") == 0x85944171f73967e8ULL);
  static_assert(cl::fmix64(0) == 0);
  EXPECT_EQ(cl::fnv1a64("foobar"), 0x85944171f73967e8ULL);
}

TEST(ClusterPartition, PublishedVectorsHold) {
  const auto vectors = read_vectors();
  ASSERT_GE(vectors.size(), 20u);
  for (const auto& v : vectors) {
    SCOPED_TRACE(v.id);
    EXPECT_EQ(cl::fnv1a64(v.id), v.fnv);
    EXPECT_EQ(cl::partition_hash(v.id), v.hash);
    ASSERT_EQ(v.parts.size(), 8u);
    for (const auto& [k, p] : v.parts) {
      auto got = cl::partition_of(v.id, k);
      ASSERT_TRUE(got) << got.error().message;
      EXPECT_EQ(*got, p) << "K=" << k;
    }
  }
}

TEST(ClusterPartition, IsConstexpr) {
  // the vectors' first line, computed at compile time
  static_assert(cl::partition_hash("a") == 0x82a2a958a9bece5bULL);
  static_assert(cl::partition_hash("a") % 16 == 11);
}

TEST(ClusterPartition, RefusesABadPartitionCount) {
  auto zero = cl::partition_of("dev1", 0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.code(), errc::argument_invalid);
  EXPECT_NE(zero.error().message.find("partition count is 0"), std::string::npos);

  auto big = cl::partition_of("dev1", cl::max_partitions + 1);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.code(), errc::argument_invalid);
  EXPECT_NE(big.error().message.find("1025"), std::string::npos) << big.error().message;
  EXPECT_NE(big.error().message.find("1024"), std::string::npos) << big.error().message;

  auto max = cl::partition_of("dev1", cl::max_partitions);
  ASSERT_TRUE(max);
  EXPECT_LT(*max, cl::max_partitions);
  EXPECT_EQ(*cl::partition_of("dev1", 1), 0u);
}

TEST(ClusterPartition, RefusesAnInvalidDeviceId) {
  for (std::string bad : {std::string(), std::string("a/b"), std::string("a b"),
                          std::string(max_device_id_length + 1, 'x'), std::string("caf\xc3\xa9")}) {
    SCOPED_TRACE(bad);
    auto r = cl::partition_of(bad, 16);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.code(), errc::argument_invalid);
    EXPECT_NE(r.error().message.find("device id"), std::string::npos) << r.error().message;
  }
  EXPECT_TRUE(cl::partition_of(std::string(max_device_id_length, 'x'), 16));
}

TEST(ClusterPartition, IsCaseSensitive) {
  EXPECT_NE(cl::partition_hash("Dev1"), cl::partition_hash("dev1"));
  EXPECT_NE(*cl::partition_of("Dev1", 16), *cl::partition_of("dev1", 16));
}

// Bare FNV-1a modulo 16 sees only the low 4 bits of each byte: 'a' (0x61) and 'q' (0x71)
// are the same to it. The finaliser is what makes them differ.
TEST(ClusterPartition, FinaliserSeparatesIdsBareFnvConfusesModuloAPowerOfTwo) {
  std::size_t bare_same = 0, ours_same = 0, n = 0;
  std::mt19937_64 rng(15);
  for (int i = 0; i < 1000; ++i) {
    const std::string suffix = random_id(rng).substr(0, 20);
    const std::string a = "a" + suffix, q = "q" + suffix;
    ++n;
    bare_same += cl::fnv1a64(a) % 16 == cl::fnv1a64(q) % 16;
    ours_same += cl::partition_hash(a) % 16 == cl::partition_hash(q) % 16;
  }
  EXPECT_EQ(bare_same, n);
  EXPECT_LT(ours_same, n / 8);  // about n / 16 by chance
}

// Fixed seed: deterministic, and the bound is loose besides.
TEST(ClusterPartition, AboutUniformOverRandomAndSequentialIds) {
  std::mt19937_64 rng(20261202);
  constexpr std::uint64_t n = 64000;
  std::vector<std::string> random_ids, sequential_ids;
  for (std::uint64_t i = 0; i < n; ++i) {
    random_ids.push_back(random_id(rng));
    sequential_ids.push_back("device-" + std::to_string(i));
  }
  for (std::uint32_t k : {2u, 3u, 7u, 16u, 64u, 256u, 1000u}) {
    for (const auto* ids : {&random_ids, &sequential_ids}) {
      std::vector<std::uint64_t> counts(k);
      for (const auto& id : *ids)
        ++counts[*cl::partition_of(id, k)];
      const double chi = chi_square(counts, n);
      EXPECT_LT(chi, loose_bound(k - 1))
          << "K=" << k << (ids == &random_ids ? " random" : " sequential") << " ids";
    }
  }
}

RC_GTEST_PROP(ClusterPartitionProperty, StableAndInRange, ()) {
  const auto len = *rc::gen::inRange<std::size_t>(1, max_device_id_length + 1);
  const auto id = *rc::gen::container<std::string>(
      len, rc::gen::elementOf(std::string(id_alphabet.begin(), id_alphabet.end())));
  const auto k = *rc::gen::inRange<std::uint32_t>(1, cl::max_partitions + 1);
  const auto p = cl::partition_of(id, k);
  RC_ASSERT(p.has_value());
  RC_ASSERT(*p < k);
  RC_ASSERT(*cl::partition_of(id, k) == *p);                 // same input, same output
  RC_ASSERT(*p == cl::partition_hash(std::string(id)) % k);  // a copy hashes alike
  RC_ASSERT(*cl::partition_of(id, 1) == 0u);
}

RC_GTEST_PROP(ClusterPartitionProperty, AboutUniformOverRandomIds, ()) {
  std::mt19937_64 rng(*rc::gen::arbitrary<std::uint64_t>());
  const auto k = *rc::gen::inRange<std::uint32_t>(2, 65);
  const std::uint64_t n = 64ull * k;  // 64 expected a partition
  std::vector<std::uint64_t> counts(k);
  for (std::uint64_t i = 0; i < n; ++i)
    ++counts[*cl::partition_of(random_id(rng), k)];
  RC_ASSERT(chi_square(counts, n) < loose_bound(k - 1));
}
