"""Frames processed in place: the host hands over image buffers by reference, this
firmware works on them where they are (no copy) and gives them back.

Service ``rpmsg-frames`` (a :class:`~amplink.handover.BufferChannel`). The mode is the
firmware's first argument:

* ``invert`` (the default): every byte of the range becomes ``255 - byte`` (the buffer
  must be handed over with write access);
* ``touch``: read the first byte and give the buffer back (what the benchmark measures:
  the cost of a hand-over, whatever the buffer's size).

Run it: ``amplink frames`` (the demo), or ``SimRemoteProc("amplink.firmware.examples.frames")``.
"""

from __future__ import annotations

from amplink.firmware import buffers
from amplink.handover import BufferChannel
from amplink.link.runtime import Link

SERVICE = "rpmsg-frames"
_INVERT = bytes(255 - i for i in range(256))


def main(link: Link, args: list[str]) -> None:
    mode = args[0] if args else "invert"
    if mode not in ("invert", "touch"):
        raise ValueError(f"unknown mode {mode!r}: invert or touch")
    channel = BufferChannel(link.create_endpoint(SERVICE, announce=True), buffers=buffers())
    while True:  # until the host goes away (LinkDown)
        for frame in channel.recv_many():  # every frame that arrived
            view = frame.view
            if mode == "invert":
                view[:] = view.tobytes().translate(_INVERT)
            elif len(view):
                view[0]  # noqa: B018 - the one byte touched
            frame.done(flush=False)
        channel.flush()  # their DONEs, several to a message
