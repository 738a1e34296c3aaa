"""The asyncio API: the same clients, with coroutines.

::

    import asyncio
    import devicebound as db
    from devicebound import aio

    async def main():
        hub = db.Hub()
        hub.add_device("thermostat-1")
        async with aio.ServiceClient(hub) as service, aio.DeviceClient(hub, "thermostat-1") as device:
            await service.send("thermostat-1", b'{"target": 21}', message_id="set-21", ack=db.Ack.FULL)
            async for m in device.messages():
                await device.complete(m)
                break
            batch = await service.receive_feedback(timeout=20)
            await service.complete_feedback(batch)

    asyncio.run(main())

Handlers (``on_message_received``, ``on_feedback_received``) and callbacks may be plain
functions or coroutine functions; coroutines run on the event loop the client was
created (or the handler set) in, while the client's thread waits for their result.
Waiting calls run on a small thread pool per client, so the event loop never blocks;
a cancelled ``receive`` hands back a message that arrives after the cancellation
(abandoned where the transport can, else redelivered when its lock expires).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, AsyncIterator, Callable

from . import client as _sync
from .client import (
    ConnectionStatus,
    ErrorCallback,
    FeedbackHandler,
    MessageHandler,
    SendReceipt,
    StatusCallback,
    Transport,
    _timeout_ms,
)
from .amqp import AmqpOptions
from .config import Duration
from .errors import DeviceboundError, InvalidOperationError
from .hub import Hub
from .message import Ack, Body, Disposition, FeedbackBatch, Message
from .retry import ErrorClass, RetrySpec, classify

__all__ = ["DeviceClient", "ServiceClient", "Hub"]

_SLICE_MS = 1000
"""Long waits run in slices, so that a cancelled wait frees its thread within a second."""


class _Async:
    _client: Any

    def __init__(self, transport: Transport | AmqpOptions, workers: int) -> None:
        self._in_process = isinstance(transport, Hub)
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="devicebound-aio")
        try:
            self._client._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        self._client._loop = loop
        return loop

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs a client call: directly when it cannot wait (in process, connected), else on a thread."""
        loop = self._bind()
        if self._in_process and self._client.status is ConnectionStatus.CONNECTED:
            return fn(*args)
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _wait(self, fn: Callable[[int], Any], timeout: Duration | None, orphan: Callable[[Any], None]) -> Any:
        """Calls ``fn(slice_ms)`` until it returns something or ``timeout`` passes, each call on a
        thread; a result that arrives after cancellation goes to ``orphan``."""
        loop = self._bind()
        if self._in_process and timeout == 0 and self._client.status is ConnectionStatus.CONNECTED:
            return fn(0)
        total = _timeout_ms(timeout)
        deadline = loop.time() + total / 1000.0
        while True:
            left = max(0, round((deadline - loop.time()) * 1000))
            try:
                if self._client._closing:
                    raise RuntimeError("closed")
                future = self._executor.submit(fn, min(left, _SLICE_MS))
            except RuntimeError:  # the executor is shut down: the client closed
                raise InvalidOperationError("the client is closed") from None
            try:
                result = await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                future.add_done_callback(
                    lambda f: orphan(f.result()) if not f.cancelled() and f.exception() is None else None)
                raise
            except DeviceboundError as e:
                # A connection problem the policy could not fix within this slice: keep waiting.
                if classify(e) is ErrorClass.FATAL or left <= _SLICE_MS or self._client._closing:
                    raise
                continue
            if result is not None or left <= _SLICE_MS:
                return result

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        # Closing joins the handler thread, which may be waiting for a coroutine on this loop.
        await loop.run_in_executor(None, self._client.close)
        self._executor.shutdown(wait=False)

    # --- shared properties ----------------------------------------------------------------
    @property
    def status(self) -> ConnectionStatus:
        return self._client.status

    @property
    def closed(self) -> bool:
        return self._client.closed

    @property
    def on_connection_state_change(self) -> StatusCallback | None:
        """``callback(status, reason)``; a coroutine function is scheduled on the loop."""
        return self._client.on_connection_state_change

    @on_connection_state_change.setter
    def on_connection_state_change(self, callback: StatusCallback | None) -> None:
        self._client.on_connection_state_change = callback

    @property
    def on_error(self) -> ErrorCallback | None:
        """``callback(error)`` for errors no call returns; a coroutine function is scheduled on the loop."""
        return self._client.on_error

    @on_error.setter
    def on_error(self, callback: ErrorCallback | None) -> None:
        self._client.on_error = callback


