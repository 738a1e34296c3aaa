'use strict';
// The same clients over MQTT: a mosquitto and a devicebound-hub started for
// these tests on a free 127.0.0.1 port, stopped by PID at the end.
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const db = require('..');
const { closeAfter, collect, feedbackRecords, once, skipUnlessPresent } = require('./helpers');
const { programs, startBroker, startHub } = require('./processes');

const mqttParts = [
  !db.withMqtt && 'this build of the addon has no MQTT transport (Paho MQTT C)',
  !programs.mosquitto && 'mosquitto is not installed',
  !programs.hub && 'devicebound-hub is not built (set DEVICEBOUND_HUB, or build build/apps/devicebound-hub)',
];
const skip = skipUnlessPresent('over MQTT', mqttParts);

const devices = ['thermostat-1', 'fields', 'purge', 'exit', 'notsup'];

describe('over MQTT', { skip }, () => {
  let broker;
  let hub;
  let mqtt;

  before(async () => {
    broker = await startBroker();
    hub = await startHub(broker.port, [
      ...devices.flatMap((d) => ['--device', d]),
      '--lock-duration', '1s',
      '--max-delivery-count', '3',
      '--max-queue-depth', '1000',
      '--feedback-batch-interval', '0s',
    ]);
    mqtt = { host: '127.0.0.1', port: broker.port };
  });

  after(async () => {
    await hub?.stop();
    await broker?.stop();
  });

  const clients = (t, deviceId, deviceMqtt = {}) => {
    const device = new db.DeviceClient(deviceId, { mqtt: { ...mqtt, ...deviceMqtt } });
    const service = new db.ServiceClient({ mqtt });
    closeAfter(t, device, service);
    return { device, service };
  };

  it('runs the how-to: complete, reject, abandon, lock expiry, feedback', async (t) => {
    const { device, service } = clients(t, 'thermostat-1');
    const connected = once(device, 'connected');
    await device.open();
    assert.deepEqual(await connected, ['ok']);
    assert.equal(device.canReject, true);

    const seen = [];
    const settled = [];
    let slowFirstTime = true;
    device.on('message', (m) => {
      seen.push([m.messageId, m.deliveryCount]);
      if (m.messageId === 'set-99') settled.push(device.reject(m));
      else if (m.messageId === 'flaky') settled.push(device.abandon(m));
      else if (m.messageId === 'slow' && slowFirstTime) slowFirstTime = false; // its lock expires
      else settled.push(device.complete(m));
    });
    const records = feedbackRecords(service.getFeedbackReceiver(), 5);
    for (const id of ['set-21', 'set-99', 'flaky', 'slow', 'set-23']) {
      await service.send('thermostat-1', new db.Message(`{"id":"${id}"}`, { messageId: id, ack: 'full' }));
    }
    const byId = new Map((await records).map((r) => [r.originalMessageId, r.statusCode]));
    assert.deepEqual(Object.fromEntries(byId), {
      'set-21': 'Success',
      'set-99': 'Rejected',
      flaky: 'DeliveryCountExceeded',
      slow: 'Success',
      'set-23': 'Success',
    });
    assert.deepEqual(seen.filter(([id]) => id === 'flaky').map(([, c]) => c), [0, 1, 2]);
    assert.equal(seen.filter(([id]) => id === 'slow').length, 2);
    await Promise.all(settled);
    const disconnected = once(device, 'disconnected');
    await device.close();
    assert.deepEqual(await disconnected, ['client_closed']);
  });

  it('carries every field of a message', async (t) => {
    const { device, service } = clients(t, 'fields');
    const received = once(device, 'message');
    const expiry = new Date(Date.now() + 600_000);
    await service.send('fields', new db.Message(Buffer.from([0, 1, 255]), {
      messageId: 'm-1',
      correlationId: 'c-1',
      userId: 'backend',
      expiryTimeUtc: expiry,
      ack: 'none',
      contentType: 'application/octet-stream',
      contentEncoding: 'binary',
      properties: { a: '1', b: 'two' },
    }));
    const [m] = await received;
    assert.deepEqual([...m.body], [0, 1, 255]);
    assert.equal(m.messageId, 'm-1');
    assert.equal(m.correlationId, 'c-1');
    assert.equal(m.userId, 'backend');
    assert.equal(m.expiryTimeUtc.getTime(), expiry.getTime());
    assert.equal(m.contentType, 'application/octet-stream');
    assert.equal(m.contentEncoding, 'binary');
    assert.deepEqual(m.properties, { a: '1', b: 'two' });
    await device.complete(m);
  });

  it('reports errors as typed rejections', async (t) => {
    const { service } = clients(t, 'fields');
    await assert.rejects(service.send('nobody', 'x'), (e) => e instanceof db.DeviceNotFoundError && e.code === 404001);
    await assert.rejects(service.send('fields', Buffer.alloc(70 * 1024)), db.MessageTooLargeError);
    // No broker there: the policy gives up at once (c_none) and says why.
    const port = broker.port === 1 ? 2 : 1;
    const lost = new db.ServiceClient({ mqtt: { host: '127.0.0.1', port, connectTimeoutMs: 1000 }, retryPolicy: 'c_none' });
    closeAfter(t, lost);
    await assert.rejects(lost.open(), (e) => e instanceof db.NotConnectedError && e.code === 503100);
    // Receiving that stops: an iterator's next() rejects, a device emits 'error'.
    await assert.rejects(lost.getFeedbackReceiver()[Symbol.asyncIterator]().next(), db.NotConnectedError);
    const lostDevice = new db.DeviceClient('fields', { mqtt: { host: '127.0.0.1', port, connectTimeoutMs: 1000 },
      retryPolicy: 'c_none' });
    closeAfter(t, lostDevice);
    const failed = once(lostDevice, 'error');
    lostDevice.on('message', () => assert.fail('no broker, no message'));
    const [e] = await failed;
    assert.ok(e instanceof db.NotConnectedError);
  });

  it('rejects reject() and abandon() with NotSupported in the IoT Hub mode, as the Azure SDK', async (t) => {
    const { device } = clients(t, 'notsup', { mode: 'iothub' });
    assert.equal(device.canReject, false);
    assert.equal(device.canAbandon, false);
    const token = '00000000-0000-0000-0000-000000000000';
    await assert.rejects(device.reject(token), (e) => e instanceof db.NotSupportedError && e.code === 405001 &&
      /cannot reject/.test(e.message));
    await assert.rejects(device.abandon(token), db.NotSupportedError);
  });

  it('purges and reads queue depth', async (t) => {
    const { service } = clients(t, 'purge');
    await Promise.all([1, 2, 3].map((i) => service.send('purge', `${i}`)));
    assert.equal(await service.queueDepth('purge'), 3);
    assert.equal(await service.purge('purge'), 3);
    assert.equal(await service.queueDepth('purge'), 0);
  });

  it('sends many messages concurrently, each received and completed once', async () => {
    // A broker and hub of its own: the suite's 1 s lock (for the lock-expiry
    // step of the how-to) can run out on a loaded machine while 400 messages
    // are in flight, and a redelivery is then correct, not a failure. Here the
    // lock is IoT Hub's default (60 s), so each message is delivered once.
    const many = Array.from({ length: 4 }, (_, i) => `many-${i}`);
    const perDevice = 100;
    const ownBroker = await startBroker();
    let ownHub;
    const clients = [];
    try {
      ownHub = await startHub(ownBroker.port, [...many.flatMap((d) => ['--device', d]),
        '--max-queue-depth', '1000', '--feedback-batch-interval', '0s']);
      const ownMqtt = { host: '127.0.0.1', port: ownBroker.port };
      const service = new db.ServiceClient({ mqtt: ownMqtt });
      clients.push(service);
      const done = [];
      for (const id of many) {
        const device = new db.DeviceClient(id, { mqtt: ownMqtt });
        clients.push(device);
        const seen = new Set();
        let completed = 0;
        done.push(new Promise((resolve, reject) => {
          device.on('error', reject);
          device.on('message', (m) => {
            if (seen.has(m.messageId)) {
              reject(new Error(`${id}: ${m.messageId} was delivered twice (delivery count ${m.deliveryCount})`));
              return;
            }
            seen.add(m.messageId);
            device.complete(m).then(() => {
              completed += 1;
              if (completed === perDevice) resolve();
            }, reject);
          });
        }));
      }
      const sends = [];
      for (let i = 0; i < perDevice; i += 1) {
        for (let d = 0; d < 4; d += 1) sends.push(service.send(many[d], new db.Message(`${i}`, { messageId: `${d}-${i}` })));
      }
      const receipts = await Promise.all(sends);
      assert.equal(receipts.length, 4 * perDevice);
      await Promise.all(done);
      for (const id of many) assert.equal(await service.queueDepth(id), 0);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await ownHub?.stop();
      await ownBroker.stop();
    }
  });

  for (const [mode, args, what] of [
    ['mqtt', [], 'once they are closed'],
    ['mqtt-gc', ['--expose-gc'], 'when they were dropped unclosed and collected'],
  ]) {
    it(`lets a process with MQTT clients exit by itself ${what}`, async () => {
      const fixture = path.join(__dirname, 'fixtures', 'round-trip.js');
      const child = spawn(process.execPath, [...args, fixture, mode], {
        env: { ...process.env, DEVICEBOUND_TEST_MQTT_PORT: String(broker.port) },
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 30_000,
        killSignal: 'SIGKILL',
      });
      let out = '';
      child.stdout.on('data', (d) => { out += d; });
      child.stderr.on('data', (d) => { out += d; });
      const [code, signal] = await once(child, 'exit');
      assert.equal(signal, null, `it did not exit by itself\n${out}`);
      assert.equal(code, 0, out);
      assert.match(out, new RegExp(`done ${mode}`));
    });
  }
});

