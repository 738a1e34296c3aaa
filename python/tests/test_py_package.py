"""The installed package: what the wheel holds, its docstring examples, the examples in
python/examples, the retry and config mappings to the C++ types, and that the benchmark
module is not in the wheel."""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
from datetime import timedelta

import pytest

import devicebound as db
from helpers import ROOT, WAIT, mqtt_hub, required_parts  # noqa: F401 - fixture

EXAMPLES = ROOT / "python" / "examples"


def test_the_wheel_holds_the_package_and_no_headers_or_cmake_files():
    files = [str(f) for f in importlib.metadata.files("devicebound") or []]
    assert any(f.endswith("devicebound/py.typed") for f in files)
    assert any(f.endswith("devicebound/_native.pyi") for f in files)
    assert any("devicebound/_native" in f and f.endswith(".so") for f in files)
    assert not [f for f in files if f.endswith((".hpp", ".h", ".cmake")) or "/include/" in f]
    assert importlib.metadata.version("devicebound") == db.__version__ == "0.1.0"


@pytest.mark.parametrize("module", ["devicebound", "devicebound.message", "devicebound.retry", "devicebound.hub",
                                    "devicebound.client", "devicebound.errors"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_retry_profiles_match_the_cpp_ones():
    assert "c_sdk" in db.PROFILES and "python" in db.PROFILES and len(db.PROFILES) == 14
    c = db.RetryPolicy.profile("c_sdk")
    assert c.whole_seconds and c.error_table is db.ErrorTable.C
    assert [d.total_seconds() for d in c.delays(8)] == [0, 1, 2, 4, 8, 16, 30, 30]
    py = db.RetryPolicy.profile("python")
    assert [d.total_seconds() for d in py.delays(3)] == [0.01, 10, 10]
    assert db.RetryPolicy.profile("c_none").delays(2) == [None, None]
    for name in db.PROFILES:  # the dict round trip is lossless
        p = db.RetryPolicy.profile(name)
        assert p.validate() == p
    custom = db.RetryPolicy(backoff=db.Backoff.interval(timedelta(milliseconds=250)), max_retries=3,
                            overrides={403004: db.ErrorClass.TRANSIENT})
    assert custom.validate().overrides == {403004: db.ErrorClass.TRANSIENT}
    assert [d.total_seconds() for d in custom.delays(2)] == [0.25, 0.25]
    assert db.classify(429001) is db.ErrorClass.THROTTLED
    assert db.classify(db.QueueFullError("x")) is db.ErrorClass.FATAL
    assert db.classify(401000, db.ErrorTable.C) is db.ErrorClass.TRANSIENT


def test_clients_take_any_retry_form():
    hub = db.Hub()
    hub.add_device("d")
    for retry in (None, "node", db.RetryPolicy.profile("java"), db.RetryPolicy()):
        with db.DeviceClient(hub, "d", retry=retry) as device:
            assert device.receive(timeout=0) is None
    with pytest.raises(TypeError):
        db.DeviceClient(hub, "d", retry=42)  # type: ignore[arg-type]


def test_hub_config_round_trip_and_stats():
    config = db.HubConfig(name="lab", lock_duration=5, default_ttl=timedelta(minutes=10), max_queue_depth=3,
                          delivery_count=db.DeliveryCountRule.EVERY_DELIVERY)
    with db.Hub(config) as hub:
        running = hub.config
        assert running.name == "lab" and running.lock_duration == timedelta(seconds=5)
        assert running.default_ttl == timedelta(minutes=10) and running.max_queue_depth == 3
        assert running.delivery_count is db.DeliveryCountRule.EVERY_DELIVERY
        assert hub.driver_running
        gen = hub.add_device("d")
        assert gen.isdigit() and hub.generation_id("d") == gen
        assert "d" in hub and len(hub) == 1 and hub.has_device("d")
        with db.ServiceClient(hub) as service:
            service.send("d", b"x")
        assert hub.queue_depth("d") == 1
        assert hub.stats() == db.HubStats(accepted=1)
        assert hub.stats().pending == 1
        hub.remove_device("d")
        assert hub.stats().removed_with_device == 1 and len(hub) == 0


def test_manual_clock_drives_lock_expiry():
    clock = db.ManualClock()
    hub = db.Hub(clock=clock, lock_duration=5)
    assert hub.now() == clock.now()
    hub.add_device("d")
    with db.ServiceClient(hub) as service, db.DeviceClient(hub, "d") as device:
        service.send("d", b"x")
        first = device.receive(timeout=0)
        assert device.receive(timeout=0) is None  # locked
        clock.advance(timedelta(seconds=5))
        again = device.receive(timeout=0)
        assert again is not None and again.sequence_number == first.sequence_number
        with pytest.raises(db.LockLostError):
            device.complete(first)
        device.complete(again)


def test_message_value_semantics():
    m = db.Message("héllo", {"a": "1"}, message_id="x", ack=db.Ack.POSITIVE)
    assert m.body == "héllo".encode() and m.text == "héllo"
    assert m == db.Message(b"h\xc3\xa9llo", {"a": "1"}, message_id="x", ack=db.Ack.POSITIVE)
    assert m != db.Message(b"other")
    assert "message_id='x'" in repr(m)
    assert db.Message(bytearray(b"ab")).body == b"ab" and db.Message(memoryview(b"cd")).body == b"cd"
    with pytest.raises(TypeError):
        db.Message(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        db.Message(b"", expiry_time_utc="tomorrow")  # type: ignore[arg-type]
    assert str(db.FeedbackStatus.DELIVERY_COUNT_EXCEEDED) == "DeliveryCountExceeded"
    assert str(db.Ack.FULL) == "full"


def test_the_in_process_example():
    out = subprocess.run([sys.executable, str(EXAMPLES / "in_process.py")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "Device got {\"target\": 21} {'unit': 'C'}" in out
    assert "Back end: set-21 -> Success" in out


def test_the_device_and_back_end_examples_over_mqtt(mqtt_hub):
    device_id = mqtt_hub.devices_left.pop(0)
    common = ["--port", str(mqtt_hub.port), "--device", device_id]
    device = subprocess.Popen([sys.executable, str(EXAMPLES / "device_app.py"), *common, "--count", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "Waiting for C2D messages" in device.stdout.readline()
        backend = subprocess.run([sys.executable, str(EXAMPLES / "backend_app.py"), *common, "--count", "3"],
                                 capture_output=True, text=True, timeout=60)
        assert backend.returncode == 0, backend.stderr
        out, _ = device.communicate(timeout=WAIT)
    finally:
        if device.poll() is None:
            device.kill()
    assert device.returncode == 0, out
    assert out.count("Message received:") == 3 and "message-2" in out
    assert [line for line in backend.stdout.splitlines() if line.startswith("Feedback:")] == [
        f"Feedback: message-{i} Success on {device_id}" for i in range(3)]


def test_the_wheel_holds_no_benchmark_code():
    # python/bench.py's C++ loop is devicebound._bench, built only for development
    # (DEVICEBOUND_PYTHON_BENCH=ON; scripts/test_python.sh runs the bench that way after
    # these tests). The default wheel has neither that module nor the loop in _native.
    bench_installed = importlib.util.find_spec("devicebound._bench") is not None
    if bench_installed and not required_parts():
        pytest.skip("this is a development install (DEVICEBOUND_PYTHON_BENCH=ON), not the wheel users get")
    files = [str(f) for f in importlib.metadata.files("devicebound") or []]
    assert not [f for f in files if "bench" in f.rsplit("/", 1)[-1]]
    assert not bench_installed
    assert not [name for name in dir(db._native) if "bench" in name]
