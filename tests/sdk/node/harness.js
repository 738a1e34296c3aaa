'use strict';
// The official-SDK acceptance harness (Node): one mosquitto with the devicebound
// plugin and one devicebound-hub with its AMQP front door per test file, on free
// 127.0.0.1 ports, in a temporary directory, stopped by PID at the end.
//
//   mosquitto  plain listener (devicebound-hub, back ends on the extension topics)
//              + TLS listener (stock MQTT device SDKs; GatewayHostName=localhost:PORT)
//   hub        --amqp-listen 127.0.0.1:PORT with TLS, --iothub-hostname localhost,
//              --auth-file: the same file as the plugin's (docs/stock-devices.md)
//
// Trust: the service SDK (azure-iothub) has no CA option, so the CA must be in
// NODE_EXTRA_CA_CERTS before node starts. scripts/test_sdk.sh makes a CA and a
// server certificate for localhost/127.0.0.1 (tests/support/make_test_certs.sh)
// and passes the directory as DEVICEBOUND_SDK_CERTS, with NODE_EXTRA_CA_CERTS
// set to its ca.crt. Device SDKs are given the CA with setOptions({ ca }).
//
// HTTPS and the identity registry (startHttpsStack): Node's HTTPS clients
// (azure-iothub Registry, azure-iot-device-http) give https.request the
// HostName as `host` and no port, so a `host:port` HostName cannot work
// (SPEC 12.10): the hub listens on IoT Hub's own ports, 443 (HTTPS) and 5671
// (AMQP), and mosquitto on 8883 (TLS), which needs a private network namespace
// (scripts/test_sdk.sh runs node in `unshare -n` with DEVICEBOUND_SDK_NETNS=1).
// There the hub starts first (it creates and seeds the SQLite store, which the
// plugin reads with plugin_opt_registry_db), then mosquitto.
//
// Environment: DEVICEBOUND_HUB, DEVICEBOUND_BROKER_PLUGIN, DEVICEBOUND_MOSQUITTO,
// DEVICEBOUND_SDK_CERTS, NODE_EXTRA_CA_CERTS, DEVICEBOUND_SDK_NETNS=1 (in a
// private network namespace), DEVICEBOUND_REQUIRE_ALL=1 (missing parts fail
// instead of skip), DEVICEBOUND_SDK_KEEP=1 (keep the temporary directory and
// print its path).
const { execFileSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { it } = require('node:test');

const repo = path.resolve(__dirname, '..', '..', '..');
const template = path.join(repo, 'broker', 'mosquitto.conf.in');
const HOSTNAME = 'localhost';
const WAIT = 20000; // ms: the longest one expected event may take

const isFile = (f, exec) => {
  try {
    if (exec) fs.accessSync(f, fs.constants.X_OK);
    return fs.statSync(f).isFile();
  } catch {
    return false;
  }
};

const programs = {
  mosquitto: [process.env.DEVICEBOUND_MOSQUITTO, '/usr/sbin/mosquitto', '/usr/bin/mosquitto']
    .filter(Boolean).find((f) => isFile(f, true)),
  hub: [process.env.DEVICEBOUND_HUB, path.join(repo, 'build', 'apps', 'devicebound-hub')]
    .filter(Boolean).find((f) => isFile(f, true)),
  plugin: [process.env.DEVICEBOUND_BROKER_PLUGIN, path.join(repo, 'build', 'broker', 'devicebound_mosquitto_plugin.so')]
    .filter(Boolean).find((f) => isFile(f, false)),
};

/** The CA and server certificate made by scripts/test_sdk.sh, or a reason why not. */
function findCerts() {
  const dir = process.env.DEVICEBOUND_SDK_CERTS;
  if (!dir) return { why: 'DEVICEBOUND_SDK_CERTS is not set (run scripts/test_sdk.sh)' };
  const certs = { dir, ca: path.join(dir, 'ca.crt'), cert: path.join(dir, 'server.crt'), key: path.join(dir, 'server.key') };
  if (![certs.ca, certs.cert, certs.key].every((f) => isFile(f))) return { why: `${dir} lacks ca.crt/server.crt/server.key` };
  const extra = process.env.NODE_EXTRA_CA_CERTS;
  if (!extra || path.resolve(extra) !== path.resolve(certs.ca)) {
    return { why: `NODE_EXTRA_CA_CERTS must be ${certs.ca} (azure-iothub has no CA option)` };
  }
  return { certs };
}

/** Reasons this machine cannot run the suite (empty when it can). */
function missingParts() {
  return [
    !programs.mosquitto && 'mosquitto is not installed',
    !programs.hub && 'devicebound-hub is not built (set DEVICEBOUND_HUB)',
    !programs.plugin && 'devicebound_mosquitto_plugin.so is not built (set DEVICEBOUND_BROKER_PLUGIN)',
    findCerts().why,
  ].filter(Boolean);
}

/**
 * The `skip` option for a suite: false when every part is there, else the
 * reasons. With DEVICEBOUND_REQUIRE_ALL=1 a missing part adds a failing test.
 */
function skipUnlessReady(suite) {
  const missing = missingParts();
  if (missing.length === 0) return false;
  const why = missing.join('; ');
  if (process.env.DEVICEBOUND_REQUIRE_ALL === '1') {
    it(`${suite}: has every part it needs (DEVICEBOUND_REQUIRE_ALL=1)`, () => {
      throw new Error(`missing part: ${why}`);
    });
  }
  return why;
}

/** devicebound-hub's --help text ('' if it cannot be run). */
let hubHelpText;
function hubHelp() {
  if (hubHelpText === undefined) {
    try {
      hubHelpText = programs.hub ? execFileSync(programs.hub, ['--help'], { encoding: 'utf8', timeout: 20000 }) : '';
    } catch (e) {
      hubHelpText = String(e.stdout ?? '');
    }
  }
  return hubHelpText;
}

/** True when the daemon has the HTTPS front door (step 9). */
const hubHasHttps = () => /--https-listen\b/.test(hubHelp());

/** True when the plugin knows plugin_opt_registry_db (reads the hub's identity registry). */
function pluginReadsRegistry() {
  try {
    return fs.readFileSync(programs.plugin).includes('registry_db');
  } catch {
    return false;
  }
}

/**
 * The `skip` option for a suite that needs the HTTPS door, the registry and
 * IoT Hub's fixed ports: skipped only when the daemon lacks --https-listen (or,
 * as every suite, a part is missing or there is no private network namespace).
 * With DEVICEBOUND_REQUIRE_ALL=1 any of these adds a failing test instead.
 */
function skipUnlessHttps(suite) {
  const missing = missingParts();
  if (programs.hub && !hubHasHttps()) {
    missing.push(`${programs.hub} has no --https-listen (the HTTPS front door is not built in)`);
  }
  if (process.env.DEVICEBOUND_SDK_NETNS !== '1') {
    missing.push('not in a private network namespace (scripts/test_sdk.sh runs node in `unshare -n`): '
      + "Node's HTTPS clients take no port, so the hub must listen on 443 (SPEC 12.10)");
  }
  if (missing.length === 0) return false;
  const why = missing.join('; ');
  if (process.env.DEVICEBOUND_REQUIRE_ALL === '1') {
    it(`${suite}: has every part it needs (DEVICEBOUND_REQUIRE_ALL=1)`, () => {
      throw new Error(`missing part: ${why}`);
    });
  }
  return why;
}

const newKey = () => crypto.randomBytes(32).toString('base64');

/** A port the kernel says is free now (another process may take it: callers retry). */
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.unref();
  s.on('error', reject);
  s.listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

/** Rejects with `what` if `promise` has not settled within `ms`. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Starts `argv`, its output appended to `logFile`; resolves once the output
 * matches `ready`, rejects if it exits first or `timeoutMs` passes (then it is killed).
 */
function startProcess(argv, ready, timeoutMs, logFile) {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    let settled = false;
    const finish = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        reject(new Error(`${error}\n--- ${argv.join(' ')}\n${log}`));
      } else {
        resolve({ child, log: () => log });
      }
    };
    const timer = setTimeout(() => finish(`${path.basename(argv[0])} was not ready within ${timeoutMs} ms`), timeoutMs);
    const onData = (d) => {
      log += d;
      fs.appendFileSync(logFile, d);
      if (ready.test(log)) finish();
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => finish(e.message));
    child.on('exit', (code, signal) => finish(`${path.basename(argv[0])} exited (${code ?? signal})`));
  });
}

