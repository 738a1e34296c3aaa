"""The devicebound mosquitto plugin, through plain MQTT clients (paho-mqtt):
its three events, its ACL and its SAS authentication.

An absence ("no event", "not received") is proven with a sentinel: an action
whose result the broker must deliver after the one that must not happen, so no
test waits for a quiet period.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from required import missing_part

from conftest import (
    HUB_HOSTNAME,
    WAIT,
    EventListener,
    MqttClient,
    device_username,
    new_key,
    sas_token,
    wait_until,
)

DEVICEBOUND = "/messages/devicebound/"


def filter_of(device_id: str) -> str:
    return f"devices/{device_id}{DEVICEBOUND}#"


def topic_of(device_id: str, bag: str = "") -> str:
    return f"devices/{device_id}{DEVICEBOUND}{bag}"


def device(broker, clients, device_id, *, clean_session=False, subscribe=True, **kwargs):
    client = clients.add(MqttClient(broker.plain_port, device_id, clean_session=clean_session, **kwargs))
    assert client.connect() == 0
    if subscribe:
        assert client.subscribe(filter_of(device_id)) == 1
    return client


def sentinel(broker, clients, events, name="sentinel"):
    """Makes the plugin publish subscribed/{name}; asserts it is the next event."""
    device(broker, clients, name, clean_session=True)
    events.expect("subscribed", name, filter_of(name).encode())


# --------------------------------------------------------------------------- #
# Events


def test_subscribed_delivered_disconnected(start_broker, clients):
    broker = start_broker()
    events = clients.add(EventListener(broker))
    hub = clients.add(MqttClient(broker.plain_port, "backend"))
    assert hub.connect() == 0

    dev = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1", filter_of("dev1").encode())

    topic = topic_of("dev1", "%24.mid=m1&%24.ct=text%2Fplain&color=blue")
    hub.publish(topic, b"hello")
    received = dev.expect()
    assert (received.topic, received.payload) == (topic, b"hello")
    events.expect("delivered", "dev1", topic.encode())

    # A second message with an empty bag, as the hub writes it.
    hub.publish(topic_of("dev1"), b"")
    assert dev.expect().topic == topic_of("dev1")
    events.expect("delivered", "dev1", topic_of("dev1").encode())

    dev.disconnect()
    events.expect("disconnected", "dev1", b"")


def test_lost_connection_reports_disconnected(start_broker, clients):
    broker = start_broker()
    events = clients.add(EventListener(broker))
    dev = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")
    dev.drop()
    events.expect("disconnected", "dev1", b"")


def test_other_filters_do_not_announce(start_broker, clients):
    broker = start_broker()
    events = clients.add(EventListener(broker))
    dev = device(broker, clients, "dev1", subscribe=False)
    assert dev.subscribe("devices/dev1/messages/devicebound/+") == 1
    assert dev.subscribe("devices/dev1/twin/#") == 1
    sentinel(broker, clients, events)


def test_offline_message_is_reported_when_handed_over_on_reconnect(start_broker, clients):
    """A message routed to an offline persistent session is not "delivered"
    until the device is back, and the device, which (like stock SDKs) does not
    subscribe again on reconnect, is announced as subscribed."""
    broker = start_broker()
    events = clients.add(EventListener(broker))
    hub = clients.add(MqttClient(broker.plain_port, "backend"))
    assert hub.connect() == 0

    dev = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")
    dev.disconnect()
    events.expect("disconnected", "dev1")

    topic = topic_of("dev1", "%24.mid=offline")
    hub.publish(topic, b"queued by the broker")
    sentinel(broker, clients, events)  # no "delivered" while offline

    back = device(broker, clients, "dev1", subscribe=False)
    events.expect("subscribed", "dev1", filter_of("dev1").encode())
    events.expect("delivered", "dev1", topic.encode())
    received = back.expect()
    assert (received.topic, received.payload) == (topic, b"queued by the broker")


def test_clean_session_forgets_the_subscription(start_broker, clients):
    broker = start_broker()
    events = clients.add(EventListener(broker))
    dev = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")
    dev.disconnect()
    events.expect("disconnected", "dev1")

    clean = device(broker, clients, "dev1", clean_session=True, subscribe=False)
    clean.disconnect()
    events.expect("disconnected", "dev1")  # no "subscribed" before it

    again = device(broker, clients, "dev1", subscribe=False)
    sentinel(broker, clients, events)  # the clean session dropped the subscription
    again.disconnect()
    events.expect("disconnected", "dev1")


def test_unsubscribe_forgets_the_subscription(start_broker, clients):
    broker = start_broker()
    events = clients.add(EventListener(broker))
    dev = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")
    dev.unsubscribe(filter_of("dev1"))
    dev.disconnect()
    events.expect("disconnected", "dev1")
    device(broker, clients, "dev1", subscribe=False)
    sentinel(broker, clients, events)


def test_takeover_by_the_same_device_is_not_a_disconnect(start_broker, clients):
    """A device reconnecting while the broker still holds its old connection:
    the old one is closed, the device stays online."""
    broker = start_broker()
    events = clients.add(EventListener(broker))
    old = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")

    new = device(broker, clients, "dev1", subscribe=False)
    events.expect("subscribed", "dev1")  # its session holds the subscription
    old.wait_disconnected()
    sentinel(broker, clients, events)  # and no "disconnected" for the old connection

    hub = clients.add(MqttClient(broker.plain_port, "backend"))
    assert hub.connect() == 0
    hub.publish(topic_of("dev1", "%24.mid=after"), b"x")
    assert new.expect().topic == topic_of("dev1", "%24.mid=after")
    events.expect("delivered", "dev1")
    new.disconnect()
    events.expect("disconnected", "dev1")


def test_takeover_with_a_clean_session_is_a_disconnect(start_broker, clients):
    """The clean session discards the old one and its subscription."""
    broker = start_broker()
    events = clients.add(EventListener(broker))
    old = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")
    new = device(broker, clients, "dev1", clean_session=True, subscribe=False)
    events.expect("disconnected", "dev1")
    old.wait_disconnected()
    assert new.subscribe(filter_of("dev1")) == 1
    events.expect("subscribed", "dev1")
    new.disconnect()
    events.expect("disconnected", "dev1")


def test_backend_subscription_gets_the_online_devices(start_broker, clients):
    """A hub that (re)subscribes learns which devices are online and subscribed."""
    broker = start_broker()
    events = clients.add(EventListener(broker))
    device(broker, clients, "online1")
    events.expect("subscribed", "online1")
    device(broker, clients, "online2")
    events.expect("subscribed", "online2")
    device(broker, clients, "connected-not-subscribed", subscribe=False)
    gone = device(broker, clients, "offline")
    events.expect("subscribed", "offline")
    gone.disconnect()
    events.expect("disconnected", "offline")

    late = clients.add(EventListener(broker, "late-hub"))
    announced = {late.next().device, late.next().device}
    assert announced == {"online1", "online2"}
    device(broker, clients, "sentinel", clean_session=True)
    late.expect("subscribed", "sentinel")


def test_restart_keeps_sessions_and_announces_returning_devices(start_broker, clients):
    broker = start_broker()
    events = EventListener(broker)
    dev = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")
    dev.disconnect()
    events.expect("disconnected", "dev1")
    events.close()

    broker.restart()
    assert (broker.workdir / "data" / "devicebound-plugin.state").read_text() == "dev1\n"
    events = clients.add(EventListener(broker))
    back = device(broker, clients, "dev1", subscribe=False)
    events.expect("subscribed", "dev1")
    hub = clients.add(MqttClient(broker.plain_port, "backend"))
    assert hub.connect() == 0
    hub.publish(topic_of("dev1", "%24.mid=after-restart"), b"y")
    assert back.expect().payload == b"y"
    events.expect("delivered", "dev1")


def test_broker_started_as_root_keeps_sessions_across_restart(start_broker, clients):
    """The template's `user` line. Started as root (as CI runs), mosquitto runs as
    @USER@, here the owner of DATA_DIR; without the line it switched to "mosquitto",
    could write neither mosquitto.db nor the plugin's state file, and a restart lost
    device sessions with the messages queued in them."""
    if os.geteuid() != 0:
        missing_part("needs root (CI runs as root): started by another user, "
                     "mosquitto ignores the user line")
    broker = start_broker()
    data = broker.workdir / "data"
    assert data.stat().st_uid == 0
    assert "\nuser root\n" in broker.conf.read_text()
    status = Path(f"/proc/{broker.proc.pid}/status").read_text()
    assert re.search(r"^Uid:\s+0\s+0\s", status, re.M), status

    events = clients.add(EventListener(broker))
    dev = device(broker, clients, "dev1")
    events.expect("subscribed", "dev1")
    dev.disconnect()
    events.expect("disconnected", "dev1")
    # Offline: the broker queues it in dev1's persistent session before its PUBACK.
    hub = clients.add(MqttClient(broker.plain_port, "backend"))
    assert hub.connect() == 0
    queued = topic_of("dev1", "%24.mid=queued-offline")
    hub.publish(queued, b"kept")
    hub.disconnect()
    events.close()

    broker.restart()  # SIGTERM: mosquitto saves its database, the plugin its state
    log = broker.log_text()
    assert "Error saving" not in log and "cannot write" not in log, log
    assert (data / "mosquitto.db").is_file()
    assert (data / "devicebound-plugin.state").read_text() == "dev1\n"

    events = clients.add(EventListener(broker))
    back = device(broker, clients, "dev1", subscribe=False)  # the session keeps the subscription
    events.expect("subscribed", "dev1")
    received = back.expect()
    assert (received.topic, received.payload) == (queued, b"kept")
    events.expect("delivered", "dev1", queued.encode())


# --------------------------------------------------------------------------- #
# ACL


def test_device_cannot_subscribe_outside_its_own_topics(start_broker, clients):
    broker = start_broker()
    dev2 = device(broker, clients, "dev2", subscribe=False, username=device_username("dev2"))
    for refused in (filter_of("dev1"), "devices/+/messages/devicebound/#", "devices/#", "#",
                    "+/dev1/messages/devicebound/#", "devicebound/broker/#", "$share/g/devices/dev1/#"):
        assert dev2.subscribe(refused) == 0x80, refused
    assert dev2.subscribe(filter_of("dev2")) == 1


def test_backend_cannot_subscribe_to_device_topics(start_broker, clients):
    broker = start_broker()
    backend = clients.add(MqttClient(broker.plain_port, "backend"))
    assert backend.connect() == 0
    for refused in (filter_of("dev1"), "devices/+/messages/devicebound/#", "devices/#"):
        assert backend.subscribe(refused) == 0x80, refused


def test_wildcard_subscriber_never_reads_device_bound_messages(start_broker, clients):
    broker = start_broker()
    snoop = clients.add(MqttClient(broker.plain_port, "snoop"))
    assert snoop.connect() == 0
    assert snoop.subscribe("#") == 1
    assert snoop.subscribe("+/dev1/messages/devicebound/#") == 1
    dev1 = device(broker, clients, "dev1")
    hub = clients.add(MqttClient(broker.plain_port, "backend"))
    assert hub.connect() == 0

    hub.publish(topic_of("dev1", "%24.mid=secret"), b"secret")
    assert dev1.expect().payload == b"secret"
    hub.publish("other/topic", b"sentinel")
    while True:
        msg = snoop.expect()
        if msg.topic.startswith("devicebound/broker/"):
            continue  # the events, which back ends may read
        assert msg.topic == "other/topic", msg.topic
        break


def test_nobody_publishes_broker_events(start_broker, clients):
    broker = start_broker()
    events = clients.add(EventListener(broker))
    backend = clients.add(MqttClient(broker.plain_port, "backend"))
    assert backend.connect() == 0
    backend.publish("devicebound/broker/subscribed/fake", b"devices/fake/messages/devicebound/#")
    backend.publish("devicebound/broker", b"x")
    dev = device(broker, clients, "dev9", subscribe=False, username=device_username("dev9"))
    dev.publish("devicebound/broker/delivered/dev9", b"x")
    sentinel(broker, clients, events)


def test_devices_cannot_inject_device_bound_messages(start_broker, clients):
    broker = start_broker()
    dev1 = device(broker, clients, "dev1")
    dev2 = device(broker, clients, "dev2", username=device_username("dev2"))
    backend = clients.add(MqttClient(broker.plain_port, "backend"))
    assert backend.connect() == 0

    dev2.publish(topic_of("dev1", "%24.mid=forged"), b"forged")  # another device's
    dev2.publish(topic_of("dev2", "%24.mid=self"), b"self")      # its own
    backend.publish(topic_of("dev1", "%24.mid=retained"), b"retained", retain=True)
    dev2.publish("devices/dev2/messages/events/", b"telemetry is allowed")
    backend.publish(topic_of("dev1", "%24.mid=real"), b"real")
    backend.publish(topic_of("dev2", "%24.mid=real"), b"real")
    assert dev1.expect().payload == b"real"
    assert dev2.expect().payload == b"real"

    # The retained publish was refused, so a later subscriber gets nothing stored.
    dev3 = device(broker, clients, "dev3", subscribe=False)
    assert dev3.subscribe("devices/dev3/#") == 1
    backend.publish(topic_of("dev3", "%24.mid=real"), b"real")
    assert dev3.expect().topic == topic_of("dev3", "%24.mid=real")


def test_extension_topics_are_per_client(start_broker, clients):
    """docs/protocol.md extension topics: pushes are read only by the client
    they name, requests are written only in the writer's own name, and devices
    use only their own device-party topics (and read the hub's status)."""
    broker = start_broker()
    hub = clients.add(MqttClient(broker.plain_port, "devicebound-hub"))
    assert hub.connect() == 0
    assert hub.subscribe("devicebound/hub/#") == 1

    dev2 = device(broker, clients, "dev2", subscribe=False, username=device_username("dev2"))
    assert dev2.subscribe("devicebound/device/dev2/#") == 1
    assert dev2.subscribe("devicebound/status/hub") == 1
    for refused in ("devicebound/device/dev1/#", "devicebound/device/+/#", "devicebound/service/dev2/#",
                    "devicebound/hub/#", "devicebound/#"):
        assert dev2.subscribe(refused) == 0x80, refused

    svc1 = clients.add(MqttClient(broker.plain_port, "svc1"))
    assert svc1.connect() == 0
    assert svc1.subscribe("devicebound/service/svc1/#") == 1
    for refused in ("devicebound/service/svc2/#", "devicebound/device/dev2/#", "devicebound/admin/a/#"):
        assert svc1.subscribe(refused) == 0x80, refused
    assert svc1.subscribe("devicebound/#") == 1  # allowed, but reads only its own pushes

    # Requests in another client's name, or a device in the service party: refused.
    dev2.publish("devicebound/hub/device/dev1/complete/%24.lock=x", b"")
    dev2.publish("devicebound/hub/service/dev2/send/dev1/%24.rid=1", b"")
    svc1.publish("devicebound/hub/service/svc2/send/dev1/%24.rid=2", b"")
    svc1.publish("devicebound/hub/device/dev2/complete/%24.lock=y", b"")
    dev2.publish("devicebound/status/hub", b"offline")
    dev2.publish("devicebound/device/dev2/message/", b"")
    # In their own names: accepted.
    dev2.publish("devicebound/hub/device/dev2/complete/%24.lock=z", b"")
    svc1.publish("devicebound/hub/service/svc1/send/dev2/%24.rid=3", b"")
    assert hub.expect().topic == "devicebound/hub/device/dev2/complete/%24.lock=z"
    assert hub.expect().topic == "devicebound/hub/service/svc1/send/dev2/%24.rid=3"

    # The hub's pushes reach only the client they name.
    hub.publish("devicebound/device/dev2/message/%24.mid=m", b"for dev2")
    hub.publish("devicebound/service/svc2/reply/%24.rid=9", b"for svc2")
    hub.publish("devicebound/service/svc1/reply/%24.rid=3", b"for svc1")
    hub.publish("devicebound/status/hub", b"online", retain=True)
    assert dev2.expect().payload == b"for dev2"
    assert dev2.expect().payload == b"online"
    seen = set()
    while ("devicebound/status/hub", b"online") not in seen:  # published last
        msg = svc1.expect()
        if not msg.topic.startswith("devicebound/hub/"):  # its own request, via devicebound/#
            seen.add((msg.topic, msg.payload))
    assert seen == {("devicebound/service/svc1/reply/%24.rid=3", b"for svc1"),
                    ("devicebound/status/hub", b"online")}


def test_client_ids_with_wildcards_are_refused(start_broker, clients):
    broker = start_broker()
    for bad in ("+", "a#", "a/b"):
        client = clients.add(MqttClient(broker.plain_port, bad))
        assert client.connect() == 5, bad


def test_username_naming_another_device_is_refused(start_broker, clients):
    broker = start_broker()
    client = clients.add(MqttClient(broker.plain_port, "dev2", username=device_username("dev1")))
    assert client.connect() == 5


# --------------------------------------------------------------------------- #
# SAS authentication (plugin_opt_auth_file)


def write_auth_file(path, devices: dict[str, str], policies: dict[str, str]):
    lines = ["# devicebound test keys"]
    lines += [f"{device_id} {key}" for device_id, key in devices.items()]
    lines += [f"policy {name} {key}" for name, key in policies.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def try_connect(broker, clients, client_id, username=None, password=None) -> int:
    client = clients.add(MqttClient(broker.plain_port, client_id, username=username, password=password))
    return client.connect()


def test_sas_authentication(start_broker, clients, tmp_path):
    dev_key, other_key, hub_key = new_key(), new_key(), new_key()
    auth = write_auth_file(tmp_path / "keys", {"dev1": dev_key, "dev2": other_key}, {"hub": hub_key})
    broker = start_broker(auth_file=auth)
    resource = f"{HUB_HOSTNAME}/devices/dev1"

    ok = sas_token(resource, dev_key)
    assert try_connect(broker, clients, "dev1", device_username("dev1"), ok) == 0
    # Some SDKs lowercase the resource before signing (SPEC 5.3).
    assert try_connect(broker, clients, "dev1", device_username("dev1"),
                       sas_token(resource.lower(), dev_key)) == 0
    # Within the clock skew: accepted, as by the hub's other doors.
    assert try_connect(broker, clients, "dev1", device_username("dev1"),
                       sas_token(resource, dev_key, int(time.time()) - 60)) == 0

    refused = {
        "wrong key": ("dev1", device_username("dev1"), sas_token(resource, other_key)),
        # Past se plus the 5 minutes of clock skew every door allows (SPEC 12.7.3).
        "expired": ("dev1", device_username("dev1"), sas_token(resource, dev_key, int(time.time()) - 400)),
        "other resource": ("dev1", device_username("dev1"),
                           sas_token(f"{HUB_HOSTNAME}/devices/dev2", dev_key)),
        "other host": ("dev1", device_username("dev1"), sas_token("other.example/devices/dev1", dev_key)),
        "unknown device": ("dev3", device_username("dev3"),
                           sas_token(f"{HUB_HOSTNAME}/devices/dev3", dev_key)),
        "no password": ("dev1", device_username("dev1"), None),
        "not a token": ("dev1", device_username("dev1"), dev_key),
        "policy token for a device": ("dev1", device_username("dev1"),
                                      sas_token(resource, hub_key, policy="hub")),
        "anonymous": ("anon", None, None),
        "back end, wrong password": ("backend", "hub", other_key),
        # A raw key is never a password, not even the right one (issue 14).
        "back end, the policy's raw key": ("backend", "hub", hub_key),
        "back end, unknown policy": ("backend", "nobody", sas_token(HUB_HOSTNAME, hub_key, policy="nobody")),
        "back end, token without skn": ("backend", "hub", sas_token(HUB_HOSTNAME, hub_key)),
    }
    for case, (client_id, username, password) in refused.items():
        assert try_connect(broker, clients, client_id, username, password) == 5, case

    # Back ends: a policy SAS token (any user name).
    assert try_connect(broker, clients, "backend1", "hub@sas.root.devicebound",
                       sas_token(HUB_HOSTNAME, hub_key, policy="hub")) == 0
    assert try_connect(broker, clients, "backend2", "hub", sas_token(HUB_HOSTNAME, hub_key, policy="hub")) == 0


def test_iothub_hostname_scopes_every_token(start_broker, clients, tmp_path):
    """plugin_opt_iothub_hostname (as `devicebound up` sets it): a device's user name
    and every token must name this hub; a back end's token for another hub is refused
    (issue 14: a back end's sr is checked against the hub host)."""
    dev_key, hub_key = new_key(), new_key()
    auth = write_auth_file(tmp_path / "keys", {"dev1": dev_key}, {"hub": hub_key})
    broker = start_broker(auth_file=auth, options=[f"plugin_opt_iothub_hostname {HUB_HOSTNAME.upper()}:8883"])
    resource = f"{HUB_HOSTNAME}/devices/dev1"
    assert try_connect(broker, clients, "dev1", device_username("dev1"), sas_token(resource, dev_key)) == 0
    assert try_connect(broker, clients, "be1", "hub", sas_token(HUB_HOSTNAME, hub_key, policy="hub")) == 0
    refused = {
        "device names another hub in its user name": (
            "dev1", device_username("dev1", host="other.example"), sas_token("other.example/devices/dev1", dev_key)),
        "device token for another hub": ("dev1", device_username("dev1"), sas_token("other.example/devices/dev1", dev_key)),
        "back end token for another hub": ("be2", "hub", sas_token("other.example", hub_key, policy="hub")),
    }
    for case, (client_id, username, password) in refused.items():
        assert try_connect(broker, clients, client_id, username, password) == 5, case


def test_authenticated_device_gets_events_and_acl(start_broker, clients, tmp_path):
    dev_key, hub_key = new_key(), new_key()
    auth = write_auth_file(tmp_path / "keys", {"dev1": dev_key}, {"hub": hub_key})
    broker = start_broker(auth_file=auth)
    events = clients.add(EventListener(broker, username="hub", password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))
    dev = device(broker, clients, "dev1", username=device_username("dev1"),
                 password=sas_token(f"{HUB_HOSTNAME}/devices/dev1", dev_key))
    events.expect("subscribed", "dev1")
    assert dev.subscribe("devicebound/broker/#") == 0x80
    hub = clients.add(MqttClient(broker.plain_port, "backend", username="hub",
                                 password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))
    assert hub.connect() == 0
    hub.publish(topic_of("dev1", "%24.mid=1"), b"z")
    assert dev.expect().payload == b"z"
    events.expect("delivered", "dev1")


def test_authenticated_extended_device_uses_its_extension_topics(start_broker, clients, tmp_path):
    """With auth_file, a device authenticated with its SAS token (device-style
    username) speaks devicebound's extension topics in its own name only: it
    subscribes to devicebound/device/{own}/# and the hub's status, reads the
    hub's pushes to it, and publishes (and wills) devicebound/hub/device/{own}/..."""
    dev_key, other_key, hub_key = new_key(), new_key(), new_key()
    auth = write_auth_file(tmp_path / "keys", {"dev1": dev_key, "dev2": other_key}, {"hub": hub_key})
    broker = start_broker(auth_file=auth)
    hub = clients.add(MqttClient(broker.plain_port, "devicebound-hub", username="hub",
                                 password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))
    assert hub.connect() == 0
    assert hub.subscribe("devicebound/hub/#") == 1

    will = "devicebound/hub/device/dev1/detach/%24.conn=c1"
    dev = clients.add(MqttClient(broker.plain_port, "dev1", clean_session=False, username=device_username("dev1"),
                                 password=sas_token(f"{HUB_HOSTNAME}/devices/dev1", dev_key)))
    dev._c.will_set(will, b"", qos=1)  # as devicebound's transport: detach when the connection drops
    assert dev.connect() == 0
    assert dev.subscribe("devicebound/device/dev1/#") == 1
    assert dev.subscribe("devicebound/status/hub") == 1
    for refused in ("devicebound/device/dev2/#", "devicebound/device/+/#", "devicebound/hub/#"):
        assert dev.subscribe(refused) == 0x80, refused

    dev.publish("devicebound/hub/device/dev2/attach/%24.conn=x", b"")  # another device's name: refused
    dev.publish("devicebound/hub/device/dev1/attach/%24.conn=c1&%24.rid=1", b"")
    assert hub.expect().topic == "devicebound/hub/device/dev1/attach/%24.conn=c1&%24.rid=1"

    hub.publish("devicebound/device/dev2/message/%24.mid=n", b"not for dev1")
    hub.publish("devicebound/device/dev1/reply/%24.rid=1&%24.code=0", b"")
    hub.publish("devicebound/device/dev1/message/%24.mid=m", b"for dev1")
    hub.publish("devicebound/status/hub", b"online", retain=True)
    assert dev.expect().topic == "devicebound/device/dev1/reply/%24.rid=1&%24.code=0"
    assert dev.expect().payload == b"for dev1"
    assert dev.expect().payload == b"online"

    dev.drop()  # the will goes out in the device's name
    assert hub.expect().topic == will


def test_sighup_reloads_the_auth_file(start_broker, clients, tmp_path):
    old_key, new_key_ = new_key(), new_key()
    auth = write_auth_file(tmp_path / "keys", {"dev1": old_key}, {})
    broker = start_broker(auth_file=auth)
    resource = f"{HUB_HOSTNAME}/devices/dev1"
    assert try_connect(broker, clients, "dev1", device_username("dev1"), sas_token(resource, new_key_)) == 5

    def loads():
        return broker.log_text().count("devicebound: auth_file")

    write_auth_file(auth, {"dev1": new_key_, "dev2": new_key_}, {})
    os.kill(broker.proc.pid, signal.SIGHUP)
    wait_until(lambda: loads() == 2, WAIT, "the auth file to be reloaded")
    assert try_connect(broker, clients, "dev1", device_username("dev1"), sas_token(resource, new_key_)) == 0
    assert try_connect(broker, clients, "dev1", device_username("dev1"), sas_token(resource, old_key)) == 5

    auth.write_text("dev1 broken!\n")  # a bad file is refused; the keys stay
    os.kill(broker.proc.pid, signal.SIGHUP)
    wait_until(lambda: "is not base64" in broker.log_text(), WAIT, "the bad reload to be refused")
    assert try_connect(broker, clients, "dev1", device_username("dev1"), sas_token(resource, new_key_)) == 0


def test_sighup_checks_connected_clients_against_the_new_keys(start_broker, clients, tmp_path):
    """A reloaded auth file counts for the clients already connected, as a
    registry change does: a device whose key changed and a back end whose
    policy is gone are disconnected; the others stay."""
    key1, key2, hub_key, ops_key = new_key(), new_key(), new_key(), new_key()
    auth = write_auth_file(tmp_path / "keys", {"dev1": key1, "dev2": key2},
                           {"hub": hub_key, "ops": ops_key})
    broker = start_broker(auth_file=auth)
    connections = {}
    for client_id, username, password in (
            ("dev1", device_username("dev1"), sas_token(f"{HUB_HOSTNAME}/devices/dev1", key1)),
            ("dev2", device_username("dev2"), sas_token(f"{HUB_HOSTNAME}/devices/dev2", key2)),
            ("devicebound-hub", "hub", sas_token(HUB_HOSTNAME, hub_key, policy="hub")),
            ("ops", "ops", sas_token(HUB_HOSTNAME, ops_key, policy="ops"))):
        connections[client_id] = clients.add(MqttClient(broker.plain_port, client_id,
                                                        username=username, password=password))
        assert connections[client_id].connect() == 0, client_id

    write_auth_file(auth, {"dev1": new_key(), "dev2": key2}, {"hub": hub_key})
    os.kill(broker.proc.pid, signal.SIGHUP)
    connections["dev1"].wait_disconnected()
    connections["ops"].wait_disconnected()
    log = broker.log_text()
    assert "disconnecting device dev1: its credentials no longer hold: BadSignature" in log
    assert "disconnecting back end ops: its credentials no longer hold: UnknownPolicy" in log
    assert log.count("disconnecting ") == 2
    for client_id in ("dev2", "devicebound-hub"):  # a round trip after the check
        assert connections[client_id].subscribe("devicebound/status/hub") == 1, client_id
        assert not connections[client_id].is_disconnected, client_id


def test_bad_auth_file_stops_the_broker(start_broker, tmp_path):
    bad = tmp_path / "keys"
    bad.write_text("dev1 not-base64!\n")
    try:
        start_broker(auth_file=bad)
    except RuntimeError as error:
        assert "not base64" in str(error)
    else:
        raise AssertionError("mosquitto started with a bad auth file")


def test_auth_file_policy_rights(start_broker, clients, tmp_path):
    """Policy lines may name their rights (the hub's --auth-file format); a
    line without rights gets IoT Hub's default for that name, ServiceConnect
    for any other (SPEC 12.9.1). A back end needs ServiceConnect or
    DeviceConnect; a DeviceConnect policy may also sign for a device."""
    ops, reader, device_policy, dev_key = new_key(), new_key(), new_key(), new_key()
    auth = tmp_path / "keys"
    auth.write_text(f"dev1 {dev_key}\n"
                    f"policy ops {ops} RegistryRead, ServiceConnect\n"
                    f"policy reader {reader} RegistryRead\n"
                    f"policy device {device_policy}\n")
    broker = start_broker(auth_file=auth)
    assert try_connect(broker, clients, "b1", "ops", sas_token(HUB_HOSTNAME, ops, policy="ops")) == 0
    assert try_connect(broker, clients, "b2", "ops", ops) == 5  # a raw key, even the right one
    assert try_connect(broker, clients, "b3", "reader", sas_token(HUB_HOSTNAME, reader, policy="reader")) == 5
    resource = f"{HUB_HOSTNAME}/devices/dev1"
    assert try_connect(broker, clients, "dev1", device_username("dev1"),
                       sas_token(resource, device_policy, policy="device")) == 0
    assert try_connect(broker, clients, "dev1", device_username("dev1"),
                       sas_token(resource, ops, policy="ops")) == 5
    wait_until(lambda: "refused client b3: policy reader grants RegistryRead" in broker.log_text(),
               WAIT, "the reason in the log")


def test_back_end_topics_follow_its_policy_rights(start_broker, clients, tmp_path):
    """docs/security.md, "The permission matrix", findings 1-3 (fixed): a back
    end's extension topics need the right the operation needs on the other
    doors. Service requests and pushes: ServiceConnect; admin: RegistryWrite;
    acting as device {id} (devices/{id}/..., devicebound/device/{id}/...,
    devicebound/hub/device/{id}/...): DeviceConnect. What the hub reads and
    writes needs ServiceConnect. A refused PUBLISH is dropped (MQTT 3.1.1
    has no refusal), proven with a marker the hub must get after it."""
    keys = {name: new_key() for name in ("hub", "iothubowner", "service", "device")}
    dev_key = new_key()
    auth = write_auth_file(tmp_path / "keys", {"dev1": dev_key}, keys)
    broker = start_broker(auth_file=auth)

    def back_end(client_id: str, policy: str) -> MqttClient:
        c = clients.add(MqttClient(broker.plain_port, client_id, username=policy,
                                   password=sas_token(HUB_HOSTNAME, keys[policy], policy=policy)))
        assert c.connect() == 0, client_id
        return c

    hub = back_end("devicebound-hub", "hub")  # ServiceConnect only, as in python/tests
    assert hub.subscribe("devicebound/hub/#") == 1
    owner, svc, devpol = back_end("own", "iothubowner"), back_end("svc", "service"), back_end("dp", "device")
    svc_as_dev1 = back_end("dev1", "service")  # a device's id, a service token

    # Subscriptions: each party's pushes with its right.
    for client, refused in ((svc, "devicebound/admin/svc/#"), (svc, "devicebound/device/svc/#"),
                            (devpol, "devicebound/service/dp/#"), (devpol, "devicebound/admin/dp/#"),
                            (devpol, "devicebound/hub/#"), (devpol, "devicebound/broker/#"),
                            (svc_as_dev1, filter_of("dev1")), (svc_as_dev1, "devicebound/device/dev1/#")):
        assert client.subscribe(refused) == 0x80, (client.client_id, refused)
    for client, granted in ((svc, "devicebound/service/svc/#"), (devpol, "devicebound/device/dp/#"),
                            (owner, "devicebound/admin/own/#"), (owner, "devicebound/device/own/#"),
                            (owner, "devicebound/service/own/#"), (devpol, "devicebound/status/hub")):
        assert client.subscribe(granted) == 1, (client.client_id, granted)

    refused = [
        (devpol, "devicebound/hub/service/dp/send/dev1/%24.rid=1"),    # finding 1
        (devpol, "devicebound/hub/service/dp/purge/dev1/%24.rid=2"),
        (svc, "devicebound/hub/admin/svc/add/dev9/%24.rid=3"),          # finding 2
        (devpol, "devicebound/hub/admin/dp/remove/dev1/%24.rid=4"),
        (svc_as_dev1, "devicebound/hub/device/dev1/attach/%24.conn=c&%24.max=1&%24.rid=5"),  # finding 3
    ]
    allowed = [
        (svc, "devicebound/hub/service/svc/send/dev1/%24.rid=6"),
        (owner, "devicebound/hub/admin/own/add/dev9/%24.rid=7"),
        (devpol, "devicebound/hub/device/dp/attach/%24.conn=c&%24.max=1&%24.rid=8"),
    ]
    for client, topic in refused + allowed:
        client.publish(topic, b"")
    svc.publish("devicebound/hub/service/svc/marker/", b"")
    seen = []
    while not seen or seen[-1] != "devicebound/hub/service/svc/marker/":
        seen.append(hub.expect().topic)
    assert seen[:-1] == [topic for _, topic in allowed]

    # The hub's writes need ServiceConnect: a DeviceConnect back end forges no
    # push, no device-bound message, no status.
    dev1 = clients.add(MqttClient(broker.plain_port, "dev1", username=device_username("dev1"),
                                  password=sas_token(f"{HUB_HOSTNAME}/devices/dev1", dev_key)))
    assert dev1.connect() == 0  # takes the id over from svc_as_dev1
    assert dev1.subscribe(filter_of("dev1")) == 1
    assert dev1.subscribe("devicebound/device/dev1/#") == 1
    devpol.publish(topic_of("dev1", "%24.mid=forged"), b"forged")
    devpol.publish("devicebound/device/dev1/message/%24.lock=x", b"forged")
    hub.publish(topic_of("dev1", "%24.mid=real"), b"real")
    assert dev1.expect().payload == b"real"


# --------------------------------------------------------------------------- #
# The device cap (plugin_opt_max_devices)


def test_max_devices_is_exact_and_never_locks_back_ends_out(start_broker, clients, tmp_path):
    """plugin_opt_max_devices 3: three devices in, a fourth closed without a
    CONNACK (paho: -1); back ends still get in. Whatever way a device leaves
    (DISCONNECT, a lost connection, kicked after a key change) frees exactly
    one slot, five times over (no drift, unlike mosquitto 2.0.11's
    max_connections); a device taking its own connection over needs none."""
    ids = [f"dev{i}" for i in range(12)]
    keys = {device_id: new_key() for device_id in ids}
    hub_key = new_key()
    auth = write_auth_file(tmp_path / "keys", keys, {"hub": hub_key})
    broker = start_broker(auth_file=auth, options=["plugin_opt_max_devices 3"])
    assert "at most 3 devices connected" in broker.log_text()
    events = clients.add(EventListener(broker, username="hub",
                                       password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))
    refusals = [0]

    def connect(device_id, clean_session=False):
        client = clients.add(MqttClient(
            broker.plain_port, device_id, clean_session=clean_session,
            username=device_username(device_id),
            password=sas_token(f"{HUB_HOSTNAME}/devices/{device_id}", keys[device_id])))
        return client, client.connect()

    def admitted(device_id, clean_session=False):
        client, rc = connect(device_id, clean_session)
        assert rc == 0, f"{device_id} refused (CONNACK {rc}) with a slot free"
        return client

    def refused(device_id):
        client, rc = connect(device_id)
        assert rc == -1, f"{device_id} over the cap: CONNACK {rc}, not a closed connection"
        refusals[0] += 1
        assert client.is_disconnected

    def back_end(client_id):
        client = clients.add(MqttClient(broker.plain_port, client_id, username="hub",
                                        password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))
        assert client.connect() == 0, f"back end {client_id} refused at the device cap"

    connected = {device_id: admitted(device_id) for device_id in ids[:3]}
    refused(ids[3])
    for i in range(3):
        back_end(f"svc{i}")
    # The refusal's line names the cap; nothing was counted for it.
    wait_until(lambda: f"refused device {ids[3]}: 3 devices connected, plugin_opt_max_devices 3"
               in broker.log_text(), WAIT, "the refusal in the log")

    # Five rounds: one leaves (the broker's "disconnected" event comes after
    # the plugin counted it out), exactly one new device takes its slot.
    waiting = ids[3:]
    for round_ in range(5):
        leaving = sorted(connected)[0]
        client = connected.pop(leaving)
        if round_ % 2 == 0:
            client.disconnect()
        else:
            client.drop()
        events.expect("disconnected", leaving)
        newcomer, over = waiting.pop(0), waiting[0]
        connected[newcomer] = admitted(newcomer)
        refused(over)
        waiting.append(leaving)
        back_end(f"again{round_}")

    # Takeovers by the same id, with a persistent session and with a clean
    # one: the old connection is closed, the count stays at three.
    persistent_id, clean_id = sorted(connected)[:2]
    old = connected[persistent_id]
    connected[persistent_id] = admitted(persistent_id)
    old.wait_disconnected()
    old = connected[clean_id]
    connected[clean_id] = admitted(clean_id, clean_session=True)
    events.expect("disconnected", clean_id)  # a clean session ends the old one
    old.wait_disconnected()
    refused(waiting[0])

    # A device kicked after its key changed frees its slot too. The SIGHUP
    # makes mosquitto ask basic auth again for every session it holds, the
    # offline ones of the devices that left included: none of them may be
    # taken for a connection (and counted).
    kicked = sorted(connected)[-1]
    keys[kicked] = new_key()
    write_auth_file(auth, keys, {"hub": hub_key})
    os.kill(broker.proc.pid, signal.SIGHUP)
    connected.pop(kicked).wait_disconnected()
    events.expect("disconnected", kicked)
    connected[waiting[0]] = admitted(waiting[0])
    refused(waiting[1])

    # Every device in is still connected; the log has one line per refusal.
    for device_id, client in connected.items():
        assert client.subscribe(filter_of(device_id)) == 1, device_id
        assert not client.is_disconnected, device_id
    assert broker.log_text().count("refused device ") == refusals[0] == 8


def test_bad_max_devices_stops_the_broker(start_broker):
    for bad in ("lots", "-2", "100000001", "3x"):
        try:
            start_broker(options=[f"plugin_opt_max_devices {bad}"])
        except RuntimeError as error:
            assert "plugin_opt_max_devices must be 0..100000000" in str(error), bad
        else:
            raise AssertionError(f"mosquitto started with plugin_opt_max_devices {bad}")
