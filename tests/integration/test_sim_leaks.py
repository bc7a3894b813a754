"""Start/stop, kill/stop and failed starts leave no fd, mapping, child or thread.

Only what this process made is counted (see sim_kit.snapshot): other programs on the
machine may create and remove /dev/shm objects as they like.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from sim_kit import ECHO, SHM_PREFIX, assert_no_leaks, fixture_firmware, snapshot, stop_quietly

from amplink import LinkDown, SimProcessor
from amplink.platforms.sim import FirmwareStartError


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
    before = snapshot()
    _start_stop()
    assert_no_leaks(before, "start/stop")
    _start_stop(poll_mode=True)
    assert_no_leaks(before, "start/stop in poll mode")
    _kill_stop()
    assert_no_leaks(before, "kill/stop")
    _failed_start("crash_at_import.py", 10.0)
    assert_no_leaks(before, "firmware crashing at import")
    _failed_start("never_connects.py", 0.5)
    assert_no_leaks(before, "firmware never connecting")


def test_stop_is_idempotent_and_safe_before_start():
    before = snapshot()
    proc = SimProcessor(ECHO)
    assert proc.stop() is None
    proc.start()
    assert proc.stop() == 0
    assert proc.stop() in (None, 0)
    assert_no_leaks(before, "stop twice")


def test_what_other_programs_do_in_dev_shm_is_not_counted():
    """Item 14 of issue 7: the check counts this run's objects only."""
    before = snapshot()
    foreign = f"/dev/shm/another-program-of-the-machine-{os.getpid()}"
    with open(foreign, "w"):
        pass
    try:
        _start_stop()
        assert_no_leaks(before, "start/stop while another program made a shm object")
    finally:
        os.unlink(foreign)
    leaked = "/dev/shm/" + SHM_PREFIX + "forgotten"
    with open(leaked, "w"):
        pass
    try:
        with pytest.raises(AssertionError, match="forgotten"):  # a file: no need to settle
            assert_no_leaks(before, "one of ours left behind", settle=0.0)
    finally:
        os.unlink(leaked)
