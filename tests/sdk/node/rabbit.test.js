'use strict';
// The stock MQTT device SDK (azure-iot-device-mqtt) against devicebound-hub --broker rabbitmq
// (docs/scale-out.md, "The hub behind RabbitMQ"): one RabbitMQ node (Debian's rabbitmq-server
// 3.10) started here on loopback with its own epmd, MQTT over TLS for the device, the hub's
// auth backend, the event exchange, the firehose and a user for the hub's event consumer;
// the hub's AMQP door (TLS) for the service SDK (azure-iothub). A message sent with dots in
// its ids and properties reaches the device intact, the SDK completes it (a PUBACK on
// receipt), and the service SDK gets Success feedback. Everything is stopped by PID.
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawn } = require('node:child_process');
const net = require('node:net');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  HOSTNAME, WAIT, authFileText, findCerts, freePort, newKey, programs, skipUnlessReady, stopProcess, within,
} = require('./harness');
const { appProperties, c2d, feedbackCollector, openDevice, openService } = require('./sdk');

const RABBIT = '/usr/lib/rabbitmq/bin/rabbitmq-server';
const EPMD = '/usr/bin/epmd';
const EVENTS_USER = 'devicebound-events';

function hubSupportsRabbit() {
  try {
    return /--rabbit-amqp-url/.test(execFileSync(programs.hub, ['--help'], { encoding: 'utf8' }));
  } catch {
    return false;
  }
}

const missing = (!fs.existsSync(RABBIT) && 'rabbitmq-server is not installed (scripts/setup.sh installs it)') ||
  (programs.hub && !hubSupportsRabbit() && 'this devicebound-hub has no --broker rabbitmq (librabbitmq-dev)');
if (missing && process.env.DEVICEBOUND_REQUIRE_ALL === '1') throw new Error(`rabbit.test.js: ${missing}`);
const skip = skipUnlessReady('RabbitMQ') || missing;

