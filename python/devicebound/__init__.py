"""devicebound: Azure IoT Hub's cloud-to-device messaging, without a cloud account.

A back end sends a message to one device; the hub keeps it in that device's queue
until the device completes, rejects or abandons it, or it expires; the back end
learns the outcome through delivery feedback. The hub runs in this process
(:class:`Hub`) or as ``devicebound-hub`` next to an MQTT broker (:class:`Mqtt`);
the clients are the same either way.

>>> import devicebound as db
>>> hub = db.Hub()
>>> _ = hub.add_device("thermostat-1")
>>> with db.ServiceClient(hub) as service, db.DeviceClient(hub, "thermostat-1") as device:
...     _ = service.send("thermostat-1", b'{"target": 21}', message_id="set-21", ack=db.Ack.FULL)
...     m = device.receive(timeout=5)
...     device.complete(m)
...     batch = service.receive_feedback(timeout=20)
...     service.complete_feedback(batch)
>>> [(r.original_message_id, str(r.status)) for r in batch]
[('set-21', 'Success')]

The asyncio API is :mod:`devicebound.aio`; errors are :class:`DeviceboundError` and its
subclasses (:class:`QueueFullError` is 403004, ...); retry policies are in
:mod:`devicebound.retry`.
"""

from __future__ import annotations

from . import _native
from . import errors as _errors

_native._set_error_factory(_errors._from_native)

from . import _lifecycle  # noqa: E402,F401  (closes what is open at exit)
from .client import (  # noqa: E402
    ConnectionStatus,
    ConnectionStatusReason,
    DeviceClient,
    SendReceipt,
    ServiceClient,
)
from .config import (  # noqa: E402
    DeliveryCountRule,
    ExpiryCapPolicy,
    HubConfig,
    HubStats,
    PurgeFeedback,
)
from .errors import (  # noqa: E402
    ArgumentInvalidError,
    DeviceAlreadyExistsError,
    DeviceboundError,
    DeviceNotFoundError,
    InvalidOperationError,
    LockLostError,
    MalformedError,
    MessageTooLargeError,
    NotConnectedError,
    NotSupportedError,
    OperationTimeoutError,
    PreconditionFailedError,
    QueueFullError,
    QuotaExceededError,
    ServerBusyError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    error_for_code,
)
from .hub import Hub, ManualClock  # noqa: E402
from .message import (  # noqa: E402
    Ack,
    Disposition,
    FeedbackBatch,
    FeedbackDisposition,
    FeedbackRecord,
    FeedbackStatus,
    Message,
)
from .amqp import HAS_AMQP, AmqpOptions  # noqa: E402
from .mqtt import HAS_MQTT, DeviceMode, Mqtt, MqttTls  # noqa: E402
from .retry import PROFILES, Backoff, ErrorClass, ErrorTable, Jitter, RetryPolicy, classify  # noqa: E402

__version__: str = _native.version

__all__ = [
    "__version__",
    # hub
    "Hub",
    "HubConfig",
    "HubStats",
    "ManualClock",
    "ExpiryCapPolicy",
    "DeliveryCountRule",
    "PurgeFeedback",
    # clients
    "DeviceClient",
    "ServiceClient",
    "SendReceipt",
    "ConnectionStatus",
    "ConnectionStatusReason",
    "Mqtt",
    "MqttTls",
    "DeviceMode",
    "HAS_MQTT",
    "AmqpOptions",
    "HAS_AMQP",
    # messages
    "Message",
    "Ack",
    "Disposition",
    "FeedbackDisposition",
    "FeedbackStatus",
    "FeedbackRecord",
    "FeedbackBatch",
    # retry
    "RetryPolicy",
    "Backoff",
    "Jitter",
    "ErrorClass",
    "ErrorTable",
    "PROFILES",
    "classify",
    # errors
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
