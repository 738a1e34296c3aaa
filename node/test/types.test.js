'use strict';
// index.d.ts covers the API as test/types/usage.ts uses it (tsc --noEmit).
const { it } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { skipUnlessPresent } = require('./helpers');

let tsc;
try {
  tsc = require.resolve('typescript/bin/tsc');
} catch {
  tsc = null;
}

const skip = skipUnlessPresent('index.d.ts', [!tsc && 'typescript is not installed (npm ci installs it)']);

it('index.d.ts type-checks the whole surface', { skip }, () => {
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(__dirname, 'types', 'tsconfig.json')], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
});
