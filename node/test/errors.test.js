'use strict';
// Errors: typed, with a numeric code and a readable message; Promise methods
// reject (never throw); bad input changes nothing.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const db = require('..');
const { closeAfter, once } = require('./helpers');

const rejectsWith = (promise, cls, code) =>
  assert.rejects(promise, (e) => {
    assert.ok(e instanceof cls, `${e.name} is not a ${cls.name}: ${e.message}`);
    assert.ok(e instanceof db.DeviceboundError);
    assert.ok(e instanceof Error);
    assert.equal(e.code, code);
    assert.equal(e.name, cls.name);
    assert.ok(e.message.startsWith(`${code} ${e.codeName}: `), e.message);
    return true;
  });

async function setup(t, hubOptions = {}, deviceOptions = {}) {
  const hub = new db.Hub(hubOptions);
  await hub.addDevice('d');
  const device = hub.deviceClient('d', deviceOptions);
  const service = hub.serviceClient();
  closeAfter(t, device, service);
  return { hub, device, service };
}

describe('errors', () => {
  it('has one class per code, and the code table', () => {
    assert.equal(db.ErrorCode.DeviceNotFound, 404001);
    assert.equal(db.ErrorCode.DeviceMaximumQueueDepthExceeded, 403004);
    const e = new db.DeviceNotFoundError('x', 404001);
    assert.equal(e.codeName, 'DeviceNotFound');
    assert.equal(new db.ThrottlingError('x', 429001).codeName, 'ThrottlingException');
  });

  it('refuses a hub configuration out of range, naming the field', () => {
    assert.throws(() => new db.Hub({ maxDeliveryCount: 0 }), (e) => {
      assert.ok(e instanceof db.ArgumentInvalidError);
      assert.equal(e.code, 400004);
      assert.match(e.message, /max_delivery_count/);
      return true;
    });
    assert.throws(() => new db.Hub({ lockDurationMs: 'soon' }), db.ArgumentInvalidError);
    assert.throws(() => new db.Hub({ deliveryCountRule: 'sometimes' }), /abandon_only/);
  });

  it('rejects a send to an unknown device with 404001', async (t) => {
    const { service } = await setup(t);
    await rejectsWith(service.send('nope', 'x'), db.DeviceNotFoundError, 404001);
  });

  it('rejects a message over the size limit with 413001', async (t) => {
    const { service } = await setup(t, { maxMessageSize: 1024 });
    await rejectsWith(service.send('d', Buffer.alloc(2048)), db.MessageTooLargeError, 413001);
    assert.equal(await service.queueDepth('d'), 0);
  });

  it('rejects a send to a full queue with 403004', async (t) => {
    const { service } = await setup(t, { maxQueueDepth: 2 });
    await service.send('d', 'a');
    await service.send('d', 'b');
    await rejectsWith(service.send('d', 'c'), db.DeviceMaximumQueueDepthExceededError, 403004);
    assert.equal(await service.queueDepth('d'), 2);
  });

  it('rejects a second settlement with 412002 lock lost', async (t) => {
    const { device, service } = await setup(t);
    const received = once(device, 'message');
    await service.send('d', 'x');
    const [m] = await received;
    await device.complete(m);
    await rejectsWith(device.complete(m), db.DeviceMessageLockLostError, 412002);
    await rejectsWith(device.abandon(m), db.DeviceMessageLockLostError, 412002);
  });

  it('rejects bad arguments as Promises with 400004, changing nothing', async (t) => {
    const { hub, device, service } = await setup(t);
    await rejectsWith(device.complete('not-a-guid'), db.ArgumentInvalidError, 400004);
    await rejectsWith(device.complete({}), db.ArgumentInvalidError, 400004);
    await rejectsWith(service.send(42, 'x'), db.ArgumentInvalidError, 400004);
    await rejectsWith(service.send('d', new db.Message('x', { properties: { 'bad name': 'v' } })),
      db.ArgumentInvalidError, 400004);
    await rejectsWith(service.send('d', new db.Message('x', { properties: { n: 1 } })),
      db.ArgumentInvalidError, 400004);
    await rejectsWith(service.send('d', new db.Message('x', { ack: 'sometimes' })),
      db.ArgumentInvalidError, 400004);
    await rejectsWith(service.send('d', new db.Message('x', { expiryTimeUtc: 'tomorrow' })),
      db.ArgumentInvalidError, 400004);
    await assert.rejects(service.send('d', 42), TypeError);
    await rejectsWith(hub.addDevice('d'), db.DeviceAlreadyExistsError, 409001);
    await rejectsWith(hub.removeDevice('nope'), db.DeviceNotFoundError, 404001);
    await rejectsWith(hub.addDevice('bad/id'), db.ArgumentInvalidError, 400004);
    assert.equal(await service.queueDepth('d'), 0);
    assert.equal(hub.stats().accepted, 0);
  });

  it('rejects reject() and abandon() with 405001 where the device can only complete', async (t) => {
    const { device, service } = await setup(t, {}, { settlement: 'complete_only' });
    assert.equal(device.canReject, false);
    assert.equal(device.canAbandon, false);
    const received = once(device, 'message');
    await service.send('d', 'x');
    const [m] = await received;
    await rejectsWith(device.reject(m), db.NotSupportedError, 405001);
    await rejectsWith(device.abandon(m), db.NotSupportedError, 405001);
    await device.complete(m); // still locked for us: complete works
    assert.equal(await service.queueDepth('d'), 0);
  });

  it('refuses an unregistered device: open() rejects, a listener gets an error event', async (t) => {
    const hub = new db.Hub();
    const device = hub.deviceClient('ghost');
    const listening = hub.deviceClient('ghost');
    closeAfter(t, device, listening);
    await rejectsWith(device.open(), db.UnauthorizedError, 401000);
    const failed = once(listening, 'error');
    listening.on('message', () => assert.fail('no message for a ghost'));
    const [e] = await failed;
    assert.ok(e instanceof db.UnauthorizedError);
  });

  it('rejects calls after close() with 409002, until open()', async (t) => {
    const { device, service } = await setup(t);
    await service.close();
    await rejectsWith(service.send('d', 'x'), db.InvalidOperationError, 409002);
    await service.open();
    await service.send('d', 'x');
    await device.close();
    await rejectsWith(device.complete('00000000-0000-0000-0000-000000000000'), db.InvalidOperationError, 409002);
  });

  it('throws at once on bad client options', () => {
    const hub = new db.Hub();
    assert.throws(() => new db.DeviceClient('d', {}), db.ArgumentInvalidError);
    assert.throws(() => new db.DeviceClient('d', { hub: {} }), /must be a Hub/);
    assert.throws(() => new db.ServiceClient({ hub, mqtt: {} }), db.ArgumentInvalidError);
    assert.throws(() => hub.deviceClient('d', { settlement: 'maybe' }), /settlement/);
    assert.throws(() => hub.serviceClient({ assignMessageId: 'sometimes' }), /assignMessageId/);
    assert.throws(() => hub.deviceClient(7), /deviceId/);
  });
});
