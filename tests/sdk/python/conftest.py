"""The official Python SDKs against devicebound-hub: one mosquitto (with the
devicebound plugin) and one devicebound-hub (with its AMQP front door) per test
module, in a private network namespace.

Why a namespace: the Python service SDK's AMQP (uamqp) always connects to port
5671 and the Python device SDK to 8883 (SPEC 10.1.2, 5.4). scripts/test_sdk.sh
runs pytest as `unshare -n bash -c 'ip link set lo up; exec pytest ...'` with
DEVICEBOUND_SDK_NETNS=1; in there both ports are ours and nothing leaves the
namespace. Without it the tests skip, or fail when DEVICEBOUND_REQUIRE_ALL=1.

Trust: uamqp verifies the server certificate and its host name with OpenSSL's
default verify paths, so SSL_CERT_FILE=<our CA> is enough (found here: without
it the TLS handshake fails and the SDK reports "Authorization timeout"; with a
host name the certificate does not name, too). The HTTPS calls (msrest over
requests) trust REQUESTS_CA_BUNDLE=<our CA>. The device SDK is given the CA
with server_verification_cert.

HTTPS and the identity registry (`https_stack`): the hub also listens on 443
(the SDK builds "https://" + HostName), auth is on with IoT Hub's five default
policies, and the plugin reads the hub's SQLite registry
(plugin_opt_registry_db) so that devices created over REST can use MQTT. The
hub starts first there, to create and seed that store. Those tests skip (fail
with DEVICEBOUND_REQUIRE_ALL=1) only when the daemon lacks --https-listen.

The mosquitto helpers (config template, certificates, process handling) are
python/tests/conftest.py's, loaded under another module name.

Environment: DEVICEBOUND_HUB (or DEVICEBOUND_HUB_EXE), DEVICEBOUND_BROKER_PLUGIN,
DEVICEBOUND_SDK_NETNS, DEVICEBOUND_REQUIRE_ALL, DEVICEBOUND_MOSQUITTO.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HOSTNAME = "localhost"
AMQP_PORT = 5671
MQTT_TLS_PORT = 8883


def _load_broker_helpers():
    path = ROOT / "python" / "tests" / "conftest.py"
    # that conftest imports its siblings (`required`) as top-level modules
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("devicebound_broker_helpers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


helpers = _load_broker_helpers()
WAIT = helpers.WAIT
from required import missing_part  # noqa: E402  (python/tests, on sys.path since above)


def missing_or_skip(why: str):
    """Skips for a missing part; fails instead under DEVICEBOUND_REQUIRE_ALL=1."""
    missing_part(why)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers do: a previous module's listener leaves TIME_WAIT sockets behind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def call_with_timeout(fn, timeout: float, what: str):
    """Runs fn() on a daemon thread; returns its value, re-raises its exception,
    or raises TimeoutError after `timeout` s (the SDK call is then abandoned)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name=what, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@dataclass
class Stack:
    dir: Path
    certs: object
    broker: object
    hub: subprocess.Popen
    hub_log: Path
    device_keys: dict[str, str]
    policy_keys: dict[str, str]
    _log_file: object = field(default=None, repr=False)
    store: Path | None = None
    plugin_reads_registry: bool = False

    def service_cs(self, policy: str = "service", key: str | None = None) -> str:
        key = key or self.policy_keys[policy]
        return f"HostName={HOSTNAME};SharedAccessKeyName={policy};SharedAccessKey={key}"

    def device_mqtt_cs(self, device_id: str, key: str | None = None) -> str:
        key = key or self.device_keys[device_id]
        # The device SDK connects to GatewayHostName, port 8883 (docs/stock-devices.md).
        return (f"HostName={HOSTNAME};DeviceId={device_id};SharedAccessKey={key};"
                f"GatewayHostName={HOSTNAME}")

    def hub_log_text(self) -> str:
        try:
            return self.hub_log.read_text(errors="replace")
        except OSError:
            return ""


DEVICES = ["py-dev-1", "py-dev-2", "py-dev-3"]
HTTPS_PORT = 443
# IoT Hub's default shared access policies (SPEC 12.9.1); the hub gives each its default rights.
DEFAULT_POLICIES = ["iothubowner", "service", "device", "registryRead", "registryReadWrite"]


def hub_exe_or_skip() -> str:
    hub_exe = os.environ.get("DEVICEBOUND_HUB") or os.environ.get("DEVICEBOUND_HUB_EXE")
    if not hub_exe or not Path(hub_exe).is_file():
        missing_or_skip(f"devicebound-hub not found (DEVICEBOUND_HUB={hub_exe!r})")
    return hub_exe


