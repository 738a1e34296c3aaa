/// \file tests/support/required.hpp
/// Tests that need a part the machine may lack (mosquitto, the devicebound-hub
/// daemon, a build with the MQTT transport) skip themselves without it, naming
/// the part. With DEVICEBOUND_REQUIRE_ALL=1 (scripts/test.sh sets it: CI
/// installs every part) they fail instead, so a suite cannot pass by skipping.
/// The benchmarks' smoke runs ask all_parts_required() too; the macro needs
/// <gtest/gtest.h>, which this header leaves to the test that uses it.
#pragma once

#include <cstdlib>
#include <string_view>

namespace devicebound::test_support {

/// Whether a missing part fails the test instead of skipping it.
inline bool all_parts_required() {
  const char* v = std::getenv("DEVICEBOUND_REQUIRE_ALL");
  return v != nullptr && std::string_view(v) == "1";
}

}  // namespace devicebound::test_support

/// `DEVICEBOUND_MISSING_PART("mosquitto not found at " << path);` skips the test,
/// or fails it under DEVICEBOUND_REQUIRE_ALL=1. Returns from the function, as
/// GTEST_SKIP does (in SetUp, the test body then does not run).
#define DEVICEBOUND_MISSING_PART(what)                                             \
  do {                                                                             \
    if (::devicebound::test_support::all_parts_required())                         \
      GTEST_FAIL() << "missing part (DEVICEBOUND_REQUIRE_ALL=1): " << what;        \
    else                                                                           \
      GTEST_SKIP() << what << " (DEVICEBOUND_REQUIRE_ALL=1 makes this a failure)"; \
  } while (0)