/** Stops a child by its PID: SIGTERM, then SIGKILL after 10 s. */
async function stopProcess(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(child.pid, 'SIGTERM');
  const timer = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
  }, 10000);
  await exited;
  clearTimeout(timer);
}

/** Resolves once a TCP connection to 127.0.0.1:port succeeds (bounded: `attempts` tries). */
async function waitForListener(port, child, attempts = 200) {
  for (let i = 0; i < attempts; i += 1) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error('devicebound-hub exited');
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    // Refused: the listener is not up yet. Wait on the hub's next output or 50 ms, whichever first.
    await new Promise((resolve) => {
      const t = setTimeout(done, 50);
      function done() { clearTimeout(t); child.stdout.off('data', done); child.stderr.off('data', done); resolve(); }
      child.stdout.once('data', done);
      child.stderr.once('data', done);
    });
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${attempts} attempts`);
}

/**
 * The auth file in the plugin's format (docs/stock-devices.md "Authentication"),
 * read by both the plugin and the hub. Policy lines carry no rights field (the
 * plugin takes three fields): the hub gives IoT Hub's default policies
 * (`iothubowner`, `service`, `device`) their default rights (SPEC 12.9.1).
 */
function authFileText(devices, policies) {
  return [
    '# devicebound SDK acceptance tests: device and policy keys',
    ...Object.entries(devices).map(([id, key]) => `${id} ${key}`),
    ...Object.entries(policies).map(([name, key]) => `policy ${name} ${key}`),
    '',
  ].join('\n');
}

function renderMosquittoConf({ plainPort, tlsPort, certs, dataDir, authFile, pluginOptions }) {
  let text = fs.readFileSync(template, 'utf8');
  const values = {
    PLAIN_PORT: String(plainPort),
    TLS_ADDRESS: '127.0.0.1',
    TLS_PORT: String(tlsPort),
    CA_FILE: certs.ca,
    CERT_FILE: certs.cert,
    KEY_FILE: certs.key,
    DATA_DIR: dataDir,
    PLUGIN: programs.plugin,
    PLUGIN_OPTIONS: pluginOptions ?? `plugin_opt_auth_file ${authFile}`,
    // A user who can write DATA_DIR: ours, who made it (as root, mosquitto would
    // otherwise switch to "mosquitto").
    USER: os.userInfo().username,
  };
  // The options line first: the template's header comment names @PLUGIN_OPTIONS@ too,
  // and several option lines put there would leave all but the first uncommented.
  text = text.split('\n@PLUGIN_OPTIONS@\n').join(`\n${values.PLUGIN_OPTIONS}\n`);
  delete values.PLUGIN_OPTIONS;
  for (const [name, value] of Object.entries(values)) text = text.split(`@${name}@`).join(value);
  if (text.split('\n').some((l) => !l.startsWith('#') && l.includes('@'))) {
    throw new Error('unreplaced @NAME@ in the rendered mosquitto.conf');
  }
  return text;
}

/**
 * Starts mosquitto + devicebound-hub for one test file.
 *   devices:  ids to register (each gets a key in the auth file and --device)
 *   hubArgs:  more devicebound-hub flags (e.g. ['--lock-duration', '2s'])
 * Resolves with an object holding ports, keys and connection-string builders.
 */
async function startStack({ devices = [], hubArgs = [] } = {}) {
  const { certs, why } = findCerts();
  if (!certs) throw new Error(why);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-sdk-'));
  const stack = {
    dir,
    certs,
    ca: fs.readFileSync(certs.ca, 'utf8'),
    hostname: HOSTNAME,
    deviceKeys: Object.fromEntries(devices.map((d) => [d, newKey()])),
    policyKeys: { iothubowner: newKey(), service: newKey(), device: newKey() },
    processes: [],
  };
  const authFile = path.join(dir, 'auth');
  fs.writeFileSync(authFile, authFileText(stack.deviceKeys, stack.policyKeys), { mode: 0o600 });
  stack.authFile = authFile;

  const stop = async () => {
    for (const p of stack.processes.reverse()) await stopProcess(p);
    stack.processes = [];
    if (process.env.DEVICEBOUND_SDK_KEEP === '1') console.log(`# kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  };
  stack.stop = stop;

  try {
    // mosquitto: retried when a port picked free was taken meanwhile.
    for (let attempt = 0; ; attempt += 1) {
      const [plainPort, tlsPort] = [await freePort(), await freePort()];
      const dataDir = path.join(dir, `mosquitto-data-${attempt}`);
      fs.mkdirSync(dataDir);
      const conf = path.join(dir, 'mosquitto.conf');
      fs.writeFileSync(conf, renderMosquittoConf({ plainPort, tlsPort, certs, dataDir, authFile }));
      try {
        const { child } = await startProcess([programs.mosquitto, '-c', conf], /version \S+ running/, 15000,
          path.join(dir, 'mosquitto.log'));
        stack.processes.push(child);
        Object.assign(stack, { plainPort, mqttTlsPort: tlsPort });
        break;
      } catch (e) {
        if (attempt === 4 || !/in use/i.test(String(e.message))) throw e;
      }
    }

    for (let attempt = 0; ; attempt += 1) {
      const amqpPort = await freePort();
      const argv = [programs.hub,
        '--host', '127.0.0.1', '--port', String(stack.plainPort),
        '--client-id', 'devicebound-hub', '--username', 'iothubowner', '--broker-sas-key', stack.policyKeys.iothubowner,
        '--store', path.join(dir, `hub-${attempt}.db`),
        '--amqp-listen', `127.0.0.1:${amqpPort}`,
        '--tls-server-cert', certs.cert, '--tls-server-key', certs.key,
        '--iothub-hostname', HOSTNAME,
        '--auth-file', authFile,
        '--feedback-batch-interval', '0s',
        '--log-level', 'debug',
        ...devices.flatMap((d) => ['--device', d]),
        ...hubArgs];
      try {
        // Ready: subscribed at the broker, and the AMQP door listening.
        const ready = { test: (log) => /connected to the broker/.test(log) && /amqp: listening on/.test(log) };
        const { child, log } = await startProcess(argv, ready, WAIT, path.join(dir, 'devicebound-hub.log'));
        stack.processes.push(child);
        try {
          await waitForListener(amqpPort, child);
        } catch (e) {
          throw new Error(`${e.message}\n--- ${argv.join(' ')}\n${log()}`);
        }
        Object.assign(stack, { amqpPort, hubLog: log });
        break;
      } catch (e) {
        if (attempt === 4 || !/in use/i.test(String(e.message))) throw e;
      }
    }
  } catch (e) {
    await stop();
    throw e;
  }

  // Connection strings (SPEC 12.5). Node SDKs take HostName=host:port (SPEC 10.1.2).
  const amqpHost = `${HOSTNAME}:${stack.amqpPort}`;
  stack.serviceCs = (policy = 'iothubowner', key = stack.policyKeys[policy]) =>
    `HostName=${amqpHost};SharedAccessKeyName=${policy};SharedAccessKey=${key}`;
  stack.deviceAmqpCs = (id, key = stack.deviceKeys[id]) => `HostName=${amqpHost};DeviceId=${id};SharedAccessKey=${key}`;
  // Stock MQTT devices connect to GatewayHostName (docs/stock-devices.md); Node's MQTT
  // transport builds mqtts://{GatewayHostName}, so a :port there is honoured.
  stack.deviceMqttCs = (id, key = stack.deviceKeys[id]) =>
    `HostName=${HOSTNAME};DeviceId=${id};SharedAccessKey=${key};GatewayHostName=${HOSTNAME}:${stack.mqttTlsPort}`;
  return stack;
}

