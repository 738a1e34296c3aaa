#pragma once

/// @file
/// Library version. Kept by hand in step with project(VERSION) in CMakeLists.txt;
/// configuring fails if the two disagree.

#include <string_view>

#define DEVICEBOUND_VERSION_MAJOR 0
#define DEVICEBOUND_VERSION_MINOR 1
#define DEVICEBOUND_VERSION_PATCH 0

/// One integer for preprocessor comparisons: major * 10000 + minor * 100 + patch.
#define DEVICEBOUND_VERSION \
  (DEVICEBOUND_VERSION_MAJOR * 10000 + DEVICEBOUND_VERSION_MINOR * 100 + DEVICEBOUND_VERSION_PATCH)

namespace devicebound {

/// The library version as "major.minor.patch".
inline constexpr std::string_view version = "0.1.0";

}  // namespace devicebound
