'use strict';
// Client options -> what the addon's client constructors take.
const { Hub } = require('./hub');
const { makeError, ErrorCode } = require('./errors');
const { resolvePolicy } = require('./retry');

const invalid = (text) => makeError(ErrorCode.ArgumentInvalid, text);

/**
 * `{ hub }`, `{ mqtt }` or `{ amqp: { connectionString, ... } }` plus the common
 * options, as the addon's spec.
 * @param {object} options
 * @param {string} who 'DeviceClient' or 'ServiceClient'
 */
module.exports = function transportSpec(options, who) {
  if (options === null || typeof options !== 'object') {
    throw invalid(`${who} options must be an object with { hub } or { mqtt }`);
  }
  const { hub, mqtt, amqp, retryPolicy, randomSeed } = options;
  // The Azure IoT Node SDK's policy unless told otherwise (the C++ clients default to the C SDK's).
  const common = { retryPolicy: resolvePolicy(retryPolicy ?? 'node'), randomSeed };
  if ([hub, mqtt, amqp].filter((t) => t !== undefined).length > 1) {
    throw invalid(`${who}: give one of { hub } (in-process), { mqtt } (a broker) or { amqp } (a connection string)`);
  }
  if (amqp !== undefined) {
    if (amqp === null || typeof amqp !== 'object' || typeof amqp.connectionString !== 'string') {
      throw invalid(`${who}: options.amqp must be an object with a connectionString`);
    }
    const { connectionString, ...knobs } = amqp;
    return { transport: 'amqp', connectionString, amqp: knobs, ...common };
  }
  if (hub !== undefined) {
    if (!(hub instanceof Hub)) throw invalid(`${who}: options.hub must be a Hub`);
    return { transport: 'inproc', hub: hub._native, ...common };
  }
  if (mqtt !== undefined) {
    if (mqtt === null || typeof mqtt !== 'object') throw invalid(`${who}: options.mqtt must be an object`);
    return { transport: 'mqtt', mqtt, ...common };
  }
  throw invalid(`${who} needs { hub } (in-process) or { mqtt: { host, port } } (a broker)`);
};