/** Waits up to `ms` for a TCP listener on 127.0.0.1:port, polling every 100 ms. */
async function listening(port, ms, alive) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!alive()) throw new Error('the process exited');
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => { setTimeout(resolve, 100); }); // polling a deadline
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${ms} ms`);
}

/** The hub (--broker rabbitmq), then epmd and one RabbitMQ node asking the hub. */
async function startRabbitStack(devices) {
  const { certs, why } = findCerts();
  if (!certs) throw new Error(why);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-sdk-rabbit-'));
  const stack = {
    dir, ca: fs.readFileSync(certs.ca, 'utf8'),
    deviceKeys: Object.fromEntries(devices.map((d) => [d, newKey()])),
    policyKeys: { iothubowner: newKey(), service: newKey(), device: newKey() },
  };
  const eventsPassword = newKey().replace(/[^A-Za-z0-9]/g, '');
  const authFile = path.join(dir, 'auth');
  fs.writeFileSync(authFile, authFileText(stack.deviceKeys, stack.policyKeys), { mode: 0o600 });
  let beamPid = 0;
  const procs = {};
  stack.stop = async () => {
    // the node's beam by its PID file (its wrapper shell waits for it), then the hub, then epmd
    if (beamPid <= 0) {
      try { beamPid = Number(fs.readFileSync(path.join(dir, 'rabbit.pid'), 'utf8').trim()) || 0; } catch { /* none */ }
    }
    if (beamPid > 0) {
      try { process.kill(beamPid, 'SIGTERM'); } catch { /* gone */ }
    }
    for (const name of ['node', 'hub', 'epmd']) await stopProcess(procs[name]);
    if (process.env.DEVICEBOUND_SDK_KEEP === '1') console.log(`# kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    const [mqttTls, amqp091, epmdPort, dist, authPort, amqpDoor] =
      [await freePort(), await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
    const hubLog = path.join(dir, 'devicebound-hub.log');
    const hub = spawn(programs.hub, [
      '--broker', 'rabbitmq', '--host', '127.0.0.1', '--port', String(mqttTls), '--tls', '--tls-ca', certs.ca,
      '--client-id', 'devicebound-hub', '--username', 'iothubowner', '--broker-sas-key', stack.policyKeys.iothubowner,
      '--rabbit-amqp-url', `amqp://${EVENTS_USER}:${eventsPassword}@127.0.0.1:${amqp091}/`,
      '--rabbit-auth-listen', `127.0.0.1:${authPort}`,
      '--in-memory', '--amqp-listen', `127.0.0.1:${amqpDoor}`, '--tls-server-cert', certs.cert,
      '--tls-server-key', certs.key, '--iothub-hostname', HOSTNAME, '--auth-file', authFile,
      '--feedback-batch-interval', '0s', '--reconnect-max', '1s', '--log-level', 'debug',
    ], { stdio: ['ignore', fs.openSync(hubLog, 'a'), fs.openSync(hubLog, 'a')] });
    procs.hub = hub;
    await listening(authPort, WAIT, () => hub.exitCode === null);
    stack.hubLog = () => fs.readFileSync(hubLog, 'utf8');

    // epmd of its own on loopback, so the node never starts a daemon on 0.0.0.0:4369
    const epmd = spawn(EPMD, ['-address', '127.0.0.1', '-port', String(epmdPort)], { stdio: 'ignore' });
    procs.epmd = epmd;
    await listening(epmdPort, 10000, () => epmd.exitCode === null);

    const base = `http://127.0.0.1:${authPort}`;
    fs.writeFileSync(path.join(dir, 'rabbitmq.conf'), [
      `listeners.tcp.1 = 127.0.0.1:${amqp091}`,
      'loopback_users = none',
      'mqtt.listeners.tcp = none',
      `mqtt.listeners.ssl.1 = 127.0.0.1:${mqttTls}`,
      `ssl_options.certfile = ${certs.cert}`,
      `ssl_options.keyfile = ${certs.key}`,
      `ssl_options.cacertfile = ${certs.ca}`,
      'ssl_options.verify = verify_none',
      'ssl_options.fail_if_no_peer_cert = false',
      'mqtt.allow_anonymous = false',
      'mqtt.durable_queue_type = quorum',
      `default_user = ${EVENTS_USER}`,
      `default_pass = ${eventsPassword}`,
      'auth_backends.1 = internal',
      'auth_backends.2 = http',
      'auth_http.http_method = post',
      `auth_http.user_path = ${base}/auth/user`,
      `auth_http.vhost_path = ${base}/auth/vhost`,
      `auth_http.resource_path = ${base}/auth/resource`,
      `auth_http.topic_path = ${base}/auth/topic`,
      'log.console = false',
      '',
    ].join('\n'));
    fs.writeFileSync(path.join(dir, 'advanced.config'),
      '[{rabbitmq_mqtt, [{ignore_colons_in_username, true}]},\n {rabbit, [{trace_vhosts, [<<"/">>]}]}].\n');
    fs.writeFileSync(path.join(dir, 'enabled_plugins'),
      '[rabbitmq_mqtt,rabbitmq_auth_backend_http,rabbitmq_event_exchange].\n');
    const env = {
      PATH: '/usr/lib/rabbitmq/bin:/usr/bin:/bin:/usr/sbin:/sbin', HOME: dir, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8',
      RABBITMQ_CONF_ENV_FILE: path.join(dir, 'rabbitmq-env.conf'),
      RABBITMQ_NODENAME: 'rabbitsdk@localhost', RABBITMQ_USE_LONGNAME: 'false',
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1', RABBITMQ_NODE_PORT: String(amqp091),
      RABBITMQ_DIST_PORT: String(dist), ERL_EPMD_ADDRESS: '127.0.0.1', ERL_EPMD_PORT: String(epmdPort),
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
      RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'), RABBITMQ_LOG_BASE: path.join(dir, 'log'),
      RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbitmq.conf'),
      RABBITMQ_ADVANCED_CONFIG_FILE: path.join(dir, 'advanced.config'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
      RABBITMQ_PID_FILE: path.join(dir, 'rabbit.pid'),
    };
    const node = spawn('/bin/sh', [RABBIT], { env, stdio: ['ignore', fs.openSync(path.join(dir, 'server.out'), 'a'),
      fs.openSync(path.join(dir, 'server.out'), 'a')] });
    procs.node = node;
    await listening(mqttTls, 120000, () => node.exitCode === null);
    await listening(amqp091, 30000, () => node.exitCode === null);
    beamPid = Number(fs.readFileSync(path.join(dir, 'rabbit.pid'), 'utf8').trim()) || 0;

    /** Resolves once the hub's log matches `re`; rejects after `ms` (polled every 50 ms). */
    stack.waitLog = async (re, ms, what) => {
      const deadline = Date.now() + ms;
      while (!re.test(stack.hubLog())) {
        if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await new Promise((resolve) => { setTimeout(resolve, 50); });
      }
    };
    await stack.waitLog(/RabbitMQ events: consuming/, WAIT, 'the hub\'s event consumer');
    await stack.waitLog(/connected to the broker/, WAIT, 'the hub\'s MQTT connection');

    const amqpHost = `${HOSTNAME}:${amqpDoor}`;
    stack.serviceCs = (policy) => `HostName=${amqpHost};SharedAccessKeyName=${policy};SharedAccessKey=${stack.policyKeys[policy]}`;
    stack.deviceMqttCs = (id) =>
      `HostName=${HOSTNAME};DeviceId=${id};SharedAccessKey=${stack.deviceKeys[id]};GatewayHostName=${HOSTNAME}:${mqttTls}`;
    return stack;
  } catch (e) {
    const log = fs.existsSync(path.join(dir, 'devicebound-hub.log')) ? fs.readFileSync(path.join(dir, 'devicebound-hub.log'), 'utf8') : '';
    await stack.stop();
    throw new Error(`${e.message}\n--- devicebound-hub log\n${log.slice(-4000)}`);
  }
}

describe('stock MQTT device SDK through RabbitMQ (--broker rabbitmq)', { skip }, () => {
  let stack;

  before(async () => {
    stack = await startRabbitStack(['rabbit-dev']);
  });

  after(async () => {
    await stack?.stop();
  });

  it('receives a C2D message with dots intact, completes it, and the service gets feedback', async (t) => {
    const service = await openService(t, stack.serviceCs('service'));
    const feedback = await feedbackCollector(t, service);
    const device = await openDevice(t, stack.deviceMqttCs('rabbit-dev'), 'mqtt', stack.ca,
      (c, msg) => c.complete(msg, () => {}));
    await stack.waitLog(/device 'rabbit-dev' subscribed/, WAIT, 'the hub to see the subscription');
    const props = { 'a.b': 'c.d', plain: 'x' };
    await within(service.send('rabbit-dev', c2d('through rabbit', {
      messageId: 'mid.1', correlationId: 'corr.2', ack: 'full', properties: props,
    })), WAIT, 'send()');
    const got = await device.inbox.next();
    assert.equal(got.data.toString(), 'through rabbit');
    assert.equal(got.messageId, 'mid.1');
    assert.equal(got.correlationId, 'corr.2');
    assert.deepEqual(appProperties(got), { ...props, 'iothub-ack': 'full' });
    assert.equal((await feedback.record('mid.1')).statusCode, 'Success');
  });
});
