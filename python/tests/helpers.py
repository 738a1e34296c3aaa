"""Shared fixtures and helpers of the devicebound package tests (test_api_*.py).

Fixtures defined here are imported by the test modules that use them
(``from helpers import transport``), so python/tests/conftest.py (the broker
tests' own) stays untouched.

MQTT: the tests start a mosquitto on a free 127.0.0.1 port and a devicebound-hub
daemon attached to it, and stop both by PID. The daemon is
$DEVICEBOUND_HUB_EXE, else build/apps/devicebound-hub, else the newest
build*/apps/devicebound-hub. Without mosquitto, the daemon or an MQTT-enabled
build, MQTT tests are skipped, or fail when DEVICEBOUND_REQUIRE_MQTT=1 or
DEVICEBOUND_REQUIRE_ALL=1 (scripts/test_python.sh sets both; see required.py).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import devicebound as db
from required import missing_part, required_parts  # noqa: F401 - re-exported for the tests

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0  # seconds: the longest any single expected event may take


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "a condition",
               interval: float = 0.01) -> Any:
    """Polls ``predicate`` until it returns a true value, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- #
# Processes for MQTT


def find_hub_exe() -> Path | None:
    env = os.environ.get("DEVICEBOUND_HUB_EXE")
    if env:
        return Path(env)
    default = ROOT / "build" / "apps" / "devicebound-hub"
    if default.exists():
        return default
    found = [p for p in ROOT.glob("build*/apps/devicebound-hub") if os.access(p, os.X_OK)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_mosquitto() -> str | None:
    env = os.environ.get("DEVICEBOUND_MOSQUITTO")
    if env:
        return env
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def mqtt_unavailable() -> str | None:
    """Why the MQTT tests cannot run here, or None."""
    if not db.HAS_MQTT:
        return "devicebound was built without MQTT (no Paho MQTT C)"
    if find_mosquitto() is None:
        return "mosquitto is not installed"
    hub = find_hub_exe()
    if hub is None or not hub.exists():
        return "devicebound-hub is not built (set DEVICEBOUND_HUB_EXE)"
    return None


def skip_without_mqtt() -> None:
    reason = mqtt_unavailable()
    if reason is None:
        return
    missing_part(reason, also="DEVICEBOUND_REQUIRE_MQTT")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to this PID, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@dataclass
class MqttHub:
    """mosquitto + devicebound-hub, each owned by PID; ``devices`` are registered at start."""

    workdir: Path
    devices: list[str]
    hub_args: list[str] = field(default_factory=list)
    port: int = 0
    broker: subprocess.Popen | None = None
    daemon: subprocess.Popen | None = None
    devices_left: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.devices_left = list(self.devices[1:])  # devices[0] is for the readiness check
        mosquitto = find_mosquitto()
        for _ in range(3):  # a port picked free may be taken before mosquitto binds it
            self.port = free_port()
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                "persistence false\nmax_queued_messages 100000\nlog_dest stderr\n"
            )
            log = open(self.workdir / "mosquitto.log", "ab")
            self.broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
            log.close()
            try:
                wait_until(lambda: self.broker.poll() is not None or port_open(self.port), WAIT, "mosquitto")
            except TimeoutError:
                stop_process(self.broker)
                continue
            if self.broker.poll() is None:
                break
        else:
            raise RuntimeError(f"mosquitto did not start: {self.log('mosquitto.log')}")
        args = [str(find_hub_exe()), "--port", str(self.port), "--client-id", f"devicebound-hub-{self.port}",
                "--store", str(self.workdir / "hub.db"), "--log-level", "warn", *self.hub_args]
        for d in self.devices:
            args += ["--device", d]
        log = open(self.workdir / "hub.log", "ab")
        self.daemon = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        """The daemon answers requests: a queue-depth query on a registered device succeeds."""
        deadline = time.monotonic() + WAIT
        with db.ServiceClient(self.transport(request_timeout=1), retry="c_none") as service:
            while True:
                if self.daemon.poll() is not None:
                    raise RuntimeError(f"devicebound-hub exited: {self.log('hub.log')}")
                try:
                    service.queue_depth(self.devices[0])
                    return
                except db.DeviceboundError:
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"devicebound-hub did not answer: {self.log('hub.log')}") from None
                    time.sleep(0.05)

    def transport(self, **options: Any) -> db.Mqtt:
        return db.Mqtt(port=self.port, **options)

    def log(self, name: str) -> str:
        try:
            return (self.workdir / name).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in (self.daemon, self.broker):
            if proc is not None:
                stop_process(proc)


@pytest.fixture(scope="module")
def mqtt_hub(tmp_path_factory) -> Iterator[MqttHub]:
    """A mosquitto and a devicebound-hub with 200 registered devices (``dev-0`` ...), for a module."""
    skip_without_mqtt()
    hub = MqttHub(tmp_path_factory.mktemp("mqtt"), [f"dev-{i}" for i in range(200)],
                  ["--lock-duration", "3s", "--feedback-batch-interval", "0s"])
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


# --------------------------------------------------------------------------- #
# One test, two transports


@dataclass
class Where:
    """Where the tests' hub is: ``transport`` for the clients, ``new_device()`` for a fresh id."""

    name: str
    transport: Any
    new_device: Callable[[], str]
    hub: db.Hub | None = None  # in process only

    @property
    def in_process(self) -> bool:
        return self.hub is not None


_ids = itertools.count()


@pytest.fixture(params=["inproc", "mqtt"])
def transport(request) -> Iterator[Where]:
    """The hub in process (lock 3 s, feedback batched at once), or over MQTT with the same settings."""
    if request.param == "inproc":
        hub = db.Hub(lock_duration=3, feedback_batch_interval=0)

        def new_device() -> str:
            device_id = f"dev-{next(_ids)}"
            hub.add_device(device_id)
            return device_id

        yield Where("inproc", hub, new_device, hub)
        hub.close()
    else:
        mqtt: MqttHub = request.getfixturevalue("mqtt_hub")
        yield Where("mqtt", mqtt.transport(), lambda: _take_mqtt_device(mqtt))


def _take_mqtt_device(mqtt: MqttHub) -> str:
    """A registered device no test of this module used yet."""
    if not mqtt.devices_left:
        raise RuntimeError("the MQTT test hub ran out of registered devices")
    return mqtt.devices_left.pop(0)
