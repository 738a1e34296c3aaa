"""The hub's identity registry as the broker plugin's source of truth
(plugin_opt_registry_db; docs/architecture.md, "Identity channel to the broker
plugin").

Each test plays the hub: it creates the SQLite file with the schema-v2 DDL of
the step-9 contract (PRAGMA user_version=2, WAL as the hub's store) and commits
rows with its own connection, as the hub does before it replies to a registry
call. The plugin reads the file read-only. No test sleeps: a change that must
reach a connected client is waited for with a bounded wait on the client's
disconnection or on a log line.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

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

# The identity tables of the hub's SQLite store, schema version 2 (plan/step9.md).
SCHEMA_V2 = """
CREATE TABLE identities (
  device_id TEXT PRIMARY KEY, generation_id TEXT NOT NULL, version INTEGER NOT NULL,
  status TEXT NOT NULL,
  status_reason TEXT NOT NULL, status_updated_ms INTEGER NOT NULL,
  auth_type TEXT NOT NULL,
  primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
  primary_thumbprint TEXT NOT NULL, secondary_thumbprint TEXT NOT NULL,
  iot_edge INTEGER NOT NULL);
CREATE TABLE policies (
  name TEXT PRIMARY KEY, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
  rights INTEGER NOT NULL);
"""

REGISTRY_READ, REGISTRY_WRITE, SERVICE_CONNECT, DEVICE_CONNECT = 1, 3, 4, 8


class FakeHubStore:
    """The writer side of the hub's store: one connection, every statement its
    own commit (autocommit), WAL mode as sqlite_store opens it (without its
    exclusive lock, which would keep every reader out)."""

    def __init__(self, path: Path, *, migrate: bool = True, journal: str = "wal"):
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        assert self.db.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
        if self.version() == 0:
            self.db.execute("PRAGMA user_version=1")  # a new store from before step 9
        if migrate and self.version() < 2:
            self.migrate()

    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    @contextlib.contextmanager
    def transaction(self):
        """Several changes in one commit, as one registry call of the hub."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def migrate(self, also=None) -> None:
        """Migration 1 -> 2 in one commit: the tables and the version together
        (and whatever `also` writes, as a hub that seeds its registry)."""
        with self.transaction():
            for statement in SCHEMA_V2.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute("PRAGMA user_version=2")
            if also is not None:
                also()

    def put_device(self, device_id: str, primary: str = "", secondary: str = "",
                   status: str = "enabled", auth_type: str = "sas") -> None:
        self.db.execute(
            "INSERT INTO identities VALUES (?, 'gen-1', 1, ?, '', ?, ?, ?, ?, '', '', 0) "
            "ON CONFLICT(device_id) DO UPDATE SET status=excluded.status, "
            "primary_key=excluded.primary_key, secondary_key=excluded.secondary_key, "
            "auth_type=excluded.auth_type, version=version+1",
            (device_id, status, int(time.time() * 1000), auth_type, primary, secondary))

    def set_status(self, device_id: str, status: str) -> None:
        self.db.execute("UPDATE identities SET status=?, version=version+1 WHERE device_id=?",
                        (status, device_id))

    def delete_device(self, device_id: str) -> None:
        self.db.execute("DELETE FROM identities WHERE device_id=?", (device_id,))

    def put_policy(self, name: str, primary: str, rights: int, secondary: str = "") -> None:
        self.db.execute("INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?)",
                        (name, primary, secondary, rights))

    def delete_policy(self, name: str) -> None:
        self.db.execute("DELETE FROM policies WHERE name=?", (name,))

    def close(self) -> None:
        self.db.close()


@pytest.fixture
def hub_store(tmp_path):
    """hub_store(migrate=True) -> FakeHubStore at tmp_path/hub.db; closed at teardown."""
    stores: list[FakeHubStore] = []

    def make(migrate: bool = True, journal: str = "wal") -> FakeHubStore:
        store = FakeHubStore(tmp_path / "hub.db", migrate=migrate, journal=journal)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def resource(device_id: str) -> str:
    return f"{HUB_HOSTNAME}/devices/{device_id}"


