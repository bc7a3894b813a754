"""Keem Bay VPU firmware whose channels come and go on request: channel 0 (high-speed)
takes ``open N`` (open channel N, echoing every message) and ``close N`` and answers
``ok`` (or the error's text); every channel it opens echoes."""

from __future__ import annotations

from amplink.errors import AmplinkError
from amplink.firmware.keembay import resource_table
from amplink.link import Endpoint, Link

RESOURCE_TABLE = resource_table()


def echo(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.send(payload)


def main(link: Link) -> None:
    opened: dict[int, Endpoint] = {}

    def control(ep: Endpoint, payload: bytes, src: int) -> None:
        verb, _, number = payload.decode(errors="replace").partition(" ")
        try:
            channel = int(number)
            if verb == "open":
                opened[channel] = link.create_endpoint(addr=channel, callback=echo)
            elif verb == "close":
                opened.pop(channel).close()
            else:
                raise ValueError(f"unknown request {verb!r}")
        except (AmplinkError, ValueError, KeyError) as exc:
            ep.send(f"error: {exc}".encode()[:link.mtu])
            return
        ep.send(b"ok")

    link.create_endpoint(addr=0, callback=control)
    link.run()
