"""`devicebound up` with the official Python device SDK (azure-iot-device),
given only what `up --output json` printed.

The Python device SDK connects to port 8883 only, so `up` runs on IoT Hub's
own ports here: scripts/test_sdk.sh runs this file inside a private network
namespace (`unshare -n`, DEVICEBOUND_SDK_NETNS=1), where those ports are ours.
The message is sent by the official Node service SDK (tests/sdk/up/client.js,
started with NODE_EXTRA_CA_CERTS as `up` printed).

Environment: DEVICEBOUND_CLI (default <build>/apps/devicebound),
DEVICEBOUND_SDK_NETNS, DEVICEBOUND_REQUIRE_ALL.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "python" / "tests"))
from required import missing_part  # noqa: E402  (python/tests/required.py)

WAIT = 60.0


def _cli() -> Path:
    if os.environ.get("DEVICEBOUND_CLI"):
        return Path(os.environ["DEVICEBOUND_CLI"])
    build = Path(os.environ.get("DEVICEBOUND_BUILD_PREFIX", "build"))
    return (build if build.is_absolute() else ROOT / build) / "apps" / "devicebound"


def _missing() -> str | None:
    if os.environ.get("DEVICEBOUND_SDK_NETNS") != "1":
        return "needs ports 8883/5671: run by scripts/test_sdk.sh in a private network namespace"
    if not _cli().exists():
        return f"{_cli()} is not built (set DEVICEBOUND_CLI)"
    if not (ROOT / "tests" / "sdk" / "node_modules" / "azure-iothub").exists():
        return "tests/sdk/node_modules lacks azure-iothub (npm ci in tests/sdk)"
    if shutil.which("node") is None:
        return "node is not installed"
    return None


def _skip_or_fail() -> None:
    why = _missing()
    if why:
        missing_part(why)


class Up:
    """`devicebound up --output json` as a child; `info` is its JSON line."""

    def __init__(self, state_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(_cli()), "up", "--output", "json", "--state-dir", str(state_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.stderr.append(l) for l in self.proc.stderr], daemon=True).start()
        try:
            self.info = json.loads(lines.get(timeout=WAIT))
        except queue.Empty:
            self.stop()
            pytest.fail("devicebound up printed nothing within 60 s:\n" + "".join(self.stderr))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=WAIT)


def test_python_device_sdk_receives_from_up() -> None:
    _skip_or_fail()
    from azure.iot.device import IoTHubDeviceClient

    work = Path(tempfile.mkdtemp(prefix="devicebound-up-py-"))
    up = Up(work / "state", "--device", "py-dev")
    try:
        info = up.info
        assert info["ports"]["mqtt"] == 8883 and info["ports"]["amqp"] == 5671
        cs = info["devices"]["py-dev"]
        assert "GatewayHostName" not in cs  # IoT Hub's ports: the plain connection string

        env = dict(os.environ, NODE_EXTRA_CA_CERTS=info["ca_file"], DEVICEBOUND_UP_JSON=json.dumps(info))
        sent = subprocess.run(["node", str(HERE / "client.js"), "send", "py-dev", "py-msg-1"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        got: queue.Queue = queue.Queue()
        client = IoTHubDeviceClient.create_from_connection_string(
            cs, server_verification_cert=Path(info["ca_file"]).read_text())
        client.on_message_received = got.put
        client.connect()
        try:
            msg = got.get(timeout=WAIT)
            assert msg.message_id == "py-msg-1"
            assert msg.data == b"queued py-msg-1"
        finally:
            client.shutdown()
    finally:
        code = up.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert code == 0, "".join(up.stderr)
