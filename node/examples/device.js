'use strict';
// A device app: receives cloud-to-device messages and settles each one.
//   node examples/device.js thermostat-1 127.0.0.1:1883   (devicebound-hub behind a broker)
// or, in one process with the back end, see examples/in-process.js.
const { DeviceClient } = require('devicebound');

function runDevice(deviceId, options) {
  const device = new DeviceClient(deviceId, options);
  device.on('connected', () => console.log(`[${deviceId}] connected`));
  device.on('message', async (msg) => {
    const { target } = JSON.parse(msg.toString());
    console.log(`[${deviceId}] ${msg.messageId}: set-point ${target}`);
    await (target >= 10 && target <= 30 ? device.complete(msg) : device.reject(msg));
  });
  return device;
}

if (require.main === module) {
  const [deviceId = 'thermostat-1', broker = '127.0.0.1:1883'] = process.argv.slice(2);
  const [host, port] = broker.split(':');
  const device = runDevice(deviceId, { mqtt: { host, port: Number(port) } });
  process.once('SIGINT', () => device.close());
}

module.exports = { runDevice };
