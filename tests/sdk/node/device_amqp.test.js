'use strict';
// The official Node device SDK over AMQP (azure-iot-device 1.18.4 with
// azure-iot-device-amqp 1.14.4), unchanged, against devicebound-hub's AMQP
// front door; messages sent and feedback read with azure-iothub 1.16.6.
// complete -> Success, reject -> Rejected, 10 abandons -> DeliveryCountExceeded,
// a lock left to expire -> redelivery, every property intact (issue 11 "Tests").
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { WAIT, rejection, skipUnlessReady, startStack, within } = require('./harness');
const { appProperties, assertServiceError, c2d, feedbackCollector, openDevice, openService } = require('./sdk');

const skip = skipUnlessReady('azure-iot-device-amqp device client');
const LOCK_SECONDS = 2;
const MAX_DELIVERY_COUNT = 10;

describe('azure-iot-device-amqp 1.14.4 against devicebound-hub', { skip }, () => {
  let stack;

  before(async () => {
    stack = await startStack({
      devices: ['amqp-complete', 'amqp-reject', 'amqp-abandon', 'amqp-expire', 'amqp-props', 'amqp-other'],
      hubArgs: ['--lock-duration', `${LOCK_SECONDS}s`, '--max-delivery-count', String(MAX_DELIVERY_COUNT)],
    });
  });

  after(async () => {
    await stack?.stop();
  });

  // One service client and its feedback receiver per test (the SDK's app shape).
  const service = async (t) => {
    const client = await openService(t, stack.serviceCs('service'));
    return { client, feedback: await feedbackCollector(t, client) };
  };

  it('receive then complete -> Success feedback', async (t) => {
    const { client, feedback } = await service(t);
    const device = await openDevice(t, stack.deviceAmqpCs('amqp-complete'), 'amqp', stack.ca,
      (c, msg) => c.complete(msg, () => {}));
    await within(client.send('amqp-complete', c2d('done?', { messageId: 'complete-1', ack: 'full' })), WAIT, 'send()');
    const got = await device.inbox.next();
    assert.equal(got.messageId, 'complete-1');
    assert.equal(got.data.toString(), 'done?');
    const record = await feedback.record('complete-1');
    assert.equal(record.statusCode, 'Success');
    assert.equal(record.deviceId, 'amqp-complete');
    assert.deepEqual(device.errors, []);
  });

  it('reject -> Rejected feedback, and no redelivery', async (t) => {
    const { client, feedback } = await service(t);
    const device = await openDevice(t, stack.deviceAmqpCs('amqp-reject'), 'amqp', stack.ca,
      (c, msg) => (msg.messageId === 'reject-1' ? c.reject(msg, () => {}) : c.complete(msg, () => {})));
    await within(client.send('amqp-reject', c2d('no', { messageId: 'reject-1', ack: 'full' })), WAIT, 'send()');
    assert.equal((await device.inbox.next()).messageId, 'reject-1');
    assert.equal((await feedback.record('reject-1')).statusCode, 'Rejected');
    // A sentinel sent after it comes next: the rejected message was not delivered again.
    await within(client.send('amqp-reject', c2d('sentinel', { messageId: 'reject-sentinel', ack: 'full' })), WAIT, 'send()');
    assert.equal((await device.inbox.next()).messageId, 'reject-sentinel');
    assert.equal((await feedback.record('reject-sentinel')).statusCode, 'Success');
  });

  it(`${MAX_DELIVERY_COUNT} abandons -> DeliveryCountExceeded feedback`, async (t) => {
    const { client, feedback } = await service(t);
    const device = await openDevice(t, stack.deviceAmqpCs('amqp-abandon'), 'amqp', stack.ca,
      (c, msg) => c.abandon(msg, () => {}));
    await within(client.send('amqp-abandon', c2d('flaky', { messageId: 'abandon-1', ack: 'full' })), WAIT, 'send()');
    const counts = [];
    for (let i = 0; i < MAX_DELIVERY_COUNT; i += 1) {
      const got = await device.inbox.next();
      assert.equal(got.messageId, 'abandon-1');
      counts.push(got.transportObj?.message_annotations?.['iothub-deliverycount']);
    }
    const record = await feedback.record('abandon-1');
    assert.equal(record.statusCode, 'DeliveryCountExceeded');
    assert.equal(device.inbox.size, 0, 'delivered again after the last abandon');
    t.diagnostic(`iothub-deliverycount annotations seen: ${JSON.stringify(counts)}`);
  });

  it('a lock left to expire -> the message is delivered again, then completes', async (t) => {
    const { client, feedback } = await service(t);
    let first = true;
    const device = await openDevice(t, stack.deviceAmqpCs('amqp-expire'), 'amqp', stack.ca, (c, msg) => {
      if (first) first = false; // neither settled nor released: its lock runs out
      else c.complete(msg, () => {});
    });
    await within(client.send('amqp-expire', c2d('slow', { messageId: 'expire-1', ack: 'full' })), WAIT, 'send()');
    const one = await device.inbox.next();
    const firstAt = Date.now();
    const two = await device.inbox.next(WAIT + LOCK_SECONDS * 1000);
    assert.equal(one.messageId, 'expire-1');
    assert.equal(two.messageId, 'expire-1');
    assert.ok(Date.now() - firstAt >= LOCK_SECONDS * 1000 - 500,
      `redelivered after ${Date.now() - firstAt} ms, before the ${LOCK_SECONDS} s lock expired`);
    assert.equal((await feedback.record('expire-1')).statusCode, 'Success');
  });

  it('every property arrives intact', async (t) => {
    const { client } = await service(t);
    const device = await openDevice(t, stack.deviceAmqpCs('amqp-props'), 'amqp', stack.ca,
      (c, msg) => c.complete(msg, () => {}));
    const expiry = new Date(Math.floor(Date.now() / 1000) * 1000 + 2 * 3600 * 1000 + 456);
    // rhea 1.0.24 encodes a timestamp only from a number: a Date in expiryTimeUtc makes azure-iothub's
    // send fail in the client (TypeError: value.copy is not a function), so apps give ms since 1970.
    const body = Buffer.from([0x00, 0x01, 0xfe, 0xff, 0x7b, 0x7d]);
    // Names and values limited to SPEC 3.3's characters (the hub refuses others: below).
    const props = { color: 'blue', 'odd!#$%&\'*+.^_`|~': 'v&l%e#+!$\'*.^_`|~', empty: '', Mixed: 'CaSe' };
    const uuidId = '0f8fad5b-d9cb-469f-a165-70867728950e'; // goes as an AMQP uuid (SPEC 10.9.2)

    await within(client.send('amqp-props', c2d(body, {
      messageId: 'props-1', correlationId: 'props-corr-1', expiryTimeUtc: expiry.getTime(), ack: 'full',
      contentType: 'application/octet-stream', contentEncoding: 'binary', properties: props,
    })), WAIT, 'send() 1');
    await within(client.send('amqp-props', c2d('uuid ids', { messageId: uuidId, correlationId: uuidId, ack: 'negative' })),
      WAIT, 'send() 2');
    await within(client.send('amqp-props', c2d('bare')), WAIT, 'send() 3');

    const one = await device.inbox.next();
    assert.deepEqual(Buffer.from(one.data), body);
    assert.equal(one.messageId, 'props-1');
    assert.equal(one.correlationId, 'props-corr-1');
    // rhea 1.0.24 decodes AMQP timestamps as numbers (ms since 1970).
    assert.equal(Number(one.expiryTimeUtc), expiry.getTime(), `expiryTimeUtc is ${one.expiryTimeUtc}`);
    assert.equal(one.ack, 'full');
    assert.equal(one.contentType, 'application/octet-stream');
    assert.equal(one.contentEncoding, 'binary');
    assert.deepEqual(appProperties(one), props);
    assert.match(String(one.to), /^\/devices\/amqp-props\/messages\/devicebound$/i);
    // Message annotations the device SDKs read (SPEC 10.14.3).
    const ann = one.transportObj?.message_annotations ?? {};
    assert.equal(typeof ann['x-opt-lock-token'], 'string', `annotations ${JSON.stringify(ann)}`);
    assert.ok(typeof ann['iothub-enqueuedtime'] === 'number' && Math.abs(ann['iothub-enqueuedtime'] - Date.now()) < 3600e3,
      `annotations ${JSON.stringify(ann)}`);
    assert.ok(ann['x-opt-sequence-number'] !== undefined, `annotations ${JSON.stringify(ann)}`);
    assert.equal(Number(ann['iothub-deliverycount']), 0, `annotations ${JSON.stringify(ann)}`);

    const two = await device.inbox.next();
    assert.equal(two.messageId, uuidId);
    assert.equal(two.correlationId, uuidId);
    assert.equal(two.ack, 'negative');
    assert.equal(two.data.toString(), 'uuid ids');

    const three = await device.inbox.next();
    assert.equal(three.data.toString(), 'bare');
    assert.equal(three.ack, undefined);
    assert.deepEqual(appProperties(three), {});
  });

  it('refuses a property value outside SPEC 3.3 with ArgumentError', async (t) => {
    const { client } = await service(t);
    const e = await rejection(within(client.send('amqp-other', c2d('x', { properties: { unicode: 'ünïcödé' } })), WAIT,
      'send() with a non-ASCII property'), 'a non-ASCII property value');
    assertServiceError(e, 'ArgumentError');
  });

  it("refuses a device whose key is wrong", async (t) => {
    const { DeviceClient, DeviceAmqp } = require('./sdk');
    const client = DeviceClient.fromConnectionString(stack.deviceAmqpCs('amqp-other', require('./harness').newKey()), DeviceAmqp);
    t.after(() => client.close().catch(() => {}));
    await client.setOptions({ ca: stack.ca });
    let error;
    try {
      await within(client.open(), WAIT, 'open() with a wrong device key');
    } catch (e) {
      error = e;
    }
    assert.ok(error, 'open() with a wrong device key succeeded');
    assert.equal(error.constructor.name, 'UnauthorizedError', `${error.constructor.name}: ${error.message}`);
  });
});
