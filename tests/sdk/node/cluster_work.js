'use strict';
// Work for a devicebound cluster (cluster_stack.js), done with the official SDKs
// as an app does it: devices are azure-iot-device Clients over MQTT
// (azure-iot-device-mqtt) through haproxy to RabbitMQ, completing every
// message; the back end is azure-iothub Clients over AMQP to the hubs' doors,
// sending C2D messages with `ack: full` and reading feedback. Everything is
// counted in a ledger: sent, acknowledged, received, lost, duplicates, feedback.
//
// The back end's senders: with forwarding between instances (any instance
// answers for any device) one Client through haproxy's door address is enough
// (`senders: 'haproxy'`); without it, a send to an instance that does not own
// the device's partition is answered 503001 (ServiceUnavailableError), so the
// back end holds one Client per instance and sends to the next one on any
// error (`senders: 'each'`, the default). Feedback is per instance: one
// feedback receiver per instance's door.
const { Client: ServiceClient } = require('azure-iothub');
const { Message: ServiceMessage } = require('azure-iothub/dist/common-core/message');
const { Client: DeviceClient } = require('azure-iot-device');
const { Mqtt: DeviceMqtt } = require('azure-iot-device-mqtt');
const { NoRetry } = require('azure-iot-common');
const amqpErrors = require('azure-iothub/dist/common-amqp/amqp_common_errors');
const { sleep, until } = require('./cluster_stack');

// azure-iothub 1.16.6's getErrorName, which only builds debug text in its receiver link's
// state machine, recurses without end on an error whose `amqpError` chain is a cycle: a
// feedback receiver's link met one when its hub was killed (kill -9), and the RangeError
// thrown from the event handler ended the process. The link reads the helper from the
// module's exports at each call, so it is replaced here by one that stops at a cycle;
// nothing else of the SDK changes.
amqpErrors.getErrorName = function errorName(err, seen = new Set()) {
  if (!err) return 'error is falsy';
  if (err.condition) return `amqp error(${err.condition})`;
  if (!err.name) return 'unknown error type';
  seen.add(err);
  let name = `javacript error(${err})`;
  if (err.amqpError) name += seen.has(err.amqpError) ? '(from a cycle)' : `(from ${errorName(err.amqpError, seen)})`;
  return name;
};

const OPEN_WAIT = 30000;

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** Opens `ids` as MQTT devices through haproxy; each completes every message it gets. */
async function openDevices(stack, ids, ledger) {
  const devices = [];
  await Promise.all(ids.map(async (id) => {
    const client = DeviceClient.fromConnectionString(stack.deviceMqttCs(id), DeviceMqtt);
    const dev = { id, client, errors: [], disconnects: 0 };
    client.on('error', (e) => dev.errors.push(e));
    client.on('disconnect', () => { dev.disconnects += 1; });
    await withTimeout(client.setOptions({ ca: stack.ca }), OPEN_WAIT, `device ${id} setOptions()`);
    await withTimeout(client.open(), OPEN_WAIT, `device ${id} open()`);
    client.on('message', (msg) => {
      ledger.received(id, msg.messageId);
      client.complete(msg, () => {});
    });
    devices.push(dev);
  }));
  return {
    devices,
    close: () => Promise.all(devices.map((d) => withTimeout(d.client.close(), 10000, 'device close()').catch(() => {}))),
  };
}

/** The ledger: what was sent, acknowledged, received and fed back, by message id. */
function newLedger() {
  const sent = new Map(); // id -> { device, at, ackedAt, unknown }
  const got = new Map(); // id -> [{ device, at }]
  const feedback = new Map(); // id -> [status]
  const receipts = [];
  return {
    sent, got, feedback, receipts,
    received(device, id) {
      const at = Date.now();
      if (!got.has(id)) got.set(id, []);
      got.get(id).push({ device, at });
      receipts.push({ id, device, at });
    },
    fed(id, status) {
      if (!feedback.has(id)) feedback.set(id, []);
      feedback.get(id).push(status);
    },
    acked: () => [...sent.entries()].filter(([, s]) => s.ackedAt),
    /** The numbers (a snapshot). */
    summary() {
      const acked = this.acked();
      const lost = acked.filter(([id]) => !got.has(id)).map(([id]) => id);
      const dupIds = [...got.entries()].filter(([, l]) => l.length > 1).map(([id]) => id);
      const fbDup = [...feedback.entries()].filter(([, l]) => l.length > 1).map(([id]) => id);
      const fbMissing = acked.filter(([id]) => !feedback.has(id)).map(([id]) => id);
      const fbNotSuccess = [...feedback.entries()].filter(([, l]) => l.some((s) => s !== 'Success')).map(([id]) => id);
      return {
        messages: sent.size,
        acknowledged: acked.length,
        unknownOutcome: [...sent.values()].filter((s) => s.unknown > 0).length,
        received: got.size,
        lost: lost.length,
        duplicates: dupIds.reduce((n, id) => n + got.get(id).length - 1, 0),
        feedback: feedback.size,
        feedbackDuplicates: fbDup.length,
        feedbackMissing: fbMissing.length,
        feedbackNotSuccess: fbNotSuccess.length,
        sendErrors: [...sent.values()].filter((s) => s.lastError).reduce((m, s) => {
          const k = s.lastError.slice(0, 60);
          return { ...m, [k]: (m[k] ?? 0) + 1 };
        }, {}),
        lostIds: lost.slice(0, 10),
        duplicateIds: dupIds.slice(0, 10),
        feedbackMissingIds: fbMissing.slice(0, 10),
        feedbackDuplicateIds: fbDup.slice(0, 10),
      };
    },
  };
}

