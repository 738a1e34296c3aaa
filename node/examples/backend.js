'use strict';
// A back-end app: sends set-points with ack=full and prints the delivery feedback.
//   node examples/backend.js thermostat-1 127.0.0.1:1883
const { Message, ServiceClient } = require('devicebound');

async function runBackend(deviceId, options, targets = [21, 99, 22]) {
  const service = new ServiceClient(options);
  for (const [i, target] of targets.entries()) {
    const msg = new Message(JSON.stringify({ target }), { messageId: `set-${i}`, ack: 'full' });
    const { sequenceNumber } = await service.send(deviceId, msg);
    console.log(`[backend] sent set-${i} (sequence number ${sequenceNumber})`);
  }
  let outcomes = 0;
  for await (const batch of service.getFeedbackReceiver()) {
    for (const r of batch.records) console.log(`[backend] ${r.originalMessageId}: ${r.statusCode}`);
    await batch.complete();
    outcomes += batch.records.length;
    if (outcomes === targets.length) break;
  }
  await service.close();
}

if (require.main === module) {
  const [deviceId = 'thermostat-1', broker = '127.0.0.1:1883'] = process.argv.slice(2);
  const [host, port] = broker.split(':');
  runBackend(deviceId, { mqtt: { host, port: Number(port) } }).catch((e) => {
    console.error(e.message);
    process.exitCode = 1;
  });
}

module.exports = { runBackend };
