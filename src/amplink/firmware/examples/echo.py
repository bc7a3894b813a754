"""Echo firmware: announces "rpmsg-echo" and sends every message back to its sender."""

from __future__ import annotations

from amplink.link import Link
from amplink.link.endpoint import Endpoint

SERVICE = "rpmsg-echo"


def echo(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.sendto(payload, src)


def main(link: Link) -> None:
    link.create_endpoint(SERVICE, announce=True, callback=echo)
    link.run()
