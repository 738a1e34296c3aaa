"""The official Python service SDK, azure-iot-hub 2.7.0, unchanged, against
devicebound-hub's HTTPS front door and identity registry (issue 12 "Tests";
SPEC 11, 12): the back end of the C2D how-to, end to end --

  IoTHubRegistryManager.create_device_with_sas / get_device / get_devices /
  delete_device over HTTPS (443), send_c2d_message over AMQP (5671, uamqp), a
  stock Python device (azure-iot-device 2.14.0, MQTT/TLS 8883 through
  mosquitto + the plugin, which reads the hub's registry) using the keys the
  registry made, and IoTHubHttpRuntimeManager.receive_feedback_notification /
  complete_feedback_notification / abandon_feedback_notification over HTTPS;
  and purge (the generated protocol client's
  purge_cloud_to_device_message_queue: the SDK has no convenience method).

The convenience receive_feedback_notification() discards the response (SPEC
11.4: it returns None), so the lock token a complete or abandon needs is read
with the same operation of the SDK's generated client and raw=True: the
`ETag` header (quoted, as for device messages, SPEC 11.2.3 -- unconfirmed for
feedback) and the JSON array of records in the body.

Runs in a private network namespace (conftest.py, `https_stack`).
"""

from __future__ import annotations

import base64
import json
import queue
import time

import pytest

from conftest import WAIT, call_with_timeout, helpers, new_key

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")

SEND_TIMEOUT = 60.0  # s: only stops a hang


def registry(cs: str):
    from azure.iot.hub import IoTHubRegistryManager
    return IoTHubRegistryManager.from_connection_string(cs)


def runtime(cs: str):
    from azure.iot.hub import IoTHubHttpRuntimeManager
    return IoTHubHttpRuntimeManager.from_connection_string(cs)


def http_status(error) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def expect_http_error(fn, status: int, what: str):
    from msrest.exceptions import HttpOperationError
    with pytest.raises(HttpOperationError) as info:
        call_with_timeout(fn, WAIT, what)
    got = http_status(info.value)
    body = getattr(getattr(info.value, "response", None), "text", "")
    assert got == status, f"{what}: HTTP {got}, expected {status}: {body}"
    return info.value


def assert_key(key, what: str):
    assert isinstance(key, str) and key, f"{what}: {key!r}"
    n = len(base64.b64decode(key, validate=True))
    assert 16 <= n <= 64, f"{what} decodes to {n} bytes"


def assert_device(d, device_id: str):
    """The device JSON of SPEC 12.4 as the SDK's Device model holds it."""
    assert d.device_id == device_id
    assert d.generation_id, vars(d)
    assert d.etag, vars(d)
    assert d.status in ("enabled", "disabled"), vars(d)
    assert d.connection_state in ("Connected", "Disconnected"), vars(d)
    assert isinstance(d.cloud_to_device_message_count, int), vars(d)
    assert d.authentication.type == "sas", vars(d.authentication)
    assert_key(d.authentication.symmetric_key.primary_key, "primary key")
    assert_key(d.authentication.symmetric_key.secondary_key, "secondary key")


class Feedback:
    """Feedback over HTTPS with the SDK's IoTHubHttpRuntimeManager (lock tokens
    from the generated client's raw response)."""

    def __init__(self, cs: str):
        self.rt = runtime(cs)

    def receive_raw(self):
        """(status, records, lock token) of one GET /messages/serviceBound/feedback."""
        raw = call_with_timeout(
            lambda: self.rt.protocol.cloud_to_device_messages.receive_feedback_notification(raw=True),
            WAIT, "receive_feedback_notification(raw=True)")
        response = raw.response
        if response.status_code == 204:
            return 204, [], None
        etag = response.headers.get("ETag", "")
        assert len(etag) >= 2 and etag[0] == etag[-1] == '"', f"feedback ETag {etag!r} is not quoted"
        records = json.loads(response.content.decode("utf-8"))
        assert isinstance(records, list), records
        return response.status_code, records, etag[1:-1]

    def next_batch(self, timeout: float = WAIT):
        """Polls (bounded) until a batch is there: (records, lock token)."""
        box = {}

        def got_one():
            status, records, lock = self.receive_raw()
            if status == 200:
                box["batch"] = (records, lock)
                return True
            return False

        helpers.wait_until(got_one, timeout, "a feedback batch over HTTPS", interval=0.05)
        return box["batch"]

    def complete(self, lock: str):
        return call_with_timeout(lambda: self.rt.complete_feedback_notification(lock), WAIT,
                                 "complete_feedback_notification")

    def abandon(self, lock: str):
        return call_with_timeout(lambda: self.rt.abandon_feedback_notification(lock), WAIT,
                                 "abandon_feedback_notification")

    def collect(self, message_ids, timeout: float = WAIT) -> dict:
        """Receives and completes batches until every id has a record: {id: record}."""
        want = set(message_ids)
        found = {}
        deadline = time.monotonic() + timeout
        while not want <= found.keys():
            records, lock = self.next_batch(max(0.1, deadline - time.monotonic()))
            for r in records:
                found[r.get("originalMessageId")] = r
            assert self.complete(lock) is None
        return found


