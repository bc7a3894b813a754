"""Start/stop, kill/stop and failed starts leave no fd, /dev/shm entry, child or thread."""

from __future__ import annotations

import gc
import subprocess
import threading

import pytest
from sim_kit import ECHO, child_pids, fixture_firmware, open_fds, shm_entries, stop_quietly

from amplink import LinkDown, SimProcessor
from amplink.platforms.sim import FirmwareStartError


def _snapshot() -> dict[str, object]:
    gc.collect()
    return {"fds": open_fds(), "shm": shm_entries(), "children": child_pids(),
            "threads": threading.active_count()}


def _assert_same(before: dict[str, object], after: dict[str, object], what: str) -> None:
    for key in before:
        b, a = before[key], after[key]
        if isinstance(b, set):
            assert a == b, f"{what}: {key} leaked {sorted(a - b)}, lost {sorted(b - a)}"
        else:
            assert a == b, f"{what}: {key} {b} -> {a}"


def _round_trip(proc: SimProcessor) -> None:
    ep = proc.link.open_channel("rpmsg-echo", timeout=5.0)
    ep.send(b"ping", timeout=5.0)
    assert ep.recv(timeout=5.0) == b"ping"


def _start_stop(poll_mode: bool = False) -> None:
    proc = SimProcessor(ECHO, poll_mode=poll_mode, boot_timeout=10.0)
    try:
        proc.start()
        _round_trip(proc)
    finally:
        code = proc.stop()
    assert code == 0


def _kill_stop() -> None:
    proc = SimProcessor(ECHO, boot_timeout=10.0)
    try:
        proc.start()
        ep = proc.link.open_channel("rpmsg-echo", timeout=5.0)
        proc.kill()
        with pytest.raises(LinkDown):
            ep.recv(timeout=5.0)
    finally:
        stop_quietly(proc)


def _failed_start(name: str, boot_timeout: float) -> None:
    proc = SimProcessor(fixture_firmware(name), boot_timeout=boot_timeout,
                        stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(FirmwareStartError):
            proc.start()
    finally:
        stop_quietly(proc)


def test_no_leaks():
    _start_stop()  # warm-up: imports, logging and the like settle first
    before = _snapshot()
    _start_stop()
    _assert_same(before, _snapshot(), "start/stop")
    _start_stop(poll_mode=True)
    _assert_same(before, _snapshot(), "start/stop in poll mode")
    _kill_stop()
    _assert_same(before, _snapshot(), "kill/stop")
    _failed_start("crash_at_import.py", 10.0)
    _assert_same(before, _snapshot(), "firmware crashing at import")
    _failed_start("never_connects.py", 0.5)
    _assert_same(before, _snapshot(), "firmware never connecting")


def test_stop_is_idempotent_and_safe_before_start():
    before = _snapshot()
    proc = SimProcessor(ECHO)
    assert proc.stop() is None
    proc.start()
    assert proc.stop() == 0
    assert proc.stop() in (None, 0)
    _assert_same(before, _snapshot(), "stop twice")
