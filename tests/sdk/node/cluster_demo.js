'use strict';
// The cluster demo (scripts/cluster-demo.sh runs it): on this machine, loopback
// only, PostgreSQL, 3 RabbitMQ nodes, haproxy and 2 devicebound-hub --cluster
// instances (cluster_stack.js); Node SDK devices (MQTT through haproxy) and a
// back end (azure-iothub over AMQP to the hubs' doors) sending C2D messages
// with feedback; then kill -9 of hub a, and kill -9 of the RabbitMQ node the
// devices are on, each under load, with what happened printed as a ledger.
// Everything it started is stopped by PID at the end, on Ctrl-C and on error.
// Exit status 0 when nothing acknowledged was lost, 1 otherwise, 130 on Ctrl-C.
//
// Environment: DEVICEBOUND_DEMO_DEVICES (4), DEVICEBOUND_DEMO_PARTITIONS (8),
// DEVICEBOUND_DEMO_LEASE_TTL (3, s), DEVICEBOUND_CLUSTER_SENDERS (each|haproxy),
// DEVICEBOUND_SDK_KEEP=1 (keep the logs), plus cluster_stack.js's.
const { clusterMissing, senderMode, startClusterStack, stopAll } = require('./cluster_stack');
const { brokerFailover, hubFailover, ledgerText, newLedger, openBackend, openDevices } = require('./cluster_work');

const n = Number(process.env.DEVICEBOUND_DEMO_DEVICES || 4);
const partitions = Number(process.env.DEVICEBOUND_DEMO_PARTITIONS || 8);
const leaseTtl = Number(process.env.DEVICEBOUND_DEMO_LEASE_TTL || 3);
const ids = Array.from({ length: n }, (_, i) => `demo-dev-${i}`);
const say = (line) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${line}`);

let stack;
let devices;
let backend;
let stopping = false;

async function cleanup(code) {
  if (stopping) return;
  stopping = true;
  say('stopping everything this demo started (by PID)');
  await backend?.close().catch(() => {});
  await devices?.close().catch(() => {});
  await stopAll().catch((e) => say(`stop: ${e.message}`)); // also a stack still starting
  say('stopped');
  process.exit(code);
}

process.on('uncaughtException', (e) => {
  say(`uncaught exception: ${e.stack || e.message}`);
  cleanup(1);
});
process.on('unhandledRejection', (e) => {
  say(`unhandled rejection: ${e?.stack || e}`);
  cleanup(1);
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    say(`${sig}: stopping`);
    cleanup(130);
  });
}

async function main() {
  const missing = clusterMissing();
  if (missing.length) throw new Error(`cannot start the cluster: ${missing.join('; ')}`);
  say(`starting: PostgreSQL, 3 RabbitMQ nodes, haproxy, 2 hubs (${partitions} partitions, lease ttl ${leaseTtl} s)`);
  stack = await startClusterStack({ devices: ids, partitions, leaseTtl, log: say });
  const ledgers = { hub: newLedger(), broker: newLedger() };
  let current = ledgers.hub;
  const proxy = new Proxy({}, { get: (_, k) => current[k] }); // the ledger of the scenario running now
  devices = await openDevices(stack, ids, proxy);
  say(`${n} devices (azure-iot-device-mqtt) connected through haproxy (MQTT TLS 127.0.0.1:${stack.ports.mqttTls})`);
  const senders = senderMode();
  backend = await openBackend(stack, proxy, { senders, doors: [stack.hubs.a.door, stack.hubs.b.door] });
  say(`back end (azure-iothub, AMQP): senders ${senders === 'haproxy' ? `one Client through haproxy 127.0.0.1:${stack.ports.door}`
    : `one Client per hub door (${stack.hubs.a.door}, ${stack.hubs.b.door})`}, a feedback receiver on each door`);

  say('--- 1. hub failover: load, then kill -9 of hub a');
  const hub = await hubFailover(stack, backend, ledgers.hub, ids, { victim: 'a', survivor: 'b', log: say });
  console.log(ledgerText('hub failover (kill -9 of hub a under load)', hub));

  current = ledgers.broker;
  say('--- 2. broker failover: load, then kill -9 of the RabbitMQ node the devices are on');
  const broker = await brokerFailover(stack, backend, ledgers.broker, ids, { log: say });
  console.log(ledgerText(`broker failover (kill -9 of ${broker.node} under load)`, broker));

  const ok = hub.lost === 0 && broker.lost === 0;
  console.log([
    '',
    'summary',
    `  stack start          ${stack.timings.ready} ms`,
    `  hub failover         sent ${hub.messages}, acknowledged ${hub.acknowledged}, received ${hub.received}, `
      + `lost ${hub.lost}, duplicates ${hub.duplicates}, feedback ${hub.feedback} (missing ${hub.feedbackMissing}, `
      + `twice ${hub.feedbackDuplicates}), takeover ${hub.takeoverMs} ms`,
    `  broker failover      sent ${broker.messages}, acknowledged ${broker.acknowledged}, received ${broker.received}, `
      + `lost ${broker.lost}, duplicates ${broker.duplicates}, feedback ${broker.feedback} (missing `
      + `${broker.feedbackMissing}, twice ${broker.feedbackDuplicates}), device sessions back ${broker.sessionsBackMs} ms, first message received ${broker.firstBackMs}..${broker.allBackMs} ms after the kill`,
    `  result               ${ok ? 'nothing acknowledged was lost' : 'ACKNOWLEDGED MESSAGES WERE LOST'}`,
  ].join('\n'));
  return ok ? 0 : 1;
}

main().then((code) => cleanup(code), (e) => {
  say(`error: ${e.stack || e.message}`);
  cleanup(1);
});
