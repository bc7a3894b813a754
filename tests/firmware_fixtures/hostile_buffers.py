"""A firmware that misbehaves with buffers on command (tests/hostile, tests/integration).

Service ``hostile-buffers``: a raw endpoint; buffers handed over to it are never given
back unless the host says so. Service ``hostile-ctl`` takes commands and answers ``ok``
or the error:

* ``raw:BYTES``  send BYTES from hostile-buffers to the host's channel (crafted records)
* ``dma:DA:LEN:ACCESS``  touch LEN bytes at device address DA (hex) through dma()
* ``write:DA:BYTE``  write one byte at DA through dma()
* ``die``  os._exit(9) at once (holding whatever was handed over)
"""

from __future__ import annotations

import os

from amplink.firmware import dma
from amplink.link.runtime import Link


def main(link: Link) -> None:
    buffers_ep = link.create_endpoint("hostile-buffers", announce=True)
    ctl = link.create_endpoint("hostile-ctl", announce=True)
    host_channel = None
    while True:
        got = buffers_ep.try_recvfrom()
        if got is not None:
            host_channel = got[1]
        try:
            command, src = ctl.recvfrom(timeout=0.01)
        except TimeoutError:
            continue
        while (got := buffers_ep.try_recvfrom()) is not None:
            host_channel = got[1]
        verb, _, rest = command.partition(b":")
        try:
            if verb == b"raw":
                assert host_channel is not None, "no buffer channel yet"
                buffers_ep.sendto(rest, host_channel)
            elif verb == b"dma":
                da, length, access = (int(x, 16) for x in rest.split(b":"))
                view = dma(da, length, access)
                view.release()
            elif verb == b"write":
                da, value = (int(x, 16) for x in rest.split(b":"))
                dma(da, 1, 2)[0] = value
            elif verb == b"die":
                os._exit(9)
            ctl.sendto(b"ok", src)
        except Exception as exc:  # noqa: BLE001 - the host reads the error
            ctl.sendto(f"{type(exc).__name__}: {exc}".encode()[:400], src)