describe('over MQTT, a stock IoT Hub device (mosquitto plugin)', {
  skip: skipUnlessPresent('over MQTT, a stock IoT Hub device', [
    ...mqttParts,
    !programs.plugin && 'the mosquitto plugin is not built (set DEVICEBOUND_BROKER_PLUGIN, or build build/broker)',
  ]),
}, () => {
  let broker;
  let hub;
  let mqtt;

  before(async () => {
    broker = await startBroker([`plugin ${programs.plugin}`]);
    hub = await startHub(broker.port, ['--device', 'stock', '--feedback-batch-interval', '0s']);
    mqtt = { host: '127.0.0.1', port: broker.port };
  });

  after(async () => {
    await hub?.stop();
    await broker?.stop();
  });

  it('receives and completes; reject and abandon reject with NotSupported', async (t) => {
    const device = new db.DeviceClient('stock', { mqtt: { ...mqtt, mode: 'iothub' } });
    const service = new db.ServiceClient({ mqtt });
    closeAfter(t, device, service);
    const records = feedbackRecords(service.getFeedbackReceiver(), 2);
    await service.send('stock', new db.Message('before', { messageId: 'before-connect', ack: 'positive' }));
    const received = collect(device, 'message', 2);
    const settled = [];
    device.on('message', (m) => settled.push(
      assert.rejects(device.reject(m), db.NotSupportedError).then(() => device.complete(m))));
    await device.open();
    await service.send('stock', new db.Message('while', { messageId: 'while-connected', ack: 'positive' }));
    const ids = (await received).map((m) => m.messageId).sort();
    assert.deepEqual(ids, ['before-connect', 'while-connected']);
    await Promise.all(settled);
    assert.deepEqual((await records).map((r) => r.statusCode), ['Success', 'Success']);
    assert.equal(await service.queueDepth('stock'), 0);
  });
});
