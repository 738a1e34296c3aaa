'use strict';
// Test helpers: wait for events, never for time.
const { once } = require('node:events');

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

module.exports = { closeAfter, collect, feedbackRecords, once };
