'use strict';
// Retry policies (include/devicebound/retry.hpp): the SDK profiles by name, and
// policy objects whose fields mirror retry::policy_config. Enumerations keep
// the C++ spellings.
const native = require('./native');

const BackoffKind = Object.freeze({
  NoRetry: 'no_retry',
  Immediate: 'immediate',
  Interval: 'interval',
  LinearBackoff: 'linear_backoff',
  ExponentialBackoff: 'exponential_backoff',
  ExponentialBackoffWithJitter: 'exponential_backoff_with_jitter',
  Random: 'random',
});
const JitterShape = Object.freeze({ None: 'none', Multiplicative: 'multiplicative', Additive: 'additive' });
const FirstRetry = Object.freeze({ Backoff: 'backoff', Immediate: 'immediate', Fast: 'fast' });
const TimeoutOrigin = Object.freeze({ Operation: 'operation', FirstRetry: 'first_retry' });
const WaitOrigin = Object.freeze({ Failure: 'failure', AttemptStart: 'attempt_start' });
const ErrorTable = Object.freeze({
  Consolidated: 'consolidated',
  C: 'c',
  Node: 'node',
  Python: 'python',
  CSharpV1: 'csharp_v1',
  CSharpV2: 'csharp_v2',
  Java: 'java',
});
const ErrorClass = Object.freeze({ Transient: 'transient', Throttled: 'throttled', Fatal: 'fatal' });

/** Names `profile()` accepts ('c_sdk', 'node', 'python', 'csharp_v2', ...). */
const profileNames = Object.freeze([...native.retryProfileNames]);

/**
 * A profile of retry.hpp as a policy object, to use as is or to change.
 * @param {string} name one of profileNames
 */
const profile = (name) => native.retryProfile(name);

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

const merge = (base, over) => {
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) {
    out[k] = isPlainObject(v) && isPlainObject(base[k]) ? merge(base[k], v) : v;
  }
  return out;
};

/**
 * What a client's `retryPolicy` option becomes for the addon: a profile name
 * stays a name; `{ profile, ...changes }` is the profile with the changes.
 */
const resolve = (policy) => {
  if (policy === undefined || policy === null || typeof policy === 'string') return policy ?? undefined;
  if (isPlainObject(policy) && typeof policy.profile === 'string') {
    const { profile: name, ...changes } = policy;
    return merge(profile(name), changes);
  }
  return policy;
};

module.exports = {
  retry: {
    profile,
    profileNames,
    BackoffKind,
    JitterShape,
    FirstRetry,
    TimeoutOrigin,
    WaitOrigin,
    ErrorTable,
    ErrorClass,
  },
  resolvePolicy: resolve,
};