/**
 * The back end: senders (see the file's comment) and a feedback receiver on each
 * instance's door. `doors`: the ports of the instances' AMQP doors.
 */
async function openBackend(stack, ledger, { senders = 'each', doors } = {}) {
  const clients = [];
  const open = async (port, retry) => {
    const c = ServiceClient.fromConnectionString(stack.serviceCs(port));
    if (!retry) c.setRetryPolicy(new NoRetry());
    c.on('error', () => {});
    await withTimeout(c.open(), OPEN_WAIT, `azure-iothub Client.open() to port ${port}`);
    clients.push(c);
    return c;
  };
  // through haproxy: the SDK's own retry policy (its connection moves to a live hub)
  const sendVia = senders === 'haproxy' ? [await open(stack.ports.door, true)]
    : await Promise.all(doors.map((p) => open(p, false)));
  const receivers = [];
  await Promise.all(doors.map(async (port) => {
    const c = await open(port, false);
    const { result: receiver } = await withTimeout(c.getFeedbackReceiver(), OPEN_WAIT, `getFeedbackReceiver() on ${port}`);
    receiver.on('error', () => {});
    receiver.on('errorReceived', () => {});
    receiver.on('message', (msg) => {
      let list = [];
      try {
        list = JSON.parse(Buffer.from(msg.data).toString('utf8'));
      } catch { /* counted as missing */ }
      for (const r of list) ledger.fed(r.originalMessageId, r.statusCode);
      receiver.complete(msg, () => {});
    });
    receivers.push(receiver);
  }));

  let next = 0;
  /** Sends one message; tries the senders in turn (bounded by `ms`). Resolves with whether it was acknowledged. */
  const send = async (device, id, ms = 60000) => {
    const entry = { device, at: Date.now(), ackedAt: 0, unknown: 0, tries: 0 };
    ledger.sent.set(id, entry);
    const deadline = Date.now() + ms;
    let i = next;
    next = (next + 1) % sendVia.length;
    while (Date.now() < deadline) {
      const c = sendVia[i % sendVia.length];
      entry.tries += 1;
      const m = new ServiceMessage(`payload of ${id}`);
      m.messageId = id;
      m.ack = 'full';
      try {
        await withTimeout(c.send(device, m), 25000, 'send()'); // the SDK's own retries (haproxy) fit in it
        entry.ackedAt = Date.now();
        return true;
      } catch (e) {
        // 503001 (not served here) is a refusal and a sender whose connection is gone sent
        // nothing: neither stored anything. Anything else may have been stored.
        if (!['ServiceUnavailableError', 'NotConnectedError'].includes(e?.constructor?.name)) entry.unknown += 1;
        entry.lastError = `${e?.constructor?.name}: ${e?.message}`;
        i += 1;
        await sleep(sendVia.length > 1 && i % sendVia.length !== 0 ? 0 : 50);
      }
    }
    return false;
  };

  return {
    send,
    close: () => Promise.all(clients.map((c) => withTimeout(c.close(), 10000, 'Client.close()').catch(() => {}))),
  };
}

/** Sends to `devices` round robin from `workers` concurrent loops until stop(); resolves when they end. */
function startLoad(backend, devices, { workers = 3, prefix = 'm', pauseMs = 20 } = {}) {
  let n = 0;
  let stopped = false;
  const loops = Array.from({ length: workers }, async () => {
    while (!stopped) {
      n += 1;
      const id = `${prefix}-${n}`;
      await backend.send(devices[n % devices.length], id);
      await sleep(pauseMs); // pacing the load
    }
  });
  const done = Promise.all(loops);
  return {
    count: () => n,
    stop: async () => {
      stopped = true;
      await done;
    },
  };
}

/** Waits (bounded) until every acknowledged message arrived and was fed back, then `settleMs` for late duplicates. */
async function drain(ledger, { ms = 45000, settleMs = 1500 } = {}) {
  try {
    await until(() => ledger.acked().every(([id]) => ledger.got.has(id) && ledger.feedback.has(id)), ms,
      'every acknowledged message to arrive and be fed back', 100);
  } catch { /* the ledger says what is missing */ }
  await sleep(settleMs); // what else arrives: duplicates
  return ledger.summary();
}