class DeviceClient(_Async):
    """The asyncio form of :class:`devicebound.DeviceClient`.

    ::

        async with aio.DeviceClient(hub, "thermostat-1") as device:
            async for m in device.messages():
                await device.complete(m)
    """

    def __init__(
        self,
        transport: Transport,
        device_id: str,
        *,
        retry: RetrySpec = None,
        receive_timeout: Duration = 60,
        random_seed: int | None = None,
        workers: int = 4,
    ) -> None:
        self._client = _sync.DeviceClient(
            transport, device_id, retry=retry, receive_timeout=receive_timeout, random_seed=random_seed)
        super().__init__(transport, workers)

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        transport: str = "amqp",
        *,
        ca_file: str | None = None,
        options: AmqpOptions | None = None,
        retry: RetrySpec = None,
        receive_timeout: Duration = 60,
        random_seed: int | None = None,
        workers: int = 4,
    ) -> DeviceClient:
        """:meth:`devicebound.DeviceClient.from_connection_string`, asyncio form."""
        self = cls.__new__(cls)
        self._client = _sync.DeviceClient.from_connection_string(
            connection_string, transport, ca_file=ca_file, options=options, retry=retry,
            receive_timeout=receive_timeout, random_seed=random_seed)
        _Async.__init__(self, self._client.transport, workers)
        return self

    @property
    def sync(self) -> _sync.DeviceClient:
        """The blocking client underneath."""
        return self._client

    @property
    def device_id(self) -> str:
        return self._client.device_id

    @property
    def transport(self) -> Transport:
        return self._client.transport

    @property
    def can_reject(self) -> bool:
        return self._client.can_reject

    @property
    def can_abandon(self) -> bool:
        return self._client.can_abandon

    def __repr__(self) -> str:
        return f"<aio.DeviceClient {self.device_id!r}{' closed' if self.closed else ''}>"

    async def connect(self) -> None:
        self._bind()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._client.connect)

    async def disconnect(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._client.disconnect)

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> DeviceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def receive(self, timeout: Duration | None = None) -> Message | None:
        """The next message, waiting up to ``timeout`` seconds (None: until one comes)."""
        native = self._client._native
        t = await self._wait(native.receive, timeout, self._client._orphaned)
        return None if t is None else Message._from_native(t)

    async def messages(self, idle_timeout: Duration | None = None) -> AsyncIterator[Message]:
        """Messages as they come, until the client closes (or ``idle_timeout`` seconds pass
        without one). Settle each one."""
        while not self.closed:
            try:
                m = await self.receive(idle_timeout)
            except DeviceboundError:
                if self.closed or self._client._closing:
                    return  # closed while waiting
                raise
            if m is None:
                if idle_timeout is not None:
                    return
                continue
            yield m

    async def complete(self, message: Message | str) -> None:
        await self._call(self._client.complete, message)

    async def reject(self, message: Message | str) -> None:
        await self._call(self._client.reject, message)

    async def abandon(self, message: Message | str) -> None:
        await self._call(self._client.abandon, message)

    async def settle(self, message: Message | str, disposition: Disposition) -> None:
        await self._call(self._client.settle, message, disposition)

    @property
    def on_message_received(self) -> MessageHandler | None:
        """A function or coroutine function called with each message; returns a Disposition
        (None: complete). Exclusive with :meth:`receive`."""
        return self._client.on_message_received

    @on_message_received.setter
    def on_message_received(self, handler: MessageHandler | None) -> None:
        try:
            self._bind()
        except RuntimeError:
            pass
        self._client.on_message_received = handler


