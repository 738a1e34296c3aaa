# cmake -DTOOL=<lifecycle_diagram> -DEXPECTED=<docs/lifecycle.dot> -P this-file
execute_process(COMMAND "${TOOL}" OUTPUT_VARIABLE actual RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${TOOL} failed with ${rc}")
endif()
file(READ "${EXPECTED}" expected)
if(NOT actual STREQUAL expected)
  message(FATAL_ERROR "docs/lifecycle.dot is out of date with the transition table in "
                      "include/devicebound/lifecycle.hpp; regenerate it:\n"
                      "  lifecycle_diagram > docs/lifecycle.dot && "
                      "dot -Tsvg docs/lifecycle.dot -o docs/lifecycle.svg")
endif()
message(STATUS "docs/lifecycle.dot matches the transition table")