def connect_device(broker, clients, device_id: str, key: str, *, clean_session: bool = False,
                   subscribe: bool = False, **token_args) -> tuple[int, MqttClient]:
    client = clients.add(MqttClient(broker.plain_port, device_id, clean_session=clean_session,
                                    username=device_username(device_id),
                                    password=sas_token(resource(device_id), key, **token_args)))
    rc = client.connect()
    if rc == 0 and subscribe:
        assert client.subscribe(f"devices/{device_id}/messages/devicebound/#") == 1
    return rc, client


def try_backend(broker, clients, client_id: str, username: str | None, password: str | None) -> int:
    return clients.add(MqttClient(broker.plain_port, client_id, username=username,
                                  password=password)).connect()


def wait_for_log(broker, text: str, count: int = 1) -> None:
    wait_until(lambda: broker.log_text().count(text) >= count, WAIT, f"log line '{text}'")


def assert_still_connected(*connections: MqttClient) -> None:
    """A round trip on each connection (SUBSCRIBE, SUBACK): it was not cut by
    any check the broker made before it answered."""
    for c in connections:
        assert not c.is_disconnected, c.client_id
        assert c.subscribe("devicebound/status/hub") == 1, c.client_id


# --------------------------------------------------------------------------- #


def test_device_created_while_the_broker_runs_connects_at_once(start_broker, clients, hub_store):
    store = hub_store()
    hub_key = new_key()
    store.put_policy("hub", hub_key, SERVICE_CONNECT)
    store.close()  # the hub is down when the broker starts: the file is still read
    broker = start_broker(registry_db=store.path)
    wait_for_log(broker, "devices and policies come from the hub's registry")

    store = hub_store()  # the hub again, on the same file
    key, secondary, other = new_key(), new_key(), new_key()
    assert connect_device(broker, clients, "dev1", key)[0] == 5  # not registered yet
    store.put_device("dev1", key, secondary)  # committed: the hub would reply now
    assert connect_device(broker, clients, "dev1", key)[0] == 0
    assert connect_device(broker, clients, "dev1", secondary)[0] == 0  # either key signs
    assert connect_device(broker, clients, "dev1", other)[0] == 5  # a wrong key
    assert connect_device(broker, clients, "dev2", key)[0] == 5  # another, unregistered device

    # A key rotation counts for the next connection.
    store.put_device("dev1", other, secondary)
    assert connect_device(broker, clients, "dev1", key)[0] == 5
    assert connect_device(broker, clients, "dev1", other)[0] == 0

    # A device whose registry entry has no SAS keys (X.509) cannot sign.
    store.put_device("x509dev", key, key, auth_type="selfSigned")
    assert connect_device(broker, clients, "x509dev", key)[0] == 5
    assert key not in broker.log_text() and other not in broker.log_text()  # keys never logged


def test_deleted_or_disabled_device_is_disconnected_and_refused(start_broker, clients, hub_store):
    store = hub_store()
    hub_key, key1, key2 = new_key(), new_key(), new_key()
    store.put_policy("hub", hub_key, SERVICE_CONNECT)
    store.put_device("dev1", key1)
    store.put_device("dev2", key2)
    broker = start_broker(registry_db=store.path)
    events = clients.add(EventListener(broker, username="hub", password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))

    rc, dev1 = connect_device(broker, clients, "dev1", key1, subscribe=True)
    assert rc == 0
    events.expect("subscribed", "dev1")
    rc, dev2 = connect_device(broker, clients, "dev2", key2, subscribe=True)
    assert rc == 0
    events.expect("subscribed", "dev2")

    store.set_status("dev1", "disabled")
    dev1.wait_disconnected(WAIT)
    events.expect("disconnected", "dev1", b"")
    assert connect_device(broker, clients, "dev1", key1)[0] == 5
    assert not dev2.is_disconnected  # untouched by another device's change

    store.set_status("dev1", "enabled")
    rc, dev1 = connect_device(broker, clients, "dev1", key1)
    assert rc == 0
    events.expect("subscribed", "dev1")  # a disabled device's session keeps its subscription
    events.client.publish("devices/dev1/messages/devicebound/%24.mid=back", b"back")
    assert dev1.expect().payload == b"back"
    events.expect("delivered", "dev1")

    store.delete_device("dev2")
    dev2.wait_disconnected(WAIT)
    events.expect("disconnected", "dev2", b"")
    assert connect_device(broker, clients, "dev2", key2)[0] == 5
    # Registered again (same id, new key): a fresh start, without the old
    # session's subscription.
    store.put_device("dev2", key1)
    assert connect_device(broker, clients, "dev2", key1)[0] == 0
    store.put_device("sentinel", key1)
    rc, sentinel = connect_device(broker, clients, "sentinel", key1, clean_session=True, subscribe=True)
    assert rc == 0
    events.expect("subscribed", "sentinel")  # and no "subscribed dev2" before it
    # The broker session kept for dev2 lost its subscription: a message to dev2
    # is not handed over ("delivered" would come first: events are in order).
    events.client.publish("devices/dev2/messages/devicebound/%24.mid=old", b"x")
    events.client.publish("devices/sentinel/messages/devicebound/%24.mid=s", b"y")
    events.expect("delivered", "sentinel")
    assert sentinel.expect().payload == b"y"
    wait_for_log(broker, "disconnecting device dev2: it is no longer registered")
    wait_for_log(broker, "disconnecting device dev1: it is disabled")

    # The hub's own back-end connection stays.
    assert not events.client.is_disconnected


