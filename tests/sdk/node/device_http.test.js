'use strict';
// The official Node device SDK over HTTPS (azure-iot-device 1.18.4 with
// azure-iot-device-http 1.14.4), unchanged, against devicebound-hub's HTTPS
// front door (SPEC 11.2, 11.3); messages sent with ack full and feedback read
// over AMQP by azure-iothub 1.16.6 (issue 12 "Tests"):
//   complete -> Success, reject -> Rejected, abandon -> redelivered, a stale
//   lock token -> 412, several queued messages drained in order, every
//   property the SDK reads intact.
// The SDK polls: GET /devices/{id}/messages/devicebound every receivePolicy
// `interval` seconds (0.1 here), and again at once after each 200 (drain).
// What azure-iot-device-http 1.14.4 turns into a Message (azure-iot-http-base
// 1.12.3 Http.toMessage): the body as a string, iothub-messageid,
// iothub-correlationid, iothub-to, iothub-expiry (the header text as is),
// every iothub-app-* header under its full (lower-case) header name, and the
// ETag without its quotes as lockToken. It reads no content type, encoding or
// ack.
// Runs on IoT Hub's port 443 in a private network namespace (harness.js).
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { WAIT, rejection, skipUnlessHttps, startHttpsStack, within } = require('./harness');
const { appProperties, c2d, feedbackCollector, openDevice, openService } = require('./sdk');

const skip = skipUnlessHttps('azure-iot-device-http device client');
const DEVICES = ['http-complete', 'http-reject', 'http-abandon', 'http-drain', 'http-lock', 'http-two'];

