"""The AMQP clients built from IoT Hub connection strings, against devicebound-hub's AMQP door.

A mosquitto and a devicebound-hub with ``--amqp-listen`` (TLS with a certificate made here
for ``localhost``, SAS keys from an auth file) run for the module, owned by PID. The daemon
is $DEVICEBOUND_AMQP_HUB, else the one the MQTT tests use when it has the AMQP door. Without
them (or openssl, or an AMQP-enabled build) the tests skip, or fail under
DEVICEBOUND_REQUIRE_ALL=1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import devicebound as db
from devicebound import aio
from helpers import WAIT, find_hub_exe, find_mosquitto, free_port, missing_part, port_open, stop_process, wait_until

DEVICE_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
SERVICE_KEY = "ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ=="
OTHER_KEY = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80="


def amqp_hub_exe() -> Path | None:
    env = os.environ.get("DEVICEBOUND_AMQP_HUB")
    if env:
        return Path(env)
    return find_hub_exe()


def has_amqp_door(exe: Path) -> bool:
    try:
        out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return "--amqp-listen" in out.stdout + out.stderr


class AmqpHub:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.procs: list[subprocess.Popen] = []

    @property
    def ca_file(self) -> str:
        return str(self.workdir / "server.pem")

    def service_cs(self, key: str = SERVICE_KEY) -> str:
        return f"HostName=localhost:{self.port};SharedAccessKeyName=service;SharedAccessKey={key}"

    def device_cs(self, device_id: str, key: str = DEVICE_KEY) -> str:
        return f"HostName=localhost:{self.port};DeviceId={device_id};SharedAccessKey={key}"

    def start(self, exe: Path, openssl: str) -> None:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.workdir / "server.key"),
             "-out", self.ca_file, "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True)
        (self.workdir / "auth.txt").write_text(
            f"dev1 {DEVICE_KEY}\ndev2 {DEVICE_KEY}\npolicy service {SERVICE_KEY}\n")
        broker_port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.procs.append(subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        wait_until(lambda: port_open(broker_port), WAIT, "mosquitto")
        self.port = free_port()
        log = open(self.workdir / "hub.log", "ab")
        self.procs.append(subprocess.Popen(
            [str(exe), "--port", str(broker_port), "--in-memory", "--log-level", "warn",
             "-d", "dev1", "-d", "dev2", "--feedback-batch-interval", "0s", "--lock-duration", "5s",
             "--amqp-listen", f"127.0.0.1:{self.port}", "--tls-server-cert", self.ca_file,
             "--tls-server-key", str(self.workdir / "server.key"), "--auth-file", str(self.workdir / "auth.txt"),
             "--iothub-hostname", "localhost"], stdout=log, stderr=subprocess.STDOUT))
        log.close()
        wait_until(lambda: self.procs[-1].poll() is not None or port_open(self.port), WAIT, "the AMQP door")
        if self.procs[-1].poll() is not None:
            raise RuntimeError((self.workdir / "hub.log").read_text(errors="replace"))

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)


@pytest.fixture(scope="module")
def amqp_hub(tmp_path_factory) -> Iterator[AmqpHub]:
    if not db.HAS_AMQP:
        missing_part("devicebound was built without AMQP (no Qpid Proton C++)")
    exe = amqp_hub_exe()
    if exe is None or not exe.exists() or not has_amqp_door(exe):
        missing_part("devicebound-hub with the AMQP door not found (set DEVICEBOUND_AMQP_HUB)")
    if find_mosquitto() is None:
        missing_part("mosquitto is not installed")
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_part("openssl (for the test's TLS certificate) is not installed")
    hub = AmqpHub(tmp_path_factory.mktemp("amqp"))
    try:
        hub.start(exe, openssl)  # type: ignore[arg-type]
        yield hub
    finally:
        hub.stop()


def test_round_trip_from_connection_strings(amqp_hub: AmqpHub) -> None:
    service = db.ServiceClient.from_connection_string(amqp_hub.service_cs(), ca_file=amqp_hub.ca_file)
    device = db.DeviceClient.from_connection_string(amqp_hub.device_cs("dev1"), "amqp", ca_file=amqp_hub.ca_file)
    with service, device:
        assert device.device_id == "dev1"
        assert device.can_reject and device.can_abandon
        service.send("dev1", "one", {"k": "v"}, message_id="a", ack=db.Ack.FULL)
        service.send("dev1", "two", message_id="b", ack=db.Ack.FULL)
        service.send("dev1", "three", message_id="c", ack=db.Ack.FULL)
        m = device.receive(timeout=WAIT)
        assert m is not None and m.message_id == "a" and m.text == "one" and m.properties == {"k": "v"}
        device.complete(m)
        with pytest.raises(db.LockLostError):
            device.complete(m)
        m = device.receive(timeout=WAIT)
        assert m is not None and m.message_id == "b"
        device.reject(m)
        m = device.receive(timeout=WAIT)
        assert m is not None and m.message_id == "c"
        device.abandon(m)
        m = device.receive(timeout=WAIT)
        assert m is not None and m.message_id == "c" and m.delivery_count == 1
        device.complete(m)
        statuses: dict[str, db.FeedbackStatus] = {}
        while len(statuses) < 3:
            batch = service.receive_feedback(timeout=WAIT)
            assert batch is not None
            for r in batch.records:
                statuses[r.original_message_id] = r.status
            service.complete_feedback(batch)
        assert statuses == {"a": db.FeedbackStatus.SUCCESS, "b": db.FeedbackStatus.REJECTED,
                            "c": db.FeedbackStatus.SUCCESS}
        # IoT Hub has no AMQP purge or queue depth.
        with pytest.raises(db.NotSupportedError):
            service.purge("dev1")
        with pytest.raises(db.NotSupportedError):
            service.queue_depth("dev1")


def test_typed_errors(amqp_hub: AmqpHub) -> None:
    with db.ServiceClient.from_connection_string(amqp_hub.service_cs(), ca_file=amqp_hub.ca_file) as service:
        with pytest.raises(db.DeviceNotFoundError):
            service.send("nobody", "x")
    bad = db.ServiceClient.from_connection_string(amqp_hub.service_cs(OTHER_KEY), ca_file=amqp_hub.ca_file,
                                                  retry="c_none")
    with pytest.raises(db.UnauthorizedError):
        bad.open()
    bad.close()
    with pytest.raises(db.ArgumentInvalidError):
        db.DeviceClient.from_connection_string("HostName=h;DeviceId=d", "amqp")
    with pytest.raises(db.ArgumentInvalidError):
        db.ServiceClient.from_connection_string(amqp_hub.device_cs("dev1"))
    with pytest.raises(db.NotSupportedError):
        db.DeviceClient.from_connection_string(amqp_hub.device_cs("dev1"), "mqtt")


def test_untrusted_certificate(amqp_hub: AmqpHub) -> None:
    options = db.AmqpOptions(connect_timeout=5)
    device = db.DeviceClient.from_connection_string(amqp_hub.device_cs("dev2"), "amqp", options=options,
                                                    retry="c_none")
    with pytest.raises(db.NotConnectedError):
        device.connect()
    device.close()


def test_asyncio_from_connection_strings(amqp_hub: AmqpHub) -> None:
    async def main() -> None:
        service = aio.ServiceClient.from_connection_string(amqp_hub.service_cs(), ca_file=amqp_hub.ca_file)
        device = aio.DeviceClient.from_connection_string(amqp_hub.device_cs("dev2"), ca_file=amqp_hub.ca_file)
        async with service, device:
            await service.send("dev2", "async", message_id="z")
            m = await device.receive(timeout=WAIT)
            assert m is not None and m.text == "async"
            await device.reject(m)

    asyncio.run(main())
