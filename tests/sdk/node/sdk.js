'use strict';
// Small wrappers around the official SDKs as a user's app would call them:
// the service Client and Registry of azure-iothub and device Clients of
// azure-iot-device over AMQP (azure-iot-device-amqp), MQTT
// (azure-iot-device-mqtt) or HTTPS (azure-iot-device-http).
const assert = require('node:assert/strict');
const { Client: ServiceClient, Registry } = require('azure-iothub');
const { Message: ServiceMessage } = require('azure-iothub/dist/common-core/message');
const serviceErrors = require('azure-iothub/dist/common-core/errors');
const { Client: DeviceClient } = require('azure-iot-device');
const { Amqp: DeviceAmqp } = require('azure-iot-device-amqp');
const { Mqtt: DeviceMqtt } = require('azure-iot-device-mqtt');
const { Http: DeviceHttp } = require('azure-iot-device-http');
// azure-iot-device's own dependency (pinned in package-lock.json): its retry policies.
const { NoRetry } = require('azure-iot-common');
const { Inbox, WAIT, within } = require('./harness');

/** A service Client, opened; closed by `t.after`. */
async function openService(t, cs) {
  const client = ServiceClient.fromConnectionString(cs);
  t.after(() => client.close().catch(() => {}));
  await within(client.open(), WAIT, 'azure-iothub Client.open()');
  return client;
}

/** A C2D message built with azure-iothub's own Message class. */
function c2d(body, { messageId, correlationId, expiryTimeUtc, ack, contentType, contentEncoding, properties = {} } = {}) {
  const m = new ServiceMessage(body);
  if (messageId !== undefined) m.messageId = messageId;
  if (correlationId !== undefined) m.correlationId = correlationId;
  if (expiryTimeUtc !== undefined) m.expiryTimeUtc = expiryTimeUtc;
  if (ack !== undefined) m.ack = ack;
  if (contentType !== undefined) m.contentType = contentType;
  if (contentEncoding !== undefined) m.contentEncoding = contentEncoding;
  for (const [k, v] of Object.entries(properties)) m.properties.add(k, v);
  return m;
}

/**
 * Asserts that `error` is azure-iothub's own error class `name` (from its
 * dist/common-core/errors.js), with the AMQP condition in the failure text.
 *
 * A refused CBS put-token (SPEC 10.6.5: status 401, as IoT Hub answers a bad
 * key) becomes UnauthorizedError inside azure-iothub's CBS code, but its
 * transport then wraps it (translateError of an error without an AMQP
 * condition): the app gets a plain Error ("AMQP Transport: Could not connect" /
 * "Could not send message") whose `amqpError` is the UnauthorizedError. With
 * `{ cbs: true }` that shape is accepted too.
 */
function assertServiceError(error, name, { cbs = false } = {}) {
  const detail = `${error?.constructor?.name}: ${error?.message} (amqp condition ${error?.amqpError?.condition ?? 'none'}, ` +
    `amqpError ${error?.amqpError?.constructor?.name}: ${error?.amqpError?.message})`;
  assert.ok(serviceErrors[name], `azure-iothub has no error class ${name}`);
  const actual = cbs && error?.constructor?.name === 'Error' && error?.amqpError ? error.amqpError : error;
  assert.equal(actual?.constructor?.name, name, `expected ${name}, got ${detail}`);
  assert.ok(actual instanceof serviceErrors[name], `not an instance of azure-iothub's ${name}: ${detail}`);
}

/**
 * The feedback receiver of `client`: every record of every batch, by
 * originalMessageId; batches are completed as they come, and kept in `batches`.
 */
async function feedbackCollector(t, client) {
  const { result: receiver } = await within(client.getFeedbackReceiver(), WAIT, 'getFeedbackReceiver()');
  const records = new Map();
  const waiters = new Map();
  const batches = [];
  const errors = [];
  receiver.on('errorReceived', (e) => errors.push(e));
  receiver.on('error', (e) => errors.push(e));
  receiver.on('message', (msg) => {
    batches.push(msg);
    let list = [];
    try {
      list = JSON.parse(Buffer.from(msg.data).toString('utf8'));
    } catch (e) {
      errors.push(e);
    }
    for (const r of list) {
      records.set(r.originalMessageId, r);
      const w = waiters.get(r.originalMessageId);
      if (w) {
        waiters.delete(r.originalMessageId);
        w(r);
      }
    }
    receiver.complete(msg, () => {});
  });
  t.after(() => receiver.removeAllListeners('message'));
  return {
    receiver,
    batches,
    errors,
    /** Resolves with the record for `messageId` (bounded). */
    record(messageId, ms = WAIT) {
      if (records.has(messageId)) return Promise.resolve(records.get(messageId));
      return within(new Promise((resolve) => waiters.set(messageId, resolve)), ms,
        `a feedback record for ${messageId} (errors: ${errors.map(String).join('; ') || 'none'})`);
    },
  };
}

const TRANSPORTS = { amqp: DeviceAmqp, mqtt: DeviceMqtt, http: DeviceHttp };

/**
 * A device Client over `protocol` ('amqp', 'mqtt' or 'http'), trusting the test
 * CA, every received message pushed to `inbox`; `onMessage(client, msg)` settles.
 * Over HTTP the SDK polls every `pollSeconds` (its receivePolicy `interval`,
 * default 1 s; azure-iot-device-http's setOptions only calls back when a
 * receive policy is given, so one is always passed with the CA) and drains the
 * queue with GETs until a 204 each time.
 * With `retry: false` the client gets the SDK's NoRetry policy: a dropped
 * connection is not re-made but reported at once with a 'disconnect' event
 * (in `disconnects`); the default policy retries for up to 4 minutes, and keeps
 * the test process alive that long.
 */
async function openDevice(t, cs, protocol, ca, onMessage, { pollSeconds = 0.1, retry = true, listen = true } = {}) {
  const client = DeviceClient.fromConnectionString(cs, TRANSPORTS[protocol]);
  if (!retry) client.setRetryPolicy(new NoRetry());
  const inbox = new Inbox(`C2D message on ${protocol}`);
  const errors = [];
  const disconnects = new Inbox(`disconnect event on ${protocol}`);
  client.on('error', (e) => errors.push(e));
  client.on('disconnect', (d) => disconnects.push(d));
  t.after(() => client.close().catch(() => {}));
  const options = protocol === 'http' ? { ca, http: { receivePolicy: { interval: pollSeconds } } } : { ca };
  await within(client.setOptions(options), WAIT, `device Client.setOptions() over ${protocol}`);
  await within(client.open(), WAIT, `device Client.open() over ${protocol}`);
  if (listen) {
    client.on('message', (msg) => {
      inbox.push(msg);
      if (onMessage) onMessage(client, msg);
    });
  }
  return { client, inbox, errors, disconnects };
}

/** The application properties of a received azure-iot-common Message, as an object. */
function appProperties(msg) {
  const out = {};
  for (let i = 0; i < msg.properties.count(); i += 1) {
    const { key, value } = msg.properties.getItem(i);
    out[key] = value;
  }
  return out;
}

module.exports = {
  ServiceClient, ServiceMessage, Registry, serviceErrors, DeviceClient, DeviceAmqp, DeviceHttp, DeviceMqtt,
  appProperties, assertServiceError, c2d, feedbackCollector, openDevice, openService,
};
