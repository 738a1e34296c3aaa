'use strict';
// The device side: receive C2D messages as events, settle them with Promises.
const { EventEmitter } = require('node:events');
const native = require('./native');
const call = require('./call');
const transportSpec = require('./transport-spec');
const { Disposition } = require('./message');
const { makeError, ErrorCode } = require('./errors');

/**
 * A device's C2D client over the embedded hub (`{ hub }`), MQTT (`{ mqtt }`) or
 * AMQP (`DeviceClient.fromConnectionString`).
 *
 * Events: 'message' (Message), 'connected' (reason), 'disconnected' (reason),
 * 'error' (DeviceboundError: receiving stopped because the retry policy gave
 * up, or the device was refused; `open()` starts it again).
 *
 * Adding a 'message' listener starts receiving (connecting on demand); every
 * received message is locked for this device until it is completed, rejected
 * or abandoned, or its lock expires. An open client, or one with a 'message'
 * listener, keeps the process alive until `close()`.
 */
class DeviceClient extends EventEmitter {
  /**
   * @param {string} deviceId
   * @param {object} options `{ hub }` or `{ mqtt: { host, port, mode, ... } }`,
   *   and retryPolicy, settlement ('full' | 'complete_only', in-process only), randomSeed
   */
  constructor(deviceId, options) {
    super();
    const spec = { ...transportSpec(options, 'DeviceClient'), deviceId, settlement: options.settlement };
    this._native = new native.NativeDeviceClient((kind, a, b) => this._onEvent(kind, a, b), spec);
    // The hub must outlive its clients' use of it (its timer thread stops when it is collected).
    Object.defineProperty(this, '_hub', { value: options.hub });
    this._unclaimed = [];
    this._closing = null;
    this.on('newListener', (event) => {
      if (event !== 'message') return;
      this._native.startReceiving();
      // Messages that came while nobody listened go to the new listener, once it is added.
      if (this._unclaimed.length > 0) process.nextTick(() => this._flushUnclaimed());
    });
  }

  /**
   * A device client from an IoT Hub device connection string,
   * `HostName=...;DeviceId=...;SharedAccessKey=...[;GatewayHostName=...]`.
   * `transport` is 'amqp' (TLS to port 5671, or `host:port` in HostName): it
   * reaches devicebound-hub's AMQP door or an IoT hub, and can complete, reject
   * and abandon. MQTT clients are made with `new DeviceClient(id, { mqtt })`.
   * @param {string} connectionString
   * @param {'amqp'} [transport]
   * @param {object} [options] caFile (PEM CA certificates to trust; default: the
   *   system's), verifyServer, tokenTtlMs, tokenRenewAt, connectTimeoutMs,
   *   requestTimeoutMs, idleTimeoutMs, prefetch, retryPolicy, randomSeed
   * @returns {DeviceClient}
   */
  static fromConnectionString(connectionString, transport = 'amqp', options = {}) {
    if (transport !== 'amqp') {
      throw makeError(ErrorCode.NotSupported,
        `fromConnectionString supports transport 'amqp', not '${transport}'; over MQTT use new DeviceClient(id, { mqtt })`);
    }
    if (typeof connectionString !== 'string') {
      throw makeError(ErrorCode.ArgumentInvalid, 'connectionString must be a string');
    }
    const { retryPolicy, randomSeed, ...amqp } = options ?? {};
    return new DeviceClient(undefined, { amqp: { ...amqp, connectionString }, retryPolicy, randomSeed });
  }

  /** The device id. */
  get deviceId() {
    return this._native.deviceId();
  }

  /** 'connected' or 'disconnected'. */
  get status() {
    return this._native.status();
  }

  /** Whether `reject()` can work (not over MQTT to IoT Hub). */
  get canReject() {
    return this._native.canReject();
  }

  /** Whether `abandon()` can work (not over MQTT to IoT Hub). */
  get canAbandon() {
    return this._native.canAbandon();
  }

  /**
   * Connects under the retry policy. Operations also connect on demand; `open()`
   * is needed again after `close()`.
   * @returns {Promise<void>}
   */
  open() {
    const start = () => call(() => this._native.open());
    return this._closing ? this._closing.then(start) : start();
  }

  /**
   * Stops receiving and disconnects (emits 'disconnected' with 'client_closed').
   * @returns {Promise<void>}
   */
  close() {
    if (!this._closing) {
      this._closing = call(() => this._native.close()).finally(() => {
        this._closing = null;
      });
    }
    return this._closing;
  }

  /**
   * Completes a received message: it leaves the queue (feedback Success).
   * @param {Message|string} message a received Message or its lockToken
   * @returns {Promise<void>} rejects with DeviceMessageLockLostError if the lock expired
   */
  complete(message) {
    return this._settle(message, Disposition.Complete);
  }

  /**
   * Rejects (dead-letters) a received message. Over MQTT to IoT Hub it rejects
   * with NotSupportedError, as the Azure IoT device SDK does.
   * @param {Message|string} message
   * @returns {Promise<void>}
   */
  reject(message) {
    return this._settle(message, Disposition.Reject);
  }

  /**
   * Abandons a received message: back to the queue, delivered again. Over MQTT
   * to IoT Hub it rejects with NotSupportedError.
   * @param {Message|string} message
   * @returns {Promise<void>}
   */
  abandon(message) {
    return this._settle(message, Disposition.Abandon);
  }

  _settle(message, disposition) {
    const token = typeof message === 'string' ? message : message?.lockToken;
    return call(() => this._native.settle(token, disposition));
  }

  _onEvent(kind, a, b) {
    switch (kind) {
      case 'message':
        if (this.listenerCount('message') > 0) this.emit('message', a);
        else this._unclaimed.push(a);
        break;
      case 'status':
        this.emit(a, b);
        break;
      case 'error':
        this.emit('error', a);
        break;
      default:
        break;
    }
  }

  _flushUnclaimed() {
    while (this._unclaimed.length > 0 && this.listenerCount('message') > 0) {
      this.emit('message', this._unclaimed.shift());
    }
  }
}

module.exports = { DeviceClient };