/**
 * Hub failover: load from the back end, kill -9 of hub `victim` (a name in
 * stack.hubs), the other must serve every partition; load goes on `afterMs`
 * after the takeover, then the ledger is drained. Resolves with the ledger's
 * numbers plus `takeoverMs` (kill to the survivor serving all K partitions).
 */
async function hubFailover(stack, backend, ledger, deviceIds, { victim = 'a', survivor = 'b', beforeMs = 2000, afterMs = 3000,
  log = () => {} } = {}) {
  const load = startLoad(backend, deviceIds, { prefix: 'hub-failover' });
  await sleep(beforeMs); // load before the kill
  const v = stack.hubs[victim];
  const s = stack.hubs[survivor];
  const before = { victim: v.served(), survivor: s.served() };
  const killedAt = await stack.killHub(v);
  log(`kill -9 hub ${victim} (pid ${v.pid}, partitions ${before.victim.join(' ')}) after ${load.count()} sends`);
  let takeoverMs = null;
  try {
    await until(() => s.served().length === stack.partitions, (stack.leaseTtl + 10) * 1000,
      `hub ${survivor} to serve all ${stack.partitions} partitions`, 10);
    takeoverMs = Date.now() - killedAt;
    log(`hub ${survivor} serves all ${stack.partitions} partitions ${takeoverMs} ms after the kill`);
  } catch (e) {
    log(e.message);
  }
  await sleep(afterMs); // load after the takeover
  await load.stop();
  const summary = await drain(ledger);
  return { kills: 1, ...summary, takeoverMs, partitionsBefore: before };
}

/**
 * Broker failover: load from the back end, kill -9 of the RabbitMQ node the
 * devices are connected to (haproxy's sessions say which); the devices must be
 * back and receive. `backMs`: kill to the first receipt of a message sent
 * after the kill (per device too).
 */
async function brokerFailover(stack, backend, ledger, deviceIds, { beforeMs = 2000, afterMs = 4000, log = () => {} } = {}) {
  const sessions = await stack.sessions('mqtt_tls');
  const [victimName] = Object.entries(sessions).sort((x, y) => y[1] - x[1])[0];
  const victim = stack.rabbits.find((r) => r.name === victimName);
  const load = startLoad(backend, deviceIds, { prefix: 'broker-failover' });
  await sleep(beforeMs); // load before the kill
  const killedAt = stack.killRabbit(victim);
  log(`kill -9 ${victim.node} (beam pid ${victim.beamPid}), which held the MQTT sessions (haproxy: ${JSON.stringify(sessions)})`);
  const backAt = {};
  try {
    await until(() => {
      for (const r of ledger.receipts) {
        const s = ledger.sent.get(r.id);
        if (s && s.at > killedAt && !backAt[r.device]) backAt[r.device] = r.at;
      }
      return deviceIds.every((d) => backAt[d]);
    }, 60000, 'every device to receive a message sent after the kill', 20);
  } catch (e) {
    log(e.message);
  }
  const backMs = Object.fromEntries(Object.entries(backAt).map(([d, at]) => [d, at - killedAt]));
  // the devices' sessions back: the first consumer.created of each after the kill, as a hub's log says
  // (its timestamps are UTC, ms)
  const sessionBackMs = {};
  for (const h of Object.values(stack.hubs).filter((x) => x.alive())) {
    for (const m of h.log().matchAll(/^(\S+) debug RabbitMQ event consumer\.created: device '([^']+)'/gm)) {
      const at = Date.parse(`${m[1]}Z`);
      if (at > killedAt && deviceIds.includes(m[2]) && !(sessionBackMs[m[2]] <= at - killedAt)) sessionBackMs[m[2]] = at - killedAt;
    }
  }
  const firstBack = Math.min(...Object.values(backMs));
  const allBack = Math.max(...Object.values(backMs));
  log(`devices back (first message sent after the kill received) ${firstBack}..${allBack} ms after the kill`);
  await sleep(afterMs); // load after the devices are back
  await load.stop();
  const summary = await drain(ledger);
  const after = await stack.sessions('mqtt_tls');
  const backs = Object.values(sessionBackMs);
  return {
    kills: 1, node: victim.node, ...summary, backMs, firstBackMs: firstBack, allBackMs: allBack, sessionBackMs,
    sessionsBackMs: backs.length ? `${Math.min(...backs)}..${Math.max(...backs)}` : 'not seen', sessionsAfter: after,
  };
}

/** One ledger as text lines. */
function ledgerText(title, l) {
  const rows = Object.entries(l).filter(([k]) => !/^(lostIds|feedbackMissingIds|feedbackDuplicateIds|partitionsBefore|sessionsAfter)$/.test(k))
    .map(([k, v]) => `  ${k.padEnd(20)} ${typeof v === 'object' ? JSON.stringify(v) : v}`);
  return [`ledger: ${title}`, ...rows].join('\n');
}

module.exports = {
  brokerFailover, drain, hubFailover, ledgerText, newLedger, openBackend, openDevices, startLoad, withTimeout,
};