describe('azure-iot-device-http 1.14.4 against devicebound-hub', { skip }, () => {
  let stack;

  before(async () => {
    stack = await startHttpsStack({ devices: DEVICES });
  });

  after(async () => {
    await stack?.stop();
  });

  const service = async (t) => {
    const client = await openService(t, stack.serviceCs('service'));
    return { client, feedback: await feedbackCollector(t, client) };
  };
  const openHttp = (t, id, onMessage) => openDevice(t, stack.deviceHttpCs(id), 'http', stack.ca, onMessage);
  /** A lock token the SDK can put into a URL path unencoded (SPEC 11.2.4). */
  const assertLockToken = (token) => assert.match(token ?? '', /^[A-Za-z0-9._~-]+$/, `lock token ${JSON.stringify(token)}`);

  it('receive then complete -> Success feedback, every property intact', async (t) => {
    const { client, feedback } = await service(t);
    // Whole seconds: the header may be any date format (SPEC 11.2.3), some without milliseconds.
    const expiry = Math.floor(Date.now() / 1000) * 1000 + 3600 * 1000;
    const body = 'h\u00e9llo \u2713 {"set":21}';
    const sent = await within(client.send('http-complete', c2d(body, {
      messageId: 'http-msg-1',
      correlationId: 'http-corr-1',
      expiryTimeUtc: expiry,
      ack: 'full',
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      // Every character SPEC 3.3 allows in a C2D property (no spaces, no ';' or ',').
      properties: { color: 'blue', 'odd!#$%&\'*+.^_`|~': 'v&l%e#+!$\'*.^_`|~', empty: '' },
    })), WAIT, 'send()');
    assert.equal(sent?.result?.constructor?.name, 'MessageEnqueued');

    const device = await openHttp(t, 'http-complete');
    const got = await device.inbox.next();
    assert.equal(String(got.data), body);
    assert.equal(got.messageId, 'http-msg-1');
    assert.equal(got.correlationId, 'http-corr-1');
    assert.equal(got.to, '/devices/http-complete/messages/devicebound');
    assert.equal(typeof got.expiryTimeUtc, 'string', `expiryTimeUtc ${got.expiryTimeUtc}`);
    assert.equal(Date.parse(got.expiryTimeUtc), expiry, `iothub-expiry ${got.expiryTimeUtc} is not ${new Date(expiry).toISOString()}`);
    // Node keeps the full header name: iothub-app-<name> (SPEC 11.2.3).
    assert.deepEqual(appProperties(got), {
      'iothub-app-color': 'blue', 'iothub-app-odd!#$%&\'*+.^_`|~': 'v&l%e#+!$\'*.^_`|~', 'iothub-app-empty': '',
    });
    assertLockToken(got.lockToken);

    const done = await within(device.client.complete(got), WAIT, 'complete()');
    assert.equal(done?.constructor?.name, 'MessageCompleted');
    assert.equal(done.transportObj?.statusCode, 204, 'complete: DELETE .../{lockToken} status');
    const record = await feedback.record('http-msg-1');
    assert.equal(record.statusCode, 'Success');
    assert.equal(record.deviceId, 'http-complete');
    assert.deepEqual(device.errors, []);
  });

  it('reject -> Rejected feedback, and no redelivery', async (t) => {
    const { client, feedback } = await service(t);
    const device = await openHttp(t, 'http-reject');
    await within(client.send('http-reject', c2d('no', { messageId: 'http-reject-1', ack: 'full' })), WAIT, 'send()');
    const got = await device.inbox.next();
    assert.equal(got.messageId, 'http-reject-1');
    const done = await within(device.client.reject(got), WAIT, 'reject()');
    assert.equal(done?.constructor?.name, 'MessageRejected');
    assert.equal(done.transportObj?.statusCode, 204, 'reject: DELETE .../{lockToken}?reject status');
    assert.equal((await feedback.record('http-reject-1')).statusCode, 'Rejected');
    // A sentinel sent after it comes next: the rejected message was not delivered again.
    await within(client.send('http-reject', c2d('sentinel', { messageId: 'http-reject-2', ack: 'full' })), WAIT, 'send()');
    const next = await device.inbox.next();
    assert.equal(next.messageId, 'http-reject-2');
    await within(device.client.complete(next), WAIT, 'complete()');
    assert.equal((await feedback.record('http-reject-2')).statusCode, 'Success');
  });

  it('abandon -> redelivered with every property, then complete -> Success', async (t) => {
    const { client, feedback } = await service(t);
    const device = await openHttp(t, 'http-abandon');
    await within(client.send('http-abandon', c2d('again', {
      messageId: 'http-abandon-1', correlationId: 'http-abandon-corr', ack: 'full', properties: { k: 'v' },
    })), WAIT, 'send()');
    const first = await device.inbox.next();
    assert.equal(first.messageId, 'http-abandon-1');
    assertLockToken(first.lockToken);
    const abandoned = await within(device.client.abandon(first), WAIT, 'abandon()');
    assert.equal(abandoned?.constructor?.name, 'MessageAbandoned');
    assert.equal(abandoned.transportObj?.statusCode, 204, 'abandon: POST .../{lockToken}/abandon status');

    const second = await device.inbox.next();
    assert.equal(second.messageId, 'http-abandon-1');
    assert.equal(String(second.data), 'again');
    assert.equal(second.correlationId, 'http-abandon-corr');
    assert.deepEqual(appProperties(second), { 'iothub-app-k': 'v' });
    assertLockToken(second.lockToken);
    await within(device.client.complete(second), WAIT, 'complete() of the redelivery');
    const record = await feedback.record('http-abandon-1');
    assert.equal(record.statusCode, 'Success');
    // The abandon itself made no feedback record: only the one Success arrived for it.
    const all = feedback.batches.flatMap((b) => JSON.parse(b.data.toString())).filter((r) => r.originalMessageId === 'http-abandon-1');
    assert.deepEqual(all.map((r) => r.statusCode), ['Success']);
  });

  it('drains several queued messages in order', async (t) => {
    const { client, feedback } = await service(t);
    const ids = ['http-drain-1', 'http-drain-2', 'http-drain-3'];
    for (const id of ids) await within(client.send('http-drain', c2d(id, { messageId: id, ack: 'positive' })), WAIT, `send ${id}`);
    const device = await openHttp(t, 'http-drain', (c, msg) => c.complete(msg, () => {}));
    const got = [];
    for (let i = 0; i < ids.length; i += 1) got.push((await device.inbox.next()).messageId);
    assert.deepEqual(got, ids);
    for (const id of ids) assert.equal((await feedback.record(id)).statusCode, 'Success');
    assert.equal(device.inbox.size, 0);
  });

  it('a stale lock token -> 412 (DeviceMessageLockLost), and the message stays settled', async (t) => {
    const { client, feedback } = await service(t);
    const device = await openHttp(t, 'http-lock');
    await within(client.send('http-lock', c2d('once', { messageId: 'http-lock-1', ack: 'full' })), WAIT, 'send()');
    const got = await device.inbox.next();
    await within(device.client.complete(got), WAIT, 'complete()');
    assert.equal((await feedback.record('http-lock-1')).statusCode, 'Success');
    // azure-iot-device-http passes the HTTP error with the response attached (SPEC 11.3.1).
    const again = await rejection(within(device.client.complete(got), WAIT, 'a second complete()'), 'completing twice');
    assert.equal(again.response?.statusCode, 412, `second complete: ${again.message}, status ${again.response?.statusCode}, `
      + `body ${again.responseBody}`);
    assert.match(String(again.responseBody), /DeviceMessageLockLost/, 'error body (SPEC 11.6.2)');
    const abandonAgain = await rejection(within(device.client.abandon(got), WAIT, 'abandon() after complete()'), 'abandon after complete');
    assert.equal(abandonAgain.response?.statusCode, 412, `abandon after complete: status ${abandonAgain.response?.statusCode}`);
    // Nothing came back: a sentinel is the next message.
    await within(client.send('http-lock', c2d('sentinel', { messageId: 'http-lock-2' })), WAIT, 'send()');
    const next = await device.inbox.next();
    assert.equal(next.messageId, 'http-lock-2');
    await within(device.client.complete(next), WAIT, 'complete()');
  });

  it('two HTTPS devices polling at once each get their own messages', async (t) => {
    const { client, feedback } = await service(t);
    const a = await openHttp(t, 'http-two', (c, msg) => c.complete(msg, () => {}));
    const b = await openHttp(t, 'http-complete', (c, msg) => c.complete(msg, () => {}));
    await within(client.send('http-two', c2d('to two', { messageId: 'http-two-1', ack: 'full' })), WAIT, 'send()');
    await within(client.send('http-complete', c2d('to complete', { messageId: 'http-two-2', ack: 'full' })), WAIT, 'send()');
    assert.equal((await a.inbox.next()).messageId, 'http-two-1');
    assert.equal((await b.inbox.next()).messageId, 'http-two-2');
    assert.equal((await feedback.record('http-two-1')).deviceId, 'http-two');
    assert.equal((await feedback.record('http-two-2')).deviceId, 'http-complete');
  });
});
