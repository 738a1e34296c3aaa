'use strict';
// The how-to scenario over the embedded hub: a device app settles each message
// its own way, a back-end app sends with ack=full and hears every outcome.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const db = require('..');
const { closeAfter, collect, feedbackRecords, once } = require('./helpers');

describe('in-process: the C2D how-to', () => {
  it('sends, receives, completes, rejects, abandons, redelivers and reports feedback', async (t) => {
    const hub = new db.Hub({
      name: 'test-hub',
      lockDurationMs: 1000, // IoT Hub: 1 minute
      maxDeliveryCount: 3,
      feedbackBatchIntervalMs: 0,
    });
    await hub.addDevice('thermostat-1');
    const device = hub.deviceClient('thermostat-1');
    const service = hub.serviceClient();
    closeAfter(t, device, service);
    const connected = once(device, 'connected');
    await device.open();
    assert.deepEqual(await connected, ['ok']);
    assert.equal(device.status, db.ConnectionStatus.Connected);

    const seen = [];
    const settled = [];
    let slowFirstTime = true;
    device.on('message', (m) => {
      seen.push([m.messageId, m.deliveryCount]);
      assert.ok(Buffer.isBuffer(m.body));
      assert.match(m.lockToken, /^[0-9a-f-]{36}$/);
      if (m.messageId === 'set-99') settled.push(device.reject(m));
      else if (m.messageId === 'flaky') settled.push(device.abandon(m));
      else if (m.messageId === 'slow' && slowFirstTime) slowFirstTime = false; // its lock expires: it comes back
      else settled.push(device.complete(m));
    });

    const records = feedbackRecords(service.getFeedbackReceiver(), 5);
    const sends = [];
    for (const [id, target] of [['set-21', 21], ['set-99', 99], ['flaky', 20], ['slow', 22], ['set-23', 23]]) {
      const m = new db.Message(JSON.stringify({ target }), {
        messageId: id,
        ack: db.AckMode.Full,
        contentType: 'application/json',
        properties: { kind: 'set-point' },
      });
      sends.push(service.send('thermostat-1', m));
    }
    const receipts = await Promise.all(sends);
    const numbers = receipts.map((r) => r.sequenceNumber);
    assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b));
    assert.ok(receipts.every((r) => r.expiryTimeUtc instanceof Date));

    const byId = new Map((await records).map((r) => [r.originalMessageId, r]));
    assert.equal(byId.get('set-21').statusCode, db.FeedbackStatus.Success);
    assert.equal(byId.get('set-23').statusCode, db.FeedbackStatus.Success);
    assert.equal(byId.get('slow').statusCode, db.FeedbackStatus.Success);
    assert.equal(byId.get('set-99').statusCode, db.FeedbackStatus.Rejected);
    assert.equal(byId.get('flaky').statusCode, db.FeedbackStatus.DeliveryCountExceeded);
    for (const r of byId.values()) {
      assert.equal(r.deviceId, 'thermostat-1');
      assert.ok(r.enqueuedTimeUtc instanceof Date);
      assert.ok(r.deviceGenerationId.length > 0);
    }
    assert.deepEqual(seen.filter(([id]) => id === 'flaky').map(([, c]) => c), [0, 1, 2]);
    assert.equal(seen.filter(([id]) => id === 'slow').length, 2);

    await Promise.all(settled);
    const disconnected = once(device, 'disconnected');
    await device.close();
    assert.deepEqual(await disconnected, ['client_closed']);
    await service.close();
    const s = hub.stats();
    assert.equal(s.accepted, 5);
    assert.equal(s.completed, 3);
    assert.equal(s.rejected, 1);
    assert.equal(s.deliveryCountExceeded, 1);
    hub.close();
  });

  it('keeps every field of a message', async (t) => {
    const hub = new db.Hub();
    await hub.addDevice('d');
    const device = hub.deviceClient('d');
    const service = hub.serviceClient();
    closeAfter(t, device, service);
    const received = once(device, 'message');
    const expiry = new Date(Date.now() + 600_000);
    const created = new Date(Date.now() - 1000);
    const sent = new db.Message(Buffer.from([0, 1, 2, 255]), {
      messageId: 'm-1',
      correlationId: 'c-1',
      userId: 'backend',
      expiryTimeUtc: expiry,
      ack: 'positive',
      contentType: 'application/octet-stream',
      contentEncoding: 'binary',
      creationTimeUtc: created,
      properties: { a: '1', 'with-dash': 'x.y!' },
    });
    const receipt = await service.send('d', sent);
    const [m] = await received;
    assert.ok(m instanceof db.Message);
    assert.deepEqual([...m.body], [0, 1, 2, 255]);
    assert.equal(m.messageId, 'm-1');
    assert.equal(m.correlationId, 'c-1');
    assert.equal(m.userId, 'backend');
    assert.equal(m.to, '/devices/d/messages/devicebound');
    assert.equal(m.expiryTimeUtc.getTime(), expiry.getTime());
    assert.equal(m.ack, 'positive');
    assert.equal(m.contentType, 'application/octet-stream');
    assert.equal(m.contentEncoding, 'binary');
    assert.equal(m.creationTimeUtc.getTime(), created.getTime());
    assert.deepEqual(m.properties, { a: '1', 'with-dash': 'x.y!' });
    assert.equal(m.sequenceNumber, receipt.sequenceNumber);
    assert.ok(m.enqueuedTimeUtc instanceof Date);
    assert.equal(m.deliveryCount, 0);
    assert.equal(m.getData(), m.body);
    await device.complete(m.lockToken); // a lock token works as well as the message
    await Promise.all([device.close(), service.close()]);
  });

  it('reports queue depth and purges, with Purged feedback for negative acks', async (t) => {
    const hub = new db.Hub({ feedbackBatchIntervalMs: 0 });
    await hub.addDevice('d');
    const service = hub.serviceClient();
    closeAfter(t, service);
    for (let i = 0; i < 3; i += 1) {
      await service.send('d', new db.Message('x', { messageId: `p-${i}`, ack: 'negative' }));
    }
    assert.equal(await service.queueDepth('d'), 3);
    const records = feedbackRecords(service.getFeedbackReceiver(), 3);
    assert.equal(await service.purge('d'), 3);
    assert.equal(await service.queueDepth('d'), 0);
    assert.deepEqual((await records).map((r) => r.statusCode), ['Purged', 'Purged', 'Purged']);
    await service.close();
  });

  it('abandons a feedback batch and gets it again', async (t) => {
    const hub = new db.Hub({ feedbackBatchIntervalMs: 0 });
    await hub.addDevice('d');
    const device = hub.deviceClient('d');
    const service = hub.serviceClient();
    closeAfter(t, device, service);
    const received = once(device, 'message');
    const receiver = service.getFeedbackReceiver();
    const batches = collect(receiver, 'message', 2);
    const settled = [];
    receiver.on('message', (b) => settled.push(settled.length === 0 ? receiver.abandon(b) : b.complete()));
    await service.send('d', new db.Message('x', { messageId: 'fb', ack: 'full' }));
    await device.complete((await received)[0]);
    const [a, b] = await batches;
    await Promise.all(settled);
    assert.equal(a.lockToken === b.lockToken, false);
    assert.deepEqual(a.records, b.records);
    assert.equal(b.deliveryCount, a.deliveryCount + 1);
    assert.equal(a.userId, 'devicebound');
    await Promise.all([device.close(), service.close()]);
  });

  it('delivers messages that came while nobody listened to the next listener', async (t) => {
    const hub = new db.Hub();
    await hub.addDevice('d');
    const device = hub.deviceClient('d');
    const service = hub.serviceClient();
    closeAfter(t, device, service);
    const first = once(device, 'message');
    await service.send('d', 'one');
    const [m1] = await first;
    await device.complete(m1);
    device.removeAllListeners('message');
    await service.send('d', 'two');
    assert.equal(await service.queueDepth('d'), 1);
    const [m2] = await once(device, 'message');
    assert.equal(m2.toString(), 'two');
    await device.complete(m2);
    await Promise.all([device.close(), service.close()]);
  });

  it('reopens after close', async (t) => {
    const hub = new db.Hub();
    await hub.addDevice('d');
    const device = hub.deviceClient('d');
    const service = hub.serviceClient();
    closeAfter(t, device, service);
    const got = [];
    const settled = [];
    device.on('message', (m) => {
      got.push(m.toString());
      settled.push(device.complete(m));
    });
    const one = once(device, 'message');
    await service.send('d', 'before');
    await one;
    await Promise.all(settled);
    await device.close();
    assert.equal(device.status, 'disconnected');
    await service.send('d', 'while closed');
    await device.open();
    await once(device, 'message');
    await Promise.all(settled);
    assert.deepEqual(got, ['before', 'while closed']);
    await Promise.all([device.close(), service.close()]);
  });

  it('gives each message an id when asked (assignMessageId)', async (t) => {
    const hub = new db.Hub();
    await hub.addDevice('d');
    const device = hub.deviceClient('d');
    const service = hub.serviceClient({ assignMessageId: 'when_unset' });
    closeAfter(t, device, service);
    const got = collect(device, 'message', 2);
    await service.send('d', 'no id');
    await service.send('d', new db.Message('own id', { messageId: 'mine' }));
    const [a, b] = await got;
    assert.match(a.messageId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(b.messageId, 'mine');
    await Promise.all([device.complete(a), device.complete(b)]);
    await Promise.all([device.close(), service.close()]);
  });

  it('sends many messages concurrently to many devices, each received once', async (t) => {
    const devices = 8;
    const perDevice = 250;
    const hub = new db.Hub({ maxQueueDepth: perDevice });
    const service = hub.serviceClient();
    closeAfter(t, service);
    const clients = [];
    const done = [];
    for (let d = 0; d < devices; d += 1) {
      await hub.addDevice(`dev-${d}`);
      const c = hub.deviceClient(`dev-${d}`);
      const seen = new Set();
      let completed = 0;
      done.push(new Promise((resolve, reject) => {
        c.on('error', reject);
        c.on('message', (m) => {
          assert.equal(seen.has(m.messageId), false);
          seen.add(m.messageId);
          c.complete(m).then(() => {
            completed += 1;
            if (completed === perDevice) resolve(seen);
          }, reject);
        });
      }));
      clients.push(c);
    }
    closeAfter(t, ...clients);
    const sends = [];
    for (let i = 0; i < perDevice; i += 1) {
      for (let d = 0; d < devices; d += 1) {
        sends.push(service.send(`dev-${d}`, new db.Message(`${i}`, { messageId: `${d}-${i}` })));
      }
    }
    const receipts = await Promise.all(sends);
    assert.equal(new Set(receipts.map((r) => r.sequenceNumber)).size, devices * perDevice);
    const seen = await Promise.all(done);
    assert.ok(seen.every((s) => s.size === perDevice));
    assert.equal(hub.stats().completed, devices * perDevice);
    await Promise.all([...clients.map((c) => c.close()), service.close()]);
  });
});
