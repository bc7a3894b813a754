"""Firmware offering two services: "rpmsg-echo" (callback style) and "rpmsg-upper".

"rpmsg-upper" answers with the payload in upper case, from a blocking receive loop, to
show both firmware styles side by side.
"""

from __future__ import annotations

import threading

from amplink.errors import EndpointClosed, LinkDown
from amplink.link import Link
from amplink.link.endpoint import Endpoint


def echo(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.sendto(payload, src)


def main(link: Link) -> None:
    link.create_endpoint("rpmsg-echo", announce=True, callback=echo)
    upper = link.create_endpoint("rpmsg-upper", announce=True)

    def serve_upper() -> None:
        try:
            while True:
                payload, src = upper.recvfrom()
                upper.sendto(payload.upper(), src)
        except (EndpointClosed, LinkDown):
            pass

    worker = threading.Thread(target=serve_upper, name="rpmsg-upper", daemon=True)
    worker.start()
    try:
        link.run()
    finally:
        worker.join(1.0)
