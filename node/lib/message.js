'use strict';
// The C2D message, and the constants that go with it.

/** `iothub-ack`: which outcomes the sender hears of through feedback. */
const AckMode = Object.freeze({ None: 'none', Positive: 'positive', Negative: 'negative', Full: 'full' });

/** How a device settles a message. */
const Disposition = Object.freeze({ Complete: 'complete', Reject: 'reject', Abandon: 'abandon' });

/** `statusCode` of a feedback record. */
const FeedbackStatus = Object.freeze({
  Success: 'Success',
  Expired: 'Expired',
  DeliveryCountExceeded: 'DeliveryCountExceeded',
  Rejected: 'Rejected',
  Purged: 'Purged',
});

const toBody = (body) => {
  if (body === undefined || body === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof Uint8Array) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  throw new TypeError('a message body is a Buffer, a Uint8Array, an ArrayBuffer or a string');
};

const settable = ['messageId', 'correlationId', 'userId', 'to', 'expiryTimeUtc', 'ack', 'contentType',
  'contentEncoding', 'creationTimeUtc', 'properties'];

/**
 * A cloud-to-device message. The sender sets the body, the system properties
 * and `properties` (application properties, string to string); the hub sets
 * `sequenceNumber`, `enqueuedTimeUtc`, `deliveryCount` and `lockToken`.
 */
class Message {
  /**
   * @param {Buffer|Uint8Array|ArrayBuffer|string} [body]
   * @param {object} [fields] any of messageId, correlationId, userId, to,
   *   expiryTimeUtc, ack, contentType, contentEncoding, creationTimeUtc, properties
   */
  constructor(body, fields) {
    this.body = toBody(body);
    this.messageId = undefined;
    this.correlationId = undefined;
    this.userId = undefined;
    this.to = undefined;
    this.expiryTimeUtc = undefined;
    this.ack = AckMode.None;
    this.contentType = undefined;
    this.contentEncoding = undefined;
    this.creationTimeUtc = undefined;
    this.properties = {};
    this.sequenceNumber = 0;
    this.enqueuedTimeUtc = undefined;
    this.deliveryCount = 0;
    this.lockToken = undefined;
    if (fields) {
      for (const key of settable) {
        if (fields[key] !== undefined) this[key] = fields[key];
      }
      if (fields.properties) this.properties = { ...fields.properties };
    }
  }

  /** The body (the Azure IoT SDK's name). */
  getData() {
    return this.body;
  }

  /** The body decoded as UTF-8. */
  toString() {
    return this.body.toString('utf8');
  }
}

/** A Message from what `send` accepts: a Message, or a body. */
const asMessage = (m) => (m instanceof Message ? m : new Message(m));

module.exports = { Message, AckMode, Disposition, FeedbackStatus, asMessage };
