"""Fixtures for the broker-level tests: certificates, mosquitto with the
devicebound plugin, the devicebound-hub daemon, and small MQTT helpers.

Processes are started with subprocess and stopped by their PID only. Every
wait is bounded by a deadline; nothing sleeps to "let things settle": tests
wait for the event they need, or prove an absence with a sentinel event that
the broker must deliver after the one that must not come.

Environment:
  DEVICEBOUND_BROKER_PLUGIN  path of devicebound_mosquitto_plugin.so
                             (default: newest build*/broker/ in the repository)
  DEVICEBOUND_HUB_EXE        path of devicebound-hub (default: build/apps/devicebound-hub)
  DEVICEBOUND_REQUIRE_HUB=1  fail, instead of skip, the tests that need that daemon
  DEVICEBOUND_REQUIRE_ALL=1  fail, instead of skip, every test whose part is missing
                             (the plugin, mosquitto, the daemon, the stock SDK)
  DEVICEBOUND_MOSQUITTO      mosquitto binary (default: mosquitto on PATH or /usr/sbin)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import queue
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from required import missing_part

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "broker" / "mosquitto.conf.in"
MAKE_CERTS = ROOT / "tests" / "support" / "make_test_certs.sh"

# Python's stock Azure IoT device SDK always connects to port 8883 (SPEC 5.4).
SDK_TLS_PORT = 8883
HUB_HOSTNAME = "devicebound-test.azure-devices.net"
WAIT = 15.0  # seconds: the longest any single expected event may take


# --------------------------------------------------------------------------- #
# Locating programs


def find_plugin() -> Path | None:
    env = os.environ.get("DEVICEBOUND_BROKER_PLUGIN")
    if env:
        return Path(env)
    candidates = list(ROOT.glob("build*/broker/devicebound_mosquitto_plugin.so"))
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def find_mosquitto() -> str | None:
    env = os.environ.get("DEVICEBOUND_MOSQUITTO")
    if env:
        return env
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


def find_hub() -> Path:
    env = os.environ.get("DEVICEBOUND_HUB_EXE")
    return Path(env) if env else ROOT / "build" / "apps" / "devicebound-hub"


# --------------------------------------------------------------------------- #
# Ports and processes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pick_loopback_for_sdk() -> str:
    """A random 127.x.y.z whose port 8883 is free: the Python SDK cannot be told
    another port, so parallel test runs each take their own loopback address."""
    rng = random.SystemRandom()
    for _ in range(50):
        addr = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, SDK_TLS_PORT))
            except OSError:
                continue
        return addr
    raise RuntimeError("no loopback address with a free port 8883")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Polls `predicate` until it returns a true value, at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
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


# --------------------------------------------------------------------------- #
# Certificates


@dataclass
class Certs:
    dir: Path
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path, *ips: str) -> Certs:
    subprocess.run(["bash", str(MAKE_CERTS), str(directory), *ips], check=True,
                   capture_output=True, timeout=60)
    return Certs(directory, directory / "ca.crt", directory / "server.crt", directory / "server.key")


# --------------------------------------------------------------------------- #
# SAS tokens (SPEC 5.1-5.3), for auth tests


def sas_token(resource: str, key_b64: str, expiry: int | None = None,
              policy: str | None = None) -> str:
    expiry = int(time.time()) + 3600 if expiry is None else expiry
    sr = urllib.parse.quote(resource, safe="")
    to_sign = f"{sr}\n{expiry}".encode()
    sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), to_sign, hashlib.sha256).digest())
    token = f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}"
    if policy:
        token += f"&skn={policy}"
    return token


def device_username(device_id: str, host: str = HUB_HOSTNAME) -> str:
    return f"{host}/{device_id}/?api-version=2021-04-12"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


# --------------------------------------------------------------------------- #
# mosquitto with the plugin


@dataclass
class Broker:
    workdir: Path
    plain_port: int
    tls_address: str | None
    tls_port: int | None
    certs: Certs | None
    conf: Path
    log: Path
    proc: subprocess.Popen | None = None
    _log_file: object = None

    def start(self) -> None:
        mosquitto = find_mosquitto()
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen([mosquitto, "-c", str(self.conf)],
                                     stdout=self._log_file, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}):\n{self.log_text()}")
            if not port_open("127.0.0.1", self.plain_port):
                return False
            return self.tls_address is None or port_open(self.tls_address, self.tls_port)

        wait_until(ready, WAIT, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def render_conf(path: Path, *, plain_port: int, tls_address: str | None, tls_port: int | None,
                certs: Certs | None, data_dir: Path, plugin: Path, plugin_options: list[str]) -> None:
    text = TEMPLATE.read_text()
    values = {
        "PLAIN_PORT": str(plain_port),
        "DATA_DIR": str(data_dir),
        "PLUGIN": str(plugin),
        "PLUGIN_OPTIONS": "\n".join(plugin_options),
        # The template's rule: a user who can write DATA_DIR. The tests' user made
        # it (and, as root, mosquitto would otherwise switch to "mosquitto").
        "USER": pwd.getpwuid(os.geteuid()).pw_name,
    }
    if tls_address is not None:
        values.update(TLS_ADDRESS=tls_address, TLS_PORT=str(tls_port), CA_FILE=str(certs.ca),
                      CERT_FILE=str(certs.cert), KEY_FILE=str(certs.key))
    else:
        # No TLS listener: cut the template from the TLS listener on.
        text = text[: text.index("# Stock Azure IoT device SDKs")]
    # The options line first: the header's comment names @PLUGIN_OPTIONS@ too,
    # and several options there would start lines outside the comment.
    text = text.replace("\n@PLUGIN_OPTIONS@\n", "\n" + values.pop("PLUGIN_OPTIONS") + "\n")
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    if "@" in "".join(line for line in text.splitlines() if not line.startswith("#")):
        raise AssertionError("unreplaced @NAME@ in the rendered mosquitto.conf")
    path.write_text(text)


@pytest.fixture(scope="session")
def plugin_path() -> Path:
    plugin = find_plugin()
    if plugin is None or not plugin.exists():
        missing_part("devicebound_mosquitto_plugin.so not built (cmake --build ... "
                     "--target devicebound_mosquitto_plugin) and DEVICEBOUND_BROKER_PLUGIN not set")
    if find_mosquitto() is None:
        missing_part("mosquitto is not installed")
    return plugin


@pytest.fixture
def start_broker(tmp_path, plugin_path):
    """start_broker(auth_file=None, tls=False, registry_db=None, options=()) -> Broker;
    stopped at teardown. `options` are more plugin_opt_ lines."""
    brokers: list[Broker] = []
    count = [0]

    def start(auth_file: Path | None = None, tls: bool = False, registry_db: Path | None = None,
              options: tuple[str, ...] | list[str] = ()) -> Broker:
        count[0] += 1
        workdir = tmp_path / f"broker{count[0]}"
        data_dir = workdir / "data"
        data_dir.mkdir(parents=True)
        options = list(options)
        if auth_file:
            options.append(f"plugin_opt_auth_file {auth_file}")
        if registry_db:
            options.append(f"plugin_opt_registry_db {registry_db}")
        last_error = None
        for _ in range(3):  # a port picked free may be taken before mosquitto binds it
            plain_port = free_port()
            tls_address = pick_loopback_for_sdk() if tls else None
            certs = make_certs(workdir / "certs", tls_address) if tls else None
            broker = Broker(workdir, plain_port, tls_address, SDK_TLS_PORT if tls else None, certs,
                            workdir / "mosquitto.conf", workdir / "mosquitto.log")
            render_conf(broker.conf, plain_port=plain_port, tls_address=tls_address,
                        tls_port=broker.tls_port, certs=certs, data_dir=data_dir,
                        plugin=plugin_path, plugin_options=options)
            try:
                broker.start()
            except RuntimeError as error:
                broker.stop()
                last_error = error
                if "in use" in str(error):
                    continue
                raise
            brokers.append(broker)
            return broker
        raise last_error

    yield start
    for broker in brokers:
        broker.stop()


# --------------------------------------------------------------------------- #
# A synchronous paho-mqtt wrapper (paho-mqtt 1.6 as pinned by azure-iot-device;
# also works with 2.x)

import paho.mqtt.client as paho  # noqa: E402


def _new_paho(client_id: str, clean_session: bool):
    kwargs = dict(client_id=client_id, clean_session=clean_session, protocol=paho.MQTTv311)
    if hasattr(paho, "CallbackAPIVersion"):
        return paho.Client(paho.CallbackAPIVersion.VERSION1, **kwargs)
    return paho.Client(**kwargs)


@dataclass
class Message:
    topic: str
    payload: bytes


class MqttClient:
    """One MQTT connection. Never reconnects by itself (a stolen session must
    stay stolen). Received messages go to a queue read with bounded waits."""

    def __init__(self, port: int, client_id: str, *, clean_session: bool = True,
                 username: str | None = None, password: str | None = None,
                 host: str = "127.0.0.1"):
        self.host, self.port, self.client_id = host, port, client_id
        self.messages: "queue.Queue[Message]" = queue.Queue()
        self._cond = threading.Condition()
        self._connack: int | None = None
        self._disconnected = False
        self._suback: dict[int, list[int]] = {}
        self._c = _new_paho(client_id, clean_session)
        if username is not None:
            self._c.username_pw_set(username, password)
        self._c.on_connect = self._on_connect
        self._c.on_disconnect = self._on_disconnect
        self._c.on_subscribe = self._on_subscribe
        self._c.on_message = self._on_message

    # callbacks (paho's thread)
    def _on_connect(self, client, userdata, flags, rc):
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, rc):
        client.loop_stop()  # from the loop thread: ends it, no reconnect
        with self._cond:
            self._disconnected = True
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, granted_qos):
        with self._cond:
            self._suback[mid] = list(granted_qos)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        self.messages.put(Message(msg.topic, bytes(msg.payload)))

    def _wait(self, predicate, what: str, timeout: float = WAIT):
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=timeout):
                raise TimeoutError(f"{self.client_id}: timed out waiting for {what}")

    # API
    def connect(self, timeout: float = WAIT) -> int:
        """Returns the CONNACK code (0 = accepted)."""
        self._c.connect(self.host, self.port, keepalive=60)
        self._c.loop_start()
        self._wait(lambda: self._connack is not None or self._disconnected, "CONNACK", timeout)
        if self._connack is None:
            return -1
        if self._connack != 0:
            self._wait(lambda: self._disconnected, "disconnect after refusal", timeout)
        return self._connack

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Returns the granted QoS, or 0x80 when the broker refused."""
        rc, mid = self._c.subscribe(topic_filter, qos)
        assert rc == paho.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self._suback, f"SUBACK for {topic_filter}")
        return self._suback.pop(mid)[0]

    def unsubscribe(self, topic_filter: str) -> None:
        info = self._c.unsubscribe(topic_filter)
        assert info[0] == paho.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 1, retain: bool = False):
        info = self._c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"{self.client_id}: no PUBACK for {topic}"

    def expect(self, timeout: float = WAIT) -> Message:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.client_id}: no message within {timeout}s") from None

    def disconnect(self) -> None:
        """Clean MQTT DISCONNECT."""
        if self._disconnected:
            return
        self._c.disconnect()
        self._wait(lambda: self._disconnected, "disconnect")

    def drop(self) -> None:
        """Closes the socket without DISCONNECT, as a lost network would."""
        if self._disconnected:
            return
        sock = self._c.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self._wait(lambda: self._disconnected, "drop")

    @property
    def is_disconnected(self) -> bool:
        with self._cond:
            return self._disconnected

    def wait_disconnected(self, timeout: float = WAIT) -> None:
        self._wait(lambda: self._disconnected, "being disconnected", timeout)


