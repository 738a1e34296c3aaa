// version.hpp: the string, the macros and DEVICEBOUND_VERSION agree.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <charconv>
#include <cstddef>
#include <devicebound/version.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace {

std::vector<int> split_version(std::string_view text) {
  std::vector<int> parts;
  while (true) {
    int value = -1;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{})
      return {};
    parts.push_back(value);
    text.remove_prefix(static_cast<std::size_t>(end - text.data()));
    if (text.empty())
      return parts;
    if (text.front() != '.')
      return {};
    text.remove_prefix(1);
  }
}

}  // namespace

TEST(version, string_matches_macros) {
  EXPECT_EQ(split_version(devicebound::version),
            (std::vector<int>{DEVICEBOUND_VERSION_MAJOR, DEVICEBOUND_VERSION_MINOR,
                              DEVICEBOUND_VERSION_PATCH}));
}

TEST(version, combined_macro) {
  static_assert(DEVICEBOUND_VERSION == DEVICEBOUND_VERSION_MAJOR * 10000 +
                                           DEVICEBOUND_VERSION_MINOR * 100 +
                                           DEVICEBOUND_VERSION_PATCH);
  EXPECT_EQ(DEVICEBOUND_VERSION, 100);
}

// The parser used above reads back any major.minor.patch it is given, so the
// string_matches_macros check cannot pass by accident.
RC_GTEST_PROP(version, split_version_round_trips, ()) {
  const auto major = *rc::gen::inRange(0, 100);
  const auto minor = *rc::gen::inRange(0, 100);
  const auto patch = *rc::gen::inRange(0, 100);
  const auto text =
      std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  RC_ASSERT(split_version(text) == (std::vector<int>{major, minor, patch}));
}
