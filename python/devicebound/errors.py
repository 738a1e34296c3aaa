"""Errors: one base class, :class:`DeviceboundError`, and a subclass per error code.

The codes are IoT Hub's six-digit codes where the service has one (403004 for a
full device queue, 404001 for an unknown device, ...) and devicebound's own in
ranges IoT Hub leaves unused. Every error carries ``.code`` (the number),
``.name`` (IoT Hub's name for it) and the sentence that names the problem::

    try:
        service.send("thermostat-1", b"21")
    except devicebound.QueueFullError as e:
        print(e.code, e.name)      # 403004 DeviceMaximumQueueDepthExceeded
    except devicebound.DeviceboundError as e:
        print(e.code, e)

Some subclasses also derive from the matching built-in exception
(:class:`ArgumentInvalidError` is a :class:`ValueError`,
:class:`OperationTimeoutError` a :class:`TimeoutError`,
:class:`NotConnectedError` a :class:`ConnectionError`).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DeviceboundError",
    "ArgumentInvalidError",
    "MalformedError",
    "UnauthorizedError",
    "QuotaExceededError",
    "QueueFullError",
    "DeviceNotFoundError",
    "NotSupportedError",
    "OperationTimeoutError",
    "DeviceAlreadyExistsError",
    "InvalidOperationError",
    "PreconditionFailedError",
    "LockLostError",
    "MessageTooLargeError",
    "ThrottledError",
    "ServerError",
    "ServerBusyError",
    "NotConnectedError",
    "error_for_code",
]


class DeviceboundError(Exception):
    """Base class of every devicebound error.

    ``code`` is the numeric code (``403004``), ``name`` IoT Hub's name for it
    (``"DeviceMaximumQueueDepthExceeded"``) and ``message`` the sentence naming
    the problem. ``str(error)`` is ``"403004 DeviceMaximumQueueDepthExceeded: ..."``.
    """

    code: int = 0
    name: str = "Unknown"

    def __init__(self, message: str = "", *, code: int | None = None, name: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if name is not None:
            self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.code} {self.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code})"

    def __reduce__(self):  # picklable, e.g. across a process pool
        return (_rebuild, (type(self), self.message, self.code, self.name))


def _rebuild(cls: type, message: str, code: int, name: str) -> DeviceboundError:
    return cls(message, code=code, name=name)


class _Coded(DeviceboundError):
    """A subclass for one code: ``code`` and ``name`` are class attributes."""

    CODE: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.CODE:
            cls.code = cls.CODE
            _BY_CODE[cls.CODE] = cls


_BY_CODE: dict[int, type[DeviceboundError]] = {}


class ArgumentInvalidError(_Coded, ValueError):
    """400004: a bad property, id, configuration value or argument."""

    CODE = 400004
    name = "ArgumentInvalid"


class MalformedError(_Coded, ValueError):
    """400005: wire data or stored state that cannot be decoded."""

    CODE = 400005
    name = "Malformed"


class UnauthorizedError(_Coded):
    """401000: credentials refused (in process: a device the hub does not know connected)."""

    CODE = 401000
    name = "Unauthorized"


class QuotaExceededError(_Coded):
    """403002: the hub's daily quota is used up."""

    CODE = 403002
    name = "IotHubQuotaExceeded"


class QueueFullError(_Coded):
    """403004: the device's queue already holds the maximum of pending messages (50 by default)."""

    CODE = 403004
    name = "DeviceMaximumQueueDepthExceeded"


class DeviceNotFoundError(_Coded, LookupError):
    """404001: the hub knows no device with that id."""

    CODE = 404001
    name = "DeviceNotFound"


class NotSupportedError(_Coded):
    """405001: the transport cannot do this (reject or abandon over MQTT to IoT Hub)."""

    CODE = 405001
    name = "NotSupported"


class OperationTimeoutError(_Coded, TimeoutError):
    """408001: the operation timed out (no reply from the hub in time)."""

    CODE = 408001
    name = "Timeout"


class DeviceAlreadyExistsError(_Coded):
    """409001: a device with that id is already registered."""

    CODE = 409001
    name = "DeviceAlreadyExists"


class InvalidOperationError(_Coded):
    """409002: not possible now (client closed, receive while a handler is set, ...)."""

    CODE = 409002
    name = "InvalidOperation"


class PreconditionFailedError(_Coded):
    """412001: a generation id did not match."""

    CODE = 412001
    name = "PreconditionFailed"


class LockLostError(_Coded):
    """412002: the lock token is unknown, expired or already settled; the message will be redelivered."""

    CODE = 412002
    name = "DeviceMessageLockLost"


class MessageTooLargeError(_Coded, ValueError):
    """413001: body plus properties exceed the size limit (64 KB by default)."""

    CODE = 413001
    name = "MessageTooLarge"


class ThrottledError(_Coded):
    """429001: too many requests; retried by the retry policy, raised when it gives up."""

    CODE = 429001
    name = "ThrottlingException"


class ServerError(_Coded):
    """500001: an internal error of the hub (e.g. its store failed)."""

    CODE = 500001
    name = "ServerError"


class ServerBusyError(_Coded):
    """503001: the hub is temporarily unavailable."""

    CODE = 503001
    name = "ServerBusy"


class NotConnectedError(_Coded, ConnectionError):
    """503100: the transport has no connection."""

    CODE = 503100
    name = "NotConnected"


def error_for_code(code: int, message: str = "", name: str | None = None) -> DeviceboundError:
    """The exception for ``code``: an instance of its subclass, or of :class:`DeviceboundError`."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return DeviceboundError(message, code=code, name=name or "Unknown")
    return cls(message)


def _from_native(code: int, name: str, message: str) -> DeviceboundError:
    # Called by the native module for every error it raises.
    cls = _BY_CODE.get(code)
    if cls is None:
        return DeviceboundError(message, code=code, name=name)
    return cls(message)