def test_policy_rows_sign_back_end_tokens(start_broker, clients, hub_store):
    store = hub_store()
    service, owner, reader, device_policy, hub_key = (new_key() for _ in range(5))
    store.put_policy("service", service, SERVICE_CONNECT)
    store.put_policy("iothubowner", owner, REGISTRY_WRITE | SERVICE_CONNECT | DEVICE_CONNECT,
                     secondary=new_key())
    store.put_policy("registryRead", reader, REGISTRY_READ)
    store.put_policy("device", device_policy, DEVICE_CONNECT)
    store.put_policy("hub", hub_key, SERVICE_CONNECT)
    dev_key = new_key()
    store.put_device("dev1", dev_key)
    broker = start_broker(registry_db=store.path)

    hub_token = lambda key, name: sas_token(HUB_HOSTNAME, key, policy=name)  # noqa: E731
    assert try_backend(broker, clients, "svc1", "service@sas.root.x", hub_token(service, "service")) == 0
    assert try_backend(broker, clients, "svc2", "iothubowner", hub_token(owner, "iothubowner")) == 0
    # The hub's own connection: a token it signs with its policy's key
    # (devicebound-hub --broker-sas-key); the raw key is refused (issue 14).
    assert try_backend(broker, clients, "devicebound-hub", "hub", hub_token(hub_key, "hub")) == 0
    assert try_backend(broker, clients, "devicebound-hub", "hub", hub_key) == 5

    assert try_backend(broker, clients, "svc3", "x", hub_token(owner, "service")) == 5  # wrong key
    assert try_backend(broker, clients, "svc4", "x", hub_token(service, "nobody")) == 5  # no such policy
    assert try_backend(broker, clients, "svc5", "registryRead", hub_token(reader, "registryRead")) == 5
    assert try_backend(broker, clients, "svc6", "registryRead", reader) == 5  # no connect right
    assert try_backend(broker, clients, "svc7", "hub", service) == 5  # another policy's key

    # A policy with DeviceConnect signs for a registered device (SPEC 12.7.4);
    # a ServiceConnect policy does not.
    assert connect_device(broker, clients, "dev1", device_policy, policy="device")[0] == 0
    assert connect_device(broker, clients, "dev1", service, policy="service")[0] == 5
    assert connect_device(broker, clients, "dev9", device_policy, policy="device")[0] == 5

    # A policy added while the broker runs is used at once; one removed is refused.
    late = new_key()
    store.put_policy("late", late, SERVICE_CONNECT)
    assert try_backend(broker, clients, "svc8", "late", hub_token(late, "late")) == 0
    store.db.execute("DELETE FROM policies WHERE name='late'")
    assert try_backend(broker, clients, "svc9", "late", hub_token(late, "late")) == 5


