// Types of the devicebound package: Azure IoT Hub-style cloud-to-device
// messaging without a cloud account.

/// <reference types="node" />
import { EventEmitter } from 'node:events';

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

/** `iothub-ack`: which outcomes the sender hears of through feedback. */
export declare const AckMode: {
  readonly None: 'none';
  readonly Positive: 'positive';
  readonly Negative: 'negative';
  readonly Full: 'full';
};
export type AckMode = (typeof AckMode)[keyof typeof AckMode];

/** How a device settles a message. */
export declare const Disposition: {
  readonly Complete: 'complete';
  readonly Reject: 'reject';
  readonly Abandon: 'abandon';
};
export type Disposition = (typeof Disposition)[keyof typeof Disposition];

/** `statusCode` of a feedback record. */
export declare const FeedbackStatus: {
  readonly Success: 'Success';
  readonly Expired: 'Expired';
  readonly DeliveryCountExceeded: 'DeliveryCountExceeded';
  readonly Rejected: 'Rejected';
  readonly Purged: 'Purged';
};
export type FeedbackStatus = (typeof FeedbackStatus)[keyof typeof FeedbackStatus];

/** How the back end settles a feedback batch. */
export declare const FeedbackDisposition: {
  readonly Complete: 'complete';
  readonly Abandon: 'abandon';
};
export type FeedbackDisposition = (typeof FeedbackDisposition)[keyof typeof FeedbackDisposition];

/** A client's connection status. */
export declare const ConnectionStatus: {
  readonly Connected: 'connected';
  readonly Disconnected: 'disconnected';
};
export type ConnectionStatus = (typeof ConnectionStatus)[keyof typeof ConnectionStatus];

/** Why the status changed (the C SDK's IOTHUB_CLIENT_CONNECTION_STATUS_REASON). */
export declare const ConnectionStatusReason: {
  readonly Ok: 'ok';
  readonly ClientClosed: 'client_closed';
  readonly NoNetwork: 'no_network';
  readonly CommunicationError: 'communication_error';
  readonly BadCredential: 'bad_credential';
  readonly DeviceDisabled: 'device_disabled';
  readonly RetryExpired: 'retry_expired';
};
export type ConnectionStatusReason = (typeof ConnectionStatusReason)[keyof typeof ConnectionStatusReason];

/** Error codes: IoT Hub's six-digit codes where the service has one. */
export declare const ErrorCode: {
  readonly ArgumentInvalid: 400004;
  readonly Malformed: 400005;
  readonly Unauthorized: 401000;
  readonly IotHubQuotaExceeded: 403002;
  readonly DeviceMaximumQueueDepthExceeded: 403004;
  readonly DeviceNotFound: 404001;
  readonly NotSupported: 405001;
  readonly Timeout: 408001;
  readonly DeviceAlreadyExists: 409001;
  readonly InvalidOperation: 409002;
  readonly PreconditionFailed: 412001;
  readonly DeviceMessageLockLost: 412002;
  readonly MessageTooLarge: 413001;
  readonly Throttling: 429001;
  readonly ServerError: 500001;
  readonly ServerBusy: 503001;
  readonly NotConnected: 503100;
};
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** The base class of every error devicebound raises; `message` is "<code> <CodeName>: <text>". */
export declare class DeviceboundError extends Error {
  constructor(message: string, code: number);
  /** One of ErrorCode. */
  readonly code: number;
  /** IoT Hub's name for the code, e.g. 'DeviceNotFound'. */
  readonly codeName: string;
}
/** 400004: a bad argument, id, property or configuration value. */
export declare class ArgumentInvalidError extends DeviceboundError {}
/** 400005: undecodable wire data. */
export declare class MalformedError extends DeviceboundError {}
/** 401000: credentials refused (an unregistered device, in process). */
export declare class UnauthorizedError extends DeviceboundError {}
/** 403002: the hub's daily quota. */
export declare class IotHubQuotaExceededError extends DeviceboundError {}
/** 403004: the device queue holds its maximum of pending messages. */
export declare class DeviceMaximumQueueDepthExceededError extends DeviceboundError {}
/** 404001: the device is not registered. */
export declare class DeviceNotFoundError extends DeviceboundError {}
/** 405001: the transport cannot do it (reject/abandon over MQTT to IoT Hub). */
export declare class NotSupportedError extends DeviceboundError {}
/** 408001: the operation timed out. */
export declare class TimeoutError extends DeviceboundError {}
/** 409001: the device is registered already. */
export declare class DeviceAlreadyExistsError extends DeviceboundError {}
/** 409002: not valid now, e.g. a call on a closed client. */
export declare class InvalidOperationError extends DeviceboundError {}
/** 412001: a generation id did not match. */
export declare class PreconditionFailedError extends DeviceboundError {}
/** 412002: the lock token is unknown or its lock expired; the message will come again. */
export declare class DeviceMessageLockLostError extends DeviceboundError {}
/** 413001: the message is over the size limit. */
export declare class MessageTooLargeError extends DeviceboundError {}
/** 429001: throttled. */
export declare class ThrottlingError extends DeviceboundError {}
/** 500001: an internal error of the hub. */
export declare class ServerError extends DeviceboundError {}
/** 503001: the hub is busy. */
export declare class ServerBusyError extends DeviceboundError {}
/** 503100: no connection. */
export declare class NotConnectedError extends DeviceboundError {}

