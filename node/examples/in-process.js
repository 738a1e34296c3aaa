'use strict';
// Both apps in one process over the embedded hub: no broker, no cloud account.
//   node examples/in-process.js
const { Hub } = require('devicebound');
const { runDevice } = require('./device');
const { runBackend } = require('./backend');

(async () => {
  const hub = new Hub({ feedbackBatchIntervalMs: 100 }); // IoT Hub batches feedback for up to 15 s
  await hub.addDevice('thermostat-1');
  const device = runDevice('thermostat-1', { hub });
  await runBackend('thermostat-1', { hub });
  await device.close();
  console.log(hub.stats());
})();
