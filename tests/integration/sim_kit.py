"""Helpers of the multi-process tests: fixture firmware paths, process and fd accounting."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

from common_kit import wait_for

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


#: POSIX shared memory objects that tests create start with this (one prefix per run), so
#: the leak checks count only what this run made, never what other programs do
SHM_PREFIX = f"amplink-test-{os.getpid()}-"


def shm_entries() -> set[str]:
    """This run's objects in /dev/shm."""
    return {name for name in os.listdir("/dev/shm") if name.startswith(SHM_PREFIX)}


def shared_mappings() -> set[str]:
    """This process's mappings of amplink's memfds and of this run's /dev/shm objects."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""  # anonymous: no path
            if path.startswith("/memfd:amplink") or path.startswith("/dev/shm/" + SHM_PREFIX):
                found.add(line.split()[0] + " " + path)
    return found


def snapshot() -> dict[str, object]:
    """This process's open fds, mappings of shared memory, this run's /dev/shm objects,
    child processes and threads."""
    gc.collect()
    return {"fds": open_fds(), "mappings": shared_mappings(), "shm": shm_entries(),
            "children": child_pids(), "threads": threading.active_count()}


def assert_no_leaks(before: dict[str, object], what: str) -> None:
    """Compare with an earlier :func:`snapshot` (threads may take a moment to end)."""
    wait_for(lambda: threading.active_count() <= before["threads"], 5.0)  # type: ignore[operator]
    after = snapshot()
    for key, was in before.items():
        now = after[key]
        if isinstance(was, set):
            assert now == was, f"{what}: {key} leaked {sorted(now - was)}, lost {sorted(was - now)}"
        else:
            assert now == was, f"{what}: {key} {was} -> {now}"


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
