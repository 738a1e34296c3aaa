'use strict';
// Errors: one class per devicebound error code, all DeviceboundError, each with
// the numeric `code` (IoT Hub's six-digit codes where the service has one) and
// `codeName` (IoT Hub's name for it). Native calls reject with these.

/** Error codes (include/devicebound/errors.hpp). */
const ErrorCode = Object.freeze({
  ArgumentInvalid: 400004,
  Malformed: 400005,
  Unauthorized: 401000,
  IotHubQuotaExceeded: 403002,
  DeviceMaximumQueueDepthExceeded: 403004,
  DeviceNotFound: 404001,
  NotSupported: 405001,
  Timeout: 408001,
  DeviceAlreadyExists: 409001,
  InvalidOperation: 409002,
  PreconditionFailed: 412001,
  DeviceMessageLockLost: 412002,
  MessageTooLarge: 413001,
  Throttling: 429001,
  ServerError: 500001,
  ServerBusy: 503001,
  NotConnected: 503100,
});

const codeNames = new Map(Object.entries(ErrorCode).map(([name, code]) => [code, name]));
// IoT Hub spells this one with its suffix (errors.hpp's to_string).
codeNames.set(ErrorCode.Throttling, 'ThrottlingException');

/** The base class of every error devicebound raises. */
class DeviceboundError extends Error {
  /**
   * @param {string} message what went wrong
   * @param {number} code one of ErrorCode
   */
  constructor(message, code) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.codeName = codeNames.get(code) ?? 'Unknown';
  }
}

const classes = new Map();
const define = (name, code) => {
  const cls = { [name]: class extends DeviceboundError {} }[name];
  classes.set(code, cls);
  return cls;
};

const errors = {
  DeviceboundError,
  ArgumentInvalidError: define('ArgumentInvalidError', ErrorCode.ArgumentInvalid),
  MalformedError: define('MalformedError', ErrorCode.Malformed),
  UnauthorizedError: define('UnauthorizedError', ErrorCode.Unauthorized),
  IotHubQuotaExceededError: define('IotHubQuotaExceededError', ErrorCode.IotHubQuotaExceeded),
  DeviceMaximumQueueDepthExceededError: define('DeviceMaximumQueueDepthExceededError',
    ErrorCode.DeviceMaximumQueueDepthExceeded),
  DeviceNotFoundError: define('DeviceNotFoundError', ErrorCode.DeviceNotFound),
  NotSupportedError: define('NotSupportedError', ErrorCode.NotSupported),
  TimeoutError: define('TimeoutError', ErrorCode.Timeout),
  DeviceAlreadyExistsError: define('DeviceAlreadyExistsError', ErrorCode.DeviceAlreadyExists),
  InvalidOperationError: define('InvalidOperationError', ErrorCode.InvalidOperation),
  PreconditionFailedError: define('PreconditionFailedError', ErrorCode.PreconditionFailed),
  DeviceMessageLockLostError: define('DeviceMessageLockLostError', ErrorCode.DeviceMessageLockLost),
  MessageTooLargeError: define('MessageTooLargeError', ErrorCode.MessageTooLarge),
  ThrottlingError: define('ThrottlingError', ErrorCode.Throttling),
  ServerError: define('ServerError', ErrorCode.ServerError),
  ServerBusyError: define('ServerBusyError', ErrorCode.ServerBusy),
  NotConnectedError: define('NotConnectedError', ErrorCode.NotConnected),
};

/**
 * The error for a code, with the message `"<code> <CodeName>: <text>"` (as
 * the C++ `devicebound::exception` words it).
 * @param {number} code
 * @param {string} text
 * @returns {DeviceboundError}
 */
function makeError(code, text) {
  const cls = classes.get(code) ?? DeviceboundError;
  return new cls(`${code} ${codeNames.get(code) ?? 'Unknown'}: ${text}`, code);
}

module.exports = { ErrorCode, makeError, ...errors };