EVENT_FILTER = "devicebound/broker/#"


@dataclass
class Event:
    kind: str
    device: str
    payload: bytes


class EventListener:
    """A back-end client that subscribes to the plugin's events."""

    def __init__(self, broker: Broker, client_id: str = "test-hub", **kwargs):
        self.client = MqttClient(broker.plain_port, client_id, **kwargs)
        assert self.client.connect() == 0
        assert self.client.subscribe(EVENT_FILTER) == 1

    def next(self, timeout: float = WAIT) -> Event:
        msg = self.client.expect(timeout)
        parts = msg.topic.split("/", 3)
        assert parts[:2] == ["devicebound", "broker"] and len(parts) == 4, msg.topic
        return Event(parts[2], parts[3], msg.payload)

    def expect(self, kind: str, device: str, payload: bytes | None = None) -> Event:
        event = self.next()
        assert (event.kind, event.device) == (kind, device), event
        if payload is not None:
            assert event.payload == payload, event
        return event

    def close(self) -> None:
        self.client.disconnect()


@dataclass
class Clients:
    """Tracks MQTT clients made by a test and disconnects them at teardown."""
    items: list = field(default_factory=list)

    def add(self, client):
        self.items.append(client)
        return client


@pytest.fixture
def clients():
    made = Clients()
    yield made
    for client in made.items:
        inner = client.client if isinstance(client, EventListener) else client
        try:
            inner.disconnect()
        except Exception:  # noqa: BLE001 - teardown must go on
            pass
