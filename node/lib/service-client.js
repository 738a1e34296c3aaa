'use strict';
// The back-end side: send, purge, queue depth as Promises; delivery feedback as
// events or an async iterator.
const { EventEmitter } = require('node:events');
const native = require('./native');
const call = require('./call');
const transportSpec = require('./transport-spec');
const { asMessage } = require('./message');
const { makeError, ErrorCode } = require('./errors');

/**
 * A feedback message: a batch of records, locked for this back end until it
 * is completed (it leaves the feedback queue) or abandoned (delivered again).
 */
class FeedbackBatch {
  constructor(client, fields) {
    Object.defineProperty(this, '_client', { value: client });
    /** @type {Array<{originalMessageId: string, enqueuedTimeUtc: Date, statusCode: string,
     *   description: string, deviceId: string, deviceGenerationId: string}>} */
    this.records = fields.records;
    this.enqueuedTimeUtc = fields.enqueuedTimeUtc;
    this.userId = fields.userId;
    this.lockToken = fields.lockToken;
    this.deliveryCount = fields.deliveryCount;
  }

  /** @returns {Promise<void>} */
  complete() {
    return this._client._settleFeedback(this, 'complete');
  }

  /** @returns {Promise<void>} */
  abandon() {
    return this._client._settleFeedback(this, 'abandon');
  }
}

/**
 * Delivery feedback of one service client. Either listen to 'message'
 * (FeedbackBatch) or iterate with `for await`; both start receiving. Batches
 * that come while neither listens wait here. 'error': receiving stopped (the
 * retry policy gave up); `client.open()` starts it again.
 */
class FeedbackReceiver extends EventEmitter {
  constructor(client) {
    super();
    this._client = client;
    this._buffer = [];
    this._waiters = [];
    this._iterators = 0;
    this._error = null;
    this._ended = false;
    this.on('newListener', (event) => {
      if (event !== 'message') return;
      this._start();
      if (this._buffer.length > 0) process.nextTick(() => this._flush());
    });
  }

  /** @param {FeedbackBatch} batch @returns {Promise<void>} */
  complete(batch) {
    return this._client._settleFeedback(batch, 'complete');
  }

  /** @param {FeedbackBatch} batch @returns {Promise<void>} */
  abandon(batch) {
    return this._client._settleFeedback(batch, 'abandon');
  }

