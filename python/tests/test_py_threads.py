"""Several Python threads on the same hub and clients: every message is delivered and
settled exactly once, and a thread waiting in the library does not hold the GIL."""

from __future__ import annotations

import threading
import time
from collections import Counter

import devicebound as db
from helpers import WAIT

SENDERS = 4
PER_SENDER = 150
DEVICES = ("d0", "d1")


def test_many_threads_send_receive_and_complete_each_message_once():
    hub = db.Hub(max_queue_depth=10000)
    for d in DEVICES:
        hub.add_device(d)
    service = db.ServiceClient(hub)  # one client shared by every sender thread
    received: Counter[str] = Counter()
    lock = threading.Lock()
    total = SENDERS * PER_SENDER
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            for i in range(PER_SENDER):
                service.send(DEVICES[i % 2], f"{k}-{i}".encode(), message_id=f"{k}-{i}")
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    def receive(device: db.DeviceClient) -> None:
        try:
            while True:
                with lock:
                    if sum(received.values()) >= total:
                        return
                m = device.receive(timeout=0.2)
                if m is None:
                    continue
                device.complete(m)
                with lock:
                    received[m.message_id] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    # two receiving threads per device, sharing one client per device
    devices = [db.DeviceClient(hub, d) for d in DEVICES]
    threads = [threading.Thread(target=send, args=(k,)) for k in range(SENDERS)]
    threads += [threading.Thread(target=receive, args=(dev,)) for dev in devices for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert errors == []
    assert len(received) == total and set(received.values()) == {1}
    stats = hub.stats()
    assert stats.accepted == total and stats.completed == total and stats.pending == 0
    for dev in devices:
        dev.close()
    service.close()


def test_handlers_and_senders_on_many_threads():
    hub = db.Hub(max_queue_depth=10000)
    hub.add_device("d")
    got: list[str] = []
    done = threading.Event()
    n = 300

    def handler(m: db.Message) -> db.Disposition:
        got.append(m.message_id)
        if len(got) == n:
            done.set()
        return db.Disposition.COMPLETE

    with db.DeviceClient(hub, "d") as device, db.ServiceClient(hub) as service:
        device.on_message_received = handler
        senders = [threading.Thread(target=lambda k=k: [service.send("d", b"x", message_id=f"{k}-{i}")
                                                        for i in range(n // 3)]) for k in range(3)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)
        assert done.wait(WAIT)
    assert sorted(got) == sorted(f"{k}-{i}" for k in range(3) for i in range(n // 3))


def test_a_waiting_receive_releases_the_gil():
    hub = db.Hub()
    hub.add_device("d")
    device = db.DeviceClient(hub, "d")
    device.connect()
    waiting = threading.Thread(target=device.receive, args=(1.0,))
    start = time.perf_counter()
    waiting.start()
    spins = 0
    while waiting.is_alive():
        spins += 1  # pure Python work: only runs if the other thread let go of the GIL
    elapsed = time.perf_counter() - start
    assert elapsed >= 0.9
    assert spins > 100_000
    device.close()


def test_close_while_another_thread_waits():
    hub = db.Hub()
    hub.add_device("d")
    device = db.DeviceClient(hub, "d")
    outcome: list[object] = []

    receiving = threading.Event()

    def wait() -> None:
        try:
            receiving.set()
            outcome.append(device.receive(timeout=30))
        except db.DeviceboundError as e:
            outcome.append(e)

    t = threading.Thread(target=wait)
    t.start()
    assert receiving.wait(WAIT)
    # wakes the waiting receive (or refuses it, if it has not started): either way
    # it returns at once and the client stays valid until it does
    device.close()
    t.join(WAIT)
    assert not t.is_alive()
    assert len(outcome) == 1
