'use strict';
// The embedded hub: IoT Hub's C2D engine in this process, no broker, no cloud.
const native = require('./native');
const call = require('./call');

/**
 * An embedded hub (`inproc::hub_host`). Its timers (lock expiry, TTL,
 * feedback batching) run on a thread of its own until `close()`; it does not
 * keep the process alive.
 */
class Hub {
  /**
   * @param {object} [options] hub configuration, IoT Hub's defaults for what is
   *   missing: name, defaultTtlMs, expiryOverCap, maxDeliveryCount,
   *   deliveryCountRule, lockDurationMs, maxQueueDepth, maxMessageSize,
   *   feedbackTtlMs, feedbackMaxDeliveryCount, feedbackLockDurationMs,
   *   feedbackBatchSize, feedbackBatchIntervalMs, purgeFeedbackFor
   * @throws {ArgumentInvalidError} a value out of range
   */
  constructor(options = {}) {
    this._native = new native.NativeHub(options);
  }

  /** The configuration in force (every field). */
  get config() {
    return this._native.config();
  }

  /**
   * Registers a device. Resolves with its generation id.
   * @param {string} deviceId
   * @returns {Promise<string>}
   */
  addDevice(deviceId) {
    return call(() => this._native.addDevice(deviceId));
  }

  /**
   * Removes a device with its queue and pending feedback.
   * @param {string} deviceId
   * @returns {Promise<void>}
   */
  removeDevice(deviceId) {
    return call(() => this._native.removeDevice(deviceId));
  }

  /** Running totals: accepted, completed, rejected, expired, ... */
  stats() {
    return this._native.stats();
  }

  /** A device client connected to this hub (see DeviceClient). */
  deviceClient(deviceId, options = {}) {
    const { DeviceClient } = require('./device-client');
    return new DeviceClient(deviceId, { ...options, hub: this });
  }

  /** A service (back-end) client connected to this hub (see ServiceClient). */
  serviceClient(options = {}) {
    const { ServiceClient } = require('./service-client');
    return new ServiceClient({ ...options, hub: this });
  }

  /** Stops the timer thread; operations still bring timers up to date. */
  close() {
    this._native.close();
  }
}

module.exports = { Hub };