// ---------------------------------------------------------------------------------------------
// Messages and feedback
// ---------------------------------------------------------------------------------------------

/** What a message body may be given as; it is kept as a Buffer. */
export type Body = Buffer | Uint8Array | ArrayBuffer | string;

/** The fields a sender may set. */
export interface MessageFields {
  messageId?: string;
  correlationId?: string;
  userId?: string;
  to?: string;
  /** Default: enqueue time + the hub's default TTL (at most 2 days). */
  expiryTimeUtc?: Date | number;
  ack?: AckMode;
  contentType?: string;
  contentEncoding?: string;
  creationTimeUtc?: Date | number;
  /** Application properties: string to string. */
  properties?: Record<string, string>;
}

/** A cloud-to-device message. */
export declare class Message {
  constructor(body?: Body, fields?: MessageFields);
  body: Buffer;
  messageId: string | undefined;
  correlationId: string | undefined;
  userId: string | undefined;
  to: string | undefined;
  expiryTimeUtc: Date | number | undefined;
  ack: AckMode;
  contentType: string | undefined;
  contentEncoding: string | undefined;
  creationTimeUtc: Date | number | undefined;
  properties: Record<string, string>;
  /** Set by the hub: increasing per device queue. */
  sequenceNumber: number;
  /** Set by the hub: when it accepted the message. */
  enqueuedTimeUtc: Date | undefined;
  /** Set by the hub. */
  deliveryCount: number;
  /** Set on a received message while it is locked for the device (a GUID). */
  lockToken: string | undefined;
  /** The body (the Azure IoT SDK's name). */
  getData(): Buffer;
  /** The body decoded as UTF-8. */
  toString(): string;
}

/** What the hub says when it accepts a message. */
export interface SendReceipt {
  sequenceNumber: number;
  /** When the message expires (after any clamping to 2 days). */
  expiryTimeUtc: Date;
}

/** One outcome in a feedback batch. */
export interface FeedbackRecord {
  /** The message's messageId ('' if it had none). */
  originalMessageId: string;
  /** When the outcome happened. */
  enqueuedTimeUtc: Date;
  statusCode: FeedbackStatus;
  description: string;
  deviceId: string;
  deviceGenerationId: string;
}