  /**
   * Batches as they come, until the client is closed. If receiving stops (the
   * retry policy gave up), the pending or next `next()` rejects with the error.
   */
  [Symbol.asyncIterator]() {
    this._start();
    this._iterators += 1;
    let done = false;
    const finish = () => {
      if (!done) {
        done = true;
        this._iterators -= 1;
      }
    };
    return {
      next: () => {
        if (done || this._ended) {
          finish();
          return Promise.resolve({ value: undefined, done: true });
        }
        if (this._buffer.length > 0) return Promise.resolve({ value: this._buffer.shift(), done: false });
        if (this._error) {
          const e = this._error;
          this._error = null;
          return Promise.reject(e);
        }
        return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
      },
      return: () => {
        finish();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  _start() {
    this._ended = false;
    this._error = null;
    this._client._native.startFeedback();
  }

  _deliver(batch) {
    if (this.listenerCount('message') > 0) this.emit('message', batch);
    else if (this._waiters.length > 0) this._waiters.shift().resolve({ value: batch, done: false });
    else this._buffer.push(batch);
  }

  _fail(error) {
    if (this.listenerCount('error') > 0 || this._iterators === 0) {
      this.emit('error', error); // no listener and no iterator: thrown, as EventEmitter does
    } else if (this._waiters.length > 0) {
      for (const w of this._waiters.splice(0)) w.reject(error);
    } else {
      this._error = error; // for the next next()
    }
  }

  _end() {
    this._ended = true;
    for (const w of this._waiters.splice(0)) w.resolve({ value: undefined, done: true });
  }

  _flush() {
    while (this._buffer.length > 0 && this.listenerCount('message') > 0) {
      this.emit('message', this._buffer.shift());
    }
  }
}

/**
 * The back end's C2D client over the embedded hub (`{ hub }`) or MQTT
 * (`{ mqtt }`). Events: 'connected' (reason), 'disconnected' (reason).
 * An open client, or one receiving feedback, keeps the process alive until
 * `close()`; one that only sends does so while a call is in flight.
 */
class ServiceClient extends EventEmitter {
  /**
   * @param {object} options `{ hub }` or `{ mqtt: { host, port, ... } }`, and
   *   retryPolicy, assignMessageId ('never' | 'when_unset'), randomSeed
   */
  constructor(options) {
    super();
    const spec = { ...transportSpec(options, 'ServiceClient'), assignMessageId: options.assignMessageId };
    this._native = new native.NativeServiceClient((kind, a, b) => this._onEvent(kind, a, b), spec);
    // The hub must outlive its clients' use of it (its timer thread stops when it is collected).
    Object.defineProperty(this, '_hub', { value: options.hub });
    this._receiver = null;
    this._closing = null;
  }

  /**
   * A service client over AMQP from an IoT Hub service connection string,
   * `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`: it reaches
   * devicebound-hub's AMQP door or an IoT hub (TLS to port 5671, or `host:port`
   * in HostName). IoT Hub has no AMQP purge or queue depth: over AMQP `purge()`
   * and `queueDepth()` reject with NotSupportedError.
   * @param {string} connectionString
   * @param {object} [options] caFile (PEM CA certificates to trust; default: the
   *   system's), verifyServer, tokenTtlMs, tokenRenewAt, connectTimeoutMs,
   *   requestTimeoutMs, idleTimeoutMs, prefetch, retryPolicy, assignMessageId, randomSeed
   * @returns {ServiceClient}
   */
  static fromConnectionString(connectionString, options = {}) {
    if (typeof connectionString !== 'string') {
      throw makeError(ErrorCode.ArgumentInvalid, 'connectionString must be a string');
    }
    const { retryPolicy, randomSeed, assignMessageId, ...amqp } = options ?? {};
    return new ServiceClient({ amqp: { ...amqp, connectionString }, retryPolicy, randomSeed, assignMessageId });
  }

  /** 'connected' or 'disconnected'. */
  get status() {
    return this._native.status();
  }

  /** Connects under the retry policy (operations also connect on demand). @returns {Promise<void>} */
  open() {
    const start = () => call(() => this._native.open());
    return this._closing ? this._closing.then(start) : start();
  }

  /** Stops feedback, disconnects; feedback iterators end. @returns {Promise<void>} */
  close() {
    if (!this._closing) {
      this._closing = call(() => this._native.close()).finally(() => {
        this._closing = null;
        this._receiver?._end();
      });
    }
    return this._closing;
  }

  /**
   * Sends a message to a device (its `ack` asks for feedback).
   * @param {string} deviceId
   * @param {Message|Buffer|string} message
   * @returns {Promise<{sequenceNumber: number, expiryTimeUtc: Date}>}
   */
  send(deviceId, message) {
    return call(() => this._native.send(deviceId, asMessage(message)));
  }

  /**
   * Removes every pending message of a device.
   * @param {string} deviceId
   * @returns {Promise<number>} how many were removed
   */
  purge(deviceId) {
    return call(() => this._native.purge(deviceId));
  }

  /**
   * Messages pending for a device (Enqueued plus Invisible).
   * @param {string} deviceId
   * @returns {Promise<number>}
   */
  queueDepth(deviceId) {
    return call(() => this._native.queueDepth(deviceId));
  }

  /** This client's feedback receiver (one per client). @returns {FeedbackReceiver} */
  getFeedbackReceiver() {
    if (!this._receiver) this._receiver = new FeedbackReceiver(this);
    return this._receiver;
  }

  _settleFeedback(batch, how) {
    return call(() => this._native.settleFeedback(batch?.lockToken, how));
  }

  _onEvent(kind, a, b) {
    switch (kind) {
      case 'feedback':
        this.getFeedbackReceiver()._deliver(new FeedbackBatch(this, a));
        break;
      case 'status':
        this.emit(a, b);
        break;
      case 'error':
        this.getFeedbackReceiver()._fail(a);
        break;
      default:
        break;
    }
  }
}

module.exports = { ServiceClient, FeedbackReceiver, FeedbackBatch };
