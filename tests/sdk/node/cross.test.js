'use strict';
// Across protocols (issue 11 "Tests"):
//  1. sent over AMQP by the official service SDK (azure-iothub 1.16.6), received
//     by the stock MQTT device SDK (azure-iot-device-mqtt 1.16.4) through
//     mosquitto + the devicebound plugin;
//  2. sent by a devicebound MQTT back end (the daemon's extension protocol,
//     docs/protocol.md "Back end operations", spoken with the `mqtt` package),
//     received and completed by the official AMQP device SDK
//     (azure-iot-device-amqp 1.14.4).
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const mqtt = require('mqtt');
const { SharedAccessSignature } = require('azure-iot-common');
const { HOSTNAME, Inbox, WAIT, skipUnlessReady, startStack, within } = require('./harness');
const { appProperties, c2d, feedbackCollector, openDevice, openService } = require('./sdk');

const skip = skipUnlessReady('across protocols');

/** docs/protocol.md: keys and values percent-encoded, RFC 3986 unreserved bytes kept. */
const pct = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
const encodeBag = (pairs) => pairs.map(([k, v]) => `${pct(k)}=${pct(v)}`).join('&');
const decodeBag = (bag) => Object.fromEntries(bag.split('&').filter(Boolean).map((e) => {
  const i = e.indexOf('=');
  return [decodeURIComponent(e.slice(0, i)), decodeURIComponent(e.slice(i + 1))];
}));

/** A back end on the daemon's service extension topics, logged in with a SAS token signed
 * by a policy's key (the plugin refuses raw keys as passwords). */
class MqttBackEnd {
  constructor(port, policy, key, sid) {
    this.sid = sid;
    this.replies = new Inbox('extension-protocol reply');
    this.rid = 0;
    const expiry = Math.floor(Date.now() / 1000) + 3600;
    const password = SharedAccessSignature.create(HOSTNAME, policy, key, expiry).toString();
    this.client = mqtt.connect({ host: '127.0.0.1', port, clientId: sid, username: policy, password,
      protocolVersion: 4, clean: true, reconnectPeriod: 0 });
    this.client.on('message', (topic) => {
      const head = `devicebound/service/${sid}/reply/`;
      if (topic.startsWith(head)) this.replies.push(decodeBag(topic.slice(head.length)));
    });
  }

  async open() {
    await within(new Promise((resolve, reject) => {
      this.client.once('connect', resolve);
      this.client.once('error', reject);
      this.client.once('close', () => reject(new Error('the broker closed the back end connection')));
    }), WAIT, 'the MQTT back end to connect');
    await within(new Promise((resolve, reject) => this.client.subscribe(`devicebound/service/${this.sid}/#`, { qos: 1 },
      (e, granted) => (e ? reject(e) : granted[0].qos === 1 ? resolve() : reject(new Error(`SUBACK ${granted[0].qos}`))))),
    WAIT, 'SUBACK');
  }

  /** Publishes an operation and resolves with its reply (the hub answers in order). */
  async request(op, device, pairs, body = '') {
    this.rid += 1;
    const rid = `r${this.rid}`;
    const bag = encodeBag([...pairs, ['$.rid', rid]]);
    await new Promise((resolve, reject) => this.client.publish(`devicebound/hub/service/${this.sid}/${op}/${device}/${bag}`,
      body, { qos: 1 }, (e) => (e ? reject(e) : resolve())));
    for (;;) {
      const reply = await this.replies.next();
      if (reply['$.rid'] === rid) return reply;
    }
  }

  close() {
    return new Promise((resolve) => this.client.end(false, {}, resolve));
  }
}

