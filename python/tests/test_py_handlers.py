"""Handlers and callbacks called from C++ threads: a handler that raises, status
callbacks, closing from a handler, dropping a client in its own handler, and no
deadlock or crash at interpreter exit."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading

import pytest

import devicebound as db
from helpers import WAIT, wait_until


@pytest.fixture
def hub():
    with db.Hub(lock_duration=2) as h:
        h.add_device("d")
        yield h


def test_a_handler_that_raises_abandons_and_reports_the_cause(hub):
    errors: list[db.DeviceboundError] = []
    calls: list[int] = []

    def handler(m: db.Message) -> db.Disposition:
        calls.append(m.delivery_count)
        if m.delivery_count == 0:
            raise ValueError("boom")
        return db.Disposition.COMPLETE

    with db.ServiceClient(hub) as service, db.DeviceClient(hub, "d") as device:
        device.on_error = errors.append
        device.on_message_received = handler
        service.send("d", b"x", message_id="m", ack=db.Ack.POSITIVE)
        batch = service.receive_feedback(timeout=WAIT)  # completed on the second delivery
        assert [(r.original_message_id, r.status) for r in batch] == [("m", db.FeedbackStatus.SUCCESS)]
        service.complete_feedback(batch)
    assert calls == [0, 1]  # abandoned after the raise (delivery count + 1), then completed
    [error] = errors
    assert isinstance(error, db.InvalidOperationError) and error.code == 409002
    assert isinstance(error.__cause__, ValueError) and str(error.__cause__) == "boom"


def test_a_raising_handler_is_logged_without_on_error(hub, caplog):
    hit = threading.Event()

    def handler(m: db.Message) -> None:
        if not hit.is_set():
            hit.set()
            raise RuntimeError("handler failure")

    with caplog.at_level(logging.ERROR, logger="devicebound"):
        with db.ServiceClient(hub) as service, db.DeviceClient(hub, "d") as device:
            device.on_message_received = handler
            service.send("d", b"x")
            wait_until(lambda: service.queue_depth("d") == 0, what="the retried message to complete")
    assert any("handler failure" in (r.exc_text or "") or "threw" in r.getMessage() for r in caplog.records)


def test_a_handler_returning_nonsense_is_an_error(hub):
    errors: list[db.DeviceboundError] = []
    with db.ServiceClient(hub) as service, db.DeviceClient(hub, "d") as device:
        device.on_error = errors.append
        device.on_message_received = lambda m: "maybe"  # type: ignore[return-value]
        service.send("d", b"x")
        wait_until(lambda: errors, what="the error report")
        device.on_message_received = None
    assert isinstance(errors[0].__cause__, ValueError)


def test_status_callbacks(hub):
    seen: list[tuple[db.ConnectionStatus, db.ConnectionStatusReason]] = []
    device = db.DeviceClient(hub, "d")
    device.on_connection_state_change = lambda s, r: seen.append((s, r))
    device.connect()
    assert device.status is db.ConnectionStatus.CONNECTED
    device.disconnect()
    assert device.status is db.ConnectionStatus.DISCONNECTED
    device.close()
    assert seen == [
        (db.ConnectionStatus.CONNECTED, db.ConnectionStatusReason.OK),
        (db.ConnectionStatus.DISCONNECTED, db.ConnectionStatusReason.CLIENT_CLOSED),
    ]
    stranger = db.DeviceClient(hub, "stranger", retry="c_none")
    reasons: list[db.ConnectionStatusReason] = []
    stranger.on_connection_state_change = lambda s, r: reasons.append(r)
    with pytest.raises(db.UnauthorizedError):
        stranger.connect()
    stranger.close()
    # refused, then the policy (no retry) gave up, then closed
    assert reasons == [db.ConnectionStatusReason.BAD_CREDENTIAL, db.ConnectionStatusReason.RETRY_EXPIRED,
                       db.ConnectionStatusReason.CLIENT_CLOSED]


def test_close_from_inside_the_handler(hub):
    device = db.DeviceClient(hub, "d")
    handled = threading.Event()

    def handler(m: db.Message) -> db.Disposition:
        device.close()  # cannot join its own thread: closes from another one
        handled.set()
        return db.Disposition.COMPLETE

    device.on_message_received = handler
    with db.ServiceClient(hub) as service:
        service.send("d", b"x")
        assert handled.wait(WAIT)
        wait_until(lambda: device.closed, what="the client to close")


def test_a_client_dropped_inside_its_own_handler(hub):
    holder = {"device": db.DeviceClient(hub, "d")}
    dropped = threading.Event()

    def handler(m: db.Message) -> db.Disposition:
        holder.clear()  # the last reference goes away on the client's own thread
        dropped.set()
        return db.Disposition.COMPLETE

    holder["device"].on_message_received = handler
    with db.ServiceClient(hub) as service:
        service.send("d", b"x")
        assert dropped.wait(WAIT)
        # the client is destroyed off its own thread; a new one can take over the device
        with db.DeviceClient(hub, "d") as again:
            service.send("d", b"y")
            m = again.receive(timeout=WAIT)
            assert m is not None
            again.complete(m)


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("behaviour", ["slow", "raises", "coroutine", "pulls"])
def test_exit_with_clients_still_running(behaviour):
    """The interpreter exits promptly and cleanly while handler threads are busy."""
    result = run_script(f"""
        import asyncio, threading, time
        import devicebound as db
        hub = db.Hub()
        hub.add_device("d")
        service = db.ServiceClient(hub)
        device = db.DeviceClient(hub, "d")
        started = threading.Event()
        behaviour = {behaviour!r}

        def slow(m):
            started.set()
            time.sleep(0.05)

        def raises(m):
            started.set()
            raise RuntimeError("at exit")

        async def coroutine(m):
            started.set()
            await asyncio.sleep(0.01)

        if behaviour == "pulls":
            def pull():
                started.set()
                while True:
                    m = device.receive(timeout=None)
                    device.complete(m)
            threading.Thread(target=pull, daemon=True).start()
        else:
            device.on_error = lambda e: None
            device.on_message_received = {{"slow": slow, "raises": raises, "coroutine": coroutine}}[behaviour]
        for i in range(40):
            service.send("d", b"x")
        started.wait(10)
        print("exiting")
        # no close(): the package closes what is open at exit
    """)
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout
    assert "Fatal" not in result.stderr and "terminate" not in result.stderr


def test_exit_inside_asyncio_with_a_coroutine_handler_running():
    result = run_script("""
        import asyncio
        import devicebound as db
        from devicebound import aio

        async def main():
            hub = db.Hub()
            hub.add_device("d")
            device = aio.DeviceClient(hub, "d")
            service = aio.ServiceClient(hub)
            started = asyncio.Event()

            async def handler(m):
                started.set()
                await asyncio.sleep(3600)   # never finishes by itself

            device.on_message_received = handler
            await service.send("d", b"x")
            await started.wait()
            print("leaving the loop")

        asyncio.run(main())
    """)
    assert result.returncode == 0, result.stderr
    assert "leaving the loop" in result.stdout


def test_ctrl_c_interrupts_a_receive_on_the_main_thread():
    result = run_script("""
        import os, signal, threading
        import devicebound as db
        hub = db.Hub()
        hub.add_device("d")
        service = db.ServiceClient(hub)
        device = db.DeviceClient(hub, "d")
        # What an interactive Python has; a parent that ignores SIGINT (a job started
        # with `&` by a non-interactive shell) would leave it ignored here.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            device.receive(timeout=None)      # waits in the library; Ctrl-C still gets through
        except KeyboardInterrupt:
            print("interrupted")
        service.send("d", b"after", message_id="after")
        m = device.receive(timeout=10)        # the abandoned wait hands it back if it took it
        print("got", m.message_id, m.delivery_count in (0, 1))
        device.complete(m)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["interrupted", "got", "after", "True"]
