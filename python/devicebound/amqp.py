"""Where a hub is over AMQP 1.0: ``devicebound-hub``'s AMQP front door, or an Azure IoT hub.

The clients are built from IoT Hub connection strings, as the Azure SDKs are::

    service = ServiceClient.from_connection_string(
        "HostName=localhost:5671;SharedAccessKeyName=service;SharedAccessKey=...", ca_file="ca.pem")
    device = DeviceClient.from_connection_string(
        "HostName=localhost:5671;DeviceId=thermostat-1;SharedAccessKey=...", "amqp", ca_file="ca.pem")

TLS (port 5671 unless ``HostName`` says ``host:port``), no SASL layer, a SAS token from
the connection string put on ``$cbs`` and renewed before it expires. A device over AMQP can
complete, reject and abandon. IoT Hub has no AMQP surface for purging a queue or reading
its depth: over AMQP :meth:`~devicebound.ServiceClient.purge` and
:meth:`~devicebound.ServiceClient.queue_depth` raise :class:`~devicebound.NotSupportedError`.
docs/amqp.md, "The AMQP transport".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import _native
from .config import Duration, _ms

__all__ = ["AmqpOptions", "HAS_AMQP"]

HAS_AMQP: bool = bool(getattr(_native, "has_amqp", False))
"""Whether this build has the AMQP transport (it needs Qpid Proton C++ at build time)."""


@dataclass(frozen=True)
class AmqpOptions:
    """TLS and the AMQP transport's knobs; the identity and key come from the connection string."""

    ca_file: str = ""
    """PEM file of trusted CA certificates; empty: the system's trust store."""
    verify_server: bool = True
    """Check the hub's certificate and that it names the host."""
    tls: bool = True
    """False: plain AMQP, which only a local ``devicebound-hub`` on loopback accepts (never IoT Hub)."""
    token_ttl: Duration = timedelta(hours=1)
    """Lifetime of each SAS token put on ``$cbs``."""
    token_renew_at: float = 0.8
    """When to put a fresh token, as a fraction of its lifetime (0.1 .. 0.95)."""
    connect_timeout: Duration = timedelta(seconds=30)
    request_timeout: Duration = timedelta(seconds=30)
    """How long a send or settlement waits for the hub's outcome (then 408001)."""
    idle_timeout: Duration = timedelta(minutes=2)
    prefetch: int = 50
    """Credit of the receiving link: locked messages (or feedback batches) the hub may push at once."""

    def _to_native(self) -> dict[str, Any]:
        ttl_ms = _ms(self.token_ttl, "token_ttl")
        return {
            "ca_file": self.ca_file,
            "verify_server": self.verify_server,
            "tls": self.tls,
            "token_ttl_s": max(1, ttl_ms // 1000),
            "token_renew_at": float(self.token_renew_at),
            "connect_timeout_ms": _ms(self.connect_timeout, "connect_timeout"),
            "request_timeout_ms": _ms(self.request_timeout, "request_timeout"),
            "idle_timeout_ms": _ms(self.idle_timeout, "idle_timeout"),
            "prefetch": self.prefetch,
        }
