"""Where a hub is over MQTT: ``devicebound-hub`` attached to a broker (mosquitto, ...).

Pass an :class:`Mqtt` where an in-process client takes a :class:`~devicebound.Hub`::

    broker = Mqtt(host="127.0.0.1", port=1883)
    device = DeviceClient(broker, "thermostat-1")          # complete, reject, abandon
    sdk_like = DeviceClient(Mqtt(port=1883, device_mode=DeviceMode.IOTHUB), "thermostat-2")
    service = ServiceClient(broker)

``DeviceMode.IOTHUB`` behaves like a stock Azure IoT device SDK: it takes every message
on IoT Hub's own topic and can only complete (reject and abandon raise
:class:`~devicebound.NotSupportedError`). The wire protocol is docs/protocol.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import _native
from .config import Duration, _ms

__all__ = ["DeviceMode", "Mqtt", "MqttTls", "HAS_MQTT"]

HAS_MQTT: bool = bool(_native.has_mqtt)
"""Whether this build has the MQTT transport (it needs Paho MQTT C at build time)."""


class DeviceMode(enum.Enum):
    """How a device talks to the hub over MQTT."""

    EXTENDED = "extended"
    """devicebound's extension topics: complete, reject and abandon with lock tokens."""
    IOTHUB = "iothub"
    """As a stock Azure IoT device SDK: IoT Hub's topic, completion on receipt, complete only."""


@dataclass(frozen=True)
class MqttTls:
    """TLS to the broker (setting it switches to ``ssl://``)."""

    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    key_password: str = ""
    verify_server: bool = True

    def _to_native(self) -> dict[str, Any]:
        return {
            "ca_file": self.ca_file,
            "ca_path": self.ca_path,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "key_password": self.key_password,
            "verify_server": self.verify_server,
        }


@dataclass(frozen=True)
class Mqtt:
    """How to reach the broker that ``devicebound-hub`` is attached to, and the transport's knobs."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: MqttTls | None = None
    client_id: str = ""
    """Devices: empty means the device id. Services: empty means a random ``devicebound-service-...``."""
    username: str | None = None
    password: str | None = None
    device_mode: DeviceMode = DeviceMode.EXTENDED
    keep_alive: Duration = timedelta(seconds=60)
    connect_timeout: Duration = timedelta(seconds=10)
    request_timeout: Duration = timedelta(seconds=30)
    """How long a send, settle, purge ... waits for the hub's reply (then 408001)."""
    attach_retry: Duration = timedelta(seconds=2)
    prefetch: int = 4
    """Locked messages (or feedback batches) the hub may push before one is settled."""
    clean_session: bool | None = None
    """Unset: False for devices (as the SDKs), True for services."""
    max_buffered_messages: int = 1 << 20

    def _to_native(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "tls": None if self.tls is None else self.tls._to_native(),
            "client_id": self.client_id,
            "username": self.username,
            "password": self.password,
            "keep_alive_ms": _ms(self.keep_alive, "keep_alive"),
            "connect_timeout_ms": _ms(self.connect_timeout, "connect_timeout"),
            "request_timeout_ms": _ms(self.request_timeout, "request_timeout"),
            "attach_retry_ms": _ms(self.attach_retry, "attach_retry"),
            "prefetch": self.prefetch,
            "clean_session": self.clean_session,
            "max_buffered_messages": self.max_buffered_messages,
        }
