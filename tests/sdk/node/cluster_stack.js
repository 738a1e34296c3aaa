'use strict';
// A devicebound cluster on one machine, loopback only (docs/scale-out.md), for
// tests/sdk/node/cluster.test.js and scripts/cluster-demo.sh (cluster_demo.js):
//
//   PostgreSQL     initdb in a temporary directory, one server on a free port
//                  (as the `postgres` user when we are root)
//   seed hub       a short-lived `devicebound-hub --cluster --auth-file` that owns
//                  every partition, writes the registry (devices, policies) into
//                  PostgreSQL and gives its leases up on SIGTERM: hubs a and b load
//                  the whole registry when they claim their partitions
//   RabbitMQ x 3   rabbit1..3@localhost, one epmd of our own on 127.0.0.1, own
//                  distribution/AMQP/MQTT-TLS ports; 2 and 3 join 1 before any
//                  device connects (quorum session queues get 3 members); the
//                  MQTT plugin, the HTTP auth backend (asking haproxy, which
//                  round-robins over both hubs' --rabbit-auth-listen), the event
//                  exchange and the firehose (trace_vhosts) on every node
//   haproxy        MQTT TLS (devices and the hubs' MQTT doors) and AMQP 0-9-1
//                  (the hubs' event consumers and forwarding) with `balance
//                  first` over the 3 nodes; HTTP auth round-robin over both hubs
//                  (no health checks: a refused connect is redispatched); the
//                  hubs' AMQP doors (TLS, passed through) round-robin for back ends
//
// Ports are picked below the kernel's ephemeral range (see freePort).
//   hubs a, b      `devicebound-hub --cluster --broker rabbitmq`, K partitions,
//                  leases on PostgreSQL
//
// Every process is started here and stopped by its PID (stack.stop()).
const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { HOSTNAME, authFileText, findCerts, newKey, programs } = require('./harness');

const RABBIT_BIN = '/usr/lib/rabbitmq/bin';
const RABBIT = `${RABBIT_BIN}/rabbitmq-server`;
const RABBITMQCTL = `${RABBIT_BIN}/rabbitmqctl`;
const EPMD = '/usr/bin/epmd';
const HAPROXY = ['/usr/sbin/haproxy', '/usr/bin/haproxy'].find((f) => fs.existsSync(f));
const PG_BIN = process.env.DEVICEBOUND_PG_BINDIR || '/usr/lib/postgresql/15/bin';
const PSQL = ['/usr/bin/psql', path.join(PG_BIN, 'psql')].find((f) => fs.existsSync(f));
const EVENTS_USER = 'devicebound-events';
const PG_USER = 'devicebound';

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** What this machine lacks to start the stack ([] when nothing). */
function clusterMissing() {
  const out = [];
  if (!fs.existsSync(RABBIT)) out.push('rabbitmq-server is not installed (scripts/setup.sh installs it)');
  if (!HAPROXY) out.push('haproxy is not installed (scripts/setup.sh installs it)');
  if (!fs.existsSync(path.join(PG_BIN, 'initdb'))) out.push(`PostgreSQL is not installed (${PG_BIN}/initdb)`);
  if (!PSQL) out.push('psql is not installed');
  if (!programs.hub) out.push('devicebound-hub is not built (set DEVICEBOUND_HUB)');
  else {
    let help = '';
    try {
      help = execFileSync(programs.hub, ['--help'], { encoding: 'utf8', timeout: 20000 });
    } catch (e) {
      help = String(e.stdout ?? '');
    }
    if (!/--rabbit-amqp-url/.test(help)) out.push('this devicebound-hub has no --broker rabbitmq (librabbitmq-dev)');
    if (!/--cluster\b/.test(help)) out.push('this devicebound-hub has no --cluster');
  }
  const { why } = findCerts();
  if (why) out.push(why);
  if (process.getuid() === 0) {
    try {
      execFileSync('id', ['-u', 'postgres'], { stdio: 'ignore' });
    } catch {
      out.push("running as root, but there is no 'postgres' user to run PostgreSQL as");
    }
  }
  return out;
}

