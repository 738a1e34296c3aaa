# Runs one compile-fail test: the TU must NOT compile, and the compiler's
# output must contain the text from its first line, `// expect-error: <text>`.
#
#   cmake -DCOMPILER=<c++> -DFLAGS_FILE=<response file> -DSOURCE=<tu.cpp>
#         -P devicebound-compile-fail.cmake
#
# FLAGS_FILE holds the -std, -I and -D flags of devicebound::devicebound
# (written by tests/CMakeLists.txt with file(GENERATE)).
foreach(var IN ITEMS COMPILER FLAGS_FILE SOURCE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "compile-fail: ${var} not given")
  endif()
endforeach()

file(STRINGS "${SOURCE}" first_line LIMIT_COUNT 1)
if(NOT first_line MATCHES "^[ \t]*//[ \t]*expect-error:[ \t]*(.*[^ \t\r])[ \t\r]*$")
  message(FATAL_ERROR
    "compile-fail: ${SOURCE} must start with a line `// expect-error: <text>` "
    "naming the text the compiler's error must contain")
endif()
set(expected "${CMAKE_MATCH_1}")

execute_process(
  COMMAND "${COMPILER}" "@${FLAGS_FILE}" -fsyntax-only "${SOURCE}"
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)

if(result EQUAL 0)
  message(FATAL_ERROR "compile-fail: ${SOURCE} compiled, but it must not.\n${output}")
endif()
string(FIND "${output}" "${expected}" at)
if(at EQUAL -1)
  message(FATAL_ERROR
    "compile-fail: ${SOURCE} failed to compile, but not with the expected error.\n"
    "expected text: ${expected}\ncompiler output:\n${output}")
endif()
message(STATUS "compile-fail: ${SOURCE} rejected as expected: ${expected}")