describe('across protocols: AMQP <-> MQTT', { skip }, () => {
  let stack;

  before(async () => {
    stack = await startStack({ devices: ['cross-mqtt', 'cross-amqp'] });
  });

  after(async () => {
    await stack?.stop();
  });

  it('sent over AMQP (azure-iothub), received by the stock MQTT device SDK', async (t) => {
    const service = await openService(t, stack.serviceCs('service'));
    const feedback = await feedbackCollector(t, service);
    const device = await openDevice(t, stack.deviceMqttCs('cross-mqtt'), 'mqtt', stack.ca,
      (c, msg) => c.complete(msg, () => {}));
    const expiry = new Date(Math.floor(Date.now() / 1000) * 1000 + 1800 * 1000 + 7);
    // rhea 1.0.24 encodes a timestamp only from a number: a Date in expiryTimeUtc makes azure-iothub's
    // send fail in the client (TypeError: value.copy is not a function), so apps give ms since 1970.
    const uuidId = '7d444840-9dc0-41d1-b245-8e8d3d2b6c1a';
    const props = { 'odd!#$%&\'*+.^_`|~': 'v&l%e#+!$\'*.^_`|~', empty: '', n: '1' };

    await within(service.send('cross-mqtt', c2d(Buffer.from([0, 0xff, 0x41]), {
      messageId: 'cross-1', correlationId: uuidId, expiryTimeUtc: expiry.getTime(), ack: 'full',
      contentType: 'text/plain', contentEncoding: 'utf-16', properties: props,
    })), WAIT, 'send() 1');
    await within(service.send('cross-mqtt', c2d('uuid id', { messageId: uuidId, ack: 'positive' })), WAIT, 'send() 2');

    const one = await device.inbox.next();
    assert.deepEqual(Buffer.from(one.data), Buffer.from([0, 0xff, 0x41]));
    assert.equal(one.messageId, 'cross-1');
    assert.equal(one.correlationId, uuidId);
    assert.equal(one.expiryTimeUtc, expiry.toISOString());
    assert.equal(one.contentType, 'text/plain');
    assert.equal(one.contentEncoding, 'utf-16');
    assert.deepEqual(appProperties(one), { ...props, 'iothub-ack': 'full' });
    const two = await device.inbox.next();
    assert.equal(two.messageId, uuidId);
    assert.deepEqual(appProperties(two), { 'iothub-ack': 'positive' });

    assert.equal((await feedback.record('cross-1')).statusCode, 'Success');
    assert.equal((await feedback.record(uuidId)).statusCode, 'Success');
  });

  it('sent by a devicebound MQTT back end, received and completed by the AMQP device SDK', async (t) => {
    const backEnd = new MqttBackEnd(stack.plainPort, 'service', stack.policyKeys.service, 'sdk-cross-backend');
    t.after(() => backEnd.close());
    await backEnd.open();
    const device = await openDevice(t, stack.deviceAmqpCs('cross-amqp'), 'amqp', stack.ca,
      (c, msg) => c.complete(msg, () => {}));

    const expiry = new Date(Math.floor(Date.now() / 1000) * 1000 + 900 * 1000 + 250);
    // rhea 1.0.24 encodes a timestamp only from a number: a Date in expiryTimeUtc makes azure-iothub's
    // send fail in the client (TypeError: value.copy is not a function), so apps give ms since 1970.
    const reply = await backEnd.request('send', 'cross-amqp', [
      ['$.mid', 'mqtt-back-1'], ['$.cid', 'mqtt-corr-1'], ['$.exp', expiry.toISOString()],
      ['$.ct', 'application/json'], ['$.ce', 'utf-8'], ['iothub-ack', 'full'], ['color', 'green'], ['empty', ''],
    ], '{"from":"mqtt"}');
    assert.equal(reply['$.code'], '0', JSON.stringify(reply));

    const got = await device.inbox.next();
    assert.equal(got.data.toString(), '{"from":"mqtt"}');
    assert.equal(got.messageId, 'mqtt-back-1');
    assert.equal(got.correlationId, 'mqtt-corr-1');
    assert.equal(Number(got.expiryTimeUtc), expiry.getTime()); // rhea: timestamps as numbers
    assert.equal(got.contentType, 'application/json');
    assert.equal(got.contentEncoding, 'utf-8');
    assert.equal(got.ack, 'full');
    assert.deepEqual(appProperties(got), { color: 'green', empty: '' });

    // Completed over AMQP: the queue empties (asked over the extension protocol; bounded).
    let depth;
    for (let i = 0; i < 100; i += 1) {
      depth = (await backEnd.request('depth', 'cross-amqp', []))['$.depth'];
      if (depth === '0') break;
    }
    assert.equal(depth, '0', 'the AMQP device completed, yet the message is still queued');
  });
});
