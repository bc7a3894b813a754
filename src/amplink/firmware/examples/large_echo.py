"""Large messages through a shared block pool (service ``rpmsg-large``).

The host opens the channel with :class:`~amplink.handover.large.LargeMessages` (which
allocates and attaches the pools); this firmware wraps its endpoint the same way, with
the attached buffers. Mode (first argument):

* ``echo`` (the default): every message comes back as it was, whatever its size;
* ``sink``: messages are received (copied out into one reused buffer) and counted; an
  empty message asks for the ``<QQ`` count of messages and bytes since the last one.
"""

from __future__ import annotations

import struct

from amplink.firmware import buffers
from amplink.handover.large import LargeMessages
from amplink.link.runtime import Link

SERVICE = "rpmsg-large"
SINK_BUFFER = 256 << 20


def main(link: Link, args: list[str]) -> None:
    mode = args[0] if args else "echo"
    if mode not in ("echo", "sink"):
        raise ValueError(f"unknown mode {mode!r}: echo or sink")
    channel = LargeMessages(link.create_endpoint(SERVICE, announce=True), buffers=buffers())
    if mode == "echo":
        while True:  # until the host goes away (LinkDown)
            channel.send(channel.recv())
    into = bytearray(SINK_BUFFER)
    messages = total = 0
    while True:
        n = channel.recv_into(into)
        if n == 0:
            channel.send(struct.pack("<QQ", messages, total))
            messages = total = 0
        else:
            messages += 1
            total += n