def send(rm, device_id: str, data, props: dict):
    call_with_timeout(lambda: rm.send_c2d_message(device_id, data, props), SEND_TIMEOUT, "send_c2d_message")


def test_registry_manager_create_get_list_delete(https_stack):
    from azure.iot.hub.protocol.models import Device

    rm = registry(https_stack.service_cs("iothubowner"))
    try:
        made = call_with_timeout(lambda: rm.create_device_with_sas("py-reg-gen", None, None, "enabled"), WAIT,
                                 "create_device_with_sas (keys generated)")
        assert isinstance(made, Device)
        assert_device(made, "py-reg-gen")
        assert made.status == "enabled"
        assert made.connection_state == "Disconnected"
        assert made.cloud_to_device_message_count == 0
        assert made.capabilities.iot_edge is False

        pk, sk = new_key(), new_key()
        given = call_with_timeout(lambda: rm.create_device_with_sas("py-reg-keys", pk, sk, "disabled"), WAIT,
                                  "create_device_with_sas (keys given, disabled)")
        assert_device(given, "py-reg-keys")
        assert (given.authentication.symmetric_key.primary_key, given.authentication.symmetric_key.secondary_key) == (pk, sk)
        assert given.status == "disabled"

        # Created again without If-Match: 409 DeviceAlreadyExists (step-9 decision), nothing changes.
        expect_http_error(lambda: rm.create_device_with_sas("py-reg-keys", new_key(), new_key(), "enabled"), 409,
                          "create_device_with_sas of an existing device")

        got = call_with_timeout(lambda: rm.get_device("py-reg-keys"), WAIT, "get_device")
        assert_device(got, "py-reg-keys")
        assert (got.etag, got.generation_id, got.status) == (given.etag, given.generation_id, "disabled")
        assert got.authentication.symmetric_key.primary_key == pk

        everything = call_with_timeout(lambda: rm.get_devices(), WAIT, "get_devices()")
        ids = {d.device_id for d in everything}
        assert {"py-reg-gen", "py-reg-keys", "py-seeded"} <= ids, ids
        for d in everything:
            assert_device(d, d.device_id)
        one = call_with_timeout(lambda: rm.get_devices(1), WAIT, "get_devices(1)")
        assert len(one) == 1, [d.device_id for d in one]

        expect_http_error(lambda: rm.get_device("py-reg-none"), 404, "get_device of an unknown device")

        # A stale etag: 412, and the device stays; its etag: deleted (204: the SDK returns None).
        expect_http_error(lambda: rm.delete_device("py-reg-keys", etag=given.etag + "0"), 412,
                          "delete_device with a stale etag")
        call_with_timeout(lambda: rm.get_device("py-reg-keys"), WAIT, "get_device after the refused delete")
        assert call_with_timeout(lambda: rm.delete_device("py-reg-keys", etag=given.etag), WAIT,
                                 "delete_device(etag)") is None
        assert call_with_timeout(lambda: rm.delete_device("py-reg-gen"), WAIT, "delete_device") is None
        expect_http_error(lambda: rm.get_device("py-reg-gen"), 404, "get_device after delete_device")
        expect_http_error(lambda: rm.delete_device("py-reg-gen"), 404, "delete_device of a deleted device")
        ids = {d.device_id for d in call_with_timeout(lambda: rm.get_devices(), WAIT, "get_devices() after delete")}
        assert not ids & {"py-reg-gen", "py-reg-keys"}, ids
    finally:
        rm.amqp_svc_client.disconnect_sync()


