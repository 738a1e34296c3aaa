"""The asyncio API: async with, await send/receive/settle, async for, coroutine handlers,
cancellation."""

from __future__ import annotations

import asyncio

import pytest

import devicebound as db
from devicebound import aio
from helpers import WAIT, Where, mqtt_hub, transport  # noqa: F401 - fixtures


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_howto_with_asyncio(transport: Where):
    device_id = transport.new_device()

    async def main():
        async with aio.ServiceClient(transport.transport) as service, \
                aio.DeviceClient(transport.transport, device_id) as device:
            receipt = await service.send(device_id, b'{"target": 21}', {"unit": "C"}, message_id="set-21",
                                         ack=db.Ack.FULL)
            assert receipt.sequence_number >= 1
            async for m in device.messages():
                assert (m.body, m.properties, m.message_id) == (b'{"target": 21}', {"unit": "C"}, "set-21")
                await device.complete(m)
                break
            batch = await service.receive_feedback(timeout=WAIT)
            assert [(r.original_message_id, r.status) for r in batch] == [("set-21", db.FeedbackStatus.SUCCESS)]
            await service.complete_feedback(batch)
            assert await service.queue_depth(device_id) == 0

    run(main())


def test_coroutine_handlers(transport: Where):
    device_id = transport.new_device()

    async def main():
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        seen: list[tuple[str, bool]] = []
        outcomes: list[str] = []

        async def on_message(m: db.Message) -> db.Disposition:
            # runs on this loop, while the client's thread waits for it
            seen.append((m.message_id, asyncio.get_running_loop() is loop))
            await asyncio.sleep(0)
            return db.Disposition.REJECT if m.message_id == "bad" else db.Disposition.COMPLETE

        async def on_feedback(batch: db.FeedbackBatch) -> db.FeedbackDisposition:
            outcomes.extend(f"{r.original_message_id}:{r.status}" for r in batch)
            if len(outcomes) >= 2:
                done.set()
            return db.FeedbackDisposition.COMPLETE

        async with aio.ServiceClient(transport.transport) as service, \
                aio.DeviceClient(transport.transport, device_id) as device:
            device.on_message_received = on_message
            service.on_feedback_received = on_feedback
            await service.send(device_id, b"1", message_id="good", ack=db.Ack.FULL)
            await service.send(device_id, b"2", message_id="bad", ack=db.Ack.FULL)
            await asyncio.wait_for(done.wait(), WAIT)
        assert seen == [("good", True), ("bad", True)]
        assert sorted(outcomes) == ["bad:Rejected", "good:Success"]

    run(main())


def test_async_iterators_end_when_the_client_closes():
    hub = db.Hub()
    hub.add_device("d")

    async def main():
        device = aio.DeviceClient(hub, "d")
        service = aio.ServiceClient(hub)
        got: list[bytes] = []
        all_three = asyncio.Event()

        async def consume():
            async for m in device.messages():
                got.append(m.body)
                await device.complete(m)
                if len(got) == 3:
                    all_three.set()

        task = asyncio.create_task(consume())
        for i in range(3):
            await service.send("d", f"m{i}")
        await asyncio.wait_for(all_three.wait(), WAIT)
        await device.close()
        await asyncio.wait_for(task, WAIT)  # the iterator ended by itself
        assert got == [b"m0", b"m1", b"m2"]
        await service.close()

    run(main())


def test_cancelled_receive_hands_the_message_back():
    hub = db.Hub()
    hub.add_device("d")

    async def main():
        async with aio.ServiceClient(hub) as service, aio.DeviceClient(hub, "d") as device:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(device.receive(), 0.05)
            await service.send("d", b"after", message_id="late")
            # the cancelled receive's thread may take it first; it abandons it, so it comes again
            m = await device.receive(timeout=WAIT)
            assert m is not None and m.message_id == "late"
            await device.complete(m)
            assert await service.queue_depth("d") == 0

    run(main())


def test_receive_timeout_and_idle_iterators():
    hub = db.Hub()
    hub.add_device("d")

    async def main():
        async with aio.DeviceClient(hub, "d") as device, aio.ServiceClient(hub) as service:
            assert await device.receive(timeout=0) is None
            assert await device.receive(timeout=0.05) is None
            assert [m async for m in device.messages(idle_timeout=0.05)] == []
            assert [b async for b in service.feedback(idle_timeout=0.05)] == []

    run(main())


def test_async_errors_are_the_same_classes():
    hub = db.Hub(max_queue_depth=1)
    hub.add_device("d")

    async def main():
        async with aio.ServiceClient(hub) as service:
            await service.send("d", b"1")
            with pytest.raises(db.QueueFullError):
                await service.send("d", b"2")
            with pytest.raises(db.DeviceNotFoundError):
                await service.send("nobody", b"2")

    run(main())


def test_the_event_loop_keeps_running_during_a_long_receive():
    hub = db.Hub()
    hub.add_device("d")

    async def main():
        async with aio.DeviceClient(hub, "d") as device, aio.ServiceClient(hub) as service:
            ticked = asyncio.Event()

            async def ticker():
                for _ in range(5):
                    await asyncio.sleep(0.01)
                ticked.set()

            # Nothing is sent yet, and the receive waits longer than the ticks may take:
            # the loop ticks five times while the receive is still waiting.
            receive = asyncio.create_task(device.receive(timeout=4 * WAIT))
            t = asyncio.create_task(ticker())
            await asyncio.wait_for(ticked.wait(), WAIT)
            assert not receive.done()
            await t
            await service.send("d", b"x")
            m = await asyncio.wait_for(receive, WAIT)
            assert m is not None
            await device.complete(m)

    run(main())
