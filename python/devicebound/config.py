"""The hub's configuration and running totals (``hub_config.hpp``).

:class:`HubConfig` has IoT Hub's defaults; durations are :class:`~datetime.timedelta`
or seconds (int or float)::

    config = HubConfig(lock_duration=5, default_ttl=timedelta(minutes=10), max_queue_depth=100)
    hub = Hub(config)            # or Hub(lock_duration=5, ...)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, Union

__all__ = [
    "Duration",
    "ExpiryCapPolicy",
    "DeliveryCountRule",
    "PurgeFeedback",
    "HubConfig",
    "HubStats",
]

Duration = Union[timedelta, int, float]
"""A duration: a ``timedelta``, or seconds."""


def _ms(d: Duration, what: str) -> int:
    """Whole milliseconds of a duration."""
    if isinstance(d, timedelta):
        return d // timedelta(milliseconds=1)
    if isinstance(d, bool) or not isinstance(d, (int, float)):
        raise TypeError(f"{what} must be a timedelta or seconds, not {type(d).__name__}")
    return round(d * 1000)


def _td(ms: int) -> timedelta:
    return timedelta(milliseconds=ms)


class ExpiryCapPolicy(enum.IntEnum):
    """What the hub does with an expiry later than enqueue time + 2 days."""

    CLAMP = 0
    """Accept; the message expires at enqueue time + 2 days (default)."""
    REJECT = 1
    """Refuse the send with 400004."""


class DeliveryCountRule(enum.IntEnum):
    """Which transitions count toward ``max_delivery_count``."""

    ABANDON_ONLY = 0
    """Only abandon counts; a lock expiry re-enqueues without counting (current docs, default)."""
    EVERY_DELIVERY = 1
    """Every delivery counts (docs of 2017-2022)."""


class PurgeFeedback(enum.IntEnum):
    """Which acks get a ``Purged`` feedback record."""

    NEGATIVE_ACKS = 0
    """Ack ``negative`` or ``full``: a purge is a non-delivery (default)."""
    NONE = 1
    """No feedback for purged messages."""


_DURATIONS = {
    "default_ttl",
    "lock_duration",
    "feedback_ttl",
    "feedback_lock_duration",
    "feedback_batch_interval",
}
_ENUMS = {
    "expiry_over_cap": ExpiryCapPolicy,
    "delivery_count": DeliveryCountRule,
    "purge_feedback_for": PurgeFeedback,
}


@dataclass
class HubConfig:
    """Hub configuration with IoT Hub's defaults. The hub checks every range when it starts
    (:class:`~devicebound.ArgumentInvalidError` names the field); :meth:`validate` checks now.
    """

    name: str = "devicebound"
    """The hub's name: the ``userId`` of feedback messages."""
    default_ttl: Duration = timedelta(hours=1)
    """TTL of a message that sets no expiry: 1 minute .. 2 days."""
    expiry_over_cap: ExpiryCapPolicy = ExpiryCapPolicy.CLAMP
    max_delivery_count: int = 10
    """Deliveries before a message is dead-lettered: 1 .. 100."""
    delivery_count: DeliveryCountRule = DeliveryCountRule.ABANDON_ONLY
    lock_duration: Duration = timedelta(seconds=60)
    """Lock (visibility) timeout. IoT Hub fixes it at 1 minute; settable 1 s .. 5 min for tests."""
    max_queue_depth: int = 50
    """Pending (Enqueued + Invisible) messages per device: 1 .. 10000."""
    max_message_size: int = 64 * 1024
    """The size rule's limit, in bytes, 1 .. 1 MiB: body + system property values (with the
    ``to`` the hub sets) + application property names and values (docs/protocol.md)."""
    feedback_ttl: Duration = timedelta(hours=1)
    feedback_max_delivery_count: int = 10
    feedback_lock_duration: Duration = timedelta(seconds=60)
    """5 .. 300 s."""
    feedback_batch_size: int = 64
    """Records per feedback batch: 1 .. 64."""
    feedback_batch_interval: Duration = timedelta(seconds=15)
    """A batch goes out this long after the last one (or at ``feedback_batch_size`` records): 0 .. 15 s."""
    purge_feedback_for: PurgeFeedback = PurgeFeedback.NEGATIVE_ACKS

    def _to_native(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _DURATIONS:
                out[f.name + "_ms"] = _ms(v, f.name)
            elif f.name in _ENUMS:
                out[f.name] = int(_ENUMS[f.name](v))
            else:
                out[f.name] = v
        return out

    @classmethod
    def _from_native(cls, d: dict[str, Any]) -> HubConfig:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in _DURATIONS:
                kwargs[f.name] = _td(d[f.name + "_ms"])
            elif f.name in _ENUMS:
                kwargs[f.name] = _ENUMS[f.name](d[f.name])
            else:
                kwargs[f.name] = d[f.name]
        return cls(**kwargs)

    def validate(self) -> HubConfig:
        """Checks every value against its range and returns the configuration as the hub
        would run it (durations as ``timedelta``); raises :class:`~devicebound.ArgumentInvalidError`."""
        from . import _native

        return HubConfig._from_native(_native.check_hub_config(self._to_native()))


@dataclass(frozen=True)
class HubStats:
    """Running totals. Every accepted message is counted in exactly one outcome once it
    leaves its queue."""

    accepted: int = 0
    completed: int = 0
    rejected: int = 0
    expired: int = 0
    delivery_count_exceeded: int = 0
    purged: int = 0
    removed_with_device: int = 0
    """Messages dropped because their device was removed."""
    feedback_records: int = 0
    feedback_records_dropped: int = 0
    """Pending feedback records dropped with their device."""
    feedback_batches: int = 0

    @property
    def pending(self) -> int:
        """Accepted messages not yet in a terminal state (still queued)."""
        return self.accepted - (
            self.completed
            + self.rejected
            + self.expired
            + self.delivery_count_exceeded
            + self.purged
            + self.removed_with_device
        )
