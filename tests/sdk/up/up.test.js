'use strict';
// `devicebound up` (issue 13) end to end, with the official Node SDKs given
// only what it printed (`--output json`): the service SDK (azure-iothub) sends
// with ack full and reads feedback; the device SDK over MQTT and over AMQP
// receives and completes. A restart keeps a queued message, keys and devices.
// A taken port, missing mosquitto and a newer state directory end it with its
// documented exit code (5) and leave no process behind.
//
// Environment: DEVICEBOUND_CLI (the `devicebound` program; default
// <build>/apps/devicebound with <build> = DEVICEBOUND_BUILD_PREFIX or build/),
// DEVICEBOUND_REQUIRE_ALL=1 (a missing part fails instead of skipping).
// Ports: free 127.0.0.1 ports (the Python device SDK's fixed 8883 is covered by
// test_up_python.py inside a private network namespace).
const { after, before, describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const tls = require('node:tls');
const { freePort, within } = require('../node/harness');

const repo = path.resolve(__dirname, '..', '..', '..');
const build = (() => {
  const b = process.env.DEVICEBOUND_BUILD_PREFIX || 'build';
  return path.isAbsolute(b) ? b : path.join(repo, b);
})();
const cli = process.env.DEVICEBOUND_CLI || path.join(build, 'apps', 'devicebound');
const EXIT_UNAVAILABLE = 5; // apps/devicebound/exit_codes.hpp
const EXIT_USAGE = 2;
const START = 60000; // ms: `up` until every door is ready (first run makes a CA)

const haveCli = fs.existsSync(cli);
const skip = haveCli ? false : `${cli} is not built (set DEVICEBOUND_CLI)`;
if (skip && process.env.DEVICEBOUND_REQUIRE_ALL === '1') {
  it('has the devicebound program (DEVICEBOUND_REQUIRE_ALL=1)', () => assert.fail(skip));
}

/** Runs `devicebound up ARGS`; resolves once it printed its JSON line. */
function up(args, env = process.env) {
  const child = spawn(cli, ['up', '--output', 'json', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const run = { child, stdout: '', stderr: '' };
  run.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.stderr.on('data', (d) => { run.stderr += d; });
  run.ready = within(new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      run.stdout += d;
      const nl = run.stdout.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(run.stdout.slice(0, nl)));
    });
    run.exited.then(({ code, signal }) => reject(new Error(`devicebound up exited (${code ?? signal}) before it was ready:\n${run.stderr}`)));
  }), START, 'devicebound up to print its JSON line').catch((e) => {
    child.kill('SIGKILL');
    throw new Error(`${e.message}\n--- stderr:\n${run.stderr}`);
  });
  return run;
}

/** SIGTERM, then its exit (bounded). */
async function stop(run) {
  if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGTERM');
  return within(run.exited, 30000, 'devicebound up to stop');
}

/** Runs tests/sdk/up/client.js as an app started after `up`: trusting its CA. */
function client(info, ...args) {
  return within(new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [path.join(__dirname, 'client.js'), ...args], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: info.ca_file, DEVICEBOUND_UP_JSON: JSON.stringify(info) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.stderr.on('data', (d) => { out += d; });
    c.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`client.js ${args.join(' ')} failed (${code}):\n${out}`))));
  }), 120000, `client.js ${args.join(' ')}`);
}

/** True if `pid` is a live process (not a zombie). */
function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

/** PIDs of processes whose command line mentions `text`. */
function processesMentioning(text) {
  const pids = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(text) && alive(Number(d))) pids.push(Number(d));
    } catch { /* gone */ }
  }
  return pids;
}

/** `up` on free ports, again on others if one was taken meanwhile (by another process). */
async function upOnFreePorts(args) {
  for (let attempt = 1; ; attempt += 1) {
    const portArgs = await ports();
    const run = up([...args, ...portArgs]);
    try {
      return { run, info: await run.ready, portArgs };
    } catch (e) {
      if (attempt === 3 || !/ is taken/.test(e.message)) throw e;
    }
  }
}

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-up-'));
const ports = async () => ['--mqtt-port', String(await freePort()), '--amqp-port', String(await freePort()),
  '--https-port', String(await freePort())];