def test_auth_file_until_the_registry_exists(start_broker, clients, hub_store, tmp_path):
    """No store file at start (the hub has not run yet): the auth_file is used.
    Once the hub has created and migrated its store, the registry alone counts:
    every connected client is checked against it, and one that came in through
    the file and is not admitted by the registry is let go."""
    file_key, hub_key, registry_key, ops_key = new_key(), new_key(), new_key(), new_key()
    auth = tmp_path / "keys"
    auth.write_text(f"dev1 {file_key}\npolicy hub {hub_key} ServiceConnect\n"
                    f"policy ops {ops_key} ServiceConnect\n")
    db_path = tmp_path / "hub.db"
    broker = start_broker(auth_file=auth, registry_db=db_path)
    wait_for_log(broker, "using auth_file")

    rc, dev1 = connect_device(broker, clients, "dev1", file_key)
    assert rc == 0
    hub = clients.add(MqttClient(broker.plain_port, "devicebound-hub", username="hub",
                                 password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))
    assert hub.connect() == 0
    ops = clients.add(MqttClient(broker.plain_port, "ops", username="ops",
                                 password=sas_token(HUB_HOSTNAME, ops_key, policy="ops")))
    assert ops.connect() == 0

    store = hub_store(migrate=False)  # the file exists, without the tables: still the auth_file
    wait_for_log(broker, "schema version 1")
    assert connect_device(broker, clients, "dev1", file_key)[0] == 0
    dev1.wait_disconnected()  # taken over by the same device's new connection

    # The hub migrates and seeds its registry in one commit: its policy "hub"
    # with the same key, no "ops", no dev1.
    store.migrate(also=lambda: (store.put_policy("hub", hub_key, SERVICE_CONNECT),
                                store.put_device("dev2", registry_key)))
    wait_for_log(broker, "devices and policies come from the hub's registry")
    wait_for_log(broker, "disconnecting device dev1: it is no longer registered")
    ops.wait_disconnected()
    wait_for_log(broker, "disconnecting back end ops: its credentials no longer hold: UnknownPolicy")
    assert_still_connected(hub)  # admitted by the registry too
    assert connect_device(broker, clients, "dev1", file_key)[0] == 5  # the file no longer counts
    assert connect_device(broker, clients, "dev2", registry_key)[0] == 0
    assert try_backend(broker, clients, "devicebound-hub2", "hub",
                       sas_token(HUB_HOSTNAME, hub_key, policy="hub")) == 0


def test_no_registry_and_no_auth_file_refuses_everyone(start_broker, clients, hub_store, tmp_path):
    broker = start_broker(registry_db=tmp_path / "hub.db")
    wait_for_log(broker, "every client is refused until it is")
    key = new_key()
    assert connect_device(broker, clients, "dev1", key)[0] == 5
    assert try_backend(broker, clients, "anon", None, None) == 5
    wait_for_log(broker, "is not usable yet")

    store = hub_store()
    store.put_device("dev1", key)
    wait_for_log(broker, "devices and policies come from the hub's registry")
    assert connect_device(broker, clients, "dev1", key)[0] == 0


def test_a_busy_store_refuses_within_the_busy_timeout(start_broker, clients, hub_store):
    """A writer in the middle of a transaction that keeps readers out (a
    rollback-journal file; in WAL mode readers never wait for the writer): a
    CONNECT waits at most registry_busy_timeout_ms, is refused with the reason
    in the log, and the broker goes on serving."""
    store = hub_store(journal="delete")
    key = new_key()
    store.put_device("dev1", key)
    broker = start_broker(registry_db=store.path, options=["plugin_opt_registry_busy_timeout_ms 100"])
    wait_for_log(broker, "devices and policies come from the hub's registry")
    assert connect_device(broker, clients, "dev1", key)[0] == 0

    store.db.execute("BEGIN EXCLUSIVE")
    store.db.execute("UPDATE identities SET version=version+1")
    started = time.monotonic()
    assert connect_device(broker, clients, "dev1", key)[0] == 5
    assert time.monotonic() - started < 5.0  # 100 ms of waiting, not a hang
    wait_for_log(broker, "database is locked")
    store.db.execute("COMMIT")
    assert connect_device(broker, clients, "dev1", key)[0] == 0


