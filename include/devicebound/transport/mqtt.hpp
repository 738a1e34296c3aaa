/// \file transport/mqtt.hpp
/// Device and service transports over MQTT 3.1.1 (Eclipse Paho MQTT C, async
/// API; link `paho-mqtt3as`), talking to `devicebound-hub` through a broker:
/// `device_connection<device_mode::extended>` (complete, reject, abandon over
/// devicebound's extension topics), `device_connection<device_mode::iothub>`
/// (as a stock Azure IoT device SDK: complete only, SPEC 1.6) and
/// `service_connection` (send, purge, queue depth, feedback). The wire protocol
/// is `codec/protocol.hpp` (docs/protocol.md); reconnects, the hub's status,
/// latency (TCP_NODELAY) and Paho's known problems are in
/// docs/mqtt-transport.md.
#pragma once

#include "mqtt/device.hpp"    // device_connection, device_mode
#include "mqtt/endpoint.hpp"  // mqtt::protocol (= codec::protocol)
#include "mqtt/options.hpp"   // connection_options, tls_options
#include "mqtt/service.hpp"   // service_connection
#include "mqtt/session.hpp"   // session: one Paho connection
