"""The remote half of Linux's rpmsg-client-sample.

Linux's sample driver binds to "rpmsg-client-sample", sends "hello world!" on probe and
answers each reply until it has 100. This firmware announces the service and answers
every message with the same payload, so the host driver's count goes up.
"""

from __future__ import annotations

from amplink.link import Link
from amplink.link.endpoint import Endpoint

SERVICE = "rpmsg-client-sample"


def answer(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.sendto(payload, src)


def main(link: Link) -> None:
    link.create_endpoint(SERVICE, announce=True, callback=answer)
    link.run()
