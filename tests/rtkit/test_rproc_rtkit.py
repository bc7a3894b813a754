"""RtkitRemoteProc across processes: boot/shutdown cycles, application endpoints, syslog
as trace, crashes (crashlog, killed process, injected) with recovery, power states."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from common_kit import Events, wait_for
from elftools.elf.elffile import ELFFile
from rtkit_kit import GENEROUS_ACK_TIMEOUT

from amplink.errors import LinkDown
from amplink.platforms.rtkit import RtkitRemoteProc
from amplink.platforms.sim import FirmwareStartError
from amplink.remoteproc.core import RestartPolicy
from amplink.remoteproc.states import InvalidTransition, RprocState
from amplink.rtkit.errors import RtkitCrashed, RtkitNotRunning

ECHO = "amplink.firmware.examples.rtkit_echo"
HERE = Path(__file__).resolve().parent


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def make(tmp_path):
    made: list[RtkitRemoteProc] = []

    def make(firmware: str = ECHO, **kwargs) -> RtkitRemoteProc:
        kwargs.setdefault("ack_timeout", GENEROUS_ACK_TIMEOUT)
        kwargs.setdefault("restart", RestartPolicy(delay=0.0))
        rproc = RtkitRemoteProc(firmware, name=f"rt{len(made)}", coredump_dir=tmp_path,
                                **kwargs)
        made.append(rproc)
        return rproc

    yield make
    for rproc in made:
        while rproc.power:
            rproc.shutdown()
        assert rproc.ops.process is None and rproc.ops.host is None


def test_boot_and_shutdown_cycles_leave_nothing_behind(make):
    rproc = make()
    before = fds()
    for _ in range(3):
        rproc.boot()
        assert rproc.state is RprocState.RUNNING
        process = rproc.process
        assert process is not None
        stats = rproc.rtkit_statistics()
        assert stats is not None and stats.running and stats.version == 12
        assert stats.endpoints == (0, 1, 2, 4, 0x20)
        rproc.shutdown()
        assert rproc.state is RprocState.OFFLINE and rproc.rtkit_statistics() is None
        assert process.returncode == 0  # it saw the host hang up and ended by itself
    assert fds() == before
    assert rproc.iommu.statistics().attachments == 0


def test_echo_endpoint_and_syslog(make):
    rproc = make()
    with rproc.acquire():
        ep = rproc.open_endpoint(0x20)
        for value in (1, 0xFFFF_FFFF_FFFF_FFFF, 0):
            ep.send(value)
            assert ep.recv(timeout=5) == value
        assert wait_for(lambda: "echo ready on endpoint 0x20" in rproc.trace(), 5)
        assert rproc.ping() < 10
        kinds = {b.split(":")[0]: b for b in rproc.rtkit_statistics().buffers}
        assert "(host)" in kinds["crashlog"] and "(mmio)" in kinds["syslog"]
        assert "(iova)" in kinds["ioreport"]


def test_a_crash_is_parsed_and_recovered(make):
    rproc = make()
    events = Events(rproc)
    with rproc.acquire():
        ep = rproc.open_endpoint(0x20)
        ep.send(0xDEAD)  # the firmware's handler raises: it crashes with a crashlog
        assert events.wait("recovered")
        with pytest.raises(RtkitCrashed):
            ep.send(1)  # the old run's endpoint
        crash = events.of("crash")[0].detail
        assert crash == ("fatal error: RTKit crashlog: endpoint 0x20: RuntimeError: asked to "
                         "crash by message 0xdead")
        report = rproc.crashlog()
        assert "Message (id=0x0): endpoint 0x20: RuntimeError" in report
        assert "000000000000dead 0000000000000020" in report  # in the mailbox history
        ep = rproc.open_endpoint(0x20)
        ep.send(5)
        assert ep.recv(timeout=5) == 5
        assert rproc.statistics().crash_count == 1 and rproc.statistics().recoveries == 1


def test_an_injected_crash_goes_through_the_firmware(make):
    rproc = make()
    events = Events(rproc)
    with rproc.acquire():
        rproc.crash()
        assert events.wait("recovered")
        assert "crash requested by the host" in rproc.crashlog()


def test_a_killed_process_is_a_crash_too(make):
    rproc = make()
    events = Events(rproc)
    with rproc.acquire():
        rproc.kill()
        assert events.wait("recovered")
        assert events.of("crash")[0].detail.startswith("process exit")
        assert rproc.crashlog() == ""  # no crashlog: the process just died
        assert rproc.ping() < 10


def test_without_recovery_it_stays_crashed_and_sends_fail_until_recovered(make):
    rproc = make(recovery=False)
    events = Events(rproc)
    with rproc.acquire():
        ep = rproc.open_endpoint(0x20)
        ep.send(0xDEAD)
        assert events.wait("crash")
        assert wait_for(lambda: rproc.state is RprocState.CRASHED, 5)
        for call in (lambda: ep.send(1), lambda: rproc.send(0x20, 1), rproc.ping):
            with pytest.raises(RtkitCrashed):
                call()
        rproc.recover()
        assert rproc.state is RprocState.RUNNING
        ep = rproc.open_endpoint(0x20)
        ep.send(2)
        assert ep.recv(timeout=5) == 2


def test_quiesce_idle_and_wake(make):
    rproc = make()
    with rproc.acquire():
        rproc.quiesce()
        assert rproc.state is RprocState.SUSPENDED
        with pytest.raises(RtkitNotRunning):
            rproc.send(0x20, 1)
        with pytest.raises(InvalidTransition):
            rproc.idle()
        rproc.wake()
        assert rproc.state is RprocState.RUNNING
        ep = rproc.open_endpoint(0x20)
        ep.send(3)
        assert ep.recv(timeout=5) == 3
        rproc.idle()
        assert rproc.rtkit_statistics().iop_state == "IDLE"
        rproc.wake()
        ep.send(4)
        assert ep.recv(timeout=5) == 4
        rproc.quiesce()
    assert rproc.state is RprocState.OFFLINE  # shut down while suspended


def test_the_syslog_survives_a_recovery(make):
    rproc = make()
    events = Events(rproc)
    with rproc.acquire():
        assert wait_for(lambda: rproc.trace().count("echo ready") == 1, 5)
        rproc.kill()
        assert events.wait("recovered")
        assert wait_for(lambda: rproc.trace().count("echo ready") == 2, 5)


def test_a_coredump_holds_the_coprocessor_memory(make, tmp_path):
    rproc = make(coredump="enabled")
    events = Events(rproc)
    with rproc.acquire():
        assert wait_for(lambda: "echo ready" in rproc.trace(), 5)
        rproc.crash()
        assert events.wait("coredump") and events.wait("recovered")
    (path,) = rproc.coredumps
    with open(path, "rb") as f:
        core = ELFFile(f)
        (segment,) = [s for s in core.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert segment["p_paddr"] == 0x2_0000_0000 and segment["p_filesz"] == 64 << 10
        assert b"echo ready on endpoint 0x20" in segment.data()  # its syslog lives there


def test_firmware_that_does_not_exist(make, tmp_path):
    with pytest.raises(FileNotFoundError):
        make(str(tmp_path / "nope.py")).boot()
    rproc = make("no_such_module_anywhere")
    with pytest.raises(FirmwareStartError, match="ModuleNotFoundError"):
        rproc.boot()
    assert rproc.state is RprocState.OFFLINE and rproc.power == 0


def test_the_link_is_gone_after_shutdown(make):
    rproc = make()
    rproc.boot()
    ep = rproc.open_endpoint(0x20)
    rproc.shutdown()
    with pytest.raises(LinkDown):
        ep.send(1)
    with pytest.raises(RtkitNotRunning):
        rproc.open_endpoint(0x20)
