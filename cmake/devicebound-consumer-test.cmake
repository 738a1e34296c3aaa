# Configures, builds and runs a tiny consumer project from scratch, for the
# packaging tests (find_package and add_subdirectory).
#
#   cmake -DSOURCE_DIR=<consumer src> -DBINARY_DIR=<consumer build> -DGENERATOR=<gen>
#         [-DMAKE_PROGRAM=<ninja/make>] -DCXX_COMPILER=<c++> [-DCONFIG=<cfg>]
#         [-DPREFIX=<install prefix>] [-DDEVICEBOUND_SOURCE_DIR=<src>]
#         -DEXPECTED_VERSION=<x.y.z> -DEXECUTABLE=<name>
#         -P devicebound-consumer-test.cmake
foreach(var IN ITEMS SOURCE_DIR BINARY_DIR GENERATOR CXX_COMPILER EXPECTED_VERSION EXECUTABLE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "consumer-test: ${var} not given")
  endif()
endforeach()

file(REMOVE_RECURSE "${BINARY_DIR}")

set(configure_args -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
                   "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
                   "-DDEVICEBOUND_EXPECTED_VERSION=${EXPECTED_VERSION}")
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CONFIG)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${CONFIG}")
endif()
if(PREFIX)
  # Only the fresh install prefix: the consumer must not find the build tree.
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${PREFIX}"
       "-DDEVICEBOUND_EXPECTED_PREFIX=${PREFIX}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
endif()
if(DEVICEBOUND_SOURCE_DIR)
  list(APPEND configure_args "-DDEVICEBOUND_SOURCE_DIR=${DEVICEBOUND_SOURCE_DIR}")
endif()

execute_process(COMMAND "${CMAKE_COMMAND}" ${configure_args} COMMAND_ERROR_IS_FATAL ANY)

set(build_args --build "${BINARY_DIR}")
if(CONFIG)
  list(APPEND build_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" ${build_args} COMMAND_ERROR_IS_FATAL ANY)

file(GLOB_RECURSE exe LIST_DIRECTORIES false "${BINARY_DIR}/${EXECUTABLE}" "${BINARY_DIR}/${EXECUTABLE}.exe")
if(NOT exe)
  message(FATAL_ERROR "consumer-test: built, but ${EXECUTABLE} not found under ${BINARY_DIR}")
endif()
list(GET exe 0 exe)
execute_process(COMMAND "${exe}" COMMAND_ERROR_IS_FATAL ANY)