def test_a_store_locked_at_start_is_opened_once_free(start_broker, clients, hub_store):
    """A hub that holds its file's lock for good (sqlite_store's `exclusive`,
    PRAGMA locking_mode=EXCLUSIVE) keeps the plugin out: it says so and opens
    the registry once the lock is gone."""
    store = hub_store()
    key = new_key()
    store.put_device("dev1", key)
    store.db.execute("PRAGMA locking_mode=EXCLUSIVE")
    store.db.execute("BEGIN IMMEDIATE")
    store.db.execute("UPDATE identities SET version=version+1")
    store.db.execute("COMMIT")  # the lock stays with this connection
    broker = start_broker(registry_db=store.path)
    wait_for_log(broker, "database is locked")
    assert connect_device(broker, clients, "dev1", key)[0] == 5

    store.close()  # the hub stops
    wait_for_log(broker, "devices and policies come from the hub's registry")
    assert connect_device(broker, clients, "dev1", key)[0] == 0


def test_bad_registry_option_stops_the_broker(start_broker, tmp_path):
    try:
        start_broker(registry_db=tmp_path / "hub.db", options=["plugin_opt_registry_busy_timeout_ms x"])
    except RuntimeError as error:
        assert "registry_busy_timeout_ms" in str(error)
    else:
        raise AssertionError("mosquitto started with a bad plugin_opt_registry_busy_timeout_ms")


# --------------------------------------------------------------------------- #
# Keys and policies changed while clients are connected (issue 14): each
# connected client is verified again, at the instant it connected, against the
# registry after the hub's commit (docs/security.md, "Revocation on the broker").


def test_regenerated_device_key_disconnects_the_connections_it_signed(start_broker, clients, hub_store):
    store = hub_store()
    hub_key = new_key()
    store.put_policy("hub", hub_key, SERVICE_CONNECT)
    keys = {d: (new_key(), new_key()) for d in ("dev1", "dev2", "dev3")}
    for device_id, (primary, secondary) in keys.items():
        store.put_device(device_id, primary, secondary)
    broker = start_broker(registry_db=store.path)
    events = clients.add(EventListener(broker, username="hub",
                                       password=sas_token(HUB_HOSTNAME, hub_key, policy="hub")))

    rc, dev1 = connect_device(broker, clients, "dev1", keys["dev1"][0], subscribe=True)  # primary
    assert rc == 0
    events.expect("subscribed", "dev1")
    rc, dev2 = connect_device(broker, clients, "dev2", keys["dev2"][1])  # secondary
    assert rc == 0
    rc, dev3 = connect_device(broker, clients, "dev3", keys["dev3"][0])  # primary, untouched
    assert rc == 0

    # Both devices' primary keys regenerated, in one commit.
    new1, new2 = new_key(), new_key()
    with store.transaction():
        store.put_device("dev1", new1, keys["dev1"][1])
        store.put_device("dev2", new2, keys["dev2"][1])
    dev1.wait_disconnected(WAIT)
    events.expect("disconnected", "dev1", b"")
    wait_for_log(broker, "disconnecting device dev1: its credentials no longer hold: BadSignature")
    # The check that cut dev1 saw dev2's new key too: dev2 (secondary key),
    # dev3 and the hub's connection are still there after it.
    assert_still_connected(dev2, dev3, events.client)
    assert "disconnecting device dev2" not in broker.log_text()

    assert connect_device(broker, clients, "dev1", keys["dev1"][0])[0] == 5  # the old key
    rc, dev1 = connect_device(broker, clients, "dev1", new1)
    assert rc == 0
    # A key change leaves the device's session as it was (as disabling does).
    events.expect("subscribed", "dev1")
    assert keys["dev1"][0] not in broker.log_text() and new1 not in broker.log_text()


