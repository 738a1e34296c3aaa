"""Every error path raises the DeviceboundError subclass of its code, carrying ``.code``,
and changes nothing."""

from __future__ import annotations

import pickle

import pytest

import devicebound as db


@pytest.fixture
def hub():
    with db.Hub(max_queue_depth=2, max_message_size=1024) as h:
        h.add_device("d1")
        yield h


@pytest.fixture
def service(hub):
    with db.ServiceClient(hub) as s:
        yield s


def test_error_classes_carry_their_codes():
    expected = {
        db.ArgumentInvalidError: 400004,
        db.MalformedError: 400005,
        db.UnauthorizedError: 401000,
        db.QuotaExceededError: 403002,
        db.QueueFullError: 403004,
        db.DeviceNotFoundError: 404001,
        db.NotSupportedError: 405001,
        db.OperationTimeoutError: 408001,
        db.DeviceAlreadyExistsError: 409001,
        db.InvalidOperationError: 409002,
        db.PreconditionFailedError: 412001,
        db.LockLostError: 412002,
        db.MessageTooLargeError: 413001,
        db.ThrottledError: 429001,
        db.ServerError: 500001,
        db.ServerBusyError: 503001,
        db.NotConnectedError: 503100,
    }
    for cls, code in expected.items():
        assert issubclass(cls, db.DeviceboundError)
        assert cls.code == code
        e = db.error_for_code(code, "why")
        assert type(e) is cls and e.code == code and e.message == "why"
        assert str(e) == f"{code} {cls.name}: why"
        assert db._native.error_name(code) == cls.name
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is cls and again.code == code and again.message == "why"
    unknown = db.error_for_code(123456, "odd")
    assert type(unknown) is db.DeviceboundError and unknown.code == 123456
    assert issubclass(db.ArgumentInvalidError, ValueError)
    assert issubclass(db.OperationTimeoutError, TimeoutError)
    assert issubclass(db.NotConnectedError, ConnectionError)


def test_queue_full_is_403004_and_changes_nothing(hub, service):
    service.send("d1", b"1")
    service.send("d1", b"2")
    with pytest.raises(db.QueueFullError) as e:
        service.send("d1", b"3")
    assert e.value.code == 403004 and e.value.name == "DeviceMaximumQueueDepthExceeded"
    assert "d1" in e.value.message
    assert service.queue_depth("d1") == 2
    assert hub.stats().accepted == 2


def test_unknown_device(service):
    with pytest.raises(db.DeviceNotFoundError) as e:
        service.send("nobody", b"x")
    assert e.value.code == 404001
    with pytest.raises(db.DeviceNotFoundError):
        service.queue_depth("nobody")
    with pytest.raises(db.DeviceNotFoundError):
        service.purge("nobody")


def test_message_too_large(service):
    with pytest.raises(db.MessageTooLargeError) as e:
        service.send("d1", b"x" * 2000)
    assert e.value.code == 413001
    # The body, plus the 32 bytes of the 'to' the hub sets (/devices/d1/messages/devicebound).
    assert e.value.message.startswith("message is 2032 bytes by the size rule (body + system property "
                                      "values, including the 'to' the hub sets, + "), e.value.message
    assert e.value.message.endswith("the limit is 1024"), e.value.message
    assert service.queue_depth("d1") == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"properties": {"$.bad": "x"}},
        {"properties": {"iothub-x": "y"}},
        {"message_id": "a" * 200},
        {"message_id": "no spaces allowed"},
    ],
)
def test_invalid_arguments(service, kwargs):
    props = kwargs.pop("properties", None)
    with pytest.raises(db.ArgumentInvalidError) as e:
        service.send("d1", b"x", props, **kwargs)
    assert e.value.code == 400004
    assert isinstance(e.value, ValueError)


def test_bad_device_ids_and_registry_errors(hub):
    with pytest.raises(db.ArgumentInvalidError):
        hub.add_device("has/slash")
    with pytest.raises(db.DeviceAlreadyExistsError) as e:
        hub.add_device("d1")
    assert e.value.code == 409001
    with pytest.raises(db.DeviceNotFoundError):
        hub.remove_device("nobody")


def test_unknown_device_cannot_connect(hub):
    device = db.DeviceClient(hub, "stranger", retry="c_none")
    with pytest.raises(db.UnauthorizedError) as e:
        device.connect()
    assert e.value.code == 401000
    device.close()


def test_lock_lost_and_bad_tokens(hub, service):
    service.send("d1", b"x")
    with db.DeviceClient(hub, "d1") as device:
        m = device.receive(timeout=5)
        device.complete(m)
        with pytest.raises(db.LockLostError) as e:
            device.complete(m)
        assert e.value.code == 412002
        with pytest.raises(db.ArgumentInvalidError):
            device.complete("not-a-guid")
        with pytest.raises(db.ArgumentInvalidError):
            device.complete(db.Message(b"never received"))
        with pytest.raises(ValueError):
            device.settle(m, 7)  # not a Disposition


def test_closed_clients_refuse(hub, service):
    device = db.DeviceClient(hub, "d1")
    device.close()
    device.close()  # twice is fine
    with pytest.raises(db.InvalidOperationError):
        device.receive(timeout=0)
    service.close()
    with pytest.raises(db.InvalidOperationError):
        service.send("d1", b"x")


def test_disconnected_device_refuses_until_connect(hub, service):
    device = db.DeviceClient(hub, "d1")
    device.connect()
    device.disconnect()
    with pytest.raises(db.InvalidOperationError):
        device.receive(timeout=0)
    device.connect()
    service.send("d1", b"back")
    assert device.receive(timeout=5).body == b"back"
    device.close()


def test_config_errors_name_the_field():
    with pytest.raises(db.ArgumentInvalidError, match="lock_duration"):
        db.Hub(lock_duration=0.5)
    with pytest.raises(db.ArgumentInvalidError, match="max_queue_depth"):
        db.HubConfig(max_queue_depth=0).validate()
    with pytest.raises(db.ArgumentInvalidError):
        db.HubConfig(max_delivery_count=-1).validate()
    with pytest.raises(TypeError):
        db.Hub(db.HubConfig(), lock_duration=5)
    with pytest.raises(TypeError):
        db.HubConfig(lock_duration="soon").validate()


def test_type_errors_for_wrong_argument_types(service):
    with pytest.raises(TypeError):
        service.send("d1", 42)
    with pytest.raises(TypeError):
        service.send("d1", b"x", {"k": 1})
    with pytest.raises(TypeError):
        service.send(b"d1", b"x")
    with pytest.raises(TypeError):
        db.DeviceClient(object(), "d1")  # type: ignore[arg-type]


def test_unknown_retry_profile():
    with pytest.raises(db.ArgumentInvalidError, match="profile"):
        db.RetryPolicy.profile("cobol")
    hub = db.Hub()
    with pytest.raises(db.ArgumentInvalidError):
        db.ServiceClient(hub, retry="cobol")
    with pytest.raises(db.ArgumentInvalidError):
        db.RetryPolicy(backoff=db.Backoff.interval(-1)).validate()
