'use strict';
// Real processes for the MQTT tests: mosquitto on a free 127.0.0.1 port and
// devicebound-hub attached to it. Each is started and stopped by its PID;
// readiness is a line in its log (mosquitto's "running", the hub's "connected
// to the broker", which it logs once subscribed), waited for as an event.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const repo = path.resolve(__dirname, '..', '..');

const executable = (candidates) => candidates.find((f) => {
  try {
    fs.accessSync(f, fs.constants.X_OK);
    return fs.statSync(f).isFile();
  } catch {
    return false;
  }
});

const buildDir = process.env.DEVICEBOUND_BUILD_PREFIX
  ? path.resolve(repo, process.env.DEVICEBOUND_BUILD_PREFIX)
  : path.join(repo, 'build');

/** Where the programs are, or undefined. */
const programs = {
  mosquitto: executable([process.env.DEVICEBOUND_MOSQUITTO, '/usr/sbin/mosquitto', '/usr/local/sbin/mosquitto',
    '/usr/bin/mosquitto'].filter(Boolean)),
  hub: executable([process.env.DEVICEBOUND_HUB, path.join(buildDir, 'apps', 'devicebound-hub'),
    path.join(repo, 'build-node-hub', 'apps', 'devicebound-hub')].filter(Boolean)),
  plugin: [process.env.DEVICEBOUND_BROKER_PLUGIN, path.join(buildDir, 'broker', 'devicebound_mosquitto_plugin.so')]
    .filter(Boolean).find((f) => fs.existsSync(f)),
};

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

/**
 * Starts `argv` and resolves once a line of its output matches `ready`;
 * rejects if it exits first or `timeoutMs` passes (then it is killed).
 */
function startProcess(argv, ready, timeoutMs) {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    let settled = false;
    const finish = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) {
        child.kill('SIGKILL');
        reject(new Error(`${error}\n${log}`));
      } else {
        resolve({ child, log: () => log });
      }
    };
    const timer = setTimeout(() => finish(`${path.basename(argv[0])} was not ready within ${timeoutMs} ms`),
      timeoutMs);
    const onData = (d) => {
      log += d;
      if (ready.test(log)) finish();
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => finish(e.message));
    child.on('exit', (code, signal) => finish(`${path.basename(argv[0])} exited (${code ?? signal})`));
  });
}

/** Stops a child by its PID (SIGTERM) and waits for it to go. */
async function stopProcess(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(child.pid, 'SIGTERM');
  await exited;
}

/**
 * mosquitto on 127.0.0.1 at a free port (loopback only, anonymous, TCP_NODELAY),
 * with more config lines if given. Resolves with `{ port, stop() }`.
 */
async function startBroker(extraConfig = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-node-mosquitto-'));
  try {
    for (let attempt = 0; ; attempt += 1) {
      const port = await freePort();
      const conf = path.join(dir, 'mosquitto.conf');
      fs.writeFileSync(conf, [
        `listener ${port} 127.0.0.1`,
        'allow_anonymous true',
        'set_tcp_nodelay true',
        'max_queued_messages 1000000',
        'persistence false',
        'log_dest stderr',
        'log_type error', 'log_type warning', 'log_type notice', 'log_type information',
        ...extraConfig,
        '',
      ].join('\n'));
      try {
        const { child, log } = await startProcess([programs.mosquitto, '-c', conf], /version \S+ running/, 15000);
        return {
          port,
          log,
          stop: async () => {
            await stopProcess(child);
            fs.rmSync(dir, { recursive: true, force: true });
          },
        };
      } catch (e) {
        if (attempt === 4) throw e; // the port was taken meanwhile: try another
      }
    }
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * devicebound-hub attached to the broker at `port`, its store in a fresh
 * temporary directory; resolves once it is subscribed.
 */
async function startHub(port, args = [], executable = programs.hub) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-node-hub-'));
  try {
    const { child, log } = await startProcess(
      [executable, '--host', '127.0.0.1', '--port', String(port), '--store', path.join(dir, 'hub.db'), ...args],
      /connected to the broker/, 20000);
    return {
      log,
      stop: async () => {
        await stopProcess(child);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

module.exports = { programs, startBroker, startHub };
