'use strict';
// One step of tests/sdk/up/up.test.js, as an app would do it: the official
// Node SDKs given only what `devicebound up --output json` printed.
//
//   node client.js roundtrip mqtt|amqp DEVICE MESSAGE_ID   send (ack full), device receives
//                                                          and completes, feedback says Success
//   node client.js send DEVICE MESSAGE_ID                  send only (the device is offline)
//   node client.js receive mqtt|amqp DEVICE MESSAGE_ID     the device receives it and completes
//
// The JSON line is in DEVICEBOUND_UP_JSON. NODE_EXTRA_CA_CERTS must name its
// ca_file before node starts (azure-iothub has no CA option): up.test.js runs
// this file as a child for that reason, as a user's app would be started.
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { WAIT, within } = require('../node/harness');
const { c2d, feedbackCollector, openDevice, openService } = require('../node/sdk');

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