class ServiceClient(_Async):
    """The asyncio form of :class:`devicebound.ServiceClient`.

    ::

        async with aio.ServiceClient(hub) as service:
            await service.send("thermostat-1", b"on", ack=db.Ack.FULL, message_id="m1")
            async for batch in service.feedback():
                await service.complete_feedback(batch)
    """

    def __init__(
        self,
        transport: Transport,
        *,
        retry: RetrySpec = None,
        assign_message_id: bool = False,
        feedback_receive_timeout: Duration = 60,
        random_seed: int | None = None,
        workers: int = 4,
    ) -> None:
        self._client = _sync.ServiceClient(
            transport,
            retry=retry,
            assign_message_id=assign_message_id,
            feedback_receive_timeout=feedback_receive_timeout,
            random_seed=random_seed,
        )
        super().__init__(transport, workers)

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        *,
        ca_file: str | None = None,
        options: AmqpOptions | None = None,
        retry: RetrySpec = None,
        assign_message_id: bool = False,
        feedback_receive_timeout: Duration = 60,
        random_seed: int | None = None,
        workers: int = 4,
    ) -> ServiceClient:
        """:meth:`devicebound.ServiceClient.from_connection_string`, asyncio form."""
        self = cls.__new__(cls)
        self._client = _sync.ServiceClient.from_connection_string(
            connection_string, ca_file=ca_file, options=options, retry=retry,
            assign_message_id=assign_message_id, feedback_receive_timeout=feedback_receive_timeout,
            random_seed=random_seed)
        _Async.__init__(self, self._client.transport, workers)
        return self

    @property
    def sync(self) -> _sync.ServiceClient:
        """The blocking client underneath."""
        return self._client

    @property
    def transport(self) -> Transport:
        return self._client.transport

    def __repr__(self) -> str:
        return f"<aio.ServiceClient{' closed' if self.closed else ''}>"

    async def open(self) -> None:
        self._bind()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._client.open)

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> ServiceClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(
        self,
        device_id: str,
        message: Message | Body,
        properties: dict[str, str] | None = None,
        *,
        ack: Ack | None = None,
        **system_properties: Any,
    ) -> SendReceipt:
        """Sends a message; see :meth:`devicebound.ServiceClient.send`."""
        loop = self._bind()
        if self._in_process and self._client.status is ConnectionStatus.CONNECTED:
            return self._client.send(device_id, message, properties, ack=ack, **system_properties)
        return await loop.run_in_executor(
            self._executor, lambda: self._client.send(device_id, message, properties, ack=ack, **system_properties))

    async def purge(self, device_id: str) -> int:
        return await self._call(self._client.purge, device_id)

    async def queue_depth(self, device_id: str) -> int:
        return await self._call(self._client.queue_depth, device_id)

    async def receive_feedback(self, timeout: Duration | None = None) -> FeedbackBatch | None:
        """The next feedback batch, waiting up to ``timeout`` seconds (None: until one comes)."""
        native = self._client._native
        t = await self._wait(native.receive_feedback, timeout, self._client._orphaned)
        return None if t is None else FeedbackBatch._from_native(t)

    async def feedback(self, idle_timeout: Duration | None = None) -> AsyncIterator[FeedbackBatch]:
        """Feedback batches as they come, until the client closes (or ``idle_timeout`` seconds
        pass without one). Settle each one."""
        while not self.closed:
            try:
                b = await self.receive_feedback(idle_timeout)
            except DeviceboundError:
                if self.closed or self._client._closing:
                    return  # closed while waiting
                raise
            if b is None:
                if idle_timeout is not None:
                    return
                continue
            yield b

    async def complete_feedback(self, batch: FeedbackBatch | str) -> None:
        await self._call(self._client.complete_feedback, batch)

    async def abandon_feedback(self, batch: FeedbackBatch | str) -> None:
        await self._call(self._client.abandon_feedback, batch)

    @property
    def on_feedback_received(self) -> FeedbackHandler | None:
        return self._client.on_feedback_received

    @on_feedback_received.setter
    def on_feedback_received(self, handler: FeedbackHandler | None) -> None:
        try:
            self._bind()
        except RuntimeError:
            pass
        self._client.on_feedback_received = handler

