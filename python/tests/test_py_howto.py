"""The C2D how-to through Python, in process and over MQTT (devicebound-hub + mosquitto):
a back end sends with properties and an ack mode, the device receives and completes,
rejects or abandons, and the back end gets delivery feedback."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

import devicebound as db
from helpers import WAIT, Where, mqtt_hub, transport  # noqa: F401 - fixtures


def feedback_records(service: db.ServiceClient, n: int) -> list[db.FeedbackRecord]:
    """Receives and completes batches until ``n`` records came (bounded by WAIT per batch)."""
    records: list[db.FeedbackRecord] = []
    while len(records) < n:
        batch = service.receive_feedback(timeout=WAIT)
        assert batch is not None, f"got {len(records)} of {n} feedback records"
        assert batch.user_id
        records.extend(batch.records)
        service.complete_feedback(batch)
    return records


def test_send_receive_complete_with_properties_and_feedback(transport: Where):
    device_id = transport.new_device()
    created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    expiry = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=30)
    with db.ServiceClient(transport.transport) as service, db.DeviceClient(transport.transport, device_id) as device:
        sent = db.Message(
            '{"target": 21}',
            {"unit": "C", "room": "kitchen"},
            message_id="set-21",
            correlation_id="corr-1",
            user_id="backend",
            content_type="application/json",
            content_encoding="utf-8",
            expiry_time_utc=expiry,
            creation_time_utc=created,
            ack=db.Ack.FULL,
        )
        receipt = service.send(device_id, sent)
        assert receipt.sequence_number >= 1
        assert receipt.expiry_time_utc == expiry
        if transport.in_process:
            assert service.queue_depth(device_id) == 1

        m = device.receive(timeout=WAIT)
        assert m is not None
        assert m.body == b'{"target": 21}' and m.text == '{"target": 21}'
        assert m.properties == {"unit": "C", "room": "kitchen"}
        assert (m.message_id, m.correlation_id, m.user_id) == ("set-21", "corr-1", "backend")
        assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
        assert m.expiry_time_utc == expiry
        assert m.ack is db.Ack.FULL
        assert m.to == f"/devices/{device_id}/messages/devicebound"
        assert m.delivery_count == 0
        assert m.lock_token and len(m.lock_token) == 36
        if transport.in_process:
            assert m.sequence_number == receipt.sequence_number
            assert m.creation_time_utc == created
            assert m.enqueued_time_utc is not None
        device.complete(m)

        [record] = feedback_records(service, 1)
        assert record.original_message_id == "set-21"
        assert record.status is db.FeedbackStatus.SUCCESS and str(record.status) == "Success"
        assert record.description == "Success"
        assert record.device_id == device_id
        assert record.device_generation_id
        assert service.queue_depth(device_id) == 0


def test_reject_abandon_and_their_feedback(transport: Where):
    device_id = transport.new_device()
    with db.ServiceClient(transport.transport) as service, db.DeviceClient(transport.transport, device_id) as device:
        service.send(device_id, b"reject me", message_id="r", ack=db.Ack.NEGATIVE)
        service.send(device_id, b"abandon me", message_id="a", ack=db.Ack.FULL)

        m = device.receive(timeout=WAIT)
        assert m.message_id == "r"
        device.reject(m)

        m = device.receive(timeout=WAIT)
        assert (m.message_id, m.delivery_count) == ("a", 0)
        device.abandon(m)
        again = device.receive(timeout=WAIT)
        assert (again.message_id, again.delivery_count) == ("a", 1)
        assert again.lock_token != m.lock_token
        with pytest.raises(db.LockLostError) as stale:
            device.complete(m)  # the first lock is gone
        assert stale.value.code == 412002
        device.complete(again)

        records = feedback_records(service, 2)
        assert sorted((r.original_message_id, str(r.status)) for r in records) == [("a", "Success"), ("r", "Rejected")]


def test_expired_message_gives_expired_feedback(transport: Where):
    device_id = transport.new_device()
    with db.ServiceClient(transport.transport) as service:
        past = datetime.now(timezone.utc) - timedelta(seconds=1)
        service.send(device_id, b"too late", message_id="late", ack=db.Ack.NEGATIVE, expiry_time_utc=past)
        [record] = feedback_records(service, 1)
        assert (record.original_message_id, record.status) == ("late", db.FeedbackStatus.EXPIRED)
        assert service.queue_depth(device_id) == 0


def test_lock_expiry_redelivers(transport: Where):
    device_id = transport.new_device()
    with db.ServiceClient(transport.transport) as service, db.DeviceClient(transport.transport, device_id) as device:
        service.send(device_id, b"x", message_id="once")
        first = device.receive(timeout=WAIT)
        # lock_duration is 3 s on both test hubs: without settling, it comes back
        second = device.receive(timeout=WAIT)
        assert second is not None and second.message_id == "once"
        assert second.lock_token != first.lock_token
        with pytest.raises(db.LockLostError):
            device.complete(first)
        device.complete(second)


def test_handlers_settle_and_collect_feedback(transport: Where):
    device_id = transport.new_device()
    with db.ServiceClient(transport.transport) as service, db.DeviceClient(transport.transport, device_id) as device:
        seen: list[str] = []
        records: list[db.FeedbackRecord] = []
        got_all = threading.Event()

        def on_message(m: db.Message) -> db.Disposition:
            seen.append(m.message_id)
            return db.Disposition.REJECT if m.properties.get("bad") else db.Disposition.COMPLETE

        def on_feedback(batch: db.FeedbackBatch) -> None:
            records.extend(batch)
            if len(records) >= 4:
                got_all.set()

        device.on_message_received = on_message
        service.on_feedback_received = on_feedback
        for i in range(4):
            service.send(device_id, f"m{i}", {"bad": "1"} if i % 2 else {}, message_id=f"m{i}", ack=db.Ack.FULL)
        assert got_all.wait(WAIT), records
        assert seen == ["m0", "m1", "m2", "m3"]
        assert sorted((r.original_message_id, str(r.status)) for r in records) == [
            ("m0", "Success"), ("m1", "Rejected"), ("m2", "Success"), ("m3", "Rejected")]
        with pytest.raises(db.InvalidOperationError):
            device.receive(timeout=0)  # exclusive with the handler
        device.on_message_received = None
        assert device.receive(timeout=0) is None


def test_purge_and_queue_depth(transport: Where):
    device_id = transport.new_device()
    with db.ServiceClient(transport.transport) as service:
        for i in range(3):
            service.send(device_id, b"x", message_id=f"p{i}", ack=db.Ack.NEGATIVE)
        assert service.queue_depth(device_id) == 3
        assert service.purge(device_id) == 3
        assert service.queue_depth(device_id) == 0
        records = feedback_records(service, 3)
        assert {str(r.status) for r in records} == {"Purged"}


def test_iothub_mode_device_can_only_complete(mqtt_hub):
    """A device in IoT Hub mode (a stock SDK's topic) cannot reject or abandon. Its deliveries
    need the broker plugin (broker/): they are tested with the stock SDK in test_stock_sdk.py."""
    device_id = mqtt_hub.devices_left.pop(0)
    sdk_like = mqtt_hub.transport(device_mode=db.DeviceMode.IOTHUB)
    with db.DeviceClient(sdk_like, device_id) as device:
        assert not device.can_reject and not device.can_abandon
        token = "00000000-0000-4000-8000-000000000001"
        with pytest.raises(db.NotSupportedError) as e:
            device.reject(token)
        assert e.value.code == 405001
        with pytest.raises(db.NotSupportedError):
            device.abandon(token)
        assert device.receive(timeout=0) is None