/** A feedback message: records, locked for this back end until settled. */
export declare class FeedbackBatch {
  private constructor();
  readonly records: FeedbackRecord[];
  readonly enqueuedTimeUtc: Date;
  /** The hub's name. */
  readonly userId: string;
  readonly lockToken: string;
  readonly deliveryCount: number;
  /** It leaves the feedback queue. */
  complete(): Promise<void>;
  /** It is delivered again. */
  abandon(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Retry policies (retry.hpp)
// ---------------------------------------------------------------------------------------------

export type BackoffKind =
  | 'no_retry'
  | 'immediate'
  | 'interval'
  | 'linear_backoff'
  | 'exponential_backoff'
  | 'exponential_backoff_with_jitter'
  | 'random';
export type JitterShape = 'none' | 'multiplicative' | 'additive';
export type FirstRetry = 'backoff' | 'immediate' | 'fast';
export type TimeoutOrigin = 'operation' | 'first_retry';
export type WaitOrigin = 'failure' | 'attempt_start';
export type ErrorTable = 'consolidated' | 'c' | 'node' | 'python' | 'csharp_v1' | 'csharp_v2' | 'java';
export type ErrorClass = 'transient' | 'throttled' | 'fatal';
export type RetryProfileName =
  | 'c_sdk'
  | 'c_exponential_backoff'
  | 'c_linear_backoff'
  | 'c_interval'
  | 'c_random'
  | 'c_immediate'
  | 'c_none'
  | 'node'
  | 'node_no_retry'
  | 'python'
  | 'csharp_v1'
  | 'csharp_v1_default_exponential'
  | 'csharp_v2'
  | 'java';

/** retry::jitter. */
export interface Jitter {
  shape?: JitterShape;
  low?: number;
  high?: number;
  thresholdMs?: number;
}

/** retry::backoff_config: fields a kind does not use are ignored. */
export interface Backoff {
  kind?: BackoffKind;
  initialMs?: number;
  capMs?: number;
  floorMs?: number;
  jitter?: Jitter;
}

/** retry::policy_config; missing fields take retry.hpp's defaults. */
export interface RetryPolicy {
  backoff?: Backoff;
  /** Backoff for throttled failures (429), where the policy has one (Node). */
  throttled?: Backoff | null;
  firstRetry?: FirstRetry;
  firstRetryDelayMs?: number;
  /** Total retry time; 0 = retry forever. */
  timeoutMs?: number;
  timeoutFrom?: TimeoutOrigin;
  /** Retries per episode; 0 = unlimited. */
  maxRetries?: number;
  resetOnSuccess?: boolean;
  minSpacingMs?: number;
  waitFrom?: WaitOrigin;
  wholeSeconds?: boolean;
  errors?: {
    table?: ErrorTable;
    /** Error code (number or name) to class; wins over the table. */
    overrides?: Record<string | number, ErrorClass>;
  };
}

/** A profile as the client options take it: a name, a policy, or a profile with changes. */
export type RetryPolicyOption = RetryProfileName | RetryPolicy | ({ profile: RetryProfileName } & RetryPolicy);

export declare const retry: {
  /** A profile as a complete policy object. */
  profile(name: RetryProfileName): Required<RetryPolicy>;
  readonly profileNames: readonly RetryProfileName[];
  readonly BackoffKind: {
    readonly NoRetry: 'no_retry';
    readonly Immediate: 'immediate';
    readonly Interval: 'interval';
    readonly LinearBackoff: 'linear_backoff';
    readonly ExponentialBackoff: 'exponential_backoff';
    readonly ExponentialBackoffWithJitter: 'exponential_backoff_with_jitter';
    readonly Random: 'random';
  };
  readonly JitterShape: { readonly None: 'none'; readonly Multiplicative: 'multiplicative'; readonly Additive: 'additive' };
  readonly FirstRetry: { readonly Backoff: 'backoff'; readonly Immediate: 'immediate'; readonly Fast: 'fast' };
  readonly TimeoutOrigin: { readonly Operation: 'operation'; readonly FirstRetry: 'first_retry' };
  readonly WaitOrigin: { readonly Failure: 'failure'; readonly AttemptStart: 'attempt_start' };
  readonly ErrorTable: {
    readonly Consolidated: 'consolidated';
    readonly C: 'c';
    readonly Node: 'node';
    readonly Python: 'python';
    readonly CSharpV1: 'csharp_v1';
    readonly CSharpV2: 'csharp_v2';
    readonly Java: 'java';
  };
  readonly ErrorClass: { readonly Transient: 'transient'; readonly Throttled: 'throttled'; readonly Fatal: 'fatal' };
};

// ---------------------------------------------------------------------------------------------
// The hub
// ---------------------------------------------------------------------------------------------

/** Hub configuration (SPEC 2.1); missing fields keep IoT Hub's defaults. */
export interface HubOptions {
  /** The hub's name: `userId` of feedback batches. Default 'devicebound'. */
  name?: string;
  /** 1 minute .. 2 days; default 1 hour. */
  defaultTtlMs?: number;
  /** A per-message expiry past 2 days: clamp it (default) or refuse the send. */
  expiryOverCap?: 'clamp' | 'reject';
  /** 1 .. 100; default 10. */
  maxDeliveryCount?: number;
  deliveryCountRule?: 'abandon_only' | 'every_delivery';
  /** 1 s .. 5 min; IoT Hub's is 1 minute (the default). */
  lockDurationMs?: number;
  /** Pending messages per device, 1 .. 10000; IoT Hub's is 50. */
  maxQueueDepth?: number;
  /** Bytes, 1 .. 1 MiB; default 64 KB. */
  maxMessageSize?: number;
  feedbackTtlMs?: number;
  feedbackMaxDeliveryCount?: number;
  feedbackLockDurationMs?: number;
  /** Records per batch, 1 .. 64. */
  feedbackBatchSize?: number;
  /** 0 .. 15 s; IoT Hub batches for up to 15 s (the default). */
  feedbackBatchIntervalMs?: number;
  purgeFeedbackFor?: 'negative_acks' | 'none';
}

/** Running totals of a hub. */
export interface HubStats {
  accepted: number;
  completed: number;
  rejected: number;
  expired: number;
  deliveryCountExceeded: number;
  purged: number;
  removedWithDevice: number;
  feedbackRecords: number;
  feedbackRecordsDropped: number;
  feedbackBatches: number;
}

/** An embedded hub: IoT Hub's C2D engine in this process. It does not keep the process alive. */
export declare class Hub {
  /** @throws {ArgumentInvalidError} a value out of range */
  constructor(options?: HubOptions);
  /** The configuration in force. */
  readonly config: Required<HubOptions>;
  /** Registers a device; resolves with its generation id. */
  addDevice(deviceId: string): Promise<string>;
  /** Removes a device with its queue and pending feedback. */
  removeDevice(deviceId: string): Promise<void>;
  stats(): HubStats;
  /** A device client of this hub. */
  deviceClient(deviceId: string, options?: Omit<DeviceClientOptions, 'hub' | 'mqtt'>): DeviceClient;
  /** A service client of this hub. */
  serviceClient(options?: Omit<ServiceClientOptions, 'hub' | 'mqtt'>): ServiceClient;
  /** Stops the timer thread (timers then fire when an operation comes). */
  close(): void;
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/** TLS to the broker (Paho's MQTTAsync_SSLOptions). */
export interface MqttTlsOptions {
  caFile?: string;
  caPath?: string;
  certFile?: string;
  keyFile?: string;
  keyPassword?: string;
  verifyServer?: boolean;
}

/** How to reach the broker that devicebound-hub serves. */
export interface MqttOptions {
  host?: string;
  port?: number;
  /** MQTT client id: a device's id by default; a random one for a service. */
  clientId?: string;
  username?: string;
  password?: string;
  tls?: MqttTlsOptions;
  keepAliveMs?: number;
  connectTimeoutMs?: number;
  /** How long a request waits for the hub's reply (408001 after). */
  requestTimeoutMs?: number;
  attachRetryMs?: number;
  /** Locked messages (batches) the hub may push before one is settled. */
  prefetch?: number;
  cleanSession?: boolean;
}

/** MQTT options of a device: `mode` 'extended' (default) or 'iothub' (complete only). */
export interface MqttDeviceOptions extends MqttOptions {
  mode?: 'extended' | 'iothub';
}

/**
 * The AMQP transport's knobs; the identity and its key come from the connection
 * string (`fromConnectionString`). TLS to port 5671, or `host:port` in HostName.
 */
export interface AmqpOptions {
  /** PEM file of CA certificates to trust; default: the system's trust store. */
  caFile?: string;
  /** Check the hub's certificate and host name (default true). */
  verifyServer?: boolean;
  /** false: plain AMQP, which only a local devicebound-hub on loopback accepts. */
  tls?: boolean;
  /** Lifetime of each SAS token put on $cbs (default 1 h). */
  tokenTtlMs?: number;
  /** When to put a fresh token, as a fraction of its lifetime (default 0.8). */
  tokenRenewAt?: number;
  connectTimeoutMs?: number;
  /** How long a send or settlement waits for the hub's outcome (408001 after). */
  requestTimeoutMs?: number;
  idleTimeoutMs?: number;
  /** Credit of the receiving link: locked messages (batches) the hub may push at once. */
  prefetch?: number;
}

interface ClientOptionsBase {
  /** Default: 'node', the Azure IoT Node SDK's policy. */
  retryPolicy?: RetryPolicyOption;
  /** Seed of the retry jitter (tests). */
  randomSeed?: number;
}

export type DeviceClientOptions = ClientOptionsBase &
  (
    | { hub: Hub; mqtt?: undefined; settlement?: 'full' | 'complete_only' }
    | { mqtt: MqttDeviceOptions; hub?: undefined; settlement?: undefined }
  );

export type ServiceClientOptions = ClientOptionsBase & {
  /** 'when_unset': a UUID v4 for each message sent without a messageId. */
  assignMessageId?: 'never' | 'when_unset';
} & ({ hub: Hub; mqtt?: undefined } | { mqtt: MqttOptions; hub?: undefined });

export interface DeviceClientEvents {
  message: [message: Message];
  connected: [reason: ConnectionStatusReason];
  disconnected: [reason: ConnectionStatusReason];
  error: [error: DeviceboundError];
}

/**
 * A device's C2D client. A 'message' listener starts receiving; each message
 * is locked for the device until complete(), reject() or abandon(), or until
 * its lock expires. An open client, or one with a 'message' listener, keeps the
 * process alive until close().
 */
export declare class DeviceClient extends EventEmitter {
  constructor(deviceId: string, options: DeviceClientOptions);
  /**
   * A device client from `HostName=...;DeviceId=...;SharedAccessKey=...`, over AMQP
   * (complete, reject and abandon). Throws ArgumentInvalidError for a malformed string.
   */
  static fromConnectionString(
    connectionString: string,
    transport?: 'amqp',
    options?: AmqpOptions & ClientOptionsBase,
  ): DeviceClient;
  readonly deviceId: string;
  readonly status: ConnectionStatus;
  /** False over MQTT to IoT Hub (mode 'iothub') and settlement 'complete_only'. */
  readonly canReject: boolean;
  readonly canAbandon: boolean;
  /** Connects under the retry policy (operations also connect on demand). */
  open(): Promise<void>;
  /** No more 'message' events; calls made before finish; then it disconnects. */
  close(): Promise<void>;
  /** Rejects with DeviceMessageLockLostError if the lock expired. */
  complete(message: Message | string): Promise<void>;
  /** Rejects with NotSupportedError over MQTT to IoT Hub. */
  reject(message: Message | string): Promise<void>;
  /** Rejects with NotSupportedError over MQTT to IoT Hub. */
  abandon(message: Message | string): Promise<void>;

  on<K extends keyof DeviceClientEvents>(event: K, listener: (...args: DeviceClientEvents[K]) => void): this;
  once<K extends keyof DeviceClientEvents>(event: K, listener: (...args: DeviceClientEvents[K]) => void): this;
  off<K extends keyof DeviceClientEvents>(event: K, listener: (...args: DeviceClientEvents[K]) => void): this;
  addListener<K extends keyof DeviceClientEvents>(
    event: K,
    listener: (...args: DeviceClientEvents[K]) => void,
  ): this;
  removeListener<K extends keyof DeviceClientEvents>(
    event: K,
    listener: (...args: DeviceClientEvents[K]) => void,
  ): this;
  emit<K extends keyof DeviceClientEvents>(event: K, ...args: DeviceClientEvents[K]): boolean;
}

export interface FeedbackReceiverEvents {
  message: [batch: FeedbackBatch];
  error: [error: DeviceboundError];
}

/** Delivery feedback of one service client: events or `for await`. */
export declare class FeedbackReceiver extends EventEmitter implements AsyncIterable<FeedbackBatch> {
  private constructor();
  complete(batch: FeedbackBatch): Promise<void>;
  abandon(batch: FeedbackBatch): Promise<void>;
  [Symbol.asyncIterator](): AsyncIterator<FeedbackBatch>;

  on<K extends keyof FeedbackReceiverEvents>(event: K, listener: (...args: FeedbackReceiverEvents[K]) => void): this;
  once<K extends keyof FeedbackReceiverEvents>(
    event: K,
    listener: (...args: FeedbackReceiverEvents[K]) => void,
  ): this;
  off<K extends keyof FeedbackReceiverEvents>(event: K, listener: (...args: FeedbackReceiverEvents[K]) => void): this;
  emit<K extends keyof FeedbackReceiverEvents>(event: K, ...args: FeedbackReceiverEvents[K]): boolean;
}

export interface ServiceClientEvents {
  connected: [reason: ConnectionStatusReason];
  disconnected: [reason: ConnectionStatusReason];
}

/**
 * The back end's C2D client. An open client, or one receiving feedback, keeps
 * the process alive until close(); one that only sends, while a call is in flight.
 */
export declare class ServiceClient extends EventEmitter {
  constructor(options: ServiceClientOptions);
  /**
   * A service client over AMQP from `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`.
   * purge() and queueDepth() reject with NotSupportedError over AMQP (IoT Hub: HTTPS only).
   */
  static fromConnectionString(
    connectionString: string,
    options?: AmqpOptions & ClientOptionsBase & { assignMessageId?: 'never' | 'when_unset' },
  ): ServiceClient;
  readonly status: ConnectionStatus;
  open(): Promise<void>;
  /** Stops feedback (iterators end), lets earlier calls finish, disconnects. */
  close(): Promise<void>;
  /** Rejects with DeviceNotFoundError, DeviceMaximumQueueDepthExceededError, MessageTooLargeError, ... */
  send(deviceId: string, message: Message | Body): Promise<SendReceipt>;
  /** Removes every pending message of a device; resolves with how many. NotSupportedError over AMQP. */
  purge(deviceId: string): Promise<number>;
  /** Messages pending for a device (Enqueued plus Invisible). NotSupportedError over AMQP. */
  queueDepth(deviceId: string): Promise<number>;
  getFeedbackReceiver(): FeedbackReceiver;

  on<K extends keyof ServiceClientEvents>(event: K, listener: (...args: ServiceClientEvents[K]) => void): this;
  once<K extends keyof ServiceClientEvents>(event: K, listener: (...args: ServiceClientEvents[K]) => void): this;
  off<K extends keyof ServiceClientEvents>(event: K, listener: (...args: ServiceClientEvents[K]) => void): this;
  emit<K extends keyof ServiceClientEvents>(event: K, ...args: ServiceClientEvents[K]): boolean;
}

/** Whether this build has the MQTT transport (Paho MQTT C was found when it was built). */
export declare const withMqtt: boolean;
/** Whether this build has the AMQP transport (Qpid Proton C++ was found when it was built). */
export declare const withAmqp: boolean;
/** devicebound's version. */
export declare const version: string;
