"""Helpers of the multi-process tests: fixture firmware paths, process and fd accounting."""

from __future__ import annotations

import os
from pathlib import Path

import common_kit

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
#: POSIX shared memory objects that tests create start with this (one prefix per run), so
#: the leak checks count only what this run made, never what other programs do
SHM_PREFIX = f"amplink-test-{os.getpid()}-"


def snapshot() -> dict[str, object]:
    """This process's open fds, mappings of shared memory, this run's /dev/shm objects,
    child processes and threads."""
    return common_kit.snapshot(SHM_PREFIX)


def assert_no_leaks(before: dict[str, object], what: str, settle: float = 5.0) -> None:
    """Compare with an earlier :func:`snapshot` (threads may take ``settle`` s to end)."""
    found = common_kit.leaks(before, SHM_PREFIX, settle=settle)
    assert not found, f"{what}: {'; '.join(found)}"


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaped, or a zombie nobody reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")