/** Resolves once `test(proc.log())` holds; rejects if the process exits first or after `ms`. */
async function waitForOutput(proc, test, ms, what) {
  let cleanup = () => {};
  const seen = new Promise((resolve, reject) => {
    const check = () => {
      if (test(proc.log())) resolve();
    };
    const exited = () => reject(new Error(`the process exited while waiting for ${what}:\n${proc.log()}`));
    cleanup = () => {
      proc.child.stdout.off('data', check);
      proc.child.stderr.off('data', check);
      proc.child.off('exit', exited);
    };
    proc.child.stdout.on('data', check);
    proc.child.stderr.on('data', check);
    proc.child.once('exit', exited);
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) exited();
    check();
  });
  try {
    await within(seen, ms, what);
  } finally {
    cleanup();
  }
}

/** Resolves with whether 127.0.0.1:port can be bound now. */
const portFree = (port) => new Promise((resolve) => {
  const s = net.createServer();
  s.unref();
  s.once('error', () => resolve(false));
  s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
});

const IOTHUB_PORTS = { https: 443, amqp: 5671, mqttTls: 8883 };
/** IoT Hub's default shared access policies (SPEC 12.9.1); the hub gives each its default rights. */
const DEFAULT_POLICIES = ['iothubowner', 'service', 'device', 'registryRead', 'registryReadWrite'];

