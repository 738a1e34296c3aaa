# Qpid Proton C++ (0.37) for the AMQP codec, transport and front door.
#
# Defines DEVICEBOUND_WITH_AMQP (default ON when Proton is found) and, when ON,
# the imported target devicebound::proton (Proton C++ plus the C library, with
# its headers as SYSTEM so Proton's own warnings never fail our -Werror builds).
#
# Debian's libqpid-proton-cpp.pc Requires libqpid-proton-core.pc and
# libqpid-proton-proactor.pc, which Debian does not ship, so pkg-config cannot
# resolve the C++ library. We find it with find_library() instead and take
# the C library (core + proactor in one libqpid-proton.so) the same way.

if(TARGET devicebound::proton)
  return()
endif()

find_path(DEVICEBOUND_PROTON_INCLUDE_DIR proton/message.hpp)
find_library(DEVICEBOUND_PROTON_CPP_LIBRARY NAMES qpid-proton-cpp)

# The C library: pkg-config's libqpid-proton.pc only as a hint. Debian's copy
# computes its prefix from ${pcfiledir} one level too shallow (-I/usr/lib/include),
# so its paths are not used as they are.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(DEVICEBOUND_PROTON_C QUIET libqpid-proton)
endif()
find_library(DEVICEBOUND_PROTON_C_LIBRARY NAMES qpid-proton HINTS ${DEVICEBOUND_PROTON_C_LIBRARY_DIRS})
set(devicebound_proton_c_library "${DEVICEBOUND_PROTON_C_LIBRARY}")

set(devicebound_proton_found OFF)
if(DEVICEBOUND_PROTON_INCLUDE_DIR AND DEVICEBOUND_PROTON_CPP_LIBRARY AND devicebound_proton_c_library)
  set(devicebound_proton_found ON)
endif()

option(DEVICEBOUND_WITH_AMQP "Build the AMQP 1.0 codec, transport and front door (needs Qpid Proton C++)"
       ${devicebound_proton_found})

if(DEVICEBOUND_WITH_AMQP AND NOT devicebound_proton_found)
  message(FATAL_ERROR
    "devicebound: DEVICEBOUND_WITH_AMQP=ON but Qpid Proton C++ was not found "
    "(headers: '${DEVICEBOUND_PROTON_INCLUDE_DIR}', library: '${DEVICEBOUND_PROTON_CPP_LIBRARY}', "
    "C library: '${devicebound_proton_c_library}'). Install libqpid-proton-cpp12-dev and "
    "libqpid-proton11-dev, or configure with -DDEVICEBOUND_WITH_AMQP=OFF.")
endif()

if(NOT DEVICEBOUND_WITH_AMQP)
  if(NOT devicebound_proton_found)
    message(STATUS "devicebound: Qpid Proton C++ not found (libqpid-proton-cpp12-dev): "
                   "AMQP codec, transport, front door and their tests are left out")
  else()
    message(STATUS "devicebound: DEVICEBOUND_WITH_AMQP=OFF: AMQP support left out")
  endif()
  return()
endif()

add_library(devicebound::proton INTERFACE IMPORTED GLOBAL)
set_target_properties(devicebound::proton PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${DEVICEBOUND_PROTON_INCLUDE_DIR}"
  INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${DEVICEBOUND_PROTON_INCLUDE_DIR}"
  INTERFACE_LINK_LIBRARIES "${DEVICEBOUND_PROTON_CPP_LIBRARY};${devicebound_proton_c_library}")
message(STATUS "devicebound: AMQP with Qpid Proton C++ (${DEVICEBOUND_PROTON_CPP_LIBRARY})")