/** True when the hub forwards requests between instances (--forward-amqp-url). */
function hubForwards() {
  try {
    return /--forward-amqp-url/.test(execFileSync(programs.hub, ['--help'], { encoding: 'utf8', timeout: 20000 }));
  } catch (e) {
    return /--forward-amqp-url/.test(String(e.stdout ?? ''));
  }
}

/**
 * The back end's senders: DEVICEBOUND_CLUSTER_SENDERS (haproxy|each), else one
 * Client through haproxy when the hub forwards, one per instance when not.
 */
function senderMode() {
  const env = process.env.DEVICEBOUND_CLUSTER_SENDERS;
  if (env === 'haproxy' || env === 'each') return env;
  return programs.hub && hubForwards() ? 'haproxy' : 'each';
}

/** Resolves once 127.0.0.1:port accepts a TCP connection; rejects after `ms` or when !alive(). */
async function listening(port, ms, alive = () => true, what = `127.0.0.1:${port}`) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!alive()) throw new Error(`${what}: the process exited`);
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50); // polling a bounded deadline
  }
  throw new Error(`${what}: nothing listens on 127.0.0.1:${port} after ${ms} ms`);
}

/** Resolves once `test()` is true (polled every `every` ms); rejects after `ms` naming `what`. */
async function until(test, ms, what, every = 50) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await test();
    if (v) return v;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every); // polling a bounded deadline
  }
}

/**
 * A port free now, below the kernel's ephemeral range (32768 and up on Linux), so
 * that the many outgoing connections made while the stack starts (rabbitmqctl,
 * Erlang distribution, the hubs) cannot take it between this pick and its use.
 */
