'use strict';
// The examples run: both apps in one process over the embedded hub.
const { it } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

it('examples/in-process.js runs the device and back-end apps and exits', () => {
  const r = spawnSync(process.execPath, [path.join(__dirname, '..', 'examples', 'in-process.js')], {
    encoding: 'utf8',
    timeout: 30_000,
    killSignal: 'SIGKILL',
  });
  assert.equal(r.signal, null, 'it did not exit by itself');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /set-0: Success/);
  assert.match(r.stdout, /set-1: Rejected/);
  assert.match(r.stdout, /set-2: Success/);
});