def test_back_end_is_disconnected_when_its_policy_changes(start_broker, clients, hub_store):
    store = hub_store()
    hub, renewed, dropped, narrowed, widened, owner = (new_key() for _ in range(6))
    renewed_secondary, dev_key = new_key(), new_key()
    store.put_policy("hub", hub, SERVICE_CONNECT)
    store.put_policy("renewed", renewed, SERVICE_CONNECT, secondary=renewed_secondary)
    store.put_policy("dropped", dropped, SERVICE_CONNECT)
    store.put_policy("narrowed", narrowed, SERVICE_CONNECT | REGISTRY_READ)
    store.put_policy("widened", widened, SERVICE_CONNECT)
    store.put_policy("owner", owner, SERVICE_CONNECT | DEVICE_CONNECT | REGISTRY_WRITE)
    store.put_device("dev1", dev_key)
    broker = start_broker(registry_db=store.path)
    events = clients.add(EventListener(broker, username="hub",
                                       password=sas_token(HUB_HOSTNAME, hub, policy="hub")))

    def back_end(client_id: str, policy: str, key: str) -> MqttClient:
        c = clients.add(MqttClient(broker.plain_port, client_id, username=policy,
                                   password=sas_token(HUB_HOSTNAME, key, policy=policy)))
        assert c.connect() == 0, client_id
        return c

    on_primary = back_end("svc-renewed", "renewed", renewed)
    on_secondary = back_end("svc-renewed2", "renewed", renewed_secondary)
    on_dropped = back_end("svc-dropped", "dropped", dropped)
    on_narrowed = back_end("svc-narrowed", "narrowed", narrowed)
    on_widened = back_end("svc-widened", "widened", widened)
    on_owner = back_end("svc-owner", "owner", owner)
    rc, dev1 = connect_device(broker, clients, "dev1", dev_key)
    assert rc == 0

    with store.transaction():
        store.put_policy("renewed", new_key(), SERVICE_CONNECT, secondary=renewed_secondary)
        store.delete_policy("dropped")
        store.put_policy("narrowed", narrowed, REGISTRY_READ)  # ServiceConnect removed
        store.put_policy("widened", widened, SERVICE_CONNECT | REGISTRY_WRITE)
        store.put_policy("owner", owner, SERVICE_CONNECT | REGISTRY_WRITE)  # still ServiceConnect

    for gone in (on_primary, on_dropped, on_narrowed):
        gone.wait_disconnected(WAIT)
    wait_for_log(broker, "disconnecting back end svc-renewed: its credentials no longer hold: "
                         "BadSignature")
    wait_for_log(broker, "disconnecting back end svc-dropped: its credentials no longer hold: "
                         "UnknownPolicy")
    wait_for_log(broker, "disconnecting back end svc-narrowed: its credentials no longer hold: "
                         "policy narrowed grants RegistryRead, neither ServiceConnect nor DeviceConnect")
    assert_still_connected(on_secondary, on_widened, on_owner, dev1, events.client)
    assert broker.log_text().count("disconnecting ") == 3

    # Their tokens are refused from now on; a token of the new state is not.
    assert try_backend(broker, clients, "svc-renewed", "renewed",
                       sas_token(HUB_HOSTNAME, renewed, policy="renewed")) == 5
    assert try_backend(broker, clients, "svc-dropped", "dropped",
                       sas_token(HUB_HOSTNAME, dropped, policy="dropped")) == 5
    assert try_backend(broker, clients, "svc-narrowed", "narrowed",
                       sas_token(HUB_HOSTNAME, narrowed, policy="narrowed")) == 5
    assert try_backend(broker, clients, "svc-renewed", "renewed",
                       sas_token(HUB_HOSTNAME, renewed_secondary, policy="renewed")) == 0


