'use strict';
// Retry policies: retry.hpp's profiles and fields, checked by the C++ side,
// and in force in the clients.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const db = require('..');
const { closeAfter } = require('./helpers');

describe('retry policies', () => {
  it('lists the SDK profiles and shows each as a policy object', () => {
    for (const name of ['c_sdk', 'node', 'python', 'csharp_v1', 'csharp_v2', 'java', 'c_none']) {
      assert.ok(db.retry.profileNames.includes(name), name);
    }
    const node = db.retry.profile('node');
    assert.equal(node.backoff.kind, db.retry.BackoffKind.ExponentialBackoffWithJitter);
    assert.equal(node.backoff.jitter.shape, db.retry.JitterShape.Additive);
    assert.equal(node.backoff.initialMs, 100);
    assert.equal(node.throttled.initialMs, 5000);
    assert.equal(node.timeoutMs, 240000);
    assert.equal(node.firstRetry, db.retry.FirstRetry.Immediate);
    assert.equal(node.errors.table, db.retry.ErrorTable.Node);
    const c = db.retry.profile('c_sdk');
    assert.equal(c.wholeSeconds, true);
    assert.equal(c.waitFrom, db.retry.WaitOrigin.AttemptStart);
    assert.equal(c.throttled, null);
    assert.throws(() => db.retry.profile('nope'), db.ArgumentInvalidError);
  });

  it('accepts a name, an object, or a profile with changes, and refuses bad fields', (t) => {
    const hub = new db.Hub();
    const ok = [
      'csharp_v2',
      db.retry.profile('java'),
      { profile: 'c_sdk', maxRetries: 3, backoff: { capMs: 5000 } },
      { backoff: { kind: 'interval', initialMs: 10 }, errors: { overrides: { 503100: 'fatal' } } },
      {},
    ];
    for (const retryPolicy of ok) closeAfter(t, hub.deviceClient('d', { retryPolicy }));
    const bad = [
      'nope',
      { backoff: { kind: 'zigzag' } },
      { backoff: { initialMs: -1 } },
      { backoff: { jitter: { low: 2, high: 1 } } },
      { firstRetry: 'later' },
      { maxRetries: 1.5 },
      { errors: { overrides: { 999999: 'fatal' } } },
      { errors: { overrides: { 404001: 'sometimes' } } },
    ];
    for (const retryPolicy of bad) {
      assert.throws(() => hub.deviceClient('d', { retryPolicy }), db.ArgumentInvalidError,
        JSON.stringify(retryPolicy));
    }
  });

  it('retries as the policy says, then gives up and reports retry_expired', async (t) => {
    const hub = new db.Hub();
    // The C SDK's table retries 401 (CONNACK 5); two immediate retries, then stop.
    const device = hub.deviceClient('later', {
      retryPolicy: { backoff: { kind: 'immediate' }, maxRetries: 2, errors: { table: 'c' } },
    });
    closeAfter(t, device);
    const reasons = [];
    device.on('disconnected', (r) => reasons.push(r));
    device.on('connected', (r) => reasons.push(`connected:${r}`));
    await assert.rejects(device.open(), db.UnauthorizedError);
    assert.deepEqual(reasons, ['bad_credential', 'retry_expired']);

    // Fatal under the Node SDK's table: one attempt only.
    const strict = hub.deviceClient('later', { retryPolicy: 'node' });
    closeAfter(t, strict);
    await assert.rejects(strict.open(), db.UnauthorizedError);

    await hub.addDevice('later');
    await device.open();
    assert.deepEqual(reasons.at(-1), 'connected:ok');
  });
});
