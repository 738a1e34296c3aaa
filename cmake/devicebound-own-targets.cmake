# Flags and conventions for devicebound's own programs (tests, examples,
# benchmarks, fuzzers, tools). Nothing here touches the INTERFACE target, so
# consumers never inherit our warnings or sanitizers.

# -Wall -Wextra -Wpedantic (+ -Werror unless DEVICEBOUND_WERROR=OFF).
function(devicebound_target_warnings tgt)
  if(MSVC)
    target_compile_options(${tgt} PRIVATE /W4 /permissive- $<$<BOOL:${DEVICEBOUND_WERROR}>:/WX>)
  else()
    target_compile_options(${tgt} PRIVATE -Wall -Wextra -Wpedantic
                                          $<$<BOOL:${DEVICEBOUND_WERROR}>:-Werror>)
  endif()
  # GCC 12 reports a false -Wrestrict inside libstdc++'s `"literal" + std::string`
  # at -O2/-O3 (GCC PR 105329 / 105651), which -Werror turns into a failed build.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12
     AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${tgt} PRIVATE -Wno-restrict)
  endif()
endfunction()

# -fsanitize=${DEVICEBOUND_SANITIZE}, when set.
function(devicebound_target_sanitizers tgt)
  if(DEVICEBOUND_SANITIZE)
    set(flags -fsanitize=${DEVICEBOUND_SANITIZE} -fno-omit-frame-pointer
              -fno-sanitize-recover=all)
    target_compile_options(${tgt} PRIVATE ${flags})
    target_link_options(${tgt} PRIVATE ${flags})
  endif()
endfunction()

# devicebound_add_program(<name> <source>...): an executable of ours, linked to
# the library, C++20 without GNU extensions, warnings and sanitizers on.
# Fails loudly if two folders produce the same target name.
function(devicebound_add_program name)
  if(TARGET ${name})
    message(FATAL_ERROR
      "devicebound: target '${name}' (from ${ARGN}) already exists; rename one of the sources")
  endif()
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE devicebound::devicebound)
  set_target_properties(${name} PROPERTIES CXX_EXTENSIONS OFF)
  devicebound_target_warnings(${name})
  devicebound_target_sanitizers(${name})
endfunction()
