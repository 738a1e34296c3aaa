"""Messages, their enums, and delivery feedback.

A :class:`Message` is what a back end sends and a device receives: bytes, a
dict of application properties, and IoT Hub's system properties as attributes::

    m = Message(b'{"target": 21}', {"unit": "C"}, message_id="set-21", ack=Ack.FULL)
    service.send("thermostat-1", m)

On a received message the hub has also set ``sequence_number``,
``enqueued_time_utc``, ``delivery_count`` and ``lock_token``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Union

__all__ = [
    "Ack",
    "Disposition",
    "FeedbackDisposition",
    "FeedbackStatus",
    "Message",
    "FeedbackRecord",
    "FeedbackBatch",
    "SendReceipt",
    "Body",
]

Body = Union[bytes, bytearray, memoryview, str]
"""What a body may be given as; ``str`` is encoded as UTF-8. A message always holds ``bytes``."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _to_ms(t: datetime | int) -> int:
    """Milliseconds since the epoch; a naive datetime is taken as UTC."""
    if isinstance(t, int):
        return t
    if not isinstance(t, datetime):
        raise TypeError(f"expected a datetime, not {type(t).__name__}")
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - _EPOCH) // _MS


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _time(v: datetime | int | None) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v
    return _from_ms(v)


def _bytes(body: Body) -> bytes:
    if type(body) is bytes:
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"a message body must be bytes or str, not {type(body).__name__}")


class Ack(enum.IntEnum):
    """Delivery acknowledgement the sender asks for (``iothub-ack``)."""

    NONE = 0
    """No feedback (the default)."""
    POSITIVE = 1
    """Feedback when the device completes the message."""
    NEGATIVE = 2
    """Feedback when it is dead-lettered: rejected, expired, delivery count exceeded, or purged."""
    FULL = 3
    """Both."""

    def __str__(self) -> str:
        return self.name.lower()


class Disposition(enum.IntEnum):
    """How a device settles a message; what a message handler returns."""

    COMPLETE = 0
    """Done: the message leaves the queue (feedback ``Success``)."""
    REJECT = 1
    """Dead-letter it (feedback ``Rejected``). Not over MQTT to IoT Hub."""
    ABANDON = 2
    """Put it back: delivered again, delivery count + 1. Not over MQTT to IoT Hub."""

    def __str__(self) -> str:
        return self.name.lower()


class FeedbackDisposition(enum.IntEnum):
    """How a back end settles a feedback batch; what a feedback handler returns."""

    COMPLETE = 0
    """Done: the batch leaves the feedback queue."""
    ABANDON = 1
    """Deliver it again (up to the feedback max delivery count)."""


class FeedbackStatus(enum.IntEnum):
    """Outcome in a feedback record; ``str()`` is the service's ``statusCode`` text."""

    SUCCESS = 0
    EXPIRED = 1
    DELIVERY_COUNT_EXCEEDED = 2
    REJECTED = 3
    PURGED = 4

    def __str__(self) -> str:
        return _STATUS_TEXT[self]


_STATUS_TEXT = {
    FeedbackStatus.SUCCESS: "Success",
    FeedbackStatus.EXPIRED: "Expired",
    FeedbackStatus.DELIVERY_COUNT_EXCEEDED: "DeliveryCountExceeded",
    FeedbackStatus.REJECTED: "Rejected",
    FeedbackStatus.PURGED: "Purged",
}
_ACKS = tuple(Ack)
_STATUSES = tuple(FeedbackStatus)

_SLOTS = (
    "body",
    "properties",
    "message_id",
    "correlation_id",
    "user_id",
    "to",
    "_expiry",
    "ack",
    "content_type",
    "content_encoding",
    "_creation",
    "sequence_number",
    "_enqueued",
    "delivery_count",
    "lock_token",
)


