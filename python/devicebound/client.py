"""Device and back-end clients (blocking API; the asyncio API is :mod:`devicebound.aio`).

The device side receives and settles; the back end sends and reads delivery feedback.
Both run in process against a :class:`~devicebound.Hub` or over MQTT against
``devicebound-hub`` (:class:`~devicebound.Mqtt`), with the same API::

    hub = Hub()
    hub.add_device("thermostat-1")

    with ServiceClient(hub) as service, DeviceClient(hub, "thermostat-1") as device:
        service.send("thermostat-1", b'{"target": 21}', message_id="set-21", ack=Ack.FULL)
        m = device.receive(timeout=30)
        device.complete(m)                  # or reject(m), abandon(m)
        batch = service.receive_feedback(timeout=30)
        for record in batch:
            print(record.original_message_id, record.status)    # set-21 Success
        service.complete_feedback(batch)

Or let a handler take messages as they come; it runs on the client's own thread, may be
a plain function or a coroutine function, and returns how to settle the message::

    def on_message(m: Message) -> Disposition:
        return Disposition.COMPLETE if m.body else Disposition.REJECT

    device.on_message_received = on_message

A handler that raises leaves the message to be delivered again (abandoned where the
transport can) and reports a :class:`~devicebound.InvalidOperationError`, whose
``__cause__`` is the handler's exception, to ``on_error`` (logged when unset).

Every blocking call releases the GIL while the library waits, so other Python threads
run; every client is thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import inspect
import logging
import threading
import time
import weakref
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterator, Optional, Union

from . import _lifecycle, _native
from .config import Duration, _ms
from .errors import DeviceboundError, NotSupportedError, error_for_code
from .hub import Hub
from .message import (
    Ack,
    Body,
    Disposition,
    FeedbackBatch,
    FeedbackDisposition,
    Message,
    _from_ms,
    _to_ms,
)
from .amqp import HAS_AMQP, AmqpOptions
from .mqtt import HAS_MQTT, DeviceMode, Mqtt
from .retry import ErrorClass, RetrySpec, _retry_to_native, classify

__all__ = [
    "ConnectionStatus",
    "ConnectionStatusReason",
    "DeviceClient",
    "ServiceClient",
    "SendReceipt",
    "Transport",
    "MessageHandler",
    "FeedbackHandler",
    "StatusCallback",
    "ErrorCallback",
]

_log = logging.getLogger("devicebound")

Transport = Union[Hub, Mqtt]
"""Where the hub is: a :class:`~devicebound.Hub` in this process, or :class:`~devicebound.Mqtt`."""

MessageHandler = Callable[[Message], Union[Disposition, None, Awaitable[Optional[Disposition]]]]
"""Returns how to settle the message (None: complete); may be a coroutine function."""
FeedbackHandler = Callable[[FeedbackBatch], Union[FeedbackDisposition, bool, None, Awaitable[Any]]]
"""Returns COMPLETE (or None/True) or ABANDON (or False); may be a coroutine function."""


class ConnectionStatus(enum.IntEnum):
    CONNECTED = 0
    DISCONNECTED = 1


class ConnectionStatusReason(enum.IntEnum):
    """Why the status changed (the C SDK's connection status reasons)."""

    OK = 0
    CLIENT_CLOSED = 1
    NO_NETWORK = 2
    COMMUNICATION_ERROR = 3
    BAD_CREDENTIAL = 4
    DEVICE_DISABLED = 5
    RETRY_EXPIRED = 6


StatusCallback = Callable[[ConnectionStatus, ConnectionStatusReason], Any]
"""Called on every change of (status, reason). It must not call connect/disconnect/close."""
ErrorCallback = Callable[[DeviceboundError], Any]
"""Gets errors no call can return: a handler that raised, a settlement of the handler
thread that failed, a receive loop that gave up."""

_FOREVER_MS = 1 << 62
_STATUSES = tuple(ConnectionStatus)
_REASONS = tuple(ConnectionStatusReason)
_COMPLETE = int(Disposition.COMPLETE)
_REJECT = int(Disposition.REJECT)
_ABANDON = int(Disposition.ABANDON)


def _timeout_ms(timeout: Duration | None) -> int:
    if timeout is None:
        return _FOREVER_MS
    return max(0, _ms(timeout, "timeout"))


class SendReceipt:
    """What an accepted send returns: the sequence number and when the message expires."""

    __slots__ = ("sequence_number", "_expiry")

    def __init__(self, sequence_number: int, expiry_ms: int) -> None:
        self.sequence_number = sequence_number
        self._expiry = expiry_ms

    @property
    def expiry_time_utc(self) -> datetime:
        """When the message expires, after the default TTL and the 2-day cap."""
        return _from_ms(self._expiry)

    def __repr__(self) -> str:
        return f"SendReceipt(sequence_number={self.sequence_number}, expiry_time_utc={self.expiry_time_utc!r})"


class _Closing(Exception):
    """The client closed while a coroutine handler ran."""


class _Client:
    """What both clients share: callbacks from C++ threads, handler dispatch, closing."""

    _native: Any

    def __init__(self) -> None:
        self._closed = False
        self._closing = False
        self._handler: Callable[..., Any] | None = None
        self._handler_error: BaseException | None = None
        self._handler_thread: int | None = None
        self._handler_generation = 0  # a replaced handler's coroutine is cancelled
        self._on_status: StatusCallback | None = None
        self._on_error: ErrorCallback | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by the asyncio wrappers
        self._private_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        me = weakref.ref(self)

        def on_status(status: int, reason: int) -> None:
            client = me()
            if client is not None:
                client._status_changed(status, reason)

        def on_error(code: int, message: str) -> None:
            client = me()
            if client is not None:
                client._report(error_for_code(code, message))

        self._native.set_status_callback(on_status)
        self._native.set_error_handler(on_error)
        _lifecycle.track(self)

    # --- callbacks -----------------------------------------------------------------------
    @property
    def on_connection_state_change(self) -> StatusCallback | None:
        """``callback(status, reason)`` on every change of the connection's status."""
        return self._on_status

    @on_connection_state_change.setter
    def on_connection_state_change(self, callback: StatusCallback | None) -> None:
        self._on_status = callback

    @property
    def on_error(self) -> ErrorCallback | None:
        """``callback(error)`` for errors no call returns (a handler that raised, ...).
        Unset, they are logged to the ``devicebound`` logger."""
        return self._on_error

    @on_error.setter
    def on_error(self, callback: ErrorCallback | None) -> None:
        self._on_error = callback

    @property
    def status(self) -> ConnectionStatus:
        """Whether the connection is up."""
        return _STATUSES[self._native.status()]

    @property
    def closed(self) -> bool:
        return self._closed

    def _status_changed(self, status: int, reason: int) -> None:
        callback = self._on_status
        if callback is None:
            return
        # Runs under the client's connection lock: a coroutine callback is scheduled, never awaited here.
        result = callback(_STATUSES[status], _REASONS[reason])
        if inspect.isawaitable(result):
            self._schedule(result)

    def _report(self, error: DeviceboundError) -> None:
        cause, self._handler_error = self._handler_error, None
        if cause is not None and "threw" in error.message:
            error.__cause__ = cause
        callback = self._on_error
        if callback is None:
            _log.error("%r: %s", self, error, exc_info=error)
            return
        try:
            result = callback(error)
            if inspect.isawaitable(result):
                self._schedule(result)
        except Exception:  # noqa: BLE001 - an error handler's error has nowhere else to go
            _log.exception("%r: the on_error callback raised", self)

    def _schedule(self, awaitable: Awaitable[Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop)
        else:
            self._run_coroutine(awaitable)

    # --- handlers ------------------------------------------------------------------------
    def _dispatcher(self, handler: Callable[..., Any], from_native: Callable[[tuple], Any],
                    to_int: Callable[[Any], int]) -> Callable[[tuple], int]:
        me = weakref.ref(self)
        self._handler_generation += 1
        generation = self._handler_generation

        def dispatch(t: tuple) -> int:
            client = me()
            if client is None or client._closing or client._handler_generation != generation:
                # Being closed, dropped or replaced: the thread is about to be stopped. Give the
                # stop a moment to land, so the message is abandoned once, not in a loop.
                time.sleep(0.01)
                return -1
            client._handler_thread = threading.get_ident()
            try:
                result = handler(from_native(t))
                if inspect.isawaitable(result):
                    result = client._run_coroutine(result, generation)
                return to_int(result)
            except BaseException as e:  # noqa: BLE001 - reported through on_error with the cause
                client._handler_error = e
                return -1

        return dispatch

    def _run_coroutine(self, awaitable: Awaitable[Any], generation: int | None = None) -> Any:
        """Runs a handler's coroutine on the asyncio client's loop, or on a loop of this thread.
        Closing the client, or replacing the handler, cancels it."""
        loop = self._loop
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop)
            while True:
                done, _ = concurrent.futures.wait([future], timeout=0.1)
                if done:
                    return future.result()
                replaced = generation is not None and generation != self._handler_generation
                if self._closing or replaced or loop.is_closed():
                    future.cancel()
                    raise _Closing("the client closed, or the handler was replaced, while the handler ran")
        if self._private_loop is None:
            self._private_loop = asyncio.new_event_loop()
        return self._private_loop.run_until_complete(self._guarded(awaitable, generation))

    async def _guarded(self, awaitable: Awaitable[Any], generation: int | None) -> Any:
        """Awaits a handler on this thread's own loop; closing or replacing the handler cancels it."""
        task = asyncio.ensure_future(awaitable)
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if done:
                return task.result()
            if self._closing or (generation is not None and generation != self._handler_generation):
                task.cancel()
                raise _Closing("the client closed, or the handler was replaced, while the handler ran")

    # --- waiting without blocking signals --------------------------------------------------
    def _wait_off_main(self, fn: Callable[..., Any], *args: Any, orphan: Callable[[Any], None]) -> Any:
        """Runs a long wait on a helper thread so that the main thread stays interruptible
        (Ctrl-C); whatever arrives after an interruption is passed to ``orphan``. The helper
        is a daemon thread: a wait nobody wants any more must not hold up the exit."""
        outcome: dict[str, Any] = {}
        finished = threading.Event()
        guard = threading.Lock()

        def wait() -> None:
            try:
                outcome["result"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                outcome["error"] = e
            with guard:
                finished.set()
                late = outcome.get("abandoned", False)
            if late and outcome.get("result") is not None:
                orphan(outcome["result"])

        helper = threading.Thread(target=wait, name="devicebound-wait", daemon=True)
        try:
            # An interruption inside start() (it waits for the thread to run) must
            # still mark the wait abandoned, or what it receives is never handed back.
            helper.start()
            finished.wait()
        except BaseException:
            with guard:
                outcome["abandoned"] = not finished.is_set()
            if not outcome["abandoned"] and outcome.get("result") is not None:
                orphan(outcome["result"])  # it came just as we were interrupted
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    # --- closing -------------------------------------------------------------------------
    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closing = True
        if self._handler_thread == threading.get_ident():
            # Called from our own handler thread: it cannot join itself. Close from another thread.
            threading.Thread(target=self._close_now, name="devicebound-close", daemon=True).start()
            return
        self._close_now()

    def _close_now(self) -> None:
        try:
            self._native.close()
        finally:
            self._closed = True
            _lifecycle.untrack(self)
            if self._private_loop is not None and not self._private_loop.is_running():
                self._private_loop.close()


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _disposition(result: Any) -> int:
    if result is None:
        return _COMPLETE
    return int(Disposition(result))


def _feedback_disposition(result: Any) -> int:
    if result is None or result is True:
        return int(FeedbackDisposition.COMPLETE)
    if result is False:
        return int(FeedbackDisposition.ABANDON)
    return int(FeedbackDisposition(result))


def _token(m: Message | str) -> str:
    if isinstance(m, Message):
        if m.lock_token is None:
            from .errors import ArgumentInvalidError

            raise ArgumentInvalidError("the message has no lock token: it was not received")
        return m.lock_token
    return m


def _require_mqtt() -> None:
    if not HAS_MQTT:
        raise NotSupportedError(
            "this build of devicebound has no MQTT transport: Paho MQTT C (libpaho-mqtt-dev) "
            "was not found when it was built"
        )


def _require_amqp() -> None:
    if not HAS_AMQP:
        raise NotSupportedError(
            "this build of devicebound has no AMQP transport: Qpid Proton C++ "
            "(libqpid-proton-cpp12-dev) was not found when it was built"
        )


def _amqp_options(ca_file: str | None, options: AmqpOptions | None) -> dict[str, Any]:
    o = options if options is not None else AmqpOptions()
    native = o._to_native()
    if ca_file is not None:
        native["ca_file"] = str(ca_file)
    return native


class DeviceClient(_Client):
    """A device's C2D client: receive with a handler or by pulling, and complete, reject or abandon.

    ``transport`` is a :class:`~devicebound.Hub` (in process) or an :class:`~devicebound.Mqtt`.
    Operations connect on demand (under the retry policy); :meth:`connect` connects up front.
    In process, a device the hub does not know is refused with
    :class:`~devicebound.UnauthorizedError`.

    >>> hub = Hub(); _ = hub.add_device("d1")
    >>> with ServiceClient(hub) as service, DeviceClient(hub, "d1") as device:
    ...     _ = service.send("d1", "hello")
    ...     m = device.receive(timeout=5)
    ...     device.complete(m)
    ...     m.text
    'hello'
    """

    def __init__(
        self,
        transport: Transport,
        device_id: str,
        *,
        retry: RetrySpec = None,
        receive_timeout: Duration = 60,
        random_seed: int | None = None,
    ) -> None:
        self.transport: Hub | Mqtt | AmqpOptions = transport
        """Where the hub is: the Hub, the Mqtt, or the AmqpOptions of from_connection_string."""
        policy = _retry_to_native(retry)
        timeout_ms = _ms(receive_timeout, "receive_timeout")
        if isinstance(transport, Hub):
            self._native = _native.InprocDevice(transport._native, device_id, policy, random_seed, timeout_ms)
        elif isinstance(transport, Mqtt):
            _require_mqtt()
            cls = _native.MqttDevice if transport.device_mode is DeviceMode.EXTENDED else _native.MqttIotHubDevice
            self._native = cls(transport._to_native(), device_id, policy, random_seed, timeout_ms)
        else:
            raise TypeError(f"transport must be a Hub or an Mqtt, not {type(transport).__name__}")
        self._setup(device_id)

    def _setup(self, device_id: str) -> None:
        self.device_id = device_id
        self.can_reject: bool = self._native.can_reject
        """Whether :meth:`reject` works (not over MQTT in IoT Hub mode)."""
        self.can_abandon: bool = self._native.can_abandon
        super().__init__()

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
    ) -> DeviceClient:
        """A device client from an IoT Hub device connection string,
        ``HostName=...;DeviceId=...;SharedAccessKey=...[;GatewayHostName=...]``.

        ``transport`` is ``"amqp"`` (TLS to port 5671, or ``host:port`` in ``HostName``),
        which reaches ``devicebound-hub``'s AMQP door or an IoT hub; over AMQP a device can
        complete, reject and abandon. ``ca_file`` is a PEM file of CA certificates to trust
        (default: the system's). MQTT clients are built with :class:`~devicebound.Mqtt`.
        Errors: :class:`~devicebound.ArgumentInvalidError` for a malformed string.
        """
        if transport != "amqp":
            raise NotSupportedError(
                f"from_connection_string supports transport 'amqp', not {transport!r}; "
                "over MQTT use DeviceClient(Mqtt(...), device_id)"
            )
        _require_amqp()
        self = cls.__new__(cls)
        self.transport = options if options is not None else AmqpOptions()
        self._native = _native.AmqpDevice(
            _amqp_options(ca_file, options),
            connection_string,
            _retry_to_native(retry),
            random_seed,
            _ms(receive_timeout, "receive_timeout"),
        )
        self._setup(self._native.device_id)
        return self

    def __repr__(self) -> str:
        return f"<DeviceClient {self.device_id!r}{' closed' if self._closed else ''}>"

    # --- connection ----------------------------------------------------------------------
    def connect(self) -> None:
        """Connects under the retry policy; needed again only after :meth:`disconnect`."""
        self._native.connect()

    def disconnect(self) -> None:
        """Stops the handler thread and closes the connection; :meth:`connect` reopens it."""
        self._native.disconnect()

    def close(self) -> None:
        """Stops the handler thread and disconnects for good. Safe to call twice, and from a handler."""
        self._close()

    def __enter__(self) -> DeviceClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- receiving -----------------------------------------------------------------------
    def receive(self, timeout: Duration | None = None) -> Message | None:
        """The next message, locked for this device, waiting up to ``timeout`` seconds
        (None: until one comes); None if none came. Settle it before its lock expires
        (one minute by default). Not while a handler is set."""
        native = self._native
        if timeout == 0 or threading.current_thread() is not threading.main_thread():
            t = native.receive(_timeout_ms(timeout))
        else:
            t = self._receive_interruptibly(native, _timeout_ms(timeout))
        return None if t is None else Message._from_native(t)

    def _receive_interruptibly(self, native: Any, timeout_ms: int) -> tuple | None:
        try:
            t = native.receive(0)  # the common case: a message is already there
            if t is not None:
                return t
        except DeviceboundError as e:
            if classify(e) is ErrorClass.FATAL:
                raise
        return self._wait_off_main(native.receive, timeout_ms, orphan=self._orphaned)

    def _orphaned(self, t: tuple | None) -> None:
        """A message that arrived for a receive nobody waits for any more: hand it back."""
        if t is None or self._closed or not self.can_abandon:
            return  # over a complete-only transport it is redelivered when its lock expires
        try:
            self._native.settle(t[14], _ABANDON)
        except DeviceboundError:
            pass

    def messages(self, idle_timeout: Duration | None = None) -> Iterator[Message]:
        """Yields messages as they come, until the client closes (or ``idle_timeout``
        seconds pass without one). Settle each one.

        ::

            for m in device.messages():
                device.complete(m)
        """
        while not self._closed:
            try:
                m = self.receive(idle_timeout)
            except DeviceboundError:
                if self._closed or self._closing:
                    return  # closed while waiting
                raise
            if m is None:
                if idle_timeout is not None:
                    return
                continue
            yield m

    # --- settling ------------------------------------------------------------------------
    def complete(self, message: Message | str) -> None:
        """Completes a received message (or lock token): it leaves the queue.
        :class:`~devicebound.LockLostError` if its lock expired (it will be redelivered)."""
        self._native.settle(message.lock_token if type(message) is Message else _token(message), _COMPLETE)

    def reject(self, message: Message | str) -> None:
        """Dead-letters a received message. :class:`~devicebound.NotSupportedError` over MQTT in IoT Hub mode."""
        self._native.settle(_token(message), _REJECT)

    def abandon(self, message: Message | str) -> None:
        """Puts a received message back: delivered again, delivery count + 1."""
        self._native.settle(_token(message), _ABANDON)

    def settle(self, message: Message | str, disposition: Disposition) -> None:
        """Completes, rejects or abandons, chosen at run time."""
        self._native.settle(_token(message), int(Disposition(disposition)))

    # --- handler -------------------------------------------------------------------------
    @property
    def on_message_received(self) -> MessageHandler | None:
        """A function (or coroutine function) called with each message on the client's own
        thread; it returns a :class:`~devicebound.Disposition` (None: complete). Setting it
        starts that thread; None stops it. Exclusive with :meth:`receive`."""
        return self._handler

    @on_message_received.setter
    def on_message_received(self, handler: MessageHandler | None) -> None:
        self.set_message_handler(handler)

    def set_message_handler(self, handler: MessageHandler | None) -> None:
        """Same as setting :attr:`on_message_received`."""
        if handler is None:
            self._handler_generation += 1
            self._native.set_message_handler(None)
        else:
            self._native.set_message_handler(self._dispatcher(handler, Message._from_native, _disposition))
        self._handler = handler


class ServiceClient(_Client):
    """The back end's C2D client: send to a device, purge its queue, read its depth,
    and receive delivery feedback.

    ``transport`` is a :class:`~devicebound.Hub` (in process) or an :class:`~devicebound.Mqtt`.
    With ``assign_message_id=True`` every message sent without a message id gets a UUID
    (as the Python SDK does), so its feedback can be matched.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        retry: RetrySpec = None,
        assign_message_id: bool = False,
        feedback_receive_timeout: Duration = 60,
        random_seed: int | None = None,
    ) -> None:
        self.transport: Hub | Mqtt | AmqpOptions = transport
        """Where the hub is: the Hub, the Mqtt, or the AmqpOptions of from_connection_string."""
        policy = _retry_to_native(retry)
        timeout_ms = _ms(feedback_receive_timeout, "feedback_receive_timeout")
        if isinstance(transport, Hub):
            self._native = _native.InprocService(transport._native, policy, assign_message_id, random_seed, timeout_ms)
        elif isinstance(transport, Mqtt):
            _require_mqtt()
            self._native = _native.MqttService(transport._to_native(), policy, assign_message_id, random_seed,
                                               timeout_ms)
        else:
            raise TypeError(f"transport must be a Hub or an Mqtt, not {type(transport).__name__}")
        super().__init__()

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
    ) -> ServiceClient:
        """A service client over AMQP from an IoT Hub service connection string,
        ``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...``.

        It reaches ``devicebound-hub``'s AMQP door or an IoT hub (TLS to port 5671, or
        ``host:port`` in ``HostName``); ``ca_file`` is a PEM file of CA certificates to
        trust (default: the system's). IoT Hub has no AMQP surface for :meth:`purge` and
        :meth:`queue_depth`: they raise :class:`~devicebound.NotSupportedError` here.
        Errors: :class:`~devicebound.ArgumentInvalidError` for a malformed string.
        """
        _require_amqp()
        self = cls.__new__(cls)
        self.transport = options if options is not None else AmqpOptions()
        self._native = _native.AmqpService(
            _amqp_options(ca_file, options),
            connection_string,
            _retry_to_native(retry),
            assign_message_id,
            random_seed,
            _ms(feedback_receive_timeout, "feedback_receive_timeout"),
        )
        _Client.__init__(self)
        return self

    def __repr__(self) -> str:
        return f"<ServiceClient{' closed' if self._closed else ''}>"

    # --- connection ----------------------------------------------------------------------
    def open(self) -> None:
        """Connects under the retry policy (operations also connect on demand)."""
        self._native.open()

    def close(self) -> None:
        """Stops the feedback thread and disconnects for good."""
        self._close()

    def __enter__(self) -> ServiceClient:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sending -------------------------------------------------------------------------
    def send(
        self,
        device_id: str,
        message: Message | Body,
        properties: dict[str, str] | None = None,
        *,
        ack: Ack | None = None,
        **system_properties: Any,
    ) -> SendReceipt:
        """Sends a message to ``device_id``.

        ``message`` is a :class:`~devicebound.Message`, or a body (bytes or str) that
        ``properties`` and the keyword arguments (``message_id``, ``correlation_id``,
        ``expiry_time_utc``, ``content_type``, ...) complete. ``ack`` asks for delivery
        feedback (it overrides the message's own ``ack``).

        Errors: :class:`~devicebound.DeviceNotFoundError`, :class:`~devicebound.QueueFullError`,
        :class:`~devicebound.MessageTooLargeError`, :class:`~devicebound.ArgumentInvalidError`;
        :class:`~devicebound.ThrottledError` and connection errors once the retry policy gives up.

        >>> hub = Hub(); _ = hub.add_device("d1")
        >>> with ServiceClient(hub) as service:
        ...     service.send("d1", b"on", {"room": "kitchen"}, message_id="m1", ack=Ack.FULL).sequence_number
        1
        """
        if type(message) is Message:
            if properties is not None or system_properties:
                raise TypeError("properties and system properties go in the Message when sending a Message")
            m = message
        else:
            m = Message(message, properties, **system_properties)  # type: ignore[arg-type]
        expiry = m._expiry
        creation = m._creation
        seq, expiry_ms = self._native.send(
            device_id,
            m.body,
            m.properties or None,
            m.message_id,
            m.correlation_id,
            m.user_id,
            m.to,
            None if expiry is None else _to_ms(expiry),
            m.ack if ack is None else ack,
            m.content_type,
            m.content_encoding,
            None if creation is None else _to_ms(creation),
        )
        return SendReceipt(seq, expiry_ms)

    def purge(self, device_id: str) -> int:
        """Removes every pending message of a device; returns how many.
        :class:`~devicebound.NotSupportedError` over AMQP (IoT Hub: HTTPS only)."""
        return self._native.purge(device_id)

    def queue_depth(self, device_id: str) -> int:
        """Messages pending for a device: Enqueued plus Invisible.
        :class:`~devicebound.NotSupportedError` over AMQP (IoT Hub: HTTPS only)."""
        return self._native.queue_depth(device_id)

    # --- feedback ------------------------------------------------------------------------
    def receive_feedback(self, timeout: Duration | None = None) -> FeedbackBatch | None:
        """The next feedback batch, locked, waiting up to ``timeout`` seconds (None: until
        one comes); None if none came. Settle it with :meth:`complete_feedback`."""
        native = self._native
        if timeout == 0 or threading.current_thread() is not threading.main_thread():
            t = native.receive_feedback(_timeout_ms(timeout))
        else:
            t = native.receive_feedback(0)
            if t is None:
                t = self._wait_off_main(native.receive_feedback, _timeout_ms(timeout), orphan=self._orphaned)
        return None if t is None else FeedbackBatch._from_native(t)

    def _orphaned(self, t: tuple | None) -> None:
        if t is None or self._closed:
            return
        try:
            self._native.settle_feedback(t[3], False)
        except DeviceboundError:
            pass

    def feedback(self, idle_timeout: Duration | None = None) -> Iterator[FeedbackBatch]:
        """Yields feedback batches as they come, until the client closes (or ``idle_timeout``
        seconds pass without one). Settle each one."""
        while not self._closed:
            try:
                b = self.receive_feedback(idle_timeout)
            except DeviceboundError:
                if self._closed or self._closing:
                    return  # closed while waiting
                raise
            if b is None:
                if idle_timeout is not None:
                    return
                continue
            yield b

    def complete_feedback(self, batch: FeedbackBatch | str) -> None:
        """Completes a feedback batch (or its lock token): it leaves the feedback queue."""
        self._native.settle_feedback(batch.lock_token if isinstance(batch, FeedbackBatch) else batch, True)

    def abandon_feedback(self, batch: FeedbackBatch | str) -> None:
        """Abandons a feedback batch: it is delivered again."""
        self._native.settle_feedback(batch.lock_token if isinstance(batch, FeedbackBatch) else batch, False)

    @property
    def on_feedback_received(self) -> FeedbackHandler | None:
        """A function (or coroutine function) called with each feedback batch on the client's
        own thread; returns COMPLETE (None, True) or ABANDON (False). Exclusive with
        :meth:`receive_feedback`."""
        return self._handler

    @on_feedback_received.setter
    def on_feedback_received(self, handler: FeedbackHandler | None) -> None:
        self.set_feedback_handler(handler)

    def set_feedback_handler(self, handler: FeedbackHandler | None) -> None:
        if handler is None:
            self._handler_generation += 1
            self._native.set_feedback_handler(None)
        else:
            self._native.set_feedback_handler(
                self._dispatcher(handler, FeedbackBatch._from_native, _feedback_disposition))
        self._handler = handler