describe('devicebound up with the official Node SDKs', { skip }, () => {
  let dir;
  let run;
  let info;

  before(async () => {
    dir = tmp();
    ({ run, info } = await upOnFreePorts(['--state-dir', path.join(dir, 'state'), '--device', 'dev-mqtt',
      '--device', 'dev-amqp', '--hub-arg=--feedback-batch-interval=0s']));
  });

  after(async () => {
    if (run) await stop(run);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('prints one JSON line with the documented keys', () => {
    for (const k of ['service_connection_string', 'devices', 'ca_file', 'ports', 'state_dir']) assert.ok(k in info, k);
    assert.match(info.service_connection_string, /^HostName=localhost:\d+;SharedAccessKeyName=iothubowner;SharedAccessKey=[A-Za-z0-9+/=]+$/);
    assert.deepEqual(Object.keys(info.devices).sort(), ['dev-amqp', 'dev-mqtt']);
    assert.match(info.devices['dev-mqtt'], new RegExp(`;GatewayHostName=localhost:${info.ports.mqtt}$`));
    assert.equal(info.state_dir, path.join(dir, 'state'));
    assert.ok(fs.readFileSync(info.ca_file, 'utf8').includes('BEGIN CERTIFICATE'));
    for (const k of ['mqtt', 'amqp', 'https']) assert.ok(Number.isInteger(info.ports[k]), k);
  });

  it('keeps its keys private and configures the broker with TLS 1.2+ and a packet limit (docs/security.md)', () => {
    const mode = (f) => fs.statSync(path.join(info.state_dir, f)).mode & 0o777;
    assert.equal(fs.statSync(info.state_dir).mode & 0o777, 0o700, 'the state directory');
    for (const f of ['ca.key', 'server.key', 'hub.toml', 'mosquitto.conf', 'seed', 'hub.db']) {
      if (fs.existsSync(path.join(info.state_dir, f))) assert.equal(mode(f), 0o600, f);
    }
    assert.equal(mode('ca.key'), 0o600);
    assert.equal(mode('server.key'), 0o600);
    const conf = fs.readFileSync(path.join(info.state_dir, 'mosquitto.conf'), 'utf8');
    assert.match(conf, /^max_packet_size 262144$/m);
    assert.match(conf, /^tls_version tlsv1\.2$/m);
    // the broker's plain listener (the hub's own connection) is on loopback only
    assert.match(conf, /^listener \d+ 127\.0\.0\.1$/m);
    // connection caps: the device listener's is --mqtt-max-connections (default 1000);
    // the hub's loopback listener has its own
    assert.match(conf, new RegExp(`^listener ${info.ports.mqtt} 127\\.0\\.0\\.1\nmax_connections 1000$`, 'm'));
    assert.equal(conf.match(/^max_connections 1000$/gm).length, 2);
    // and the plugin's exact count of devices, the same number (once)
    assert.equal(conf.match(/^plugin_opt_max_devices .*$/gm).join(), 'plugin_opt_max_devices 1000');
  });

  it('azure-iothub sends with ack full; azure-iot-device-mqtt receives and completes; feedback Success', async () => {
    await client(info, 'roundtrip', 'mqtt', 'dev-mqtt', 'up-mqtt-1');
  });

  it('azure-iothub sends with ack full; azure-iot-device-amqp receives and completes; feedback Success', async () => {
    await client(info, 'roundtrip', 'amqp', 'dev-amqp', 'up-amqp-1');
  });

  it('HTTPS: the registry answers over TLS with the printed CA and the service key', async (t) => {
    if (info.ports.https === 0) {
      if (process.env.DEVICEBOUND_REQUIRE_ALL === '1') assert.fail('this devicebound-hub has no HTTPS door (DEVICEBOUND_REQUIRE_ALL=1)');
      return t.skip('this devicebound-hub has no HTTPS door');
    }
    await client(info, 'registry-get', 'dev-mqtt');
  });

  it('a second up on the same state directory is refused (5) and starts nothing', async () => {
    const second = up(['--state-dir', info.state_dir, ...(await ports())]);
    second.ready.catch(() => {});
    const { code } = await within(second.exited, 30000, 'the second up to exit');
    assert.equal(code, EXIT_UNAVAILABLE, second.stderr);
    assert.match(second.stderr, /in use by another `devicebound up`/);
    assert.equal(second.stdout, '');
  });
});

describe('devicebound up restarts from its state directory', { skip }, () => {
  it('keeps keys, devices and a queued message; stops its children on SIGTERM', async () => {
    const dir = tmp();
    const state = path.join(dir, 'state');
    try {
      const { run: first, info: before, portArgs } = await upOnFreePorts(['--state-dir', state, '--device', 'dev-restart']);
      const args = ['--state-dir', state, ...portArgs];
      await client(before, 'send', 'dev-restart', 'up-queued-1');
      const { pids } = before;
      assert.ok(alive(pids.mosquitto) && alive(pids.hub), JSON.stringify(pids));
      assert.deepEqual(await stop(first), { code: 0, signal: null }, first.stderr);
      assert.ok(!alive(pids.mosquitto) && !alive(pids.hub), 'a child outlived devicebound up');
      assert.equal(first.stdout.trim().split('\n').length, 1, `stdout had more than the JSON line:\n${first.stdout}`);

      const second = up(args); // no --device: the registry has it
      try {
        const again = await second.ready;
        assert.equal(again.service_connection_string, before.service_connection_string);
        assert.deepEqual(again.devices, before.devices);
        assert.equal(fs.readFileSync(again.ca_file, 'utf8'), fs.readFileSync(before.ca_file, 'utf8'));
        await client(again, 'receive', 'amqp', 'dev-restart', 'up-queued-1');
      } finally {
        await stop(second);
      }
      assert.deepEqual(processesMentioning(state), []);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('devicebound up caps MQTT connections (--mqtt-max-connections)', { skip }, () => {
  it('the device listener takes N connections; the next is closed before TLS; a freed slot takes one', async () => {
    const dir = tmp();
    const { run, info } = await upOnFreePorts(['--state-dir', path.join(dir, 'state'), '--mqtt-max-connections', '2']);
    const open = [];
    try {
      const conf = fs.readFileSync(path.join(info.state_dir, 'mosquitto.conf'), 'utf8');
      assert.match(conf, new RegExp(`^listener ${info.ports.mqtt} 127\\.0\\.0\\.1\nmax_connections 2$`, 'm'));
      assert.equal(conf.match(/^plugin_opt_max_devices .*$/gm).join(), 'plugin_opt_max_devices 2');
      const ca = fs.readFileSync(info.ca_file);
      /** A TLS connection to the MQTT port: the socket, or null if the broker closed it first. */
      const connect = () => within(new Promise((resolve) => {
        const s = tls.connect({ host: '127.0.0.1', port: info.ports.mqtt, ca, servername: 'localhost' });
        s.once('secureConnect', () => resolve(s));
        s.once('error', () => resolve(null));
        s.once('close', () => resolve(null));
      }), 10000, 'a TLS connection to the MQTT port');
      for (let i = 0; i < 2; i += 1) open.push(await connect());
      assert.ok(open.every((s) => s !== null), 'below the cap');
      assert.equal(await connect(), null, 'a third connection over --mqtt-max-connections 2');
      // One leaves: once the broker has closed its side, its slot is free.
      const leaving = open.pop();
      const closed = new Promise((resolve) => leaving.once('close', resolve));
      leaving.end();
      await within(closed, 10000, 'the broker to close the connection that left');
      const again = await connect();
      assert.notEqual(again, null, 'a connection in the freed slot');
      open.push(again);
    } finally {
      for (const s of open) if (s) s.destroy();
      await stop(run);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('devicebound up fails clearly', { skip }, () => {
  it('--mqtt-max-connections out of 1..100000: exit 2 naming the flag, nothing written', async () => {
    for (const n of ['0', '100001', '-1']) {
      const dir = tmp();
      const state = path.join(dir, 'state');
      try {
        const run = up(['--state-dir', state, '--mqtt-max-connections', n, ...(await ports())]);
        run.ready.catch(() => {});
        const { code } = await within(run.exited, 30000, 'devicebound up to exit');
        assert.equal(code, EXIT_USAGE, run.stderr);
        assert.match(run.stderr, new RegExp(`--mqtt-max-connections ${n}: must be 1\\.\\.100000`));
        assert.equal(run.stdout, '');
        assert.equal(fs.existsSync(state), false);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  });

  /** Runs up to its exit; asserts code 5, a message matching `re`, no JSON and no process left. */
  async function refused(args, re, env) {
    const dir = tmp();
    const state = path.join(dir, 'state');
    try {
      const run = up(['--state-dir', state, ...args], env);
      run.ready.catch(() => {});
      const { code } = await within(run.exited, 30000, 'devicebound up to exit');
      assert.equal(code, EXIT_UNAVAILABLE, run.stderr);
      assert.match(run.stderr, re);
      assert.equal(run.stdout, '');
      assert.deepEqual(processesMentioning(state), []);
      return run;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  it('a taken port: exit 5, the message names the port and the flag', async () => {
    const server = net.createServer();
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const taken = server.address().port;
    try {
      await refused(['--mqtt-port', String(await freePort()), '--amqp-port', String(taken),
        '--https-port', String(await freePort())], new RegExp(`AMQP port ${taken} on 127\\.0\\.0\\.1 is taken.*--amqp-port`));
    } finally {
      server.close();
    }
  });

  it('mosquitto missing (PATH without it): exit 5, the message names mosquitto', async () => {
    const empty = tmp();
    try {
      await refused(await ports(), /mosquitto is not installed/, { ...process.env, PATH: empty });
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });

  it('the plugin missing (--plugin names no file): exit 5', async () => {
    await refused([...(await ports()), '--plugin', '/nonexistent/devicebound_mosquitto_plugin.so'], /--plugin .*no such file/);
  });

  it('a non-empty directory without a version file: exit 5, nothing written', async () => {
    const dir = tmp();
    try {
      fs.writeFileSync(path.join(dir, 'notes.txt'), 'mine\n');
      const run = up(['--state-dir', dir, ...(await ports())]);
      run.ready.catch(() => {});
      const { code } = await within(run.exited, 30000, 'devicebound up to exit');
      assert.equal(code, EXIT_UNAVAILABLE, run.stderr);
      assert.match(run.stderr, /is not empty and has no devicebound version file/);
      assert.deepEqual(fs.readdirSync(dir).sort(), ['lock', 'notes.txt']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a state directory of a newer devicebound: exit 5, left as it was', async () => {
    const dir = tmp();
    try {
      fs.writeFileSync(path.join(dir, 'version'), '99\n');
      const run = up(['--state-dir', dir, ...(await ports())]);
      run.ready.catch(() => {});
      const { code } = await within(run.exited, 30000, 'devicebound up to exit');
      assert.equal(code, EXIT_UNAVAILABLE, run.stderr);
      assert.match(run.stderr, /newer devicebound \(state version 99/);
      assert.deepEqual(fs.readdirSync(dir).sort(), ['lock', 'version']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
