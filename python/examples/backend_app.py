#!/usr/bin/env python3
"""A back-end app: send cloud-to-device messages and read their delivery feedback.

The Azure how-to's service snippet, against devicebound-hub over MQTT:

    python python/examples/backend_app.py --device thermostat-1 --count 5
"""

import argparse

import devicebound as db

parser = argparse.ArgumentParser(description="send C2D messages")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=1883)
parser.add_argument("--device", default="thermostat-1")
parser.add_argument("--count", type=int, default=5)
args = parser.parse_args()

with db.ServiceClient(db.Mqtt(host=args.host, port=args.port)) as service:
    for i in range(args.count):
        properties = {"temperatureAlert": "true" if i % 2 else "false"}
        service.send(args.device, f'{{"target": {20 + i}}}', properties, message_id=f"message-{i}", ack=db.Ack.FULL)
        print(f"Sent message-{i}", flush=True)

    outcomes = 0
    for batch in service.feedback(idle_timeout=30):  # delivery feedback, batched by the hub
        for record in batch:
            print(f"Feedback: {record.original_message_id} {record.status} on {record.device_id}", flush=True)
        service.complete_feedback(batch)
        outcomes += len(batch)
        if outcomes >= args.count:
            break
