'use strict';
// The clients over AMQP, made from IoT Hub connection strings, against
// devicebound-hub's AMQP door: TLS with a certificate made here for
// 'localhost', SAS keys from an auth file; a mosquitto and the daemon on free
// 127.0.0.1 ports, stopped by PID. The daemon is $DEVICEBOUND_AMQP_HUB, else
// the one the MQTT tests use when it has the AMQP door (--amqp-listen).
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const db = require('..');
const { closeAfter, skipUnlessPresent } = require('./helpers');
const { programs, startBroker, startHub } = require('./processes');

const DEVICE_KEY = 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=';
const SERVICE_KEY = 'ZmFrZS1wb2xpY3kta2V5LWZvci1kb2NzLW9ubHkhIQ==';
const OTHER_KEY = 'q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=';

const hubExe = process.env.DEVICEBOUND_AMQP_HUB || programs.hub;
const hasDoor = (exe) => {
  if (!exe) return false;
  const r = spawnSync(exe, ['--help'], { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`.includes('--amqp-listen');
};
const openssl = ['/usr/bin/openssl', '/usr/local/bin/openssl'].find((f) => fs.existsSync(f));

const skip = skipUnlessPresent('over AMQP', [
  !db.withAmqp && 'this build of the addon has no AMQP transport (Qpid Proton C++)',
  !programs.mosquitto && 'mosquitto is not installed',
  !hasDoor(hubExe) && 'devicebound-hub with the AMQP door is not built (set DEVICEBOUND_AMQP_HUB)',
  !openssl && 'openssl (for the test certificate) is not installed',
]);

const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.on('error', reject);
  s.listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

describe('over AMQP', { skip }, () => {
  let dir;
  let broker;
  let hub;
  let port;
  let caFile;
  const serviceCs = (key = SERVICE_KEY) =>
    `HostName=localhost:${port};SharedAccessKeyName=service;SharedAccessKey=${key}`;
  const deviceCs = (id, key = DEVICE_KEY) => `HostName=localhost:${port};DeviceId=${id};SharedAccessKey=${key}`;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-node-amqp-'));
    caFile = path.join(dir, 'server.pem');
    const cert = spawnSync(openssl, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout',
      path.join(dir, 'server.key'), '-out', caFile, '-days', '2', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { encoding: 'utf8' });
    assert.equal(cert.status, 0, cert.stderr);
    fs.writeFileSync(path.join(dir, 'auth.txt'),
      `dev1 ${DEVICE_KEY}\ndev2 ${DEVICE_KEY}\npolicy service ${SERVICE_KEY}\n`);
    broker = await startBroker();
    port = await freePort();
    hub = await startHub(broker.port, ['--device', 'dev1', '--device', 'dev2',
      '--feedback-batch-interval', '0s', '--lock-duration', '5s',
      '--amqp-listen', `127.0.0.1:${port}`, '--tls-server-cert', caFile,
      '--tls-server-key', path.join(dir, 'server.key'), '--auth-file', path.join(dir, 'auth.txt'),
      '--iothub-hostname', 'localhost'], hubExe);
  });

  after(async () => {
    await hub?.stop();
    await broker?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('sends, completes, rejects, abandons and hears feedback, from connection strings', async (t) => {
    const service = db.ServiceClient.fromConnectionString(serviceCs(), { caFile });
    const device = db.DeviceClient.fromConnectionString(deviceCs('dev1'), 'amqp', { caFile });
    closeAfter(t, service, device);
    assert.equal(device.deviceId, 'dev1');
    assert.equal(device.canReject, true);
    assert.equal(device.canAbandon, true);
    await device.open();
    const seen = [];
    const done = new Promise((resolve, reject) => {
      device.on('error', reject);
      device.on('message', (m) => {
        seen.push(`${m.messageId}:${m.deliveryCount}`);
        let settle;
        if (m.messageId === 'b') settle = device.reject(m);
        else if (m.messageId === 'c' && m.deliveryCount === 0) settle = device.abandon(m);
        else settle = device.complete(m);
        settle.then(() => { if (seen.length === 4) resolve(); }, reject);
      });
    });
    for (const id of ['a', 'b', 'c']) {
      await service.send('dev1', new db.Message(`body-${id}`, { messageId: id, ack: db.AckMode.Full }));
    }
    await done;
    assert.deepEqual(seen, ['a:0', 'b:0', 'c:0', 'c:1']);

    const statuses = {};
    for await (const batch of service.getFeedbackReceiver()) {
      for (const r of batch.records) statuses[r.originalMessageId] = r.statusCode;
      await batch.complete();
      if (Object.keys(statuses).length >= 3) break;
    }
    assert.deepEqual(statuses, { a: db.FeedbackStatus.Success, b: db.FeedbackStatus.Rejected,
      c: db.FeedbackStatus.Success });

    await assert.rejects(service.purge('dev1'), db.NotSupportedError);
    await assert.rejects(service.queueDepth('dev1'), db.NotSupportedError);
  });

  it('gives typed errors', async (t) => {
    const service = db.ServiceClient.fromConnectionString(serviceCs(), { caFile });
    const bad = db.ServiceClient.fromConnectionString(serviceCs(OTHER_KEY), { caFile, retryPolicy: 'c_none' });
    closeAfter(t, service, bad);
    await assert.rejects(service.send('nobody', 'x'), db.DeviceNotFoundError);
    await assert.rejects(bad.open(), db.UnauthorizedError);
    assert.throws(() => db.DeviceClient.fromConnectionString('HostName=h;DeviceId=d', 'amqp'),
      db.ArgumentInvalidError);
    assert.throws(() => db.ServiceClient.fromConnectionString(deviceCs('dev1')), db.ArgumentInvalidError);
    assert.throws(() => db.DeviceClient.fromConnectionString(deviceCs('dev1'), 'mqtt'), db.NotSupportedError);
  });
});
