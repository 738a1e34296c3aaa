"""The embedded hub: IoT Hub's C2D queues in this process, no broker, no cloud account.

>>> hub = Hub(lock_duration=5)              # HubConfig fields as keywords, or Hub(HubConfig(...))
>>> generation = hub.add_device("thermostat-1")
>>> "thermostat-1" in hub, len(hub)
(True, 1)
>>> hub.close()

Clients connect to it with ``DeviceClient(hub, device_id)`` and ``ServiceClient(hub)``.
With a :class:`ManualClock`, time moves only when the test says so::

    clock = ManualClock()
    hub = Hub(clock=clock, lock_duration=5)
    ...
    clock.advance(5)          # the lock expires; the message is redelivered
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import _lifecycle, _native
from .config import Duration, HubConfig, HubStats, _ms
from .message import _from_ms, _to_ms

__all__ = ["Hub", "ManualClock"]


class ManualClock:
    """Test time: starts at 2026-01-01T00:00:00Z (or ``start``) and moves only when told.

    Everything that waits on it (receive timeouts, lock expiry, feedback batching,
    retry waits) wakes exactly when :meth:`advance` reaches its deadline; nothing sleeps.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._native = _native.ManualClock(None if start is None else _to_ms(start))

    def now(self) -> datetime:
        """The current time (UTC)."""
        return _from_ms(self._native.now_ms())

    def advance(self, by: Duration) -> None:
        """Moves time forward (a negative amount is ignored) and wakes the waiters that are due."""
        self._native.advance_ms(_ms(by, "by"))

    def advance_to(self, when: datetime) -> None:
        """Moves time forward to ``when``; an earlier time is ignored."""
        self._native.advance_to_ms(_to_ms(when))

    def waiting_deadlines(self) -> list[datetime]:
        """Deadlines of the threads waiting on this clock now, earliest first."""
        return [_from_ms(d) for d in self._native.waiting_deadlines_ms()]

    def await_waiter(self, deadline: datetime, timeout: float = 10.0) -> bool:
        """Blocks (up to ``timeout`` real seconds) until some thread waits for exactly
        ``deadline``; returns whether one did. Lets a test advance time exactly when a
        client has started waiting for it."""
        return self._native.await_waiter_ms(_to_ms(deadline), float(timeout))

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()})"


class Hub:
    """An IoT Hub in this process: device registry, per-device C2D queues, lock and TTL
    timers, delivery feedback. Thread-safe.

    ``config`` (or :class:`HubConfig` fields as keywords) sets the limits and timings;
    ``clock`` a :class:`ManualClock` for tests. A driver thread applies lock expiries and
    sends feedback batches on time (``driver=False`` leaves that to :meth:`pump` and to
    the clients' own operations). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        clock: ManualClock | None = None,
        driver: bool = True,
        **config_fields: Any,
    ) -> None:
        if config is not None and config_fields:
            raise TypeError("pass either a HubConfig or its fields as keywords, not both")
        if config is None:
            config = HubConfig(**config_fields)
        self.clock = clock
        self._native = _native.Hub(config._to_native(), None if clock is None else clock._native, driver)
        _lifecycle.track(self)

    # --- registry ------------------------------------------------------------------------
    def add_device(self, device_id: str) -> str:
        """Registers a device; returns its generation id. 409001 if it exists, 400004 for a bad id."""
        return self._native.add_device(device_id)

    def remove_device(self, device_id: str) -> None:
        """Removes a device, its queue and its pending feedback. 404001 if unknown."""
        self._native.remove_device(device_id)

    def has_device(self, device_id: str) -> bool:
        return self._native.has_device(device_id)

    def generation_id(self, device_id: str) -> str:
        return self._native.generation_id(device_id)

    def __contains__(self, device_id: object) -> bool:
        return isinstance(device_id, str) and self._native.has_device(device_id)

    def __len__(self) -> int:
        return self._native.device_count()

    # --- inspection ----------------------------------------------------------------------
    def queue_depth(self, device_id: str) -> int:
        """Pending messages of a device, Enqueued plus Invisible."""
        return self._native.queue_depth(device_id)

    def stats(self) -> HubStats:
        """Running totals: accepted, completed, rejected, expired, ..."""
        return HubStats(*self._native.stats())

    @property
    def config(self) -> HubConfig:
        """The configuration the hub runs with."""
        return HubConfig._from_native(self._native.config())

    def now(self) -> datetime:
        """The hub's clock."""
        return _from_ms(self._native.now_ms())

    # --- time ----------------------------------------------------------------------------
    def pump(self) -> datetime | None:
        """Applies every timer due now; returns the next deadline (None if none)."""
        nxt = self._native.pump()
        return None if nxt is None else _from_ms(nxt)

    def start_driver(self) -> None:
        self._native.start_driver()

    def stop_driver(self) -> None:
        self._native.stop_driver()

    @property
    def driver_running(self) -> bool:
        return self._native.driver_running()

    def close(self) -> None:
        """Stops the driver thread. The hub itself lives as long as a client uses it."""
        self._native.close()
        _lifecycle.untrack(self)

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Hub {self.config.name!r} devices={len(self)}>"

