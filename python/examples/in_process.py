#!/usr/bin/env python3
"""Both apps in one process, with the embedded hub: no broker, no daemon, no cloud account."""

import devicebound as db

hub = db.Hub(feedback_batch_interval=0)   # IoT Hub's defaults, but feedback at once
hub.add_device("thermostat-1")

with db.ServiceClient(hub) as service, db.DeviceClient(hub, "thermostat-1") as device:
    device.on_message_received = lambda m: print(f"Device got {m.text} {m.properties}") or db.Disposition.COMPLETE
    service.send("thermostat-1", '{"target": 21}', {"unit": "C"}, message_id="set-21", ack=db.Ack.FULL)
    batch = service.receive_feedback(timeout=20)
    for record in batch:
        print(f"Back end: {record.original_message_id} -> {record.status}")
    service.complete_feedback(batch)
