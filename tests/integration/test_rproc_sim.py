"""SimRemoteProc: Python firmware under the remoteproc lifecycle, across real processes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from common_kit import Events, Outcome, child_pids, open_fds, wait_for
from elftools.elf.elffile import ELFFile
from rproc_sim_kit import TIMEOUT, echo
from sim_kit import ECHO, assert_no_leaks, fixture_firmware, process_gone, snapshot

from amplink import (
    Endpoint,
    FirmwareError,
    LinkConfig,
    LinkDown,
    RpmsgDriver,
    SimRemoteProc,
)
from amplink.firmware.device import FATAL_EXIT_STATUS
from amplink.platforms.sim import FirmwareStartError
from amplink.remoteproc import CoredumpMode, RprocState
from amplink.remoteproc.api import CrashReason
from amplink.remoteproc.core import RestartPolicy
from amplink.remoteproc.rsc_table import Carveout, VdevEntry

TRACED = fixture_firmware("rproc_traced.py")


def test_killed_firmware_is_dumped_recovered_and_leaks_nothing(tmp_path: Path) -> None:
    warm = SimRemoteProc(ECHO, name="warm")  # imports, the cached table, logging settle
    with warm.acquire():
        echo(warm)
    before = snapshot()
    rproc = SimRemoteProc(ECHO, name="victim", coredump=CoredumpMode.ENABLED,
                          coredump_dir=tmp_path)
    events = Events(rproc)
    rproc.boot()
    try:
        old_link = rproc.link
        echo(rproc, [b"before", b"the crash"])
        old_ep = old_link.open_channel("rpmsg-echo", timeout=TIMEOUT)
        old_pid = rproc.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        assert events.wait("recovered"), events.items
        assert [e.detail for e in events.of("state")] == [
            "offline -> running", "running -> crashed", "crashed -> running"]
        (crash,) = events.of("crash")
        assert crash.detail.startswith(CrashReason.PROCESS_EXIT) and "signal 9" in crash.detail
        assert rproc.crash_count == 1 and rproc.state is RprocState.RUNNING
        assert not old_link.is_up and old_ep.closed  # the old vdev was removed
        for call in (lambda: old_ep.send(b"into the void", timeout=TIMEOUT),
                     lambda: old_ep.recv(timeout=TIMEOUT), lambda: old_ep.try_send(b"x")):
            with pytest.raises(LinkDown, match="crashed"):  # the peer went away: broken
                call()
        assert rproc.pid not in (None, old_pid) and process_gone(old_pid)
        echo(rproc, [b"after", b"recovery"])  # the service was announced again
        assert events.wait("coredump")
        assert len(list(tmp_path.iterdir())) == 1  # one file per crash, complete
        # Another crash: the running processor holds as many fds and children as before.
        running = (len(open_fds()), len(child_pids()))
        rproc.process.kill()  # type: ignore[union-attr]
        assert events.wait("recovered", 2) and events.wait("coredump", 2)
        echo(rproc)
        assert (len(open_fds()), len(child_pids())) == running
    finally:
        rproc.shutdown()
    assert rproc.state is RprocState.OFFLINE
    dumps = sorted(tmp_path.iterdir())
    assert rproc.coredumps == sorted(rproc.coredumps) == dumps and len(dumps) == 2
    elf = ELFFile(io.BytesIO(dumps[0].read_bytes()))
    assert elf.header["e_type"] == "ET_CORE"
    loads = list(elf.iter_segments("PT_LOAD"))
    assert len(loads) == 2 + 1 + 1  # two vrings, the buffers, the table
    assert all(0x8000_0000 <= s["p_paddr"] < 0x8000_0000 + (4 << 20) for s in loads)
    assert_no_leaks(before, "boot, kill, recovery, shutdown")


def test_two_users_boot_once_and_stop_once() -> None:
    rproc = SimRemoteProc(ECHO)
    rproc.boot()
    pid = rproc.pid
    rproc.boot()
    assert rproc.pid == pid and rproc.power == 2
    rproc.shutdown()
    assert rproc.state is RprocState.RUNNING and rproc.pid == pid
    echo(rproc)
    rproc.shutdown()
    assert rproc.state is RprocState.OFFLINE and rproc.pid is None
    assert rproc.ops.last_exit_status == 0  # it left by itself when the host hung up


@pytest.mark.timeout(60)
def test_a_kill_under_recovery_fails_blocked_and_later_calls_with_link_down() -> None:
    """Every kill, not most: the peer going away is LinkDown (broken), never EndpointClosed,
    for a send blocked on a full ring, for a driver's endpoint, and for later calls; the
    error says how many messages the firmware never consumed."""
    n = 4
    rproc = SimRemoteProc(fixture_firmware("sink.py"), config=LinkConfig(num_buffers=n))
    bound: list[Endpoint] = []
    rproc.register_driver(RpmsgDriver(["sink"], probe=lambda ch: bound.append(ch.endpoint)))
    events = Events(rproc)
    with rproc.acquire():
        for kill in range(1, 6):
            ep = rproc.link.open_channel("sink", timeout=TIMEOUT)
            assert wait_for(lambda k=kill: len(bound) == k, TIMEOUT)
            driver_ep = bound[-1]
            for i in range(n):
                ep.try_send(b"fill %d" % i)
            blocked = Outcome(lambda ep=ep: ep.send(b"blocked", timeout=30))
            time.sleep(0.05)
            assert rproc.process is not None
            rproc.process.kill()
            assert blocked.join(10), "the blocked send did not end after the kill"
            assert isinstance(blocked.error, LinkDown), repr(blocked.error)
            assert f"{n} messages sent before were never consumed" in str(blocked.error)
            for call in (lambda ep=ep: ep.send(b"x", timeout=1), lambda ep=ep: ep.recv(1),
                         lambda ep=driver_ep: ep.send(b"x", timeout=1)):
                with pytest.raises(LinkDown):
                    call()
            assert events.wait("recovered", kill)


@pytest.mark.timeout(60)
def test_a_crash_loop_backs_off_and_stops_at_the_restart_limit() -> None:
    policy = RestartPolicy(burst=3, interval=60.0, delay=0.1, max_delay=0.4)
    rproc = SimRemoteProc(fixture_firmware("fails_in_main.py"), restart=policy,
                          stderr=subprocess.DEVNULL)
    events = Events(rproc, timeout=20)
    crash_times: list[float] = []
    rproc.subscribe(lambda e: e.kind == "crash" and crash_times.append(time.monotonic()))
    with rproc.acquire():
        assert events.wait("error"), events.kinds()
        (error,) = events.of("error")
        assert "restart limit reached: 4 crashes within 60 s (limit 3)" in error.detail
        # the last recovery may report after the crash that follows it at once
        assert events.wait("recovered", 3) and len(events.of("recovered")) == 3
        assert len(events.of("crash")) == 4
        assert not events.wait("crash", 5, timeout=1.0)  # it stays down
        assert rproc.state is RprocState.CRASHED
        stats = rproc.statistics()
        assert stats.crash_count == 4 and stats.recovery_stopped
        assert "ValueError: firmware fixture: bad configuration" in stats.last_crash
        gaps = [b - a for a, b in zip(crash_times, crash_times[1:], strict=False)]
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4, gaps  # backing off
        rproc.recover()  # by hand: the burst starts afresh
        assert events.wait("crash", 5)
        assert rproc.statistics().recovery_stopped == ""


def test_recovery_disabled_stays_crashed_until_recover() -> None:
    rproc = SimRemoteProc(ECHO, recovery=False)
    events = Events(rproc)
    with rproc.acquire():
        proc = rproc.process
        assert proc is not None
        proc.kill()
        assert events.wait("crash")
        assert not events.wait("recovered", timeout=0.3)
        assert rproc.state is RprocState.CRASHED
        with pytest.raises(LinkDown):
            rproc.link.poll()
        rproc.recover()
        assert rproc.state is RprocState.RUNNING
        echo(rproc)


def test_watchdog_fires_when_the_firmware_stops_feeding_it() -> None:
    rproc = SimRemoteProc(TRACED, watchdog=0.6)
    events = Events(rproc)
    with rproc.acquire():
        echo(rproc)
        assert not events.wait("crash", timeout=0.8)  # fed while it serves
        with rproc.link.open_channel("rpmsg-echo", timeout=TIMEOUT) as ep:
            ep.send(b"hang", timeout=TIMEOUT)
            assert events.wait("recovered")
        (crash,) = events.of("crash")
        assert crash.detail.startswith(CrashReason.WATCHDOG)
        echo(rproc)


def test_fatal_error_reported_by_the_firmware(tmp_path: Path) -> None:
    rproc = SimRemoteProc(TRACED, coredump=CoredumpMode.INLINE, coredump_dir=tmp_path)
    events = Events(rproc)
    with rproc.acquire():
        table = rproc.resource_table
        assert table is not None
        (_, data), = table.items(Carveout)
        with rproc.link.open_channel("rpmsg-echo", timeout=TIMEOUT) as ep:
            ep.send(b"fatal", timeout=TIMEOUT)
            assert events.wait("recovered")
        (crash,) = events.of("crash")
        assert crash.detail == "fatal error: assertion failed: payload != b'fatal'"
        assert rproc.ops.last_exit_status in (FATAL_EXIT_STATUS, -signal.SIGKILL)  # halted
        echo(rproc)
    (dump,) = rproc.coredumps
    elf = ELFFile(io.BytesIO(dump.read_bytes()))
    (seg,) = [s for s in elf.iter_segments("PT_LOAD") if s["p_paddr"] == data.da]
    assert seg.data()[:8] == b"CARVEOUT" and seg["p_filesz"] == data.len


def test_python_table_with_a_trace_buffer() -> None:
    rproc = SimRemoteProc(TRACED)
    follower = rproc.trace_follower()
    with rproc.acquire():
        assert wait_for(lambda: "traced: up" in rproc.trace(), TIMEOUT)
        assert follower.poll() == "traced: up\n"
        with rproc.link.open_channel("rpmsg-echo", timeout=TIMEOUT) as ep:
            ep.send(b"trace:hello from the firmware\n", timeout=TIMEOUT)
            assert ep.recv(timeout=TIMEOUT) == b"ok"
        assert rproc.trace() == "traced: up\nhello from the firmware\n"
        assert follower.poll() == "hello from the firmware\n"
        table = rproc.resource_table
        assert table is not None
        vrings = [r for _, v in table.items(VdevEntry) for r in v.vrings]
        assert [r.num for r in vrings] == [32, 32] and [r.notifyid for r in vrings] == [0, 1]
    assert rproc.trace() == ""


def test_bad_firmware_is_refused_and_leaks_nothing() -> None:
    rproc = SimRemoteProc(TRACED, memory_size=0x8000)  # too small for its carveout
    with pytest.raises(FirmwareError, match="no room"):
        rproc.boot()  # also warms the table cache
    before = snapshot()
    for firmware, options, message in [
        (fixture_firmware("rproc_bad_table.py"), {}, "field ver = 2"),
        (TRACED, {"memory_size": 0x8000}, "no room"),
    ]:
        rproc = SimRemoteProc(firmware, stderr=subprocess.DEVNULL, **options)
        with pytest.raises(FirmwareError, match=message):
            rproc.boot()
        assert rproc.state is RprocState.OFFLINE and rproc.power == 0 and rproc.pid is None
    for missing in ("amplink_no_such_firmware_module", "/no/such/firmware.py"):
        with pytest.raises(FileNotFoundError, match="firmware"):
            SimRemoteProc(missing).boot()
    assert_no_leaks(before, "refused firmware")


def test_firmware_that_dies_while_booting_fails_the_boot() -> None:
    rproc = SimRemoteProc(fixture_firmware("rproc_exit_when_started.py"),
                          stderr=subprocess.DEVNULL)
    with pytest.raises(FirmwareStartError, match="exit status 3"):
        rproc.boot()
    assert rproc.state is RprocState.OFFLINE and rproc.power == 0 and rproc.pid is None
    importing_fails = SimRemoteProc(fixture_firmware("exit_at_import.py"),
                                    stderr=subprocess.DEVNULL)
    with pytest.raises(FirmwareStartError, match="failed to load \\(exit status 3\\)"):
        importing_fails.boot()
