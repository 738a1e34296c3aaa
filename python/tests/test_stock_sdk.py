"""A device running the official Azure IoT device SDK for Python
(`azure-iot-device` from PyPI, unchanged) receives cloud-to-device messages
from devicebound over mosquitto + the devicebound plugin, over TLS, with a
connection string whose GatewayHostName points at the broker.

Two back ends:
- the real `devicebound-hub` daemon (DEVICEBOUND_HUB_EXE, default
  build/apps/devicebound-hub; skipped when it is not built), sent to through
  its service extension topics (docs/protocol.md);
- `EmulatedHub`, a plain MQTT client that does what devicebound-hub does on
  the wire: keep each device's messages, publish them on the device-bound topic
  when the plugin says the device is subscribed, drop them when the plugin says
  they were delivered, stop when it says the device left. It pins down the
  plugin, TLS, SAS and SDK side independently of the daemon.
"""

from __future__ import annotations

import datetime
import queue
import subprocess
import urllib.parse
from dataclasses import dataclass, field

import pytest

from conftest import (
    HUB_HOSTNAME,
    WAIT,
    EventListener,
    MqttClient,
    find_hub,
    new_key,
    sas_token,
    stop_process,
    wait_until,
)
from required import missing_part

try:
    import azure.iot.device as iothub
except ImportError:
    # At import time a skip or failure covers the whole module, as importorskip did.
    missing_part("azure-iot-device is not installed (python/tests/requirements-broker.txt)", module_level=True)

# The SDK pins TLS 1.2 with a constructor Python 3.10+ deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


def encode_bag(props: list[tuple[str, str]]) -> str:
    """docs/protocol.md: every key and value percent-encoded, RFC 3986 unreserved kept."""
    return "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" for k, v in props)


@dataclass
class C2D:
    device: str
    body: bytes
    topic: str
    state: str = "queued"  # queued -> in flight -> (removed when delivered)


@dataclass
class EmulatedHub:
    """The wire behaviour of devicebound-hub, driven by the plugin's events."""
    broker: object
    username: str
    password: str
    queue: list[C2D] = field(default_factory=list)
    online: set[str] = field(default_factory=set)
    delivered: list[C2D] = field(default_factory=list)

    def __post_init__(self):
        self.events = EventListener(self.broker, "emulated-hub-events",
                                    username=self.username, password=self.password)
        self.out = MqttClient(self.broker.plain_port, "emulated-hub", username=self.username,
                              password=self.password)
        assert self.out.connect() == 0

    def send(self, device: str, body: bytes, system: list[tuple[str, str]],
             app: dict[str, str]) -> C2D:
        bag = encode_bag(system + [("$.to", f"/devices/{device}/messages/devicebound")]
                         + sorted(app.items()))
        msg = C2D(device, body, f"devices/{device}/messages/devicebound/{bag}")
        self.queue.append(msg)
        if device in self.online:
            self._publish(msg)
        return msg

    def _publish(self, msg: C2D) -> None:
        msg.state = "in flight"
        self.out.publish(msg.topic, msg.body, qos=1)

    def pump_until(self, predicate, what: str) -> None:
        """Handles plugin events until predicate() holds (bounded by WAIT per event)."""
        while not predicate():
            try:
                event = self.events.next(WAIT)
            except TimeoutError:
                raise TimeoutError(f"emulated hub: no event while waiting for {what}") from None
            if event.kind == "subscribed":
                self.online.add(event.device)
                for msg in self.queue:
                    if msg.device == event.device and msg.state == "queued":
                        self._publish(msg)
            elif event.kind == "delivered":
                topic = event.payload.decode()
                for msg in self.queue:
                    if msg.device == event.device and msg.topic == topic:
                        self.queue.remove(msg)
                        self.delivered.append(msg)
                        break
            elif event.kind == "disconnected":
                self.online.discard(event.device)
                for msg in self.queue:
                    if msg.device == event.device and msg.state == "in flight":
                        msg.state = "queued"

    def close(self) -> None:
        self.out.disconnect()
        self.events.close()


def hub_token(hub_key: str) -> str:
    """A back end's password: a token signed with the policy's key (raw keys are refused)."""
    return sas_token(HUB_HOSTNAME, hub_key, policy="hub")


def write_keys(path, device_id: str, device_key: str, hub_key: str):
    path.write_text(f"{device_id} {device_key}\npolicy hub {hub_key}\n")
    return path


def connection_string(device_id: str, key: str, gateway: str) -> str:
    return (f"HostName={HUB_HOSTNAME};DeviceId={device_id};SharedAccessKey={key};"
            f"GatewayHostName={gateway}")


