"""Helpers of the multi-process tests: fixture firmware paths, process and fd accounting."""

from __future__ import annotations

import os
from pathlib import Path

from amplink import SimProcessor

FIXTURES = Path(__file__).resolve().parent.parent / "firmware_fixtures"
ECHO = "amplink.firmware.examples.echo"
CLIENT_SAMPLE = "amplink.firmware.examples.client_sample"
TWO_SERVICES = "amplink.firmware.examples.two_services"


def fixture_firmware(name: str) -> str:
    path = FIXTURES / name
    assert path.is_file(), path
    return str(path)


def stop_quietly(proc: SimProcessor, timeout: float = 3.0) -> None:
    """Stop ``proc`` whatever state it is in; kill the child if stop cannot."""
    try:
        proc.stop(timeout)
    finally:
        child = proc.process
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(5.0)


# -- leak accounting ------------------------------------------------------------------------
def open_fds() -> set[str]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd of the listing itself
        fds.add(f"{name}->{target}")
    return fds


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def child_pids() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return pids


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaped, or a zombie nobody reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")
