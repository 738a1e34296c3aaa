"""Retry policies of the Azure IoT SDKs (``retry.hpp``, ``docs/retry.md``).

A client takes ``retry=`` as a profile name, a :class:`RetryPolicy`, or None
(exponential backoff with jitter, 1 s to 30 s, retried forever)::

    DeviceClient(hub, "d1", retry="c_sdk")                 # the C SDK's default: 0, 1, 2, 4 ... 30 s
    DeviceClient(hub, "d1", retry=RetryPolicy.profile("node"))
    DeviceClient(hub, "d1", retry=RetryPolicy(backoff=Backoff.interval(2), max_retries=5))

Only errors the policy's table calls transient or throttled are retried
(connection loss, timeouts, 5xx, 429); 404001, 403004, 413001, 412002, ...
are raised at once.

>>> [d.total_seconds() for d in RetryPolicy.profile("c_exponential_backoff").delays(5)]
[0.0, 1.0, 2.0, 4.0, 8.0]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Union

from . import _native
from .config import Duration, _ms, _td
from .errors import DeviceboundError

__all__ = [
    "PROFILES",
    "BackoffKind",
    "JitterShape",
    "Jitter",
    "Backoff",
    "FirstRetry",
    "TimeoutOrigin",
    "WaitOrigin",
    "ErrorClass",
    "ErrorTable",
    "RetryPolicy",
    "RetrySpec",
    "classify",
]

PROFILES: tuple[str, ...] = tuple(_native.retry_profile_names())
"""Names accepted by :meth:`RetryPolicy.profile` and by ``retry=``: ``c_sdk``, ``node``, ``python``, ..."""


class BackoffKind(enum.IntEnum):
    NO_RETRY = 0
    IMMEDIATE = 1
    INTERVAL = 2
    LINEAR_BACKOFF = 3
    EXPONENTIAL_BACKOFF = 4
    EXPONENTIAL_BACKOFF_WITH_JITTER = 5
    RANDOM = 6


class JitterShape(enum.IntEnum):
    NONE = 0
    """``min(initial * 2^i, cap)``"""
    MULTIPLICATIVE = 1
    """``min(initial * 2^i, cap) * U[low, high)`` (C, C# v2)"""
    ADDITIVE = 2
    """``min(floor + (2^i - 1) * initial * U[low, high), cap)`` (Node, Java, C# v1)"""


class FirstRetry(enum.IntEnum):
    BACKOFF = 0
    """Waits delay(0), delay(1), ..."""
    IMMEDIATE = 1
    """An extra retry after ``first_retry_delay``, then delay(0), ... (C, Python)"""
    FAST = 2
    """After ``first_retry_delay`` instead of delay(0) (Java, C# FastFirstRetry)"""


class TimeoutOrigin(enum.IntEnum):
    OPERATION = 0
    FIRST_RETRY = 1


class WaitOrigin(enum.IntEnum):
    FAILURE = 0
    ATTEMPT_START = 1


class ErrorClass(enum.IntEnum):
    TRANSIENT = 0
    THROTTLED = 1
    FATAL = 2


class ErrorTable(enum.IntEnum):
    """Whose classification table to use; they differ only where the SDKs disagree."""

    CONSOLIDATED = 0
    C = 1
    NODE = 2
    PYTHON = 3
    CSHARP_V1 = 4
    CSHARP_V2 = 5
    JAVA = 6


@dataclass(frozen=True)
class Jitter:
    """The random factor of an exponential backoff: ``U[low, high)`` and where it applies."""

    shape: JitterShape = JitterShape.NONE
    low: float = 1.0
    high: float = 1.0
    threshold: Duration = 0
    """Multiplicative: only waits at least this long get jitter (C# v2: 50 ms)."""

    @classmethod
    def up_to(cls, fraction: float) -> Jitter:
        """``x (1 + U[0, fraction))``: the C SDK's +0..5 %."""
        return cls(JitterShape.MULTIPLICATIVE, 1.0, 1.0 + fraction)

    @classmethod
    def plus_minus(cls, fraction: float, threshold: Duration = 0) -> Jitter:
        """``x U[1 - fraction, 1 + fraction)`` for waits >= threshold: C# v2's 95-105 %."""
        return cls(JitterShape.MULTIPLICATIVE, 1.0 - fraction, 1.0 + fraction, threshold)

    @classmethod
    def additive(cls, low: float, high: float) -> Jitter:
        """``(2^i - 1) initial U[low, high)`` added to the floor: Node, Java, C# v1."""
        return cls(JitterShape.ADDITIVE, low, high)


@dataclass(frozen=True)
class Backoff:
    """A backoff formula and its parameters; fields a kind does not use are ignored."""

    kind: BackoffKind = BackoffKind.EXPONENTIAL_BACKOFF_WITH_JITTER
    initial: Duration = timedelta(seconds=1)
    cap: Duration = timedelta(seconds=30)
    floor: Duration = 0
    jitter: Jitter = field(default_factory=lambda: Jitter.up_to(0.05))

    @classmethod
    def no_retry(cls) -> Backoff:
        return cls(BackoffKind.NO_RETRY)

    @classmethod
    def immediate(cls) -> Backoff:
        return cls(BackoffKind.IMMEDIATE)

    @classmethod
    def interval(cls, every: Duration) -> Backoff:
        return cls(BackoffKind.INTERVAL, initial=every)

    @classmethod
    def linear(cls, step: Duration, cap: Duration) -> Backoff:
        return cls(BackoffKind.LINEAR_BACKOFF, initial=step, cap=cap)

    @classmethod
    def exponential(cls, initial: Duration, cap: Duration) -> Backoff:
        return cls(BackoffKind.EXPONENTIAL_BACKOFF, initial=initial, cap=cap)

    @classmethod
    def exponential_with_jitter(
        cls, initial: Duration, cap: Duration, floor: Duration = 0, jitter: Jitter | None = None
    ) -> Backoff:
        return cls(BackoffKind.EXPONENTIAL_BACKOFF_WITH_JITTER, initial, cap, floor, jitter or Jitter.up_to(0.05))

    @classmethod
    def random(cls, initial: Duration) -> Backoff:
        return cls(BackoffKind.RANDOM, initial=initial)

    def _to_native(self) -> dict[str, Any]:
        return {
            "kind": int(BackoffKind(self.kind)),
            "initial_ms": _ms(self.initial, "initial"),
            "cap_ms": _ms(self.cap, "cap"),
            "floor_ms": _ms(self.floor, "floor"),
            "jitter_shape": int(JitterShape(self.jitter.shape)),
            "jitter_low": float(self.jitter.low),
            "jitter_high": float(self.jitter.high),
            "jitter_threshold_ms": _ms(self.jitter.threshold, "threshold"),
        }

    @classmethod
    def _from_native(cls, d: dict[str, Any]) -> Backoff:
        j = Jitter(JitterShape(d["jitter_shape"]), d["jitter_low"], d["jitter_high"], _td(d["jitter_threshold_ms"]))
        return cls(BackoffKind(d["kind"]), _td(d["initial_ms"]), _td(d["cap_ms"]), _td(d["floor_ms"]), j)


@dataclass(frozen=True)
class RetryPolicy:
    """A backoff for transient failures, an optional one for throttled failures, the knobs
    shared by every backoff, and the error table (``retry::policy_config``)."""

    backoff: Backoff = field(default_factory=Backoff)
    throttled: Backoff | None = None
    """Used for throttled (429) failures when set (Node)."""
    first_retry: FirstRetry = FirstRetry.BACKOFF
    first_retry_delay: Duration = 0
    timeout: Duration = 0
    """Total retry time; 0 = retry forever."""
    timeout_from: TimeoutOrigin = TimeoutOrigin.OPERATION
    max_retries: int = 0
    """Retries per episode; 0 = unlimited."""
    reset_on_success: bool = True
    min_spacing: Duration = 0
    """Non-zero waits keep attempt starts this far apart (C# v1)."""
    wait_from: WaitOrigin = WaitOrigin.FAILURE
    whole_seconds: bool = False
    """Truncate every wait to whole seconds (the C SDK)."""
    error_table: ErrorTable = ErrorTable.CONSOLIDATED
    overrides: dict[int, ErrorClass] = field(default_factory=dict)
    """Error code -> class, overriding the table."""

    @classmethod
    def profile(cls, name: str) -> RetryPolicy:
        """An SDK's policy by name (see :data:`PROFILES`); unknown names raise ArgumentInvalidError."""
        return cls._from_native(_native.retry_profile(name))

    def validate(self) -> RetryPolicy:
        """Checks the policy; returns it as the library holds it (durations as ``timedelta``)."""
        return RetryPolicy._from_native(_native.retry_check(self._to_native()))

    def delays(self, n: int, error_class: ErrorClass = ErrorClass.TRANSIENT, seed: int = 0) -> list[timedelta | None]:
        """The first ``n`` waits after failures of ``error_class`` (None: the policy gives up),
        jitter drawn from a generator seeded with ``seed``. Limits and timeouts not applied."""
        out = _native.retry_delays(self._to_native(), n, int(error_class), seed)
        return [None if d is None else _td(d) for d in out]

    def _to_native(self) -> dict[str, Any]:
        return {
            "backoff": self.backoff._to_native(),
            "throttled": None if self.throttled is None else self.throttled._to_native(),
            "first_retry": int(FirstRetry(self.first_retry)),
            "first_retry_delay_ms": _ms(self.first_retry_delay, "first_retry_delay"),
            "timeout_ms": _ms(self.timeout, "timeout"),
            "timeout_from": int(TimeoutOrigin(self.timeout_from)),
            "max_retries": self.max_retries,
            "reset_on_success": bool(self.reset_on_success),
            "min_spacing_ms": _ms(self.min_spacing, "min_spacing"),
            "wait_from": int(WaitOrigin(self.wait_from)),
            "whole_seconds": bool(self.whole_seconds),
            "error_table": int(ErrorTable(self.error_table)),
            "overrides": [(int(code), int(ErrorClass(cls))) for code, cls in self.overrides.items()],
        }

    @classmethod
    def _from_native(cls, d: dict[str, Any]) -> RetryPolicy:
        return cls(
            backoff=Backoff._from_native(d["backoff"]),
            throttled=None if d["throttled"] is None else Backoff._from_native(d["throttled"]),
            first_retry=FirstRetry(d["first_retry"]),
            first_retry_delay=_td(d["first_retry_delay_ms"]),
            timeout=_td(d["timeout_ms"]),
            timeout_from=TimeoutOrigin(d["timeout_from"]),
            max_retries=d["max_retries"],
            reset_on_success=d["reset_on_success"],
            min_spacing=_td(d["min_spacing_ms"]),
            wait_from=WaitOrigin(d["wait_from"]),
            whole_seconds=d["whole_seconds"],
            error_table=ErrorTable(d["error_table"]),
            overrides={code: ErrorClass(c) for code, c in d["overrides"]},
        )


RetrySpec = Union[str, RetryPolicy, None]
"""What ``retry=`` accepts: a profile name, a policy, or None for the default policy."""


def _retry_to_native(retry: RetrySpec) -> Any:
    if retry is None or isinstance(retry, str):
        return retry
    if isinstance(retry, RetryPolicy):
        return retry._to_native()
    raise TypeError(f"retry must be a profile name, a RetryPolicy or None, not {type(retry).__name__}")


def classify(error: int | DeviceboundError, table: ErrorTable = ErrorTable.CONSOLIDATED) -> ErrorClass:
    """Whether an error is retried, by one SDK's table.

    >>> classify(429001), classify(403004)
    (<ErrorClass.THROTTLED: 1>, <ErrorClass.FATAL: 2>)
    """
    code = error.code if isinstance(error, DeviceboundError) else int(error)
    return ErrorClass(_native.retry_classify(code, int(table)))
