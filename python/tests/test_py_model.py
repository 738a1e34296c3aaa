"""A Hypothesis stateful test: random sequences of sends, receives, settlements, purges
and clock moves drive the embedded hub (on a ManualClock) through the Python clients,
and a small model of IoT Hub's C2D rules predicts every answer, every error and every
feedback record.

The model: per device, messages in sequence order; Enqueued or Invisible; a lock lasts
LOCK ms; only abandon counts toward MAX_DELIVERY (the default rule); a message expires at
its expiry instant, locked or not; feedback records follow the ack mode (SPEC 4.1).
More examples: HYPOTHESIS_PROFILE=thorough.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import devicebound as db
from devicebound.message import _from_ms

settings.register_profile("default", max_examples=150, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, stateful_step_count=80, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

LOCK = 5_000
TTL = 60_000
MAX_DELIVERY = 3
MAX_DEPTH = 4
DEVICES = ("a", "b")
NEGATIVE = {db.Ack.NEGATIVE, db.Ack.FULL}
POSITIVE = {db.Ack.POSITIVE, db.Ack.FULL}


@dataclass
class Queued:
    seq: int
    mid: str
    ack: db.Ack
    expires: int
    locked: bool = False
    delivery_count: int = 0
    token: str | None = None
    locked_until: int = 0


class HubModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = db.ManualClock()
        self.hub = db.Hub(clock=self.clock, driver=False, lock_duration=LOCK / 1000, default_ttl=TTL / 1000,
                          max_delivery_count=MAX_DELIVERY, max_queue_depth=MAX_DEPTH,
                          feedback_batch_interval=0)
        self.service = db.ServiceClient(self.hub, retry="c_none")
        self.clients: dict[str, db.DeviceClient] = {}
        self.queues: dict[str, list[Queued]] = {}
        self.now = self.clock._native.now_ms()
        self.seq = 0
        self.count = 0
        self.stale: list[tuple[str, str]] = []  # (device, token) no longer valid
        self.expected: Counter[tuple] = Counter()
        self.received: Counter[tuple] = Counter()

    # --- the model's timers ------------------------------------------------------------
    def record(self, device: str, m: Queued, status: db.FeedbackStatus, at: int) -> None:
        wanted = POSITIVE if status is db.FeedbackStatus.SUCCESS else NEGATIVE
        if m.ack in wanted:
            self.expected[(m.mid, status, device, at)] += 1

    def apply_timers(self) -> None:
        for device, queue in self.queues.items():
            for m in list(queue):
                if m.expires <= self.now:
                    if m.token:
                        self.stale.append((device, m.token))
                    queue.remove(m)
                    self.record(device, m, db.FeedbackStatus.EXPIRED, m.expires)
                elif m.locked and m.locked_until <= self.now:
                    self.stale.append((device, m.token))
                    m.locked, m.token = False, None

    # --- rules -----------------------------------------------------------------------
    @rule(device=st.sampled_from(DEVICES))
    def add_device(self, device: str) -> None:
        if device in self.queues:
            with pytest.raises(db.DeviceAlreadyExistsError):
                self.hub.add_device(device)
            return
        assert self.hub.add_device(device)
        self.queues[device] = []
        self.clients[device] = db.DeviceClient(self.hub, device, retry="c_none")

    @rule(device=st.sampled_from(DEVICES + ("ghost",)), ttl=st.one_of(st.none(), st.integers(1, 90)),
          ack=st.sampled_from(list(db.Ack)))
    def send(self, device: str, ttl: int | None, ack: db.Ack) -> None:
        self.count += 1
        mid = f"m{self.count}"
        expiry = None if ttl is None else _from_ms(self.now + ttl * 1000)
        self.apply_timers()
        if device not in self.queues:
            with pytest.raises(db.DeviceNotFoundError):
                self.service.send(device, b"x", message_id=mid, ack=ack, expiry_time_utc=expiry)
            return
        queue = self.queues[device]
        if len(queue) >= MAX_DEPTH:
            with pytest.raises(db.QueueFullError):
                self.service.send(device, b"x", message_id=mid, ack=ack, expiry_time_utc=expiry)
            return
        receipt = self.service.send(device, b"x", message_id=mid, ack=ack, expiry_time_utc=expiry)
        self.seq += 1
        expires = self.now + (TTL if ttl is None else ttl * 1000)
        assert receipt.sequence_number == self.seq
        assert receipt.expiry_time_utc == _from_ms(expires)
        queue.append(Queued(self.seq, mid, ack, expires))

    @precondition(lambda self: self.queues)
    @rule(data=st.data())
    def receive(self, data) -> None:
        device = data.draw(st.sampled_from(sorted(self.queues)))
        self.apply_timers()
        got = self.clients[device].receive(timeout=0)
        available = [m for m in self.queues[device] if not m.locked]
        if not available:
            assert got is None
            return
        m = available[0]  # the lowest sequence number
        assert got is not None
        assert (got.message_id, got.sequence_number, got.delivery_count) == (m.mid, m.seq, m.delivery_count)
        assert got.ack is m.ack
        assert got.expiry_time_utc == _from_ms(m.expires)
        m.locked, m.token, m.locked_until = True, got.lock_token, self.now + LOCK

    @precondition(lambda self: any(m.locked for q in self.queues.values() for m in q) or self.stale)
    @rule(data=st.data(), how=st.sampled_from(list(db.Disposition)))
    def settle(self, data, how: db.Disposition) -> None:
        locked = [(d, m.token) for d, q in sorted(self.queues.items()) for m in q if m.locked]
        device, token = data.draw(st.sampled_from(locked + self.stale))
        self.apply_timers()
        queue = self.queues[device]
        target = next((m for m in queue if m.locked and m.token == token), None)
        if target is None:
            with pytest.raises(db.LockLostError):
                self.clients[device].settle(token, how)
            return
        self.clients[device].settle(token, how)
        self.stale.append((device, token))
        if how is db.Disposition.COMPLETE:
            queue.remove(target)
            self.record(device, target, db.FeedbackStatus.SUCCESS, self.now)
        elif how is db.Disposition.REJECT:
            queue.remove(target)
            self.record(device, target, db.FeedbackStatus.REJECTED, self.now)
        else:
            target.delivery_count += 1
            if target.delivery_count >= MAX_DELIVERY:
                queue.remove(target)
                self.record(device, target, db.FeedbackStatus.DELIVERY_COUNT_EXCEEDED, self.now)
            else:
                target.locked, target.token = False, None

    @rule(device=st.sampled_from(DEVICES + ("ghost",)))
    def purge(self, device: str) -> None:
        self.apply_timers()
        if device not in self.queues:
            with pytest.raises(db.DeviceNotFoundError):
                self.service.purge(device)
            return
        queue = self.queues[device]
        assert self.service.purge(device) == len(queue)
        for m in queue:
            if m.token:
                self.stale.append((device, m.token))
            self.record(device, m, db.FeedbackStatus.PURGED, self.now)
        queue.clear()

    @rule(device=st.sampled_from(DEVICES))
    def queue_depth(self, device: str) -> None:
        self.apply_timers()
        if device not in self.queues:
            with pytest.raises(db.DeviceNotFoundError):
                self.service.queue_depth(device)
            return
        assert self.service.queue_depth(device) == len(self.queues[device])

    @rule(ms=st.one_of(st.integers(0, 2 * LOCK), st.sampled_from([LOCK, LOCK - 1, TTL])))
    def advance(self, ms: int) -> None:
        self.clock.advance(timedelta(milliseconds=ms))
        self.now += ms

    @rule()
    def drain_feedback(self) -> None:
        self.hub.pump()
        self.apply_timers()
        while True:
            batch = self.service.receive_feedback(timeout=0)
            if batch is None:
                break
            assert batch.user_id == "devicebound"
            for r in batch:
                at = (r.enqueued_time_utc - _from_ms(0)) // timedelta(milliseconds=1)
                self.received[(r.original_message_id, r.status, r.device_id, at)] += 1
            self.service.complete_feedback(batch)
        assert self.received == self.expected

    @invariant()
    def every_message_is_counted_once(self) -> None:
        s = self.hub.stats()
        assert s.accepted == self.seq
        terminal = s.completed + s.rejected + s.expired + s.delivery_count_exceeded + s.purged
        assert s.accepted == terminal + s.pending
        assert s.removed_with_device == 0

    def teardown(self) -> None:
        self.drain_feedback()
        for c in self.clients.values():
            c.close()
        self.service.close()
        self.hub.close()


TestHubModel = HubModel.TestCase
