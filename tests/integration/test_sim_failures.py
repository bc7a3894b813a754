"""Firmware that crashes, hangs, dies mid-conversation or writes garbage; a host that dies."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from common_kit import Outcome, wait_for
from sim_kit import ECHO, fixture_firmware, process_gone, stop_quietly

from amplink import LinkConfig, LinkDown, NoBufferAvailable, SendTimeout, SimProcessor
from amplink.platforms.sim import FirmwareStartError

WAKE_LIMIT = 2.0  # a blocked call must fail this soon after the firmware dies


def _wait_until_sleeping(link, before: int, poll_mode: bool) -> None:
    """Wait until a thread is blocked in the link (blocking mode counts its sleeps)."""
    if poll_mode:
        time.sleep(0.2)
    else:
        assert wait_for(lambda: link.statistics().sleeps > before, 2.0)
        time.sleep(0.05)


def _assert_down_for_good(link, ep) -> None:
    for call in (lambda: ep.send(b"x", timeout=5.0), lambda: ep.recv(timeout=5.0),
                 lambda: ep.try_send(b"x"), lambda: link.poll()):
        t0 = time.monotonic()
        with pytest.raises(LinkDown):
            call()
        assert time.monotonic() - t0 < 1.0
    assert link.statistics().state == "down"


def _kill_while_blocked(proc, call, poll_mode: bool) -> Outcome:
    """Run ``call`` in a thread, kill the firmware once it waits: it must end in LinkDown."""
    before = proc.link.statistics().sleeps
    blocked = Outcome(call)
    _wait_until_sleeping(proc.link, before, poll_mode)
    assert blocked.thread.is_alive()
    killed = time.monotonic()
    proc.kill()
    assert blocked.join(10.0), "the blocked call did not return after the firmware was killed"
    assert isinstance(blocked.error, LinkDown), blocked.error
    assert blocked.ended - killed < WAKE_LIMIT
    return blocked


@pytest.mark.parametrize("poll_mode", [False, True], ids=["blocking", "poll"])
def test_kill_wakes_a_thread_blocked_in_recv(sim, poll_mode):
    proc = sim(ECHO, poll_mode=poll_mode)
    link = proc.link
    ep = link.open_channel("rpmsg-echo", timeout=5.0)
    ep.send(b"warm", timeout=5.0)
    assert ep.recv(timeout=5.0) == b"warm"
    blocked = _kill_while_blocked(proc, lambda: ep.recv(timeout=30.0), poll_mode)
    assert "signal 9" in str(blocked.error)
    _assert_down_for_good(link, ep)
    assert proc.stop() == -signal.SIGKILL


@pytest.mark.parametrize("poll_mode", [False, True], ids=["blocking", "poll"])
def test_kill_wakes_a_thread_blocked_in_send(sim, poll_mode):
    n = 4
    proc = sim(fixture_firmware("sink.py"), config=LinkConfig(num_buffers=n),
               poll_mode=poll_mode)
    link = proc.link
    ep = link.open_channel("sink", timeout=5.0)
    for i in range(n):
        ep.send(b"fill-%d" % i, timeout=1.0)
    with pytest.raises(NoBufferAvailable):
        ep.try_send(b"no room")
    t0 = time.monotonic()
    with pytest.raises(SendTimeout):
        ep.send(b"no room", timeout=0.2)
    assert time.monotonic() - t0 < 0.2 + 1.0
    _kill_while_blocked(proc, lambda: ep.send(b"blocked", timeout=30.0), poll_mode)
    _assert_down_for_good(link, ep)


@pytest.mark.parametrize("firmware,cause", [
    (fixture_firmware("crash_at_import.py"),
     "failed to load (exit status 1): RuntimeError: firmware fixture: crash at import"),
    (fixture_firmware("exit_at_import.py"), "failed to load (exit status 3)"),
    ("amplink_no_such_firmware_module", "no such module"),
    ("amplink.firmware.examples",  # a module without main()
     "fatal error before coming up: AttributeError: 'amplink.firmware.examples' has no "
     "function 'main'"),
], ids=["raises", "exit-3", "missing-module", "no-main"])
def test_firmware_that_fails_before_coming_up_is_one_clear_error(firmware, cause):
    """One way for every failure: a typed error whose one line carries the cause."""
    proc = SimProcessor(firmware, boot_timeout=20.0, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        with pytest.raises((FirmwareStartError, FileNotFoundError)) as info:
            proc.start()
        elapsed = time.monotonic() - t0
    finally:
        stop_quietly(proc)
    assert cause in str(info.value)
    assert "\n" not in str(info.value)
    assert elapsed < 5.0, "start() waited for the boot timeout instead of noticing the failure"
    with pytest.raises(RuntimeError):
        proc.link  # noqa: B018 - not started


def test_firmware_whose_main_raises_takes_the_link_down_with_the_cause():
    proc = SimProcessor(fixture_firmware("fails_in_main.py"), stderr=subprocess.DEVNULL)
    try:
        proc.start()
        with pytest.raises(LinkDown) as info:
            proc.link.wait_channel("never", timeout=5.0)
        assert "fatal error: ValueError: firmware fixture: bad configuration" in str(info.value)
    finally:
        assert proc.stop(5.0) in (1, -signal.SIGKILL)  # a crashed processor may be killed


def test_firmware_that_never_connects():
    boot_timeout = 2.0
    proc = SimProcessor(fixture_firmware("never_connects.py"), boot_timeout=boot_timeout)
    t0 = time.monotonic()
    try:
        with pytest.raises(FirmwareStartError) as info:
            proc.start()
        elapsed = time.monotonic() - t0
    finally:
        stop_quietly(proc)
    assert boot_timeout - 0.05 <= elapsed < boot_timeout + 3.0
    assert "did not come up" in str(info.value)
    assert proc.process is not None and proc.process.poll() is not None


def test_firmware_dies_mid_conversation(sim):
    n = 5
    proc = sim(fixture_firmware("die_after.py"), args=[str(n)])
    link = proc.link
    ep = link.open_channel("rpmsg-echo", timeout=5.0)
    sent = [b"msg-%d" % i for i in range(n)]
    for payload in sent:
        ep.send(payload, timeout=5.0)
    # replies already in the ring are delivered although the firmware is gone
    assert [ep.recv(timeout=5.0) for _ in sent] == sent
    assert wait_for(lambda: proc.process.poll() is not None, 5.0)
    t0 = time.monotonic()
    with pytest.raises(LinkDown) as info:
        ep.recv(timeout=10.0)
    assert time.monotonic() - t0 < WAKE_LIMIT
    assert "exit status 7" in str(info.value)
    _assert_down_for_good(link, ep)
    assert proc.stop() == 7


def test_firmware_writing_garbage_into_the_rings(sim):
    proc = sim(fixture_firmware("garbage_writer.py"))
    link = proc.link
    ep = link.open_channel("rpmsg-echo", timeout=5.0)
    ep.send(b"warm", timeout=5.0)
    assert ep.recv(timeout=5.0) == b"warm"
    ep.send(b"corrupt", timeout=5.0)
    assert ep.recv(timeout=5.0) == b"corrupt"
    stats = link.statistics()
    assert stats.state == "up"
    assert stats.backend["malformed_rx"] == 2
    assert sum(stats.backend["protocol_faults"].values()) == 5  # 3 bad ids + 2 bad lengths
    # every RX buffer still cycles: bursts of num_buffers unread replies
    num = proc.config.num_buffers
    for r in range(3):
        sent = [b"after-%d-%d" % (r, i) for i in range(num)]
        for payload in sent:
            ep.send(payload, timeout=5.0)
        assert [ep.recv(timeout=5.0) for _ in sent] == sent


def test_host_death_ends_the_firmware():
    host = subprocess.Popen([sys.executable, fixture_firmware("host_dies.py")],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    fw_pid = None
    try:
        ready, _, _ = select.select([host.stdout], [], [], 20.0)
        assert ready, "the host script printed nothing"
        line = host.stdout.readline()
        fw_pid = int(line)
        assert host.wait(10.0) == 1
        dead_at = time.monotonic()
        assert wait_for(lambda: process_gone(fw_pid), 5.0, 0.02), (
            "the firmware outlived its host by 5 s")
        assert time.monotonic() - dead_at < 5.0
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(5.0)
        host.stdout.close()
        if fw_pid is not None and not process_gone(fw_pid):
            os.kill(fw_pid, signal.SIGKILL)
