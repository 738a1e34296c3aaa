'use strict';
// The official Node service SDK, azure-iothub 1.16.6, unchanged, against
// devicebound-hub's AMQP front door: Client.fromConnectionString, open, send
// (ack full, message id, correlation id, expiry, properties), the feedback
// receiver, and the errors as azure-iothub's own classes (issue 11 "Tests").
// The device side here is the stock MQTT device SDK (azure-iot-device-mqtt),
// so this file tests the service half of the door alone.
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { ServiceClient } = require('./sdk');
const { WAIT, newKey, rejection, skipUnlessReady, startStack, within } = require('./harness');
const { appProperties, assertServiceError, c2d, feedbackCollector, openDevice, openService } = require('./sdk');

const skip = skipUnlessReady('azure-iothub service client');

describe('azure-iothub 1.16.6 against devicebound-hub', { skip }, () => {
  let stack;

  before(async () => {
    stack = await startStack({ devices: ['svc-mqtt-1', 'svc-full', 'svc-big', 'svc-other'] });
  });

  after(async () => {
    await stack?.stop();
  });

  it('sends with ack full, ids, expiry and properties; a stock MQTT device gets them; feedback says Success', async (t) => {
    const service = await openService(t, stack.serviceCs('service'));
    const feedback = await feedbackCollector(t, service);
    const expiry = new Date(Math.floor(Date.now() / 1000) * 1000 + 3600 * 1000 + 123);
    // rhea 1.0.24 encodes a timestamp only from a number: a Date in expiryTimeUtc makes azure-iothub's
    // send fail in the client (TypeError: value.copy is not a function), so apps give ms since 1970.

    const sent = await within(service.send('svc-mqtt-1', c2d('{"set":21}', {
      messageId: 'svc-msg-1',
      correlationId: 'svc-corr-1',
      expiryTimeUtc: expiry.getTime(),
      ack: 'full',
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      properties: { color: 'blue', unit: 'C' },
    })), WAIT, 'send() to be answered');
    assert.equal(sent?.result?.constructor?.name, 'MessageEnqueued');

    const device = await openDevice(t, stack.deviceMqttCs('svc-mqtt-1'), 'mqtt', stack.ca,
      (client, msg) => client.complete(msg, () => {}));
    const got = await device.inbox.next();
    assert.equal(got.data.toString(), '{"set":21}');
    assert.equal(got.messageId, 'svc-msg-1');
    assert.equal(got.correlationId, 'svc-corr-1');
    assert.equal(got.expiryTimeUtc, expiry.toISOString());
    assert.equal(got.contentType, 'application/json');
    assert.equal(got.contentEncoding, 'utf-8');
    // Over MQTT the ack is one more topic property (SPEC 9.3).
    assert.deepEqual(appProperties(got), { color: 'blue', unit: 'C', 'iothub-ack': 'full' });

    const record = await feedback.record('svc-msg-1');
    assert.equal(record.statusCode, 'Success');
    assert.equal(record.deviceId, 'svc-mqtt-1');
    assert.equal(typeof record.description, 'string');
    assert.ok(!Number.isNaN(Date.parse(record.enqueuedTimeUtc)), `enqueuedTimeUtc ${record.enqueuedTimeUtc}`);
    assert.ok('deviceGenerationId' in record, JSON.stringify(record));

    // What the SDKs need of a feedback batch (SPEC 10.11.2), as rhea decoded it.
    const batch = feedback.batches.find((b) => JSON.parse(b.data.toString()).some((r) => r.originalMessageId === 'svc-msg-1'));
    const amqp = batch.transportObj;
    assert.equal(amqp.content_type, 'application/vnd.microsoft.iothub.feedback.json');
    assert.ok(amqp.user_id !== undefined && amqp.user_id !== null, 'feedback user-id is missing');
    // rhea 1.0.24 decodes an AMQP timestamp as a number of ms (its types.js: "TODO: convert to/from Date").
    const enqueued = amqp.message_annotations?.['iothub-enqueuedtime'];
    assert.ok(typeof enqueued === 'number' && Math.abs(enqueued - Date.now()) < 3600e3,
      `iothub-enqueuedtime annotation is ${JSON.stringify(amqp.message_annotations)}`);
    assert.deepEqual(feedback.errors, []);
  });

  it('refuses an unknown device with DeviceNotFoundError', async (t) => {
    const service = await openService(t, stack.serviceCs('service'));
    const e = await rejection(within(service.send('no-such-device', c2d('x', { messageId: 'ghost-1' })), WAIT, 'send()'),
      'send to an unknown device');
    assertServiceError(e, 'DeviceNotFoundError');
  });

  it('refuses the 51st queued message with DeviceMaximumQueueDepthExceededError', async (t) => {
    const service = await openService(t, stack.serviceCs('service'));
    for (let i = 1; i <= 50; i += 1) {
      await within(service.send('svc-full', c2d(`m${i}`, { messageId: `full-${i}` })), WAIT, `send ${i} of 50`);
    }
    const e = await rejection(within(service.send('svc-full', c2d('m51', { messageId: 'full-51' })), WAIT, 'send 51'),
      'the 51st send');
    assertServiceError(e, 'DeviceMaximumQueueDepthExceededError');
  });

  it('refuses a message above 64 KB with MessageTooLargeError, and takes one well below', async (t) => {
    const service = await openService(t, stack.serviceCs('service'));
    await within(service.send('svc-big', c2d(Buffer.alloc(60 * 1024, 0x61), { messageId: 'big-ok' })), WAIT, 'a 60 KB send');
    const e = await rejection(within(service.send('svc-big', c2d(Buffer.alloc(64 * 1024 + 1, 0x61), { messageId: 'big-no' })),
      WAIT, 'a 64 KB + 1 send'), 'a message above 64 KB');
    assertServiceError(e, 'MessageTooLargeError');
  });

  it('refuses a wrong policy key with UnauthorizedError', async (t) => {
    const client = ServiceClient.fromConnectionString(stack.serviceCs('service', newKey()));
    t.after(() => client.close().catch(() => {}));
    const e = await rejection(within(client.open(), WAIT, 'open() with a wrong key'), 'open() with a wrong key');
    assertServiceError(e, 'UnauthorizedError', { cbs: true });
    const e2 = await rejection(within(client.send('svc-other', c2d('x')), WAIT, 'send() with a wrong key'), 'send() with a wrong key');
    assertServiceError(e2, 'UnauthorizedError', { cbs: true });
  });

  it('refuses an unknown policy with UnauthorizedError', async (t) => {
    const client = ServiceClient.fromConnectionString(stack.serviceCs('nosuchpolicy', newKey()));
    t.after(() => client.close().catch(() => {}));
    const e = await rejection(within(client.open(), WAIT, 'open() with an unknown policy'), 'open() with an unknown policy');
    assertServiceError(e, 'UnauthorizedError', { cbs: true });
  });

  it('refuses sends under a policy without ServiceConnect (device) with UnauthorizedError', async (t) => {
    const client = ServiceClient.fromConnectionString(stack.serviceCs('device'));
    t.after(() => client.close().catch(() => {}));
    // IoT Hub may refuse at put-token or at the link (SPEC 12.9.4): either way the app sees UnauthorizedError.
    const e = await rejection((async () => {
      await within(client.open(), WAIT, 'open() under the device policy');
      return within(client.send('svc-other', c2d('x', { messageId: 'unauth-1' })), WAIT, 'send() under the device policy');
    })(), 'a send under the device policy');
    assertServiceError(e, 'UnauthorizedError', { cbs: true });
  });

  it('takes the iothubowner policy, and message ids in uuid form', async (t) => {
    const service = await openService(t, stack.serviceCs('iothubowner'));
    const id = 'a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d'; // sent as an AMQP uuid (SPEC 10.9.2)
    const sent = await within(service.send('svc-other', c2d('u', { messageId: id, correlationId: id })), WAIT, 'send()');
    assert.equal(sent?.result?.constructor?.name, 'MessageEnqueued');
  });
});