def check_message(got, *, body, mid, cid, exp, ct, ce, app):
    assert got.data == body
    assert got.message_id == mid
    assert got.correlation_id == cid
    assert got.expiry_time_utc == exp
    assert got.content_type == ct
    assert got.content_encoding == ce
    assert got.custom_properties == app


@pytest.fixture
def sdk_setup(start_broker, tmp_path):
    device_id, device_key, hub_key = "stock-device-1", new_key(), new_key()
    broker = start_broker(auth_file=write_keys(tmp_path / "keys", device_id, device_key, hub_key), tls=True)
    hub = EmulatedHub(broker, "hub", hub_token(hub_key))
    yield broker, hub, device_id, device_key
    hub.close()


def test_stock_python_sdk_receives_messages_sent_before_connect_and_while_offline(sdk_setup):
    from azure.iot.device import IoTHubDeviceClient

    broker, hub, device_id, device_key = sdk_setup
    received: "queue.Queue" = queue.Queue()

    # 1. Sent before the device ever connected.
    first_app = {"color": "blue", "odd!#$%&'*+.^_`|~": "v a&l=u/e% ünïcödé", "empty": ""}
    first = hub.send(device_id, b"\x00first\xff body", [
        ("$.mid", "mid-1"), ("$.cid", "corr-1"), ("$.exp", "2099-01-02T03:04:05.678Z"),
        ("$.ct", "application/json"), ("$.ce", "utf-8")], first_app)

    client = IoTHubDeviceClient.create_from_connection_string(
        connection_string(device_id, device_key, broker.tls_address),
        server_verification_cert=broker.certs.ca.read_text())
    try:
        client.connect()
        client.on_message_received = received.put  # subscribes (SPEC 5.7)

        hub.pump_until(lambda: first in hub.delivered, "the first message to be delivered")
        check_message(received.get(timeout=WAIT), body=b"\x00first\xff body", mid="mid-1", cid="corr-1",
                      exp="2099-01-02T03:04:05.678Z", ct="application/json", ce="utf-8", app=first_app)

        # 2. Sent while the device is offline.
        client.disconnect()
        hub.pump_until(lambda: device_id not in hub.online, "the device to leave")
        second = hub.send(device_id, b"second", [("$.mid", "mid-2"), ("$.cid", "corr-2"),
                                                 ("$.exp", "2098-12-31T23:59:59.000Z"),
                                                 ("$.ct", "text/plain"), ("$.ce", "utf-16")],
                          {"n": "2"})
        assert second.state == "queued"

        # The SDK reconnects without subscribing again (its session keeps the
        # subscription); the plugin announces it.
        client.connect()
        hub.pump_until(lambda: second in hub.delivered, "the second message to be delivered")
        check_message(received.get(timeout=WAIT), body=b"second", mid="mid-2", cid="corr-2",
                      exp="2098-12-31T23:59:59.000Z", ct="text/plain", ce="utf-16", app={"n": "2"})
        assert received.empty()
    finally:
        client.shutdown()


def test_stock_python_sdk_with_a_wrong_key_is_refused(sdk_setup):
    from azure.iot.device import IoTHubDeviceClient
    from azure.iot.device.exceptions import ClientError, CredentialError

    broker, hub, device_id, _ = sdk_setup
    client = IoTHubDeviceClient.create_from_connection_string(
        connection_string(device_id, new_key(), broker.tls_address),
        server_verification_cert=broker.certs.ca.read_text(), connection_retry=False)
    try:
        with pytest.raises((CredentialError, ClientError)):
            client.connect()
    finally:
        client.shutdown()


# --------------------------------------------------------------------------- #
# With the devicebound-hub daemon


class Service:
    """A back end speaking the daemon's service extension topics (docs/protocol.md)."""

    def __init__(self, broker, username: str, password: str, sid: str = "svc1"):
        self.sid = sid
        self.client = MqttClient(broker.plain_port, sid, username=username, password=password)
        assert self.client.connect() == 0
        assert self.client.subscribe(f"devicebound/service/{sid}/#") == 1
        self.next_rid = 0

    def request(self, op: str, device: str, bag: str = "", body: bytes = b"") -> dict[str, str]:
        self.next_rid += 1
        rid = str(self.next_rid)
        sep = "&" if bag else ""
        self.client.publish(f"devicebound/hub/{op_head(self.sid, op, device)}{bag}{sep}%24.rid={rid}", body)
        while True:
            msg = self.client.expect()
            head = f"devicebound/service/{self.sid}/reply/"
            if not msg.topic.startswith(head):
                continue
            reply = {urllib.parse.unquote(k): urllib.parse.unquote(v)
                     for k, _, v in (e.partition("=") for e in msg.topic[len(head):].split("&"))}
            if reply.get("$.rid") == rid:
                assert reply.get("$.code") == "0", reply
                return reply

    def send(self, device: str, body: bytes, system: list[tuple[str, str]], app: dict[str, str]):
        return self.request("send", device, encode_bag(system + sorted(app.items())), body)

    def depth(self, device: str) -> int:
        return int(self.request("depth", device)["$.depth"])