class Message:
    """A cloud-to-device message.

    Set by the sender: ``body`` (bytes), ``properties`` (application
    properties, ``str`` to ``str``), ``message_id`` (needed to match feedback to
    the message), ``correlation_id``, ``user_id``, ``expiry_time_utc``
    (a ``datetime``; naive means UTC; unset: the hub's default TTL), ``ack``,
    ``content_type``, ``content_encoding``, ``creation_time_utc``.

    Set by the hub on a received message: ``to``, ``sequence_number``,
    ``enqueued_time_utc``, ``delivery_count`` and ``lock_token`` (the GUID that
    settles it).

    >>> m = Message("hello", {"kind": "greeting"}, message_id="m1", ack=Ack.FULL)
    >>> m.body, m.properties["kind"], m.ack
    (b'hello', 'greeting', <Ack.FULL: 3>)
    """

    __slots__ = _SLOTS

    body: bytes
    properties: dict[str, str]
    message_id: str | None
    correlation_id: str | None
    user_id: str | None
    to: str | None
    ack: Ack
    content_type: str | None
    content_encoding: str | None
    sequence_number: int
    delivery_count: int
    lock_token: str | None
    _expiry: datetime | int | None  # milliseconds until first read
    _creation: datetime | int | None
    _enqueued: datetime | int | None

    def __init__(
        self,
        body: Body = b"",
        properties: Mapping[str, str] | None = None,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        user_id: str | None = None,
        expiry_time_utc: datetime | None = None,
        ack: Ack = Ack.NONE,
        content_type: str | None = None,
        content_encoding: str | None = None,
        creation_time_utc: datetime | None = None,
        to: str | None = None,
    ) -> None:
        self.body = _bytes(body)
        self.properties = dict(properties) if properties else {}
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.user_id = user_id
        self.to = to
        self.expiry_time_utc = expiry_time_utc
        self.ack = Ack(ack)
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.creation_time_utc = creation_time_utc
        self.sequence_number = 0
        self._enqueued = None
        self.delivery_count = 0
        self.lock_token = None

    # Times are kept as milliseconds until asked for: a received message costs no datetime.
    @property
    def expiry_time_utc(self) -> datetime | None:
        """When the message expires (UTC); on a received message, as the hub computed it."""
        v = self._expiry
        if v is not None and not isinstance(v, datetime):
            v = self._expiry = _from_ms(v)
        return v

    @expiry_time_utc.setter
    def expiry_time_utc(self, value: datetime | None) -> None:
        self._expiry = _check_time(value, "expiry_time_utc")

    @property
    def creation_time_utc(self) -> datetime | None:
        """When the sender created the message (UTC), if it said."""
        v = self._creation
        if v is not None and not isinstance(v, datetime):
            v = self._creation = _from_ms(v)
        return v

    @creation_time_utc.setter
    def creation_time_utc(self, value: datetime | None) -> None:
        self._creation = _check_time(value, "creation_time_utc")

    @property
    def enqueued_time_utc(self) -> datetime | None:
        """When the hub accepted the message (UTC); None on a message not sent yet."""
        v = self._enqueued
        if v is not None and not isinstance(v, datetime):
            v = self._enqueued = _from_ms(v)
        return v

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    @classmethod
    def _from_native(cls, t: tuple) -> Message:
        m = cls.__new__(cls)
        (
            m.body,
            m.properties,
            m.message_id,
            m.correlation_id,
            m.user_id,
            m.to,
            m._expiry,
            ack,
            m.content_type,
            m.content_encoding,
            m._creation,
            m.sequence_number,
            m._enqueued,
            m.delivery_count,
            m.lock_token,
        ) = t
        m.ack = _ACKS[ack]
        return m

    def _fields(self) -> dict[str, Any]:
        return {
            "body": self.body,
            "properties": self.properties,
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "user_id": self.user_id,
            "to": self.to,
            "expiry_time_utc": self.expiry_time_utc,
            "ack": self.ack,
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "creation_time_utc": self.creation_time_utc,
            "sequence_number": self.sequence_number,
            "enqueued_time_utc": self.enqueued_time_utc,
            "delivery_count": self.delivery_count,
            "lock_token": self.lock_token,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._fields().items() if v not in (None, {}, 0, Ack.NONE) or k == "body"}
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"Message({inner})"


def _check_time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime or None, not {type(value).__name__}")
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class SendReceipt:
    """What an accepted send returns."""

    sequence_number: int
    """The message's sequence number in the device queue."""
    expiry_time_utc: datetime
    """When it expires, after the hub applied its default TTL and the 2-day cap."""


@dataclass(frozen=True)
class FeedbackRecord:
    """One outcome in a feedback batch (the service's feedback JSON record)."""

    original_message_id: str
    """The message id of the C2D message ("" if it had none)."""
    enqueued_time_utc: datetime
    """When the outcome happened."""
    status: FeedbackStatus
    description: str
    device_id: str
    device_generation_id: str

    @classmethod
    def _from_native(cls, t: tuple) -> FeedbackRecord:
        mid, enq, status, description, device_id, generation = t
        return cls(mid, _from_ms(enq), _STATUSES[status], description, device_id, generation)


@dataclass(frozen=True)
class FeedbackBatch:
    """A feedback message: outcomes of several messages, received locked from the feedback queue.

    Settle it with ``service.complete_feedback(batch)`` (or abandon it to get it again).
    """

    records: list[FeedbackRecord] = field(default_factory=list)
    enqueued_time_utc: datetime = _EPOCH
    """When the hub created the batch."""
    user_id: str = ""
    """The hub's name."""
    lock_token: str = ""
    delivery_count: int = 0

    @classmethod
    def _from_native(cls, t: tuple) -> FeedbackBatch:
        records, enq, user_id, token, count = t
        return cls([FeedbackRecord._from_native(r) for r in records], _from_ms(enq), user_id, token, count)

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)
