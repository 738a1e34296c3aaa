'use strict';
// The process exits by itself once its clients are closed: nothing native
// holds the event loop, threads stop, nothing crashes on the way out.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');

const fixture = path.join(__dirname, 'fixtures', 'round-trip.js');
const bound = 30_000; // ms: far more than any of them needs; a hang is killed and fails

function run(mode, nodeArgs = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, fixture, mode], {
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: bound,
      killSignal: 'SIGKILL',
    });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
}

describe('process exit', () => {
  for (const [mode, args] of [
    ['close', []],
    ['close-clients-only', []],
    ['send-only', []],
    ['exit-while-open', []],
    ['gc', ['--expose-gc']],
    ['worker', []],
  ]) {
    it(`exits by itself: ${mode}`, async () => {
      const { code, signal, out } = await run(mode, args);
      assert.equal(signal, null, `killed after ${bound} ms: it did not exit by itself\n${out}`);
      assert.equal(code, 0, out);
      if (mode !== 'exit-while-open') assert.match(out, new RegExp(`done ${mode}`));
    });
  }
});
