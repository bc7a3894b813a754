"""Helpers of the SimRemoteProc tests: echo round trips (leak snapshots are in sim_kit)."""

from __future__ import annotations

from amplink.remoteproc.core import RemoteProc

TIMEOUT = 10.0


def echo(rproc: RemoteProc, payloads: list[bytes] | None = None,
         service: str = "rpmsg-echo") -> None:
    """Open ``service`` on the processor's link and check that it echoes ``payloads``."""
    with rproc.link.open_channel(service, timeout=TIMEOUT) as ep:
        for payload in payloads or [b"ping"]:
            ep.send(payload, timeout=TIMEOUT)
            assert ep.recv(timeout=TIMEOUT) == payload
