#!/usr/bin/env python3
"""A device app: receive cloud-to-device messages and complete them.

The Azure how-to's device snippet, against devicebound-hub over MQTT:

    devicebound-hub --port 1883 --device thermostat-1 &     # next to a mosquitto on 1883
    python python/examples/device_app.py --device thermostat-1
"""

import argparse
import threading

import devicebound as db

parser = argparse.ArgumentParser(description="receive C2D messages")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=1883)
parser.add_argument("--device", default="thermostat-1")
parser.add_argument("--count", type=int, default=0, help="stop after this many messages (default: Ctrl-C)")
args = parser.parse_args()

received = 0
done = threading.Event()


def message_handler(message: db.Message) -> db.Disposition:
    global received
    print(f"Message received: {message.text} properties={message.properties} id={message.message_id}", flush=True)
    received += 1
    if received == args.count:
        done.set()
    return db.Disposition.COMPLETE  # or REJECT, ABANDON


with db.DeviceClient(db.Mqtt(host=args.host, port=args.port), args.device) as device:
    device.on_message_received = message_handler
    print("Waiting for C2D messages, press Ctrl-C to exit", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
