"""Helpers of the SimRemoteProc tests: echo round trips, leak snapshots."""

from __future__ import annotations

import gc
import threading

from common_kit import wait_for
from sim_kit import child_pids, open_fds, shm_entries

from amplink.remoteproc.core import RemoteProc

TIMEOUT = 10.0


def echo(rproc: RemoteProc, payloads: list[bytes] | None = None,
         service: str = "rpmsg-echo") -> None:
    """Open ``service`` on the processor's link and check that it echoes ``payloads``."""
    with rproc.link.open_channel(service, timeout=TIMEOUT) as ep:
        for payload in payloads or [b"ping"]:
            ep.send(payload, timeout=TIMEOUT)
            assert ep.recv(timeout=TIMEOUT) == payload


def snapshot() -> dict[str, object]:
    """Open fds, /dev/shm entries, child processes and threads of this process."""
    gc.collect()
    return {"fds": open_fds(), "shm": shm_entries(), "children": child_pids(),
            "threads": threading.active_count()}


def assert_no_leaks(before: dict[str, object], what: str) -> None:
    """Compare with a snapshot (threads may take a moment to end)."""
    wait_for(lambda: threading.active_count() <= before["threads"], 5.0)  # type: ignore[operator]
    after = snapshot()
    for key, was in before.items():
        now = after[key]
        if isinstance(was, set):
            assert now == was, f"{what}: {key} leaked {sorted(now - was)}, lost {sorted(was - now)}"
        else:
            assert now == was, f"{what}: {key} {was} -> {now}"
