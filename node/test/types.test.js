'use strict';
// index.d.ts covers the API as test/types/usage.ts uses it (tsc --noEmit).
const { it } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

let tsc;
try {
  tsc = require.resolve('typescript/bin/tsc');
} catch {
  tsc = null;
}

it('index.d.ts type-checks the whole surface', { skip: tsc ? false : 'typescript is not installed' }, () => {
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(__dirname, 'types', 'tsconfig.json')], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
});
