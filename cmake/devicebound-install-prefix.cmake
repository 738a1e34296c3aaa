# Installs a build tree into a fresh prefix, for the packaging tests.
#
#   cmake -DBUILD_DIR=<build> -DPREFIX=<prefix> [-DCONFIG=<cfg>] -P devicebound-install-prefix.cmake
foreach(var IN ITEMS BUILD_DIR PREFIX)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install-prefix: ${var} not given")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
  COMMAND_ERROR_IS_FATAL ANY)

file(GLOB_RECURSE config_files "${PREFIX}/*/devicebound-config.cmake")
file(GLOB_RECURSE version_headers "${PREFIX}/*/devicebound/version.hpp")
if(NOT config_files OR NOT version_headers)
  message(FATAL_ERROR "install-prefix: ${PREFIX} lacks devicebound-config.cmake or version.hpp")
endif()
message(STATUS "install-prefix: installed into ${PREFIX}: ${config_files}")
