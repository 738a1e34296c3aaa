# Checks which headers a TU includes (issue 10, item 1): the clients and the
# transports include only vocabulary, never the engine or a store, never
# Boost.MSM (the clients run the retry table through retry/controller.hpp; the
# MSM machine of the same table is retry/machine.hpp) and never nlohmann/json
# (the feedback body is read by codec/feedback_json.hpp's own small reader).
#
#   cmake -DCOMPILER=<c++> -DFLAGS_FILE=<response file> -DSOURCE=<tu.cpp>
#         -P devicebound-include-boundary.cmake
#
# FLAGS_FILE holds the -std, -I and -D flags of devicebound::devicebound. The
# TU is preprocessed with -H, which prints the include tree; every forbidden
# header is reported with the chain of includes that brought it in.
cmake_minimum_required(VERSION 3.20)  # cmake_path, IN_LIST

foreach(var IN ITEMS COMPILER FLAGS_FILE SOURCE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "include-boundary: ${var} not given")
  endif()
endforeach()

# Headers of the engine and the stores, relative to include/devicebound/.
set(forbidden_regex "^(hub|queue|lifecycle|feedback|validate)\\.hpp$|^store/")
# Third-party headers the clients must not parse (the costliest ones to compile).
set(heavy_regex "/boost/msm/|/nlohmann/")

execute_process(
  COMMAND "${COMPILER}" "@${FLAGS_FILE}" -E -H -o /dev/null "${SOURCE}"
  RESULT_VARIABLE result
  OUTPUT_VARIABLE out
  ERROR_VARIABLE tree)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "include-boundary: cannot preprocess ${SOURCE}:\n${out}${tree}")
endif()

# The name of a header inside include/devicebound/ ("" for any other file).
function(devicebound_name path out_var)
  if(path MATCHES "/include/devicebound/(.*)$")
    set(${out_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()

# A readable chain: the TU, then each header down to entry `depth`.
function(chain_text depth out_var)
  get_filename_component(text "${SOURCE}" NAME)
  foreach(d RANGE 1 ${depth})
    set(p "${stack_${d}}")
    if(p MATCHES "/include/(devicebound/.*)$")
      set(p "${CMAKE_MATCH_1}")
    elseif(p MATCHES "/include/(boost/.*)$")
      set(p "${CMAKE_MATCH_1}")
    endif()
    string(APPEND text " -> ${p}")
  endforeach()
  set(${out_var} "${text}" PARENT_SCOPE)
endfunction()

string(REPLACE ";" "\\;" tree "${tree}")
string(REPLACE "\n" ";" lines "${tree}")
set(problems "")
set(reported "")
set(headers 0)
foreach(line IN LISTS lines)
  if(NOT line MATCHES "^(\\.+) (.+)$")
    continue()  # the "Multiple include guards" notes after the tree
  endif()
  string(LENGTH "${CMAKE_MATCH_1}" depth)
  cmake_path(SET path NORMALIZE "${CMAKE_MATCH_2}")
  set(stack_${depth} "${path}")
  math(EXPR headers "${headers} + 1")

  devicebound_name("${path}" name)
  if(name MATCHES "${forbidden_regex}" AND NOT name IN_LIST reported)
    list(APPEND reported "${name}")
    chain_text(${depth} chain)
    string(APPEND problems "  engine/store header devicebound/${name}:\n    ${chain}\n")
  elseif(path MATCHES "${heavy_regex}")
    # Report it once per devicebound header that brought it in.
    set(entry "")
    set(d ${depth})
    while(d GREATER 1 AND entry STREQUAL "")
      math(EXPR d "${d} - 1")
      devicebound_name("${stack_${d}}" entry)
    endwhile()
    string(REGEX MATCH "${heavy_regex}" what "${path}")
    if(NOT "${what}${entry}" IN_LIST reported)
      list(APPEND reported "${what}${entry}")
      chain_text(${depth} chain)
      string(APPEND problems "  heavy header ${what} through devicebound/${entry}:\n    ${chain}\n")
    endif()
  endif()
endforeach()

if(headers EQUAL 0)
  message(FATAL_ERROR "include-boundary: the compiler printed no include tree for ${SOURCE}")
endif()
if(problems)
  message(FATAL_ERROR "include-boundary: ${SOURCE} reaches headers beyond the vocabulary "
                      "(${headers} headers read):\n${problems}")
endif()
message(STATUS "include-boundary: ${SOURCE}: ${headers} headers, none beyond the vocabulary")
