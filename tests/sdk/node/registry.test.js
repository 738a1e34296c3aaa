'use strict';
// The official Node service SDK's Registry (azure-iothub 1.16.6), unchanged,
// against devicebound-hub's identity registry over HTTPS (SPEC 12.1-12.4;
// issue 12 "Tests"): create, get, list, update, delete, the errors as
// azure-iothub's own classes; then a device created this way receives over
// MQTT (stock azure-iot-device-mqtt 1.16.4 through mosquitto + the devicebound
// plugin, which reads the hub's registry), AMQP (azure-iot-device-amqp 1.14.4)
// and HTTPS (azure-iot-device-http 1.14.4) with the keys the registry gave it,
// and a deleted or disabled device is refused and its connections closed.
// Runs on IoT Hub's ports (443, 5671, 8883) in a private network namespace
// (harness.js); Registry trusts the test CA through NODE_EXTRA_CA_CERTS.
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { WAIT, newKey, rejection, skipUnlessHttps, startHttpsStack, within } = require('./harness');
const { Registry, appProperties, assertServiceError, c2d, feedbackCollector, openDevice, openService } = require('./sdk');

const skip = skipUnlessHttps('azure-iothub Registry');
const SEEDED = 'reg-seeded'; // from --auth-file and --device: seeded into the registry at first start

/** A key the way IoT Hub makes them: base64 of 16..64 random bytes (step-9 decision: 32). */
function assertKey(key, what) {
  assert.equal(typeof key, 'string', `${what}: ${JSON.stringify(key)}`);
  assert.match(key, /^[A-Za-z0-9+/]+={0,2}$/, `${what} is not base64: ${key}`);
  const n = Buffer.from(key, 'base64').length;
  assert.ok(n >= 16 && n <= 64, `${what} decodes to ${n} bytes`);
}

/** The device JSON of SPEC 12.4, as azure-iothub's Device class holds it. */
function assertDeviceShape(d, id) {
  const detail = JSON.stringify(d);
  assert.equal(d.deviceId, id, detail);
  assert.equal(typeof d.generationId, 'string', `generationId: ${detail}`);
  assert.ok(d.generationId.length > 0, `generationId: ${detail}`);
  assert.equal(typeof d.etag, 'string', `etag: ${detail}`);
  assert.ok(d.etag.length > 0, `etag: ${detail}`);
  assert.ok(['enabled', 'disabled'].includes(d.status), `status: ${detail}`);
  assert.ok(['Disconnected', 'Connected'].includes(d.connectionState), `connectionState: ${detail}`);
  assert.equal(typeof d.cloudToDeviceMessageCount, 'number', `cloudToDeviceMessageCount: ${detail}`);
  for (const f of ['connectionStateUpdatedTime', 'statusUpdatedTime', 'lastActivityTime']) {
    assert.ok(typeof d[f] === 'string' && !Number.isNaN(Date.parse(d[f])), `${f}: ${detail}`);
  }
  assert.equal(d.authentication?.type, 'sas', `authentication.type: ${detail}`);
  assertKey(d.authentication.symmetricKey?.primaryKey, 'primaryKey');
  assertKey(d.authentication.symmetricKey?.secondaryKey, 'secondaryKey');
  assert.equal(d.capabilities?.iotEdge, false, `capabilities.iotEdge: ${detail}`);
}