def test_registry_rights(https_stack):
    """registryRead may read, not write; service (ServiceConnect) may do neither; a wrong key nothing (401)."""
    reader = registry(https_stack.service_cs("registryRead"))
    assert call_with_timeout(lambda: reader.get_device("py-seeded"), WAIT, "get_device under registryRead").device_id \
        == "py-seeded"
    expect_http_error(lambda: reader.create_device_with_sas("py-reg-denied", None, None, "enabled"), 401,
                      "create_device_with_sas under registryRead")
    expect_http_error(lambda: registry(https_stack.service_cs("service")).get_devices(), 401,
                      "get_devices under service")
    expect_http_error(lambda: registry(https_stack.service_cs("iothubowner", new_key())).get_devices(), 401,
                      "get_devices with a wrong key")
    expect_http_error(lambda: runtime(https_stack.service_cs("registryReadWrite")).receive_feedback_notification(),
                      401, "receive_feedback_notification under registryReadWrite")
    expect_http_error(lambda: reader.get_device("py-reg-denied"), 404, "the refused create made a device")


def mqtt_device(stack, device_id: str, key: str, what: str):
    """A stock Python device (MQTT, TLS, 8883), connected: (client, queue of received messages)."""
    from azure.iot.device import IoTHubDeviceClient

    received: "queue.Queue" = queue.Queue()
    client = IoTHubDeviceClient.create_from_connection_string(
        stack.device_mqtt_cs(device_id, key), server_verification_cert=stack.certs.ca.read_text(),
        connection_retry=False)
    try:
        call_with_timeout(client.connect, WAIT, f"device connect ({what})")
    except Exception as e:  # noqa: BLE001 - reported with what is known
        hint = "" if stack.plugin_reads_registry else \
            " (the plugin has no plugin_opt_registry_db: MQTT knows only the auth file)"
        pytest.fail(f"{what}: could not connect over MQTT{hint}: {type(e).__name__}: {e}")
    client.on_message_received = received.put
    return client, received


def test_feedback_over_https_receive_abandon_complete(https_stack):
    """IoTHubHttpRuntimeManager on a device seeded from --auth-file: Success feedback of a message
    sent over AMQP and received over MQTT; its batch abandoned comes back, completed is gone."""
    rm = registry(https_stack.service_cs("service"))
    client, received = mqtt_device(https_stack, "py-seeded", None, "the seeded device")
    try:
        feedback = Feedback(https_stack.service_cs("service"))
        # Nothing yet: the convenience call returns None on 204 (and on 200, which it discards).
        assert call_with_timeout(feedback.rt.receive_feedback_notification, WAIT,
                                 "receive_feedback_notification") is None
        assert feedback.receive_raw()[0] == 204

        send(rm, "py-seeded", "fb", {"messageId": "py-fb-1", "iothub-ack": "full", "color": "red"})
        got = received.get(timeout=WAIT)
        assert (got.data, got.message_id, got.custom_properties) == (b"fb", "py-fb-1", {"color": "red"})

        records, lock = feedback.next_batch()
        mine = [r for r in records if r.get("originalMessageId") == "py-fb-1"]
        assert len(mine) == 1, records
        assert mine[0]["statusCode"] == "Success"
        assert mine[0]["deviceId"] == "py-seeded"
        assert mine[0]["deviceGenerationId"], mine[0]
        assert mine[0]["enqueuedTimeUtc"], mine[0]
        assert feedback.abandon(lock) is None  # 204

        again, lock2 = feedback.next_batch()
        assert [r["originalMessageId"] for r in again] == [r["originalMessageId"] for r in records]
        assert feedback.complete(lock2) is None  # 204
        assert feedback.receive_raw()[0] == 204
        assert call_with_timeout(feedback.rt.receive_feedback_notification, WAIT,
                                 "receive_feedback_notification") is None
        # The lock of a completed batch is gone: the SDK raises (it accepts only 204).
        e = expect_http_error(lambda: feedback.rt.complete_feedback_notification(lock2), 412,
                              "complete_feedback_notification with a used lock token")
        assert e is not None
    finally:
        call_with_timeout(client.shutdown, WAIT, "device shutdown")
        rm.amqp_svc_client.disconnect_sync()


