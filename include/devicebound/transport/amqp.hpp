/// \file transport/amqp.hpp
/// Device and service transports over AMQP 1.0 (Qpid Proton C 0.37's
/// proactor, with Proton C++'s message codec; link `devicebound::proton` and
/// `devicebound::auth`), speaking IoT Hub's own AMQP surface (SPEC 10): TLS
/// on 5671, CBS put-token with SAS tokens from a connection string, renewed
/// before they expire. The same clients reach `devicebound-hub`'s AMQP front
/// door or an Azure IoT hub. `device_connection` settles with complete,
/// reject and abandon; `service_connection` sends and takes feedback (purge
/// and queue depth are HTTPS-only in IoT Hub). docs/amqp.md, "The AMQP
/// transport".
#pragma once

#include "amqp/connection.hpp"  // the shared connection (threads, CBS, links)
#include "amqp/device.hpp"      // device_connection
#include "amqp/options.hpp"     // connection_options, tls_options
#include "amqp/service.hpp"     // service_connection