describe('azure-iothub 1.16.6 Registry against devicebound-hub', { skip }, () => {
  let stack;
  let registry;

  before(async () => {
    stack = await startHttpsStack({ devices: [SEEDED] });
    registry = Registry.fromConnectionString(stack.serviceCs('iothubowner'));
  });

  after(async () => {
    await stack?.stop();
  });

  const create = (info) => within(registry.create(info), WAIT, `Registry.create(${info.deviceId})`);
  const get = (id) => within(registry.get(id), WAIT, `Registry.get(${id})`);
  const remove = (id) => within(registry.delete(id), WAIT, `Registry.delete(${id})`);

  it('create with generated keys -> 200 and the device JSON; get returns the same; list has it', async () => {
    const { responseBody: made, httpResponse } = await create({ deviceId: 'reg-gen' });
    assert.equal(httpResponse.statusCode, 200, 'PUT /devices/{id} status (SPEC 12.2.1)');
    assertDeviceShape(made, 'reg-gen');
    assert.equal(made.status, 'enabled');
    assert.equal(made.connectionState, 'Disconnected');
    assert.equal(made.cloudToDeviceMessageCount, 0);
    assert.notEqual(made.authentication.symmetricKey.primaryKey, made.authentication.symmetricKey.secondaryKey);
    assert.equal(httpResponse.headers.etag, `"${made.etag}"`, 'ETag header (SPEC 12.2.4)');

    const { responseBody: got, httpResponse: getResponse } = await get('reg-gen');
    assert.equal(getResponse.statusCode, 200);
    assertDeviceShape(got, 'reg-gen');
    for (const f of ['generationId', 'etag', 'status']) assert.equal(got[f], made[f], f);
    assert.deepEqual(got.authentication.symmetricKey, made.authentication.symmetricKey);

    const { responseBody: list, httpResponse: listResponse } = await within(registry.list(), WAIT, 'Registry.list()');
    assert.equal(listResponse.statusCode, 200);
    const ids = list.map((d) => d.deviceId);
    assert.ok(ids.includes('reg-gen'), `list: ${ids}`);
    assert.ok(ids.includes(SEEDED), `list lacks the device seeded from --auth-file: ${ids}`);
    for (const d of list) assertDeviceShape(d, d.deviceId);
    const seeded = list.find((d) => d.deviceId === SEEDED);
    assert.equal(seeded.authentication.symmetricKey.primaryKey, stack.deviceKeys[SEEDED], 'seeded key');
  });

  it('create with given keys keeps them; a second create -> DeviceAlreadyExistsError and changes nothing', async () => {
    const keys = { primaryKey: newKey(), secondaryKey: newKey() };
    const { responseBody: made } = await create({ deviceId: 'reg-keys', authentication: { symmetricKey: keys } });
    assertDeviceShape(made, 'reg-keys');
    assert.deepEqual(made.authentication.symmetricKey, keys);

    const e = await rejection(create({ deviceId: 'reg-keys', authentication: { symmetricKey: { primaryKey: newKey(), secondaryKey: newKey() } } }),
      'creating an existing device');
    assertServiceError(e, 'DeviceAlreadyExistsError');
    assert.equal(e.response?.statusCode, 409);
    const { responseBody: after } = await get('reg-keys');
    assert.equal(after.etag, made.etag);
    assert.deepEqual(after.authentication.symmetricKey, keys);
  });

  it('get / delete of an unknown device -> DeviceNotFoundError (404)', async () => {
    const e = await rejection(get('reg-no-such'), 'get of an unknown device');
    assertServiceError(e, 'DeviceNotFoundError');
    assert.equal(e.response?.statusCode, 404);
    const e2 = await rejection(remove('reg-no-such'), 'delete of an unknown device');
    assertServiceError(e2, 'DeviceNotFoundError');
  });

  it('a policy without RegistryWrite cannot create; one without RegistryRead cannot get (UnauthorizedError)', async () => {
    const reader = Registry.fromConnectionString(stack.serviceCs('registryRead'));
    const { responseBody: seeded } = await within(reader.get(SEEDED), WAIT, 'get under registryRead');
    assert.equal(seeded.deviceId, SEEDED);
    const e = await rejection(within(reader.create({ deviceId: 'reg-denied' }), WAIT, 'create under registryRead'),
      'create under registryRead');
    assertServiceError(e, 'UnauthorizedError');
    const service = Registry.fromConnectionString(stack.serviceCs('service'));
    const e2 = await rejection(within(service.get(SEEDED), WAIT, 'get under service'), 'get under service');
    assertServiceError(e2, 'UnauthorizedError');
    const wrong = Registry.fromConnectionString(stack.serviceCs('iothubowner', newKey()));
    const e3 = await rejection(within(wrong.list(), WAIT, 'list with a wrong key'), 'list with a wrong key');
    assertServiceError(e3, 'UnauthorizedError');
    await rejection(get('reg-denied'), 'the refused create made a device');
  });

  it('devices created over REST receive over MQTT (stock SDK), AMQP and HTTPS with their keys', async (t) => {
    const mqttDev = (await create({ deviceId: 'reg-mqtt' })).responseBody;
    const amqpDev = (await create({ deviceId: 'reg-amqp' })).responseBody;
    const httpDev = (await create({ deviceId: 'reg-http' })).responseBody;
    const service = await openService(t, stack.serviceCs('service'));
    const feedback = await feedbackCollector(t, service);

    const settle = (c, msg) => c.complete(msg, () => {});
    const opened = await Promise.allSettled([
      openDevice(t, stack.deviceMqttCs('reg-mqtt', mqttDev.authentication.symmetricKey.primaryKey), 'mqtt', stack.ca, settle),
      // The secondary key signs too (SPEC 12.7.4).
      openDevice(t, stack.deviceAmqpCs('reg-amqp', amqpDev.authentication.symmetricKey.secondaryKey), 'amqp', stack.ca, settle),
      openDevice(t, stack.deviceHttpCs('reg-http', httpDev.authentication.symmetricKey.primaryKey), 'http', stack.ca, settle),
    ]);
    const failed = opened.map((r, i) => r.status === 'rejected' && `${['MQTT', 'AMQP', 'HTTPS'][i]}: ${r.reason?.constructor?.name}: ${r.reason?.message}`)
      .filter(Boolean);
    assert.deepEqual(failed, [], stack.pluginReadsRegistry ? 'a device made over REST could not connect'
      : 'a device made over REST could not connect (the plugin has no plugin_opt_registry_db, so MQTT cannot know it)');
    const [mqtt, amqp, http] = opened.map((r) => r.value);

    for (const [id, device, proto] of [['reg-mqtt', mqtt, 'mqtt'], ['reg-amqp', amqp, 'amqp'], ['reg-http', http, 'http']]) {
      await within(service.send(id, c2d(`to ${proto}`, { messageId: `reg-${proto}-1`, ack: 'full', properties: { p: proto } })),
        WAIT, `send to ${id}`);
      const got = await device.inbox.next();
      assert.equal(got.messageId, `reg-${proto}-1`);
      assert.equal(String(got.data), `to ${proto}`);
      const props = appProperties(got);
      assert.equal(props.p ?? props['iothub-app-p'], proto, JSON.stringify(props));
      const record = await feedback.record(`reg-${proto}-1`);
      assert.equal(record.statusCode, 'Success', `${proto}: ${JSON.stringify(record)}`);
      assert.equal(record.deviceId, id);
      assert.equal(record.deviceGenerationId, { mqtt: mqttDev, amqp: amqpDev, http: httpDev }[proto].generationId);
    }
    // A connected device shows in the registry (SPEC 12.4 connectionState).
    const { responseBody: live } = await get('reg-amqp');
    assert.equal(live.connectionState, 'Connected', JSON.stringify(live));
  });

  /**
   * Polls Registry.get until `connectionState` is `state` (SPEC 12.4): how an app sees that
   * the hub dropped (or took) a device's connections. The SDK device clients themselves
   * keep retrying in the background (their retry policy runs for minutes), so they emit no
   * timely 'disconnect'. Bounded: at most 400 GETs, each a round trip, no sleeps.
   */
  async function connectionStateBecomes(id, state) {
    let d;
    for (let i = 0; i < 400; i += 1) {
      d = (await get(id)).responseBody;
      if (d.connectionState === state) return d;
    }
    throw new Error(`${id}: connectionState is still ${d?.connectionState}, not ${state}, after 400 GETs`);
  }

  it('delete -> 204; the device is gone, sends to it fail, its MQTT connection closes, it is refused on every door', async (t) => {
    const made = (await create({ deviceId: 'reg-del' })).responseBody;
    const key = made.authentication.symmetricKey.primaryKey;
    const service = await openService(t, stack.serviceCs('service'));
    // Received over AMQP, then that client closed: a revoked AMQP client stalls the SDK (next test).
    const amqp = await openDevice(t, stack.deviceAmqpCs('reg-del', key), 'amqp', stack.ca);
    await within(service.send('reg-del', c2d('queued', { messageId: 'reg-del-0' })), WAIT, 'send before delete');
    assert.equal((await amqp.inbox.next()).messageId, 'reg-del-0');
    await within(amqp.client.close(), WAIT, 'AMQP device close()');
    // The MQTT connection stays up through the delete: the plugin drops it.
    const mqtt = await openDevice(t, stack.deviceMqttCs('reg-del', key), 'mqtt', stack.ca, undefined, { retry: false });

    const { httpResponse } = await remove('reg-del');
    assert.equal(httpResponse.statusCode, 204, 'DELETE /devices/{id} status (SPEC 12.3.3)');
    assertServiceError(await rejection(get('reg-del'), 'get after delete'), 'DeviceNotFoundError');
    assertServiceError(await rejection(remove('reg-del'), 'a second delete'), 'DeviceNotFoundError');
    assertServiceError(await rejection(within(service.send('reg-del', c2d('x', { messageId: 'reg-del-1' })), WAIT, 'send after delete'),
      'send after delete'), 'DeviceNotFoundError');
    await mqtt.disconnects.next(); // the plugin closed the live MQTT connection
    const again = await Promise.allSettled([
      openDevice(t, stack.deviceAmqpCs('reg-del', key), 'amqp', stack.ca, undefined, { retry: false }),
      openDevice(t, stack.deviceMqttCs('reg-del', key), 'mqtt', stack.ca, undefined, { retry: false }),
      openDevice(t, stack.deviceHttpCs('reg-del', key), 'http', stack.ca, undefined, { retry: false }),
    ]);
    assert.deepEqual(again.slice(0, 2).map((r) => r.status), ['rejected', 'rejected'], 'a deleted device connected again');
    // HTTPS has no connection: its polls are refused; nothing arrives.
    assert.equal(again[2].value.inbox.size, 0);
  });

  it('update to disabled: its MQTT connection dropped (connectionState), refused; enabled again, it connects', async (t) => {
    const made = (await create({ deviceId: 'reg-dis' })).responseBody;
    const key = made.authentication.symmetricKey.primaryKey;
    // Live over MQTT and HTTPS (AMQP: the next test).
    const mqtt = await openDevice(t, stack.deviceMqttCs('reg-dis', key), 'mqtt', stack.ca, undefined, { retry: false });
    await openDevice(t, stack.deviceHttpCs('reg-dis', key), 'http', stack.ca, undefined, { retry: false });
    await connectionStateBecomes('reg-dis', 'Connected');

    const { responseBody: disabled, httpResponse } = await within(registry.update({ ...made, status: 'disabled' }), WAIT,
      'Registry.update(status disabled)');
    assert.equal(httpResponse.statusCode, 200);
    assert.equal(disabled.status, 'disabled');
    assert.notEqual(disabled.etag, made.etag, 'etag after update');
    assert.equal(disabled.generationId, made.generationId);
    assert.deepEqual(disabled.authentication.symmetricKey, made.authentication.symmetricKey);
    // The live MQTT connection closed by the plugin.
    await mqtt.disconnects.next();
    await connectionStateBecomes('reg-dis', 'Disconnected');
    const refused = await Promise.allSettled([
      openDevice(t, stack.deviceAmqpCs('reg-dis', key), 'amqp', stack.ca, undefined, { retry: false }),
      openDevice(t, stack.deviceMqttCs('reg-dis', key), 'mqtt', stack.ca, undefined, { retry: false }),
    ]);
    assert.deepEqual(refused.map((r) => r.status), ['rejected', 'rejected'], 'a disabled device connected');

    const { responseBody: enabled } = await within(registry.update({ ...disabled, status: 'enabled' }), WAIT,
      'Registry.update(status enabled)');
    assert.equal(enabled.status, 'enabled');
    await openDevice(t, stack.deviceAmqpCs('reg-dis', key), 'amqp', stack.ca);
    await connectionStateBecomes('reg-dis', 'Connected');
  });

  it('an AMQP device client whose device is disabled learns it at once (its close() does not stall)', async (t) => {
    const made = (await create({ deviceId: 'reg-kick' })).responseBody;
    const amqp = await openDevice(t, stack.deviceAmqpCs('reg-kick', made.authentication.symmetricKey.primaryKey), 'amqp', stack.ca,
      undefined, { retry: false });
    await connectionStateBecomes('reg-kick', 'Connected');
    await within(registry.update({ ...made, status: 'disabled' }), WAIT, 'Registry.update(status disabled)');
    await connectionStateBecomes('reg-kick', 'Disconnected');
    // azure-iot-amqp-base 1.x, on a connection close from the peer while links and the session
    // are open, detaches each link and waits for the peer's detach; a peer that has closed
    // never answers, and only its 45 s "forced rundown" timer ends the wait (amqp.js,
    // SRS_NODE_COMMON_AMQP_06_007): until then the client neither reconnects nor closes. A
    // session end (or link detaches) before the connection close lets it force-detach at once.
    const started = Date.now();
    await within(amqp.client.close(), 5000,
      'the device client close() after the hub dropped its connection (the SDK waits 45 s for link detaches the hub never sent)');
    assert.ok(Date.now() - started < 5000);
  });

  it('an AMQP device client that never calls close() is disconnected by the hub soon after its device is disabled', async (t) => {
    // The late path of the test above. This client listens for no message, so it
    // has no link of its device for the hub to detach (only its $cbs links): it
    // first meets the hub's connection close, after the grace period, with links
    // still attached. The hub ends each session before that close, so the SDK
    // drops its links at once and reports the disconnect, instead of detaching them
    // and waiting 45 s for answers from a closed connection (SRS_NODE_COMMON_AMQP_06_007).
    const made = (await create({ deviceId: 'reg-idle' })).responseBody;
    const amqp = await openDevice(t, stack.deviceAmqpCs('reg-idle', made.authentication.symmetricKey.primaryKey), 'amqp', stack.ca,
      undefined, { retry: false, listen: false });
    const started = Date.now();
    await within(registry.update({ ...made, status: 'disabled' }), WAIT, 'Registry.update(status disabled)');
    await amqp.disconnects.next(10_000);
    const ms = Date.now() - started;
    assert.ok(ms < 10_000, `the disconnect came after ${ms} ms`);
    const closing = Date.now();
    await within(amqp.client.close(), 5000, 'the device client close() after the hub closed its connection');
    assert.ok(Date.now() - closing < 5000);
  });
});
