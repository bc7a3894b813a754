"""Keem Bay VPU firmware that misbehaves on request: echo on channel 0 (HS); on b"garbage"
it writes into the CPU's FIFO an entry outside its pool, a header for channel 2000, a
header whose payload lies outside the shared memory, and an entry with the CPU's own
writer id, then answers b"after" (a good message, which must still arrive)."""

from __future__ import annotations

from amplink.firmware.keembay import resource_table
from amplink.link import Endpoint, Link
from amplink.transports.keembay.wire import (
    GP_QUEUE,
    HEADER,
    IPC_BUF_ALLOCATED,
    KMB_IPC_ALIGNMENT,
    NODE_CPU,
    NODE_VPU,
    fifo_entry,
)

RESOURCE_TABLE = resource_table()


def write_garbage(link: Link) -> None:
    backend = link.backend
    layout = backend.layout  # type: ignore[attr-defined]
    mm = backend.region.mm  # type: ignore[attr-defined]
    pool = layout.nodes[NODE_VPU].pool
    with link._lock:  # nothing of ours touches the FIFO meanwhile
        last, before = layout.headers - 1, layout.headers - 2  # headers it is not using
        HEADER.pack_into(mm, pool + last * KMB_IPC_ALIGNMENT, layout.window_da[0], 4, 2000,
                         NODE_VPU, NODE_CPU, IPC_BUF_ALLOCATED)
        HEADER.pack_into(mm, pool + before * KMB_IPC_ALIGNMENT, 0x1000, 4, 0, NODE_VPU,
                         NODE_CPU, IPC_BUF_ALLOCATED)
        entries = [fifo_entry(layout.to_da(layout.nodes[NODE_CPU].pool), NODE_VPU),
                   fifo_entry(layout.to_da(pool + last * KMB_IPC_ALIGNMENT), NODE_VPU),
                   fifo_entry(layout.to_da(pool + before * KMB_IPC_ALIGNMENT), NODE_VPU),
                   fifo_entry(layout.to_da(pool), NODE_CPU)]
        for entry in entries:
            backend.tx_fifo.put(entry, GP_QUEUE)  # type: ignore[attr-defined]


def on_control(ep: Endpoint, payload: bytes, src: int) -> None:
    if payload == b"garbage":
        write_garbage(ep.link)
        ep.send(b"after")
    else:
        ep.send(payload)


def main(link: Link) -> None:
    link.create_endpoint(addr=0, callback=on_control)
    link.run()
