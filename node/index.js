'use strict';
// devicebound: Azure IoT Hub-style cloud-to-device messaging without a cloud
// account. An embedded hub (Hub) or one behind an MQTT broker; DeviceClient
// receives and settles, ServiceClient sends, purges and hears feedback.
const native = require('./lib/native');
const errors = require('./lib/errors');
const { Message, AckMode, Disposition, FeedbackStatus } = require('./lib/message');
const { Hub } = require('./lib/hub');
const { DeviceClient } = require('./lib/device-client');
const { ServiceClient, FeedbackReceiver, FeedbackBatch } = require('./lib/service-client');
const { retry } = require('./lib/retry');

/** A client's connection status. */
const ConnectionStatus = Object.freeze({ Connected: 'connected', Disconnected: 'disconnected' });

/** Why the status changed (the C SDK's IOTHUB_CLIENT_CONNECTION_STATUS_REASON). */
const ConnectionStatusReason = Object.freeze({
  Ok: 'ok',
  ClientClosed: 'client_closed',
  NoNetwork: 'no_network',
  CommunicationError: 'communication_error',
  BadCredential: 'bad_credential',
  DeviceDisabled: 'device_disabled',
  RetryExpired: 'retry_expired',
});

/** The feedback dispositions of a FeedbackBatch. */
const FeedbackDisposition = Object.freeze({ Complete: 'complete', Abandon: 'abandon' });

module.exports = {
  Hub,
  DeviceClient,
  ServiceClient,
  FeedbackReceiver,
  FeedbackBatch,
  Message,
  AckMode,
  Disposition,
  FeedbackStatus,
  FeedbackDisposition,
  ConnectionStatus,
  ConnectionStatusReason,
  retry,
  ...errors,
  /** Whether this build has the MQTT transport (Paho MQTT C was found). */
  withMqtt: native.withMqtt,
  /** Whether this build has the AMQP transport (Qpid Proton C++ was found). */
  withAmqp: native.withAmqp,
  /** devicebound's version. */
  version: native.version,
};
