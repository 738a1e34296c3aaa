'use strict';
// One step of tests/sdk/up/up.test.js, as an app would do it: the official
// Node SDKs given only what `devicebound up --output json` printed.
//
//   node client.js roundtrip mqtt|amqp DEVICE MESSAGE_ID   send (ack full), device receives
//                                                          and completes, feedback says Success
//   node client.js send DEVICE MESSAGE_ID                  send only (the device is offline)
//   node client.js receive mqtt|amqp DEVICE MESSAGE_ID     the device receives it and completes
//   node client.js registry-get DEVICE                     GET /devices/DEVICE over HTTPS with
//                                                          the service string's key (SPEC 12.1)
//
// The JSON line is in DEVICEBOUND_UP_JSON. NODE_EXTRA_CA_CERTS must name its
// ca_file before node starts (azure-iothub has no CA option): up.test.js runs
// this file as a child for that reason, as a user's app would be started.
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const { WAIT, within } = require('../node/harness');
const { c2d, feedbackCollector, openDevice, openService } = require('../node/sdk');

/**
 * GET /devices/{id} on the printed HTTPS port, with a SAS token signed by the
 * service connection string's policy (SPEC 12.6): Node's https with the CA
 * trusted through NODE_EXTRA_CA_CERTS, as azure-iothub's Registry would.
 */
function registryGet(up, id) {
  const cs = Object.fromEntries(up.service_connection_string.split(';').map((kv) => {
    const i = kv.indexOf('=');
    return [kv.slice(0, i), kv.slice(i + 1)];
  }));
  const host = cs.HostName.split(':')[0];
  const se = Math.floor(Date.now() / 1000) + 3600;
  const sig = crypto.createHmac('sha256', Buffer.from(cs.SharedAccessKey, 'base64')).update(`${host}\n${se}`).digest('base64');
  const token = `SharedAccessSignature sr=${host}&sig=${encodeURIComponent(sig)}&se=${se}&skn=${cs.SharedAccessKeyName}`;
  return new Promise((resolve, reject) => {
    const req = https.request({
      host, port: up.ports.https, method: 'GET', path: `/devices/${encodeURIComponent(id)}?api-version=2021-04-12`,
      headers: { Authorization: token },
    }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`HTTP ${res.statusCode}: ${body}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

async function main() {
  const up = JSON.parse(process.env.DEVICEBOUND_UP_JSON);
  assert.equal(process.env.NODE_EXTRA_CA_CERTS, up.ca_file, 'NODE_EXTRA_CA_CERTS is not the printed ca_file');
  const ca = fs.readFileSync(up.ca_file, 'utf8');
  const cleanups = [];
  const t = { after: (fn) => cleanups.push(fn) };
  const [mode, ...args] = process.argv.slice(2);
  // One device string per device; over AMQP the SDK needs the AMQP port in GatewayHostName.
  const deviceCs = (transport, id) => {
    const cs = (transport === 'amqp' ? up.devices_amqp : up.devices)[id];
    assert.ok(cs, `up printed no ${transport} connection string for ${id}`);
    return cs;
  };
  const received = async (transport, id, messageId) => {
    const device = await openDevice(t, deviceCs(transport, id), transport, ca,
      (client, msg) => client.complete(msg, () => {}));
    for (;;) {
      const msg = await device.inbox.next(WAIT);
      if (msg.messageId === messageId) return msg;
    }
  };
  try {
    if (mode === 'roundtrip') {
      const [transport, id, messageId] = args;
      const service = await openService(t, up.service_connection_string);
      const feedback = await feedbackCollector(t, service);
      await within(service.send(id, c2d(`hello ${messageId}`, { messageId, ack: 'full' })), WAIT, 'send()');
      const msg = await received(transport, id, messageId);
      assert.equal(msg.data.toString(), `hello ${messageId}`);
      const record = await feedback.record(messageId, 60000);
      assert.equal(record.statusCode, 'Success');
      assert.equal(record.deviceId, id);
    } else if (mode === 'send') {
      const [id, messageId] = args;
      const service = await openService(t, up.service_connection_string);
      await within(service.send(id, c2d(`queued ${messageId}`, { messageId })), WAIT, 'send()');
    } else if (mode === 'receive') {
      const [transport, id, messageId] = args;
      const msg = await received(transport, id, messageId);
      assert.equal(msg.data.toString(), `queued ${messageId}`);
    } else if (mode === 'registry-get') {
      const [id] = args;
      const device = await within(registryGet(up, id), WAIT, 'GET /devices over HTTPS');
      assert.equal(device.deviceId, id);
      assert.equal(device.status, 'enabled');
      assert.equal(device.authentication.symmetricKey.primaryKey, up.devices[id].match(/SharedAccessKey=([^;]+)/)[1]);
    } else {
      throw new Error(`unknown mode ${mode}`);
    }
  } finally {
    for (const fn of cleanups.reverse()) await fn();
  }
  console.log(`ok ${mode} ${args.join(' ')}`);
}

main().then(() => process.exit(0), (e) => {
  console.error(e?.stack ?? String(e));
  process.exit(1);
});