/**
 * devicebound-hub with its HTTPS (443), AMQP (5671) door and the SQLite
 * identity registry (auth on: --auth-file seeds the policies and `devices`),
 * then mosquitto (TLS 8883) whose plugin reads that registry. Needs a private
 * network namespace (skipUnlessHttps). Resolves like startStack; connection
 * strings carry no port.
 */
async function startHttpsStack({ devices = [], hubArgs = [] } = {}) {
  const { certs, why } = findCerts();
  if (!certs) throw new Error(why);
  for (const [name, port] of Object.entries(IOTHUB_PORTS)) {
    if (!(await portFree(port))) throw new Error(`127.0.0.1:${port} (${name}) is taken, even in this network namespace`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-sdk-https-'));
  const stack = {
    dir,
    certs,
    ca: fs.readFileSync(certs.ca, 'utf8'),
    hostname: HOSTNAME,
    deviceKeys: Object.fromEntries(devices.map((d) => [d, newKey()])),
    policyKeys: Object.fromEntries(DEFAULT_POLICIES.map((p) => [p, newKey()])),
    processes: [],
    ports: IOTHUB_PORTS,
    storeFile: path.join(dir, 'hub.db'),
  };
  const authFile = path.join(dir, 'auth');
  fs.writeFileSync(authFile, authFileText(stack.deviceKeys, stack.policyKeys), { mode: 0o600 });
  stack.authFile = authFile;
  stack.stop = async () => {
    for (const p of stack.processes.reverse()) await stopProcess(p);
    stack.processes = [];
    if (process.env.DEVICEBOUND_SDK_KEEP === '1') console.log(`# kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  };

  try {
    const plainPort = await freePort();
    stack.plainPort = plainPort;
    stack.mqttTlsPort = IOTHUB_PORTS.mqttTls;
    stack.amqpPort = IOTHUB_PORTS.amqp;
    stack.httpsPort = IOTHUB_PORTS.https;
    const argv = [programs.hub,
      '--host', '127.0.0.1', '--port', String(plainPort),
      '--client-id', 'devicebound-hub', '--username', 'iothubowner', '--broker-sas-key', stack.policyKeys.iothubowner,
      '--store', stack.storeFile,
      '--amqp-listen', `127.0.0.1:${IOTHUB_PORTS.amqp}`,
      '--https-listen', `127.0.0.1:${IOTHUB_PORTS.https}`,
      '--tls-server-cert', certs.cert, '--tls-server-key', certs.key,
      '--iothub-hostname', HOSTNAME,
      '--auth-file', authFile,
      '--feedback-batch-interval', '0s',
      '--reconnect-initial', '20ms', '--reconnect-max', '200ms',
      '--log-level', 'debug',
      ...devices.flatMap((d) => ['--device', d]),
      ...hubArgs];
    // The hub first: it creates and seeds the store the plugin reads.
    const hub = await startProcess(argv, /\bstore '/, WAIT, path.join(dir, 'devicebound-hub.log'));
    stack.processes.push(hub.child);
    stack.hubLog = hub.log;

    const dataDir = path.join(dir, 'mosquitto-data');
    fs.mkdirSync(dataDir);
    const conf = path.join(dir, 'mosquitto.conf');
    const pluginOptions = [`plugin_opt_auth_file ${authFile}`];
    // Without registry_db the plugin knows only the auth file: devices made over REST are
    // then refused over MQTT, which the registry tests report as a failure.
    stack.pluginReadsRegistry = pluginReadsRegistry();
    if (stack.pluginReadsRegistry) pluginOptions.push(`plugin_opt_registry_db ${stack.storeFile}`);
    fs.writeFileSync(conf, renderMosquittoConf({
      plainPort, tlsPort: IOTHUB_PORTS.mqttTls, certs, dataDir, authFile, pluginOptions: pluginOptions.join('\n'),
    }));
    const broker = await startProcess([programs.mosquitto, '-c', conf], /version \S+ running/, 15000,
      path.join(dir, 'mosquitto.log'));
    stack.processes.push(broker.child);
    stack.mosquittoLog = broker.log;

    await waitForOutput(hub, (log) => /connected to the broker/.test(log) && /amqp: listening on/.test(log), WAIT,
      'devicebound-hub to connect to the broker and listen for AMQP');
    await waitForListener(IOTHUB_PORTS.amqp, hub.child);
    await waitForListener(IOTHUB_PORTS.https, hub.child);
  } catch (e) {
    const logs = `\n--- devicebound-hub log\n${stack.hubLog?.() ?? ''}\n--- mosquitto log\n${stack.mosquittoLog?.() ?? ''}`;
    await stack.stop();
    throw new Error(`${e.message}${logs}`);
  }

  // Connection strings (SPEC 12.5): IoT Hub's ports, so no :port anywhere.
  stack.serviceCs = (policy = 'iothubowner', key = stack.policyKeys[policy]) =>
    `HostName=${HOSTNAME};SharedAccessKeyName=${policy};SharedAccessKey=${key}`;
  stack.deviceCs = (id, key = stack.deviceKeys[id]) => `HostName=${HOSTNAME};DeviceId=${id};SharedAccessKey=${key}`;
  stack.deviceAmqpCs = stack.deviceCs;
  stack.deviceHttpCs = stack.deviceCs;
  stack.deviceMqttCs = (id, key = stack.deviceKeys[id]) =>
    `HostName=${HOSTNAME};DeviceId=${id};SharedAccessKey=${key};GatewayHostName=${HOSTNAME}`;
  return stack;
}

/** Calls `fn` and resolves with the error it rejected with (fails if it resolved). */
async function rejection(promise, what) {
  try {
    const value = await promise;
    throw Object.assign(new Error(`${what}: expected an error, got ${JSON.stringify(value?.constructor?.name ?? value)}`),
      { notRejected: true });
  } catch (e) {
    if (e.notRejected) throw e;
    return e;
  }
}

/**
 * A queue of emitted values read with bounded waits: `next(ms)` resolves with
 * the next value (earlier ones first), rejects after `ms`.
 */
class Inbox {
  constructor(what) {
    this.what = what;
    this.items = [];
    this.waiters = [];
  }

  push(value) {
    const w = this.waiters.shift();
    if (w) w(value);
    else this.items.push(value);
  }

  next(ms = WAIT) {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    let resolver;
    const p = new Promise((resolve) => { resolver = resolve; this.waiters.push(resolve); });
    return within(p, ms, `the next ${this.what}`).catch((e) => {
      this.waiters = this.waiters.filter((w) => w !== resolver);
      throw e;
    });
  }

  get size() { return this.items.length; }
}

module.exports = {
  HOSTNAME, WAIT, Inbox, freePort, hubHasHttps, missingParts, newKey, programs, rejection, skipUnlessHttps,
  skipUnlessReady, startHttpsStack, startStack, within,
  // for rabbit.test.js's own stack
  authFileText, findCerts, stopProcess,
};
