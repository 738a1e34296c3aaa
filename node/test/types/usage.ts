// Type-checked by test/types.test.js against index.d.ts: the whole surface as
// an application uses it, and what the types must refuse.
import {
  AckMode,
  ConnectionStatusReason,
  DeviceClient,
  DeviceboundError,
  DeviceNotFoundError,
  ErrorCode,
  FeedbackBatch,
  FeedbackRecord,
  FeedbackStatus,
  Hub,
  Message,
  NotSupportedError,
  SendReceipt,
  ServiceClient,
  retry,
  withAmqp,
  withMqtt,
} from '../..';

async function howTo(): Promise<void> {
  const hub = new Hub({ name: 'h', lockDurationMs: 1000, feedbackBatchIntervalMs: 0, deliveryCountRule: 'abandon_only' });
  const generation: string = await hub.addDevice('d');
  const device: DeviceClient = hub.deviceClient('d', { retryPolicy: 'c_sdk' });
  const service: ServiceClient = new ServiceClient({ hub, assignMessageId: 'when_unset' });

  device.on('message', (m: Message) => {
    const body: Buffer = m.body;
    const token: string | undefined = m.lockToken;
    const seq: number = m.sequenceNumber;
    void [body, token, seq];
    void (m.messageId === 'bad' ? device.reject(m) : device.complete(m));
  });
  device.on('connected', (r: ConnectionStatusReason) => void r);
  device.on('error', (e: DeviceboundError) => void e.code);
  await device.open();

  const receipt: SendReceipt = await service.send('d', new Message('hi', { messageId: 'm', ack: AckMode.Full }));
  const expires: Date = receipt.expiryTimeUtc;
  await service.send('d', Buffer.from([1, 2]));
  const depth: number = await service.queueDepth('d');
  const purged: number = await service.purge('d');

  for await (const batch of service.getFeedbackReceiver()) {
    const b: FeedbackBatch = batch;
    const r: FeedbackRecord = b.records[0];
    const ok: boolean = r.statusCode === FeedbackStatus.Success;
    await b.complete();
    void ok;
    break;
  }

  try {
    await service.send('nope', 'x');
  } catch (e) {
    if (e instanceof DeviceNotFoundError) {
      const code: number = e.code;
      void (code === ErrorCode.DeviceNotFound);
    }
  }
  const p = retry.profile('node');
  const custom = hub.deviceClient('d', { retryPolicy: { ...p, maxRetries: 3 } });
  const mqtt = new DeviceClient('d', { mqtt: { host: '127.0.0.1', port: 1883, mode: 'iothub' } });
  const mqttService = new ServiceClient({ mqtt: { port: 1883, requestTimeoutMs: 5000 } });
  const cs = 'HostName=localhost:5671;DeviceId=d;SharedAccessKey=AAAA';
  const amqpDevice: DeviceClient = DeviceClient.fromConnectionString(cs, 'amqp', { caFile: 'ca.pem' });
  const amqpDefault: DeviceClient = DeviceClient.fromConnectionString(cs);
  const amqpService: ServiceClient = ServiceClient.fromConnectionString(
    'HostName=localhost:5671;SharedAccessKeyName=service;SharedAccessKey=AAAA',
    { caFile: 'ca.pem', tokenTtlMs: 3_600_000, tokenRenewAt: 0.8, retryPolicy: 'node', assignMessageId: 'when_unset' },
  );
  const canReject: boolean = amqpDevice.canReject;
  void [generation, expires, depth, purged, custom, mqtt, mqttService, withMqtt, hub.stats().completed];
  void [amqpDevice, amqpDefault, amqpService, canReject, withAmqp];
  void (NotSupportedError.prototype instanceof DeviceboundError);
  await Promise.all([device.close(), service.close()]);
  hub.close();
}

function refused(hub: Hub): void {
  // @ts-expect-error a device client needs a hub or mqtt
  new DeviceClient('d', {});
  // @ts-expect-error settlement is for the in-process transport only
  new DeviceClient('d', { mqtt: {}, settlement: 'full' });
  // @ts-expect-error not an ack mode
  new Message('x', { ack: 'sometimes' });
  // @ts-expect-error unknown profile
  hub.deviceClient('d', { retryPolicy: 'aggressive' });
  // @ts-expect-error fromConnectionString speaks AMQP only
  DeviceClient.fromConnectionString('HostName=h;DeviceId=d;SharedAccessKey=AAAA', 'mqtt');
  // @ts-expect-error caFile is a path
  ServiceClient.fromConnectionString('HostName=h;SharedAccessKeyName=s;SharedAccessKey=AAAA', { caFile: 1 });
  // @ts-expect-error the status reasons are known
  const r: ConnectionStatusReason = 'whatever';
  void r;
}

void howTo;
void refused;