def hub_has_https(hub_exe: str) -> bool:
    """True when the daemon has the HTTPS front door (step 9: --https-listen)."""
    try:
        out = subprocess.run([hub_exe, "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--https-listen" in out


def plugin_reads_registry(plugin: Path) -> bool:
    """True when the plugin knows plugin_opt_registry_db (reads the hub's identity registry)."""
    try:
        return b"registry_db" in plugin.read_bytes()
    except OSError:
        return False


def _stack(tmp_path_factory, *, https: bool, devices: list[str]):
    """mosquitto + devicebound-hub (AMQP on 5671, MQTT/TLS on 8883; with `https`
    also HTTPS on 443 and IoT Hub's five default policies, the hub started
    first so that the plugin can read the SQLite registry it seeds)."""
    if os.environ.get("DEVICEBOUND_SDK_NETNS") != "1":
        missing_or_skip("not in a private network namespace (run scripts/test_sdk.sh, which uses "
                        "`unshare -n`): the Python SDKs need ports 5671 and 8883 (and 443 for HTTPS)")
    hub_exe = hub_exe_or_skip()
    if https and not hub_has_https(hub_exe):
        missing_or_skip(f"{hub_exe} has no --https-listen (the HTTPS front door is not built in)")
    for port in (AMQP_PORT, MQTT_TLS_PORT) + ((HTTPS_PORT,) if https else ()):
        if not _port_free(port):
            missing_or_skip(f"127.0.0.1:{port} is taken, even in this network namespace")
    plugin = helpers.find_plugin()
    if plugin is None or not plugin.exists():
        missing_or_skip("devicebound_mosquitto_plugin.so not found (DEVICEBOUND_BROKER_PLUGIN)")
    if helpers.find_mosquitto() is None:
        missing_or_skip("mosquitto is not installed")

    work = tmp_path_factory.mktemp("sdk-python-https" if https else "sdk-python")
    certs = helpers.make_certs(work / "certs")  # localhost and 127.0.0.1
    device_keys = {d: helpers.new_key() for d in devices}
    policies = DEFAULT_POLICIES if https else ["iothubowner", "service", "device"]
    policy_keys = {p: helpers.new_key() for p in policies}
    auth = work / "auth"
    auth.write_text("".join(f"{d} {k}\n" for d, k in device_keys.items())
                    + "".join(f"policy {p} {k}\n" for p, k in policy_keys.items()))
    store = work / "hub.db"

    plain_port = helpers.free_port()
    data_dir = work / "mosquitto-data"
    data_dir.mkdir()
    plugin_options = [f"plugin_opt_auth_file {auth}"]
    reads_registry = https and plugin_reads_registry(plugin)
    if reads_registry:
        plugin_options.append(f"plugin_opt_registry_db {store}")
    broker = helpers.Broker(work, plain_port, "127.0.0.1", MQTT_TLS_PORT, certs, work / "mosquitto.conf",
                            work / "mosquitto.log")
    helpers.render_conf(broker.conf, plain_port=plain_port, tls_address="127.0.0.1", tls_port=MQTT_TLS_PORT,
                        certs=certs, data_dir=data_dir, plugin=plugin, plugin_options=plugin_options)

    hub_log = work / "devicebound-hub.log"
    log_file = open(hub_log, "wb")
    argv = [hub_exe, "--host", "127.0.0.1", "--port", str(plain_port), "--client-id", "devicebound-hub",
            "--username", "iothubowner", "--broker-sas-key", policy_keys["iothubowner"],
            "--store", str(store),
            "--amqp-listen", f"127.0.0.1:{AMQP_PORT}",
            "--tls-server-cert", str(certs.cert), "--tls-server-key", str(certs.key),
            "--iothub-hostname", HOSTNAME, "--auth-file", str(auth),
            "--feedback-batch-interval", "0s", "--log-level", "debug"]
    if https:
        argv += ["--https-listen", f"127.0.0.1:{HTTPS_PORT}", "--reconnect-initial", "20ms",
                 "--reconnect-max", "200ms"]
    for d in devices:
        argv += ["--device", d]
    s = None
    hub = None
    try:
        if not https:
            broker.start()
        hub = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        s = Stack(work, certs, broker, hub, hub_log, device_keys, policy_keys, log_file)
        s.store = store
        s.plugin_reads_registry = reads_registry

        def alive():
            if hub.poll() is not None:
                raise RuntimeError(f"devicebound-hub exited ({hub.returncode}):\n{' '.join(argv)}\n"
                                   f"{s.hub_log_text()}")

        if https:
            # The hub first: it creates and seeds the store the plugin reads.
            helpers.wait_until(lambda: alive() or "store '" in s.hub_log_text(), WAIT, "devicebound-hub's store")
            broker.start()

        def ready():
            alive()
            text = s.hub_log_text()
            return ("connected to the broker" in text and "amqp: listening on" in text
                    and helpers.port_open("127.0.0.1", AMQP_PORT)
                    and (not https or helpers.port_open("127.0.0.1", HTTPS_PORT)))

        helpers.wait_until(ready, WAIT, "devicebound-hub to be connected and listening")
        # uamqp: OpenSSL's default verify paths; requests (HTTPS, msrest): REQUESTS_CA_BUNDLE
        # (SPEC 12.10; see the module docstring).
        saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
        os.environ["SSL_CERT_FILE"] = str(certs.ca)
        os.environ["REQUESTS_CA_BUNDLE"] = str(certs.ca)
        try:
            yield s
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        if hub is not None:
            helpers.stop_process(hub)
        log_file.close()
        broker.stop()
        if os.environ.get("DEVICEBOUND_SDK_KEEP") == "1":
            print(f"kept {work}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from _stack(tmp_path_factory, https=False, devices=DEVICES)


HTTPS_DEVICES = ["py-seeded", "py-purge", "py-count"]


@pytest.fixture(scope="module")
def https_stack(tmp_path_factory):
    """The hub with its HTTPS door on 443 and the identity registry (auth on,
    SQLite store, IoT Hub's default policies); HTTPS_DEVICES come from --auth-file."""
    yield from _stack(tmp_path_factory, https=True, devices=HTTPS_DEVICES)


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def now_ms() -> int:
    return int(time.time() * 1000)
