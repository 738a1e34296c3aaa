# version.hpp is kept by hand (it must be usable straight from the source tree,
# e.g. by add_subdirectory consumers), so configure fails if it drifts from
# project(VERSION).
function(devicebound_check_version_header header)
  if(NOT EXISTS "${header}")
    message(FATAL_ERROR "devicebound: ${header} is missing")
  endif()
  file(READ "${header}" text)
  foreach(part IN ITEMS MAJOR MINOR PATCH)
    if(NOT text MATCHES "#define DEVICEBOUND_VERSION_${part} ([0-9]+)")
      message(FATAL_ERROR "devicebound: no DEVICEBOUND_VERSION_${part} in ${header}")
    endif()
    set(header_${part} "${CMAKE_MATCH_1}")
  endforeach()
  if(NOT text MATCHES "inline constexpr std::string_view version = \"([^\"]*)\"")
    message(FATAL_ERROR "devicebound: no `inline constexpr std::string_view version` in ${header}")
  endif()
  set(header_string "${CMAKE_MATCH_1}")
  set(header_macros "${header_MAJOR}.${header_MINOR}.${header_PATCH}")
  if(NOT header_macros STREQUAL PROJECT_VERSION OR NOT header_string STREQUAL PROJECT_VERSION)
    message(FATAL_ERROR
      "devicebound: version mismatch: project(VERSION ${PROJECT_VERSION}) but ${header} "
      "has macros ${header_macros} and version = \"${header_string}\". Update both together.")
  endif()
endfunction()