const picked = new Set();
function freePort() {
  const tryPort = (port) => new Promise((resolve) => {
    const s = net.createServer();
    s.unref();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
  return (async () => {
    for (let i = 0; i < 200; i += 1) {
      const port = 20000 + Math.floor(Math.random() * 12000);
      if (!picked.has(port) && (await tryPort(port))) {
        picked.add(port);
        return port;
      }
    }
    throw new Error('no free port in 20000..31999 after 200 tries');
  })();
}

const alive = (child) => child && child.exitCode === null && child.signalCode === null;

/** Stops a child by its PID: `signal`, then SIGKILL after `ms`. */
async function stopChild(child, signal = 'SIGTERM', ms = 10000) {
  if (!alive(child)) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try { process.kill(child.pid, signal); } catch { /* gone */ }
  const timer = setTimeout(() => {
    if (alive(child)) try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
  }, ms);
  await exited;
  clearTimeout(timer);
}

function readOr(file, dflt = '') {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return dflt;
  }
}

/** `serves N of K partitions: ...` last said in `log`, as a list (null if never). */
function servedIn(log) {
  const at = log.lastIndexOf("' serves ");
  if (at < 0) return null;
  const line = log.slice(at, log.indexOf('\n', at) < 0 ? undefined : log.indexOf('\n', at));
  const m = / partitions: (.*)$/.exec(line);
  if (!m) return null;
  return m[1].trim().split(/\s+/).filter((w) => w && w !== 'none').map(Number);
}

/** The stacks started and not stopped yet. */
const live = new Set();
let stopAllCalled = false;
/**
 * Stops every stack of this process, also one still starting (Ctrl-C): its
 * processes so far are stopped by PID; what it would start next is not started
 * (each start step checks `stack.stopped`).
 */
async function stopAll() {
  stopAllCalled = true;
  await Promise.all([...live].map((s) => s.stop()));
}

/**
 * Starts the stack. Options:
 *   devices      ids to register (keys made here)
 *   partitions   K (8)
 *   leaseTtl     lease ttl in seconds (3)
 *   log          (line) => void: progress lines (default: none)
 * Resolves with the stack: ports, keys, connection strings, kill/stop functions.
 */
async function startClusterStack({ devices = [], partitions = 8, leaseTtl = 3, log = () => {} } = {}) {
  const { certs, why } = findCerts();
  if (!certs) throw new Error(why);
  if (stopAllCalled) throw new Error('stopping: no new stack');
  const t0 = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devicebound-cluster-'));
  fs.chmodSync(dir, 0o755);
  const stack = {
    dir, certs, partitions, leaseTtl, ca: fs.readFileSync(certs.ca, 'utf8'),
    deviceKeys: Object.fromEntries(devices.map((d) => [d, newKey()])),
    policyKeys: { iothubowner: newKey(), service: newKey(), device: newKey() },
    procs: [], // every child we started: { name, child, kill? }
    timings: {},
    rabbits: [],
    hubs: {},
  };
  const eventsPassword = newKey().replace(/[^A-Za-z0-9]/g, '');
  const authFile = path.join(dir, 'auth');
  fs.writeFileSync(authFile, authFileText(stack.deviceKeys, stack.policyKeys), { mode: 0o644 });
  // DEVICEBOUND_CLUSTER_PIDFILE: every PID started is appended ("pid name"), so that
  // scripts/cluster-demo.sh can still stop them by PID if this process dies first.
  const pidFile = process.env.DEVICEBOUND_CLUSTER_PIDFILE;
  const notePid = (pid, name) => {
    if (pidFile && pid > 0) fs.appendFileSync(pidFile, `${pid} ${name}\n`);
  };
  const track = (name, child) => {
    stack.procs.push({ name, child });
    notePid(child.pid, name);
    if (stopping) {
      // started while the stack is being stopped (Ctrl-C during the start): stop it too
      stopChild(child).catch(() => {});
      throw new Error('the stack is being stopped');
    }
    return child;
  };
  const out = (file) => fs.openSync(file, 'a');

  let stopping = null;
  live.add(stack); // stopAll() reaches it while it is still starting
  stack.stop = () => {
    live.delete(stack);
    stopping ??= (async () => {
      // hubs first (they give their leases up), then haproxy, the nodes (their beams by PID), epmd, PostgreSQL
      const order = ['hub-a', 'hub-b', 'hub-seed', 'haproxy', 'rabbit3', 'rabbit2', 'rabbit1', 'epmd', 'postgres'];
      for (const r of stack.rabbits) {
        const pid = r.beamPid || Number(readOr(r.pidFile).trim()) || 0;
        if (pid > 0) try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
      }
      const rank = (n) => (order.indexOf(n) < 0 ? order.length : order.indexOf(n));
      const procs = [...stack.procs].sort((x, y) => rank(x.name) - rank(y.name));
      await Promise.all(procs.filter((p) => p.name.startsWith('hub')).map((p) => stopChild(p.child)));
      for (const p of procs.filter((q) => !q.name.startsWith('hub'))) {
        await stopChild(p.child, p.name === 'postgres' ? 'SIGINT' : 'SIGTERM', p.name.startsWith('rabbit') ? 30000 : 10000);
      }
      // a beam whose wrapper is gone (kill -9 of the beam leaves the wrapper to exit; SIGTERM the rest)
      for (const r of stack.rabbits) {
        const pid = r.beamPid || 0;
        if (pid > 0) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
      if (process.env.DEVICEBOUND_SDK_KEEP === '1') log(`kept ${dir}`);
      else fs.rmSync(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  try {
    const ports = {};
    for (const name of ['pg', 'epmd', 'mqttTls', 'amqp091', 'auth', 'door']) ports[name] = await freePort();
    for (let i = 1; i <= 3; i += 1) {
      for (const p of ['amqp', 'mqttTls', 'dist']) ports[`r${i}${p}`] = await freePort();
    }
    for (const h of ['a', 'b', 'seed']) {
      ports[`${h}Auth`] = await freePort();
      ports[`${h}Door`] = await freePort();
    }
    stack.ports = ports;

    // ---- PostgreSQL (as `postgres` when root: it refuses to run as root)
    const pgDir = path.join(dir, 'pg');
    fs.mkdirSync(pgDir);
    const asUser = {};
    if (process.getuid() === 0) {
      asUser.uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
      asUser.gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
      fs.chownSync(pgDir, asUser.uid, asUser.gid);
    }
    execFileSync(path.join(PG_BIN, 'initdb'), ['-D', path.join(pgDir, 'data'), '-U', PG_USER, '--auth=trust', '-E', 'UTF8',
      '--locale=C', '--no-sync'], { ...asUser, stdio: 'ignore', timeout: 120000, cwd: pgDir });
    const pg = track('postgres', spawn(path.join(PG_BIN, 'postgres'), ['-D', path.join(pgDir, 'data'), '-p', String(ports.pg),
      '-k', pgDir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off',
      '-c', 'full_page_writes=off', '-c', 'max_connections=100', '-c', 'shared_buffers=16MB'],
    { ...asUser, cwd: pgDir, stdio: ['ignore', out(path.join(dir, 'postgres.log')), out(path.join(dir, 'postgres.log'))] }));
    await listening(ports.pg, 30000, () => alive(pg), 'PostgreSQL');
    stack.psql = (sql, db = 'devicebound') => execFileSync(PSQL, ['-h', '127.0.0.1', '-p', String(ports.pg), '-U', PG_USER,
      '-d', db, '-tAq', '-c', sql], { encoding: 'utf8', timeout: 20000, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    await until(() => {
      try {
        stack.psql('SELECT 1', 'postgres');
        return true;
      } catch {
        return false;
      }
    }, 30000, 'PostgreSQL to accept connections');
    stack.psql('CREATE DATABASE devicebound', 'postgres');
    stack.conninfo = `host=127.0.0.1 port=${ports.pg} user=${PG_USER} dbname=devicebound connect_timeout=5`;
    stack.timings.postgres = Date.now() - t0;
    log(`PostgreSQL on 127.0.0.1:${ports.pg} (${stack.timings.postgres} ms)`);

    // ---- hubs: the common flags
    const hubArgs = (name, { seed = false } = {}) => [
      '--cluster', '--store', stack.conninfo, '--partitions', String(partitions), '--instance', name,
      '--lease-ttl', `${leaseTtl}s`, '--lease-renew', '500ms', '--expected-instances', seed ? '1' : '2',
      '--overflow-after', '1s', '--startup-grace', `${leaseTtl}s`,
      '--broker', 'rabbitmq', '--host', '127.0.0.1', '--port', String(ports.mqttTls), '--tls', '--tls-ca', certs.ca,
      '--client-id', `hub-${name}`, '--username', 'iothubowner', '--broker-sas-key', stack.policyKeys.iothubowner,
      '--rabbit-amqp-url', `amqp://${EVENTS_USER}:${eventsPassword}@127.0.0.1:${ports.amqp091}/`,
      '--rabbit-auth-listen', `127.0.0.1:${ports[`${name}Auth`]}`,
      '--amqp-listen', `127.0.0.1:${ports[`${name}Door`]}`, '--tls-server-cert', certs.cert, '--tls-server-key', certs.key,
      '--iothub-hostname', HOSTNAME, '--hub-name', 'devicebound-cluster', '--auth-file', authFile,
      '--feedback-batch-interval', '0s', '--lock-duration', '10s',
      '--reconnect-initial', '20ms', '--reconnect-max', '500ms', '--log-level', 'debug',
    ];
    const startHub = (name, opts) => {
      const file = path.join(dir, `hub-${name}.log`);
      const child = track(`hub-${name}`, spawn(programs.hub, hubArgs(name, opts),
        { stdio: ['ignore', out(file), out(file)] }));
      const hub = {
        name, child, pid: child.pid, file, door: ports[`${name}Door`],
        log: () => readOr(file),
        served: () => servedIn(readOr(file)) ?? [],
        alive: () => alive(child),
      };
      stack.hubs[name] = hub;
      return hub;
    };

    // ---- the seed hub: writes the registry (it runs while the nodes boot; its broker need not be up)
    const seed = startHub('seed', { seed: true });
    const seedDone = (async () => {
      await until(() => {
        if (!seed.alive()) throw new Error(`the seed hub exited:\n${seed.log().slice(-3000)}`);
        try {
          const [ids, policies] = stack.psql('SELECT (SELECT count(*) FROM devicebound.identities) || \' \' || '
            + '(SELECT count(*) FROM devicebound.policies)').split(' ').map(Number);
          return ids >= devices.length && policies >= 3;
        } catch {
          return false;
        }
      }, 60000, 'the seed hub to write the registry into PostgreSQL', 200);
      await stopChild(seed.child);
      stack.timings.seed = Date.now() - t0;
      log(`registry seeded into PostgreSQL (${devices.length} devices) by a seed hub, stopped (${stack.timings.seed} ms)`);
    })();
    seedDone.catch(() => {});

    // ---- epmd, then the three nodes
    const epmd = track('epmd', spawn(EPMD, ['-address', '127.0.0.1', '-port', String(ports.epmd)], { stdio: 'ignore' }));
    await listening(ports.epmd, 10000, () => alive(epmd), 'epmd');
    const base = `http://127.0.0.1:${ports.auth}`;
    const home = path.join(dir, 'rabbit-home'); // the shared Erlang cookie
    fs.mkdirSync(home);
    fs.writeFileSync(path.join(home, '.erlang.cookie'), newKey().replace(/[^A-Za-z0-9]/g, '').slice(0, 20), { mode: 0o400 });
    const rabbitEnv = (r) => ({
      PATH: `${RABBIT_BIN}:/usr/bin:/bin:/usr/sbin:/sbin`, HOME: home, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8',
      RABBITMQ_CONF_ENV_FILE: path.join(r.dir, 'rabbitmq-env.conf'),
      RABBITMQ_NODENAME: r.node, RABBITMQ_USE_LONGNAME: 'false',
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1', RABBITMQ_NODE_PORT: String(r.amqp),
      RABBITMQ_DIST_PORT: String(r.dist), ERL_EPMD_ADDRESS: '127.0.0.1', ERL_EPMD_PORT: String(ports.epmd),
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
      RABBITMQ_CTL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
      RABBITMQ_MNESIA_BASE: path.join(r.dir, 'mnesia'), RABBITMQ_LOG_BASE: path.join(r.dir, 'log'),
      RABBITMQ_CONFIG_FILE: path.join(r.dir, 'rabbitmq.conf'),
      RABBITMQ_ADVANCED_CONFIG_FILE: path.join(r.dir, 'advanced.config'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(r.dir, 'enabled_plugins'),
      RABBITMQ_PID_FILE: r.pidFile,
    });
    for (let i = 1; i <= 3; i += 1) {
      const r = {
        i, name: `rabbit${i}`, node: `rabbit${i}@localhost`, dir: path.join(dir, `rabbit${i}`),
        amqp: ports[`r${i}amqp`], mqttTls: ports[`r${i}mqttTls`], dist: ports[`r${i}dist`], beamPid: 0,
      };
      r.pidFile = path.join(r.dir, 'rabbit.pid');
      fs.mkdirSync(r.dir);
      fs.writeFileSync(path.join(r.dir, 'rabbitmq.conf'), [
        `listeners.tcp.1 = 127.0.0.1:${r.amqp}`,
        'loopback_users = none',
        'mqtt.listeners.tcp = none',
        `mqtt.listeners.ssl.1 = 127.0.0.1:${r.mqttTls}`,
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
        'log.file.level = info',
        '',
      ].join('\n'));
      fs.writeFileSync(path.join(r.dir, 'advanced.config'),
        '[{rabbitmq_mqtt, [{ignore_colons_in_username, true}]},\n {rabbit, [{trace_vhosts, [<<"/">>]}]}].\n');
      fs.writeFileSync(path.join(r.dir, 'enabled_plugins'),
        '[rabbitmq_mqtt,rabbitmq_auth_backend_http,rabbitmq_event_exchange].\n');
      r.env = rabbitEnv(r);
      r.ctl = (...args) => execFileSync(RABBITMQCTL, ['-n', r.node, ...args],
        { env: r.env, encoding: 'utf8', timeout: 60000, stdio: ['ignore', 'pipe', 'pipe'] });
      r.start = () => {
        r.child = track(r.name, spawn('/bin/sh', [RABBIT], { env: r.env,
          stdio: ['ignore', out(path.join(r.dir, 'server.out')), out(path.join(r.dir, 'server.out'))] }));
        r.beamPid = 0;
      };
      r.alive = () => alive(r.child);
      stack.rabbits.push(r);
    }
    for (const r of stack.rabbits) r.start();
    await Promise.all(stack.rabbits.map(async (r) => {
      await listening(r.mqttTls, 120000, r.alive, `${r.node} MQTT TLS`);
      await listening(r.amqp, 30000, r.alive, `${r.node} AMQP`);
      r.beamPid = Number(readOr(r.pidFile).trim()) || 0;
      notePid(r.beamPid, `${r.name}-beam`);
    }));
    stack.timings.nodes = Date.now() - t0;
    log(`3 RabbitMQ nodes up (${stack.timings.nodes} ms)`);
    // 2 and 3 join 1, one after the other, before any device connects
    for (const r of stack.rabbits.slice(1)) {
      r.ctl('stop_app');
      r.ctl('reset');
      r.ctl('join_cluster', stack.rabbits[0].node);
      r.ctl('start_app');
      await listening(r.mqttTls, 60000, r.alive, `${r.node} MQTT TLS after joining`);
    }
    const status = stack.rabbits[0].ctl('cluster_status', '--formatter', 'json');
    const running = JSON.parse(status.slice(status.indexOf('{'))).running_nodes ?? [];
    if (running.length !== 3) throw new Error(`the RabbitMQ cluster runs ${running.length} nodes, not 3: ${status}`);
    stack.timings.clustered = Date.now() - t0;
    log(`RabbitMQ cluster of 3: ${running.join(', ')} (${stack.timings.clustered} ms)`);

    // ---- haproxy
    const servers = (port, opts) => stack.rabbits.map((r) => `  server ${r.name} 127.0.0.1:${r[port]} check ${opts}`);
    const hubServers = (key, opts) => ['a', 'b'].map((h) => `  server hub-${h} 127.0.0.1:${ports[`${h}${key}`]} check ${opts}`);
    const cfg = [
      'global',
      '  maxconn 4096',
      `  stats socket ${path.join(dir, 'haproxy.sock')} mode 600 level admin`,
      'defaults',
      '  mode tcp',
      // a refused connect is retried after min(timeout connect, 1 s), on another server (redispatch 1)
      '  timeout connect 200ms',
      '  timeout client 1h',
      '  timeout server 1h',
      '  timeout check 1s',
      '  retries 2',
      '  option redispatch 1',
      '  default-server inter 100ms fastinter 100ms downinter 250ms fall 1 rise 2 on-marked-down shutdown-sessions',
      'frontend mqtt_tls',
      `  bind 127.0.0.1:${ports.mqttTls}`,
      '  default_backend mqtt_tls',
      'backend mqtt_tls',
      '  balance first',
      ...servers('mqttTls', 'maxconn 1000'),
      'frontend amqp091',
      `  bind 127.0.0.1:${ports.amqp091}`,
      '  default_backend amqp091',
      'backend amqp091',
      '  balance first',
      ...servers('amqp', 'maxconn 1000'),
      'frontend auth',
      '  mode http',
      '  timeout client 10s',
      `  bind 127.0.0.1:${ports.auth}`,
      '  default_backend auth',
      'backend auth',
      '  mode http',
      '  timeout server 5s',
      '  balance roundrobin',
      '  retry-on all-retryable-errors',
      // no health check: a hub's listener is up just before its own MQTT login asks
      // through here, earlier than checks would mark it up; a dead hub's refused
      // connect is retried on the other (redispatch)
      ...['a', 'b'].map((h) => `  server hub-${h} 127.0.0.1:${ports[`${h}Auth`]}`),
      'frontend door',
      `  bind 127.0.0.1:${ports.door}`,
      '  default_backend door',
      'backend door',
      '  balance roundrobin',
      ...hubServers('Door', ''),
      '',
    ].join('\n');
    fs.writeFileSync(path.join(dir, 'haproxy.cfg'), cfg);
    const haproxy = track('haproxy', spawn(HAPROXY, ['-db', '-f', path.join(dir, 'haproxy.cfg')],
      { stdio: ['ignore', out(path.join(dir, 'haproxy.log')), out(path.join(dir, 'haproxy.log'))] }));
    await listening(ports.mqttTls, 10000, () => alive(haproxy), 'haproxy');
    log(`haproxy: MQTT TLS 127.0.0.1:${ports.mqttTls}, AMQP 0-9-1 ${ports.amqp091} (balance first), `
      + `auth ${ports.auth}, hub doors ${ports.door} (round robin)`);

    // ---- hubs a and b, together (each gets its share)
    await seedDone;
    const a = startHub('a');
    const b = startHub('b');
    await until(() => {
      for (const h of [a, b]) if (!h.alive()) throw new Error(`hub ${h.name} exited:\n${h.log().slice(-3000)}`);
      const all = new Set([...a.served(), ...b.served()]);
      return all.size === partitions && a.served().length > 0 && b.served().length > 0
        && [a, b].every((h) => /RabbitMQ events: consuming/.test(h.log()) && /connected to the broker/.test(h.log())
          && /amqp: listening on/.test(h.log()));
    }, 60000, 'hubs a and b to split the partitions, consume events and connect to the broker', 100);
    await Promise.all([a, b].map((h) => listening(h.door, 10000, h.alive, `hub ${h.name}'s AMQP door`)));
    stack.timings.ready = Date.now() - t0;
    log(`hubs a (pid ${a.pid}, partitions ${a.served().join(' ')}) and b (pid ${b.pid}, partitions `
      + `${b.served().join(' ')}) ready; the stack started in ${stack.timings.ready} ms`);

    // connection strings (SPEC 12.5): devices through haproxy, back ends to a door
    stack.serviceCs = (door = ports.door, policy = 'service') =>
      `HostName=${HOSTNAME}:${door};SharedAccessKeyName=${policy};SharedAccessKey=${stack.policyKeys[policy]}`;
    stack.deviceMqttCs = (id) =>
      `HostName=${HOSTNAME};DeviceId=${id};SharedAccessKey=${stack.deviceKeys[id]};GatewayHostName=${HOSTNAME}:${ports.mqttTls}`;
    stack.hubLogs = () => Object.values(stack.hubs).map((h) => `--- hub ${h.name}\n${h.log().slice(-6000)}`).join('\n');

    /** haproxy's current sessions per server of `backend` ({ rabbit1: n, ... }). */
    stack.sessions = (backend) => new Promise((resolve, reject) => {
      const s = net.connect(path.join(dir, 'haproxy.sock'));
      let text = '';
      s.on('data', (d) => { text += d; });
      s.on('error', reject);
      s.on('end', () => {
        const lines = text.split('\n');
        const head = lines[0].replace(/^# /, '').split(',');
        const scur = head.indexOf('scur');
        const res = {};
        for (const l of lines.slice(1)) {
          const f = l.split(',');
          if (f[0] === backend && f[1] !== 'BACKEND' && f[1] !== 'FRONTEND') res[f[1]] = Number(f[scur]);
        }
        resolve(res);
      });
      s.write('show stat\n');
    });

    /** kill -9 of a node's beam (by its PID file); resolves with the kill time. */
    stack.killRabbit = (r) => {
      const pid = r.beamPid || Number(readOr(r.pidFile).trim());
      process.kill(pid, 'SIGKILL');
      return Date.now();
    };
    /** kill -9 of a hub by PID; resolves with the kill time once it is reaped. */
    stack.killHub = async (h) => {
      const exited = new Promise((resolve) => h.child.once('exit', resolve));
      process.kill(h.pid, 'SIGKILL');
      const at = Date.now();
      await exited;
      return at;
    };
    return stack;
  } catch (e) {
    const logs = stack.hubLogs ? stack.hubLogs() : Object.values(stack.hubs).map((h) => `--- hub ${h.name}\n${h.log().slice(-4000)}`).join('\n');
    await stack.stop();
    throw new Error(`${e.message}\n${logs}`);
  }
}

module.exports = {
  clusterMissing, hubForwards, listening, senderMode, servedIn, sleep, startClusterStack, stopAll, stopChild, until,
};
