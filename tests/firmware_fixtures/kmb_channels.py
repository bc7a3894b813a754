"""Keem Bay VPU firmware whose channels come and go on request: channel 0 (high-speed)
takes ``open N`` (open channel N, echoing every message) and ``close N`` and answers
``ok`` (or the error's text); every channel it opens echoes. ``storm`` misbehaves: it
writes every bit of its open-channel bitmap (1024 channels "open"), rings, waits 0.6 s
(longer than the service's discovery period), clears all but its real channels, rings,
waits 0.6 s and answers ``ok``."""

from __future__ import annotations

import time

from amplink.errors import AmplinkError
from amplink.firmware.keembay import resource_table
from amplink.link import Endpoint, Link

RESOURCE_TABLE = resource_table()


def echo(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.send(payload)


def storm(link: Link) -> None:
    """Every channel "open" for a moment, as a hostile VPU may write its bitmap."""
    backend = link.backend
    bitmap = backend.layout.bitmap(backend.node)  # type: ignore[attr-defined]
    mm = backend.region.mm  # type: ignore[attr-defined]
    real = bytes(mm[bitmap:bitmap + 128])
    mm[bitmap:bitmap + 128] = b"\xff" * 128
    backend.ring()  # type: ignore[attr-defined]
    time.sleep(0.6)
    mm[bitmap:bitmap + 128] = real
    backend.ring()  # type: ignore[attr-defined]
    time.sleep(0.6)


def main(link: Link) -> None:
    opened: dict[int, Endpoint] = {}

    def control(ep: Endpoint, payload: bytes, src: int) -> None:
        if payload == b"storm":
            storm(link)
            ep.send(b"ok")
            return
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
