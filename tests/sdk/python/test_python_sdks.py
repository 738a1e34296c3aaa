"""The official Python service SDK, azure-iot-hub 2.7.0 (AMQP through uamqp
1.6.11), unchanged: IoTHubRegistryManager.from_connection_string(cs)
.send_c2d_message(device_id, data, properties) to devicebound-hub's AMQP front
door on 5671; the message is received by the official Python device SDK
(azure-iot-device 2.14.0) over MQTT/TLS on 8883 through mosquitto + the
devicebound plugin. Runs in a private network namespace (conftest.py).
"""

from __future__ import annotations

import datetime
import queue

import pytest

from conftest import WAIT, call_with_timeout, new_key

# The device SDK pins TLS 1.2 with a constructor Python 3.10+ deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")

SEND_TIMEOUT = 60.0  # s: uamqp's own CBS timeout is shorter; this only stops a hang


def registry(cs: str):
    from azure.iot.hub import IoTHubRegistryManager
    return IoTHubRegistryManager.from_connection_string(cs)


def iso_ms(ms: int) -> str:
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@pytest.fixture
def device(stack):
    """A stock Python device (MQTT, TLS, 8883) for py-dev-1, its received messages in a queue."""
    from azure.iot.device import IoTHubDeviceClient

    received: "queue.Queue" = queue.Queue()
    client = IoTHubDeviceClient.create_from_connection_string(
        stack.device_mqtt_cs("py-dev-1"), server_verification_cert=stack.certs.ca.read_text())
    call_with_timeout(client.connect, WAIT, "device connect")
    client.on_message_received = received.put  # subscribes
    yield received
    call_with_timeout(client.shutdown, WAIT, "device shutdown")


def test_send_c2d_message_reaches_a_stock_python_device(stack, device):
    rm = registry(stack.service_cs("service"))
    try:
        expiry_ms = (int(datetime.datetime.now(datetime.timezone.utc).timestamp()) + 3600) * 1000 + 321
        call_with_timeout(lambda: rm.send_c2d_message("py-dev-1", "hello from python", {
            "messageId": "py-msg-1",
            "correlationId": "py-corr-1",
            "contentType": "application/json",
            "contentEncoding": "utf-8",
            "expiryTimeUtc": expiry_ms,
            "iothub-ack": "full",
            "color": "blue",
            "empty": "",
        }), SEND_TIMEOUT, "send_c2d_message")
        # A second one with the SDK's own defaults (message id = a uuid4 string).
        call_with_timeout(lambda: rm.send_c2d_message("py-dev-1", b"\x00\xffbytes"), SEND_TIMEOUT,
                          "send_c2d_message (bytes, no properties)")
    finally:
        rm.amqp_svc_client.disconnect_sync()

    got = device.get(timeout=WAIT)
    assert got.data == b"hello from python"
    assert got.message_id == "py-msg-1"
    assert got.correlation_id == "py-corr-1"
    assert got.content_type == "application/json"
    assert got.content_encoding == "utf-8"
    assert got.expiry_time_utc == iso_ms(expiry_ms)
    assert got.ack == "full"
    assert got.custom_properties == {"color": "blue", "empty": ""}

    second = device.get(timeout=WAIT)
    assert second.data == b"\x00\xffbytes"
    assert len(second.message_id) == 36, second.message_id  # str(uuid4())
    assert second.custom_properties == {}
    assert device.empty()


def test_send_c2d_message_to_an_unknown_device_fails(stack):
    rm = registry(stack.service_cs("service"))
    try:
        with pytest.raises(Exception, match="C2D message send failure"):
            call_with_timeout(lambda: rm.send_c2d_message("no-such-device", "x"), SEND_TIMEOUT,
                              "send_c2d_message to an unknown device")
    finally:
        rm.amqp_svc_client.disconnect_sync()


def test_send_c2d_message_with_a_wrong_key_fails(stack):
    from azure.iot.hub import IoTHubRegistryManager  # noqa: F401 - import errors surface here

    with pytest.raises(Exception) as info:
        # The AMQP client authenticates when it is made (JWTTokenAuth.update_token) and sends
        # the CBS put-token on the first send.
        def attempt():
            rm = registry(stack.service_cs("service", new_key()))
            try:
                rm.send_c2d_message("py-dev-2", "x")
            finally:
                rm.amqp_svc_client.disconnect_sync()
        call_with_timeout(attempt, SEND_TIMEOUT, "send_c2d_message with a wrong key")
    assert not isinstance(info.value, TimeoutError) or "no answer within" not in str(info.value), \
        f"the SDK hung instead of failing: {info.value}"
    print(f"wrong key -> {type(info.value).__module__}.{type(info.value).__name__}: {info.value}")
