'use strict';
// Test helpers: wait for events, never for time.
const { once } = require('node:events');
const { it } = require('node:test');

/** Resolves with the first `n` emissions of `event` (first argument each). */
function collect(emitter, event, n) {
  return new Promise((resolve, reject) => {
    const seen = [];
    const onEvent = (value) => {
      seen.push(value);
      if (seen.length === n) {
        emitter.off(event, onEvent);
        emitter.off('error', onError);
        resolve(seen);
      }
    };
    const onError = (e) => {
      emitter.off(event, onEvent);
      reject(e);
    };
    emitter.on(event, onEvent);
    emitter.once('error', onError);
  });
}

/** Feedback records until `n` have come, completing each batch. */
async function feedbackRecords(receiver, n) {
  const records = [];
  for await (const batch of receiver) {
    records.push(...batch.records);
    await batch.complete();
    if (records.length >= n) break;
  }
  return records;
}

/** Closes the clients when the test ends, passed or not (open clients keep the process alive). */
function closeAfter(t, ...clients) {
  t.after(() => Promise.all(clients.map((c) => c.close())));
}

/**
 * The `skip` option for a suite that needs parts (mosquitto, devicebound-hub, ...):
 * false when every part is there, else the reasons. With DEVICEBOUND_REQUIRE_ALL=1
 * (scripts/test.sh sets it) a missing part is a failure instead: this adds a
 * test named after the suite that fails naming the part, and the suite is skipped.
 */
function skipUnlessPresent(suite, reasons) {
  const missing = reasons.filter(Boolean);
  if (missing.length === 0) return false;
  const why = missing.join('; ');
  if (process.env.DEVICEBOUND_REQUIRE_ALL === '1') {
    it(`${suite}: has every part it needs (DEVICEBOUND_REQUIRE_ALL=1)`, () => {
      throw new Error(`missing part: ${why}`);
    });
  }
  return why;
}

module.exports = { closeAfter, collect, feedbackRecords, once, skipUnlessPresent };
