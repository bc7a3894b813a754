"""Firmware with its own resource table: a data carveout, a trace buffer, one rpmsg vdev.

It writes b"CARVEOUT" at the start of its carveout and "traced: up" to its trace, then
serves "rpmsg-echo" with serve() (feeding the host's watchdog). Special messages:
b"fatal" reports a fatal error; b"hang" blocks the serving thread (no more heartbeats);
b"trace:TEXT" appends TEXT to the trace and answers b"ok".
"""

import time

from amplink.firmware import carveout, report_fatal, serve, trace
from amplink.remoteproc import FW_RSC_ADDR_ANY as ANY
from amplink.remoteproc import Carveout, ResourceTable, Trace, VdevEntry
from amplink.virtio.vdev import VIRTIO_ID_RPMSG, VIRTIO_RPMSG_F_NS, VringEntry

RESOURCE_TABLE = ResourceTable([
    Carveout(ANY, ANY, 0x4000, name="data"),
    Trace(ANY, 512, name="trace0"),
    VdevEntry(VIRTIO_ID_RPMSG, dfeatures=1 << VIRTIO_RPMSG_F_NS,
              vrings=[VringEntry(ANY, 0x1000, 32, ANY), VringEntry(ANY, 0x1000, 32, ANY)]),
])


def main(link):
    carveout("data")[:8] = b"CARVEOUT"
    trace("traced: up\n")

    def on_message(ep, payload, src):
        if payload == b"fatal":
            report_fatal("assertion failed: payload != b'fatal'")
        if payload == b"hang":
            time.sleep(60)
        if payload.startswith(b"trace:"):
            trace(payload[6:].decode())
            ep.sendto(b"ok", src)
            return
        ep.sendto(payload, src)

    link.create_endpoint("rpmsg-echo", announce=True, callback=on_message)
    serve(link)