def op_head(sid: str, op: str, device: str) -> str:
    return f"service/{sid}/{op}/{device}/"


def iso_in(seconds: int) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@pytest.fixture
def daemon_setup(start_broker, tmp_path):
    exe = find_hub()
    if not exe.exists():
        why = f"devicebound-hub is not built ({exe}); set DEVICEBOUND_HUB_EXE"
        missing_part(why, also="DEVICEBOUND_REQUIRE_HUB")
    device_id, device_key, hub_key = "stock-device-1", new_key(), new_key()
    broker = start_broker(auth_file=write_keys(tmp_path / "keys", device_id, device_key, hub_key), tls=True)
    log = open(tmp_path / "devicebound-hub.log", "wb")
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(broker.plain_port),
                             "--client-id", "devicebound-hub", "--username", "hub", "--broker-sas-key", hub_key,
                             "--store", str(tmp_path / "devicebound-hub.db"),
                             "--device", device_id, "--log-level", "debug"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        status = MqttClient(broker.plain_port, "status-watch", username="hub",
                            password=hub_token(hub_key))
        assert status.connect() == 0
        assert status.subscribe("devicebound/status/hub") == 1
        wait_until(lambda: proc.poll() is not None or status.expect().payload == b"online", WAIT,
                   "devicebound-hub to be online")
        assert proc.poll() is None, (tmp_path / "devicebound-hub.log").read_text(errors="replace")
        status.disconnect()
        service = Service(broker, "hub", hub_token(hub_key))
        yield broker, service, device_id, device_key
        service.client.disconnect()
    finally:
        stop_process(proc)
        log.close()


def test_stock_python_sdk_with_devicebound_hub(daemon_setup):
    from azure.iot.device import IoTHubDeviceClient

    broker, service, device_id, device_key = daemon_setup
    received: "queue.Queue" = queue.Queue()

    # 1. Sent before the device ever connected.
    exp1 = iso_in(3600)
    # Names and values limited to SPEC 3.3's characters, which the hub enforces;
    # '&', '%', '#', '+' still need percent-encoding in the topic.
    app1 = {"color": "blue", "odd!#$%&'*+.^_`|~": "v&l%e#+!$'*.^_`|~", "empty": ""}
    service.send(device_id, b"\x00first\xff body", [
        ("$.mid", "mid-1"), ("$.cid", "corr-1"), ("$.exp", exp1),
        ("$.ct", "application/json"), ("$.ce", "utf-8")], app1)
    assert service.depth(device_id) == 1

    client = IoTHubDeviceClient.create_from_connection_string(
        connection_string(device_id, device_key, broker.tls_address),
        server_verification_cert=broker.certs.ca.read_text())
    try:
        client.connect()
        client.on_message_received = received.put
        check_message(received.get(timeout=WAIT), body=b"\x00first\xff body", mid="mid-1", cid="corr-1",
                      exp=exp1, ct="application/json", ce="utf-8", app=app1)
        # Completed when the broker handed it to the device (docs/stock-devices.md).
        wait_until(lambda: service.depth(device_id) == 0, WAIT, "the hub to complete the first message")

        # 2. Sent while the device is offline.
        client.disconnect()
        exp2 = iso_in(1800)
        service.send(device_id, b"second", [("$.mid", "mid-2"), ("$.cid", "corr-2"), ("$.exp", exp2),
                                            ("$.ct", "text/plain"), ("$.ce", "utf-16")], {"n": "2"})
        client.connect()  # no new SUBSCRIBE: the plugin announces the persistent session
        check_message(received.get(timeout=WAIT), body=b"second", mid="mid-2", cid="corr-2",
                      exp=exp2, ct="text/plain", ce="utf-16", app={"n": "2"})
        wait_until(lambda: service.depth(device_id) == 0, WAIT, "the hub to complete the second message")
        assert received.empty()
    finally:
        client.shutdown()
