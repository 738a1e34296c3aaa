'use strict';
// In-process send -> receive -> complete, messages per second, from Node and,
// in the same run, from C++ alone doing the same work (benchInproc: a sender
// with at most `window` messages outstanding and a device that receives and
// completes each one). Prints both and the ratio.
//
//   node bench.js [messages=50000] [window=1000] [bodyBytes=32]
//
// The C++ loop is a second addon, build/<config>/devicebound_bench.node, that
// `npm ci` / `npx cmake-js compile` builds in a checkout; the npm package does
// not carry it.
const path = require('node:path');
const { Hub, Message } = require('./');

const loadBench = () => {
  const tried = [];
  for (const config of ['Release', 'Debug', 'RelWithDebInfo', 'MinSizeRel']) {
    const file = path.join(__dirname, 'build', config, 'devicebound_bench.node');
    try {
      return require(file);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
      tried.push(file);
    }
  }
  throw new Error(`bench.js: the benchmark addon is not built (looked for ${tried.join(', ')}); ` +
    'run `npx cmake-js compile` here, in the checkout');
};
const native = loadBench();

const n = Number(process.argv[2] ?? 50000);
const window = Number(process.argv[3] ?? 1000);
const bodyBytes = Number(process.argv[4] ?? 32);

async function nodeLoop(count) {
  const hub = new Hub({ maxQueueDepth: window });
  await hub.addDevice('bench-device');
  const device = hub.deviceClient('bench-device');
  const service = hub.serviceClient();
  const body = Buffer.alloc(bodyBytes, 'x');

  const start = process.hrtime.bigint();
  await new Promise((resolve, reject) => {
    let sent = 0;
    let completed = 0;
    const pump = () => {
      while (sent < count && sent - completed < window) {
        const m = new Message(body);
        m.messageId = `m-${sent}`;
        sent += 1;
        service.send('bench-device', m).catch(reject);
      }
    };
    device.on('message', (msg) => {
      device.complete(msg).then(() => {
        completed += 1;
        if (completed === count) resolve();
        else pump();
      }, reject);
    });
    device.on('error', reject);
    pump();
  });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await Promise.all([device.close(), service.close()]);
  hub.close();
  return { messages: count, seconds };
}

async function main() {
  await nodeLoop(Math.min(n, 5000)); // warm up the JIT and the allocator
  const js = await nodeLoop(n);
  const cpp = await native.benchInproc(n, window, bodyBytes);
  const jsRate = js.messages / js.seconds;
  const cppRate = cpp.messages / cpp.seconds;
  const fmt = (x) => Math.round(x).toLocaleString('en-US');
  console.log(`in-process send -> receive -> complete, ${fmt(n)} messages, window ${window}, ` +
    `${bodyBytes}-byte bodies`);
  console.log(`  Node: ${fmt(jsRate).padStart(10)} msg/s  (${js.seconds.toFixed(3)} s)`);
  console.log(`  C++:  ${fmt(cppRate).padStart(10)} msg/s  (${cpp.seconds.toFixed(3)} s)`);
  console.log(`  Node / C++ = ${(jsRate / cppRate).toFixed(2)} (target >= 0.25)`);
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