def test_how_to_back_end_end_to_end(https_stack):
    """The how-to: create_device_with_sas, the device connects with the keys the registry made
    and receives what send_c2d_message sent, feedback over HTTPS, delete_device."""
    rm = registry(https_stack.service_cs("iothubowner"))
    client = None
    try:
        made = call_with_timeout(lambda: rm.create_device_with_sas("py-howto", None, None, "enabled"), WAIT,
                                 "create_device_with_sas")
        client, received = mqtt_device(https_stack, "py-howto", made.authentication.symmetric_key.primary_key,
                                       "a device made with create_device_with_sas")
        send(rm, "py-howto", "hello from the how-to", {"messageId": "py-howto-1", "iothub-ack": "full"})
        got = received.get(timeout=WAIT)
        assert (got.data, got.message_id) == (b"hello from the how-to", "py-howto-1")

        record = Feedback(https_stack.service_cs("service")).collect(["py-howto-1"])["py-howto-1"]
        assert record["statusCode"] == "Success"
        assert record["deviceId"] == "py-howto"
        assert record["deviceGenerationId"] == made.generation_id

        now = call_with_timeout(lambda: rm.get_device("py-howto"), WAIT, "get_device")
        assert now.connection_state == "Connected", vars(now)
        assert now.cloud_to_device_message_count == 0
        assert call_with_timeout(lambda: rm.delete_device("py-howto"), WAIT, "delete_device") is None
        expect_http_error(lambda: rm.get_device("py-howto"), 404, "get_device after delete_device")
        # A deleted device's connection is closed and it is refused (the plugin reads the registry).
        helpers.wait_until(lambda: not client.connected, WAIT, "the deleted device's MQTT connection to close")
    finally:
        if client is not None:
            call_with_timeout(client.shutdown, WAIT, "device shutdown")
        rm.amqp_svc_client.disconnect_sync()


def test_purge_counts_and_gives_purged_feedback(https_stack):
    rm = registry(https_stack.service_cs("iothubowner"))
    try:
        ids = [f"py-purge-{i}" for i in range(3)]
        for i in ids:
            send(rm, "py-purge", i, {"messageId": i, "iothub-ack": "full"})
        send(rm, "py-purge", "no ack", {"messageId": "py-purge-none"})

        result = call_with_timeout(
            lambda: rm.protocol.cloud_to_device_messages.purge_cloud_to_device_message_queue("py-purge"), WAIT,
            "purge_cloud_to_device_message_queue")
        assert (result.device_id, result.total_messages_purged) == ("py-purge", 4)
        again = call_with_timeout(
            lambda: rm.protocol.cloud_to_device_messages.purge_cloud_to_device_message_queue("py-purge"), WAIT,
            "purge of an empty queue")
        assert again.total_messages_purged == 0

        records = Feedback(https_stack.service_cs("service")).collect(ids)
        assert {i: records[i]["statusCode"] for i in ids} == {i: "Purged" for i in ids}
        assert "py-purge-none" not in records

        expect_http_error(
            lambda: rm.protocol.cloud_to_device_messages.purge_cloud_to_device_message_queue("py-purge-none"), 404,
            "purge of an unknown device")
    finally:
        rm.amqp_svc_client.disconnect_sync()


def test_registry_counts_queued_messages(https_stack):
    """get_device's cloudToDeviceMessageCount (SPEC 12.4) follows the queue."""
    rm = registry(https_stack.service_cs("iothubowner"))
    try:
        for i in range(2):
            send(rm, "py-count", f"c{i}", {"messageId": f"py-count-{i}"})
        assert call_with_timeout(lambda: rm.get_device("py-count"), WAIT, "get_device") \
            .cloud_to_device_message_count == 2
        call_with_timeout(
            lambda: rm.protocol.cloud_to_device_messages.purge_cloud_to_device_message_queue("py-count"), WAIT,
            "purge_cloud_to_device_message_queue")
        assert call_with_timeout(lambda: rm.get_device("py-count"), WAIT, "get_device") \
            .cloud_to_device_message_count == 0
    finally:
        rm.amqp_svc_client.disconnect_sync()