def test_a_right_the_policy_loses_is_enforced_on_the_open_connection(start_broker, clients, hub_store):
    """A policy that keeps a connect right but loses another keeps its
    connections, which lose that right's topics at once: the plugin asks its
    topic ACL at every PUBLISH, SUBSCRIBE and delivery (mosquitto caches no
    answer), with the rights the last recheck found."""
    store = hub_store()
    hub, ops = new_key(), new_key()
    store.put_policy("hub", hub, SERVICE_CONNECT)
    store.put_policy("ops", ops, SERVICE_CONNECT | DEVICE_CONNECT | REGISTRY_WRITE)
    broker = start_broker(registry_db=store.path)
    listener = clients.add(MqttClient(broker.plain_port, "devicebound-hub", username="hub",
                                      password=sas_token(HUB_HOSTNAME, hub, policy="hub")))
    assert listener.connect() == 0
    assert listener.subscribe("devicebound/hub/#") == 1
    back_end = clients.add(MqttClient(broker.plain_port, "ops", username="ops",
                                      password=sas_token(HUB_HOSTNAME, ops, policy="ops")))
    assert back_end.connect() == 0
    assert back_end.subscribe("devicebound/admin/ops/#") == 1
    assert back_end.subscribe("devicebound/service/ops/#") == 1

    back_end.publish("devicebound/hub/admin/ops/ping/%24.rid=1", b"")
    assert listener.expect().topic == "devicebound/hub/admin/ops/ping/%24.rid=1"
    listener.publish("devicebound/admin/ops/reply/%24.rid=1", b"pong")
    assert back_end.expect().payload == b"pong"

    with store.transaction():
        store.put_policy("ops", ops, SERVICE_CONNECT)  # RegistryWrite, DeviceConnect removed
    wait_for_log(broker, "back end ops now holds ServiceConnect (was RegistryWrite, "
                         "ServiceConnect, DeviceConnect)")
    assert_still_connected(back_end, listener)
    assert broker.log_text().count("disconnecting ") == 0

    # Its admin request is dropped; the admin push on the subscription it
    # holds is not handed to it; new admin and device subscriptions refused.
    back_end.publish("devicebound/hub/admin/ops/ping/%24.rid=2", b"")
    back_end.publish("devicebound/hub/service/ops/depth/dev1/%24.rid=3", b"")
    assert listener.expect().topic == "devicebound/hub/service/ops/depth/dev1/%24.rid=3"
    listener.publish("devicebound/admin/ops/reply/%24.rid=2", b"dropped")
    listener.publish("devicebound/service/ops/reply/%24.rid=3", b"sentinel")
    assert back_end.expect().payload == b"sentinel"
    assert back_end.subscribe("devicebound/admin/ops/#") == 0x80
    assert back_end.subscribe("devicebound/device/ops/#") == 0x80


def test_policy_token_device_is_disconnected_when_the_policy_loses_device_connect(
        start_broker, clients, hub_store):
    store = hub_store()
    hub, devices, scoped, dev_key = new_key(), new_key(), new_key(), new_key()
    store.put_policy("hub", hub, SERVICE_CONNECT)
    store.put_policy("devices", devices, DEVICE_CONNECT)
    store.put_policy("scoped", scoped, DEVICE_CONNECT)
    for device_id in ("dev1", "dev2", "dev3"):
        store.put_device(device_id, dev_key)
    broker = start_broker(registry_db=store.path)
    events = clients.add(EventListener(broker, username="hub",
                                       password=sas_token(HUB_HOSTNAME, hub, policy="hub")))

    def by_policy(device_id: str, policy: str, key: str, resource_: str) -> MqttClient:
        c = clients.add(MqttClient(broker.plain_port, device_id, username=device_username(device_id),
                                   password=sas_token(resource_, key, policy=policy)))
        assert c.connect() == 0, device_id
        return c

    dev1 = by_policy("dev1", "devices", devices, HUB_HOSTNAME)  # a hub-wide policy token
    dev2 = by_policy("dev2", "scoped", scoped, resource("dev2"))  # scoped to the device
    rc, dev3 = connect_device(broker, clients, "dev3", dev_key)  # its own key
    assert rc == 0

    with store.transaction():
        store.put_policy("devices", devices, SERVICE_CONNECT)  # DeviceConnect removed
        store.put_policy("scoped", new_key(), DEVICE_CONNECT)  # key renewed
        store.put_device("dev1", new_key())  # the device's own key: no matter to a policy token
    dev1.wait_disconnected(WAIT)
    dev2.wait_disconnected(WAIT)
    gone = {(e.kind, e.device, e.payload) for e in (events.next(), events.next())}
    assert gone == {("disconnected", "dev1", b""), ("disconnected", "dev2", b"")}
    wait_for_log(broker, "disconnecting device dev1: its credentials no longer hold: InsufficientRights")
    wait_for_log(broker, "disconnecting device dev2: its credentials no longer hold: BadSignature")
    assert_still_connected(dev3, events.client)
    assert broker.log_text().count("disconnecting ") == 2

    again = clients.add(MqttClient(broker.plain_port, "dev1", username=device_username("dev1"),
                                   password=sas_token(HUB_HOSTNAME, devices, policy="devices")))
    assert again.connect() == 5
