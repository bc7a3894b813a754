"""LinuxRemoteProc against the kernel's documented semantics, on a fake kernel tree and on a
live supervisor tree (the same tests, parametrised by the ``rig`` fixture)."""

from __future__ import annotations

import errno
import threading

import pytest
from rig_kit import Rig, wait_for

from amplink.errors import AmplinkError
from amplink.platforms.linux import (
    ControlPermissionError,
    FirmwareNotFound,
    InvalidControlValue,
    LinuxRemoteProc,
    NotBooted,
    ProcessorNotFound,
    RprocBusy,
    list_processors,
)
from amplink.remoteproc.api import CrashReason, RprocEvent
from amplink.remoteproc.coredump import CoredumpMode
from amplink.remoteproc.states import RprocState

TIMEOUT = 10.0


@pytest.fixture
def rproc(rig: Rig) -> LinuxRemoteProc:
    return LinuxRemoteProc(rig.dev, rig.tree)


def test_discovery_by_name_and_device(rig: Rig) -> None:
    assert list_processors(rig.tree)[rig.name] == rig.dev
    assert LinuxRemoteProc.find(rig.name, rig.tree).dev == rig.dev
    assert LinuxRemoteProc.find(rig.dev, rig.tree).name == rig.name
    with pytest.raises(ProcessorNotFound, match="no remote processor called") as info:
        LinuxRemoteProc.find("no-such-processor", rig.tree)
    assert isinstance(info.value, FileNotFoundError) and info.value.errno == errno.ENOENT
    with pytest.raises(ProcessorNotFound):
        LinuxRemoteProc("remoteproc99", rig.tree)
    with pytest.raises(ProcessorNotFound):
        LinuxRemoteProc("../etc", rig.tree)


def test_initial_values(rig: Rig, rproc: LinuxRemoteProc) -> None:
    assert rproc.state is RprocState.OFFLINE
    assert rproc.firmware == rig.firmware
    assert rproc.recovery is True
    assert rproc.coredump is CoredumpMode.DISABLED
    assert rproc.trace() == ""
    assert rig.tree.read(rig.dev, "state") == "offline\n"  # the kernel's format


def test_firmware_changes_only_while_offline(rig: Rig, rproc: LinuxRemoteProc) -> None:
    rproc.firmware = rig.other_firmware
    assert rproc.firmware == rig.other_firmware
    rproc.boot()
    with pytest.raises(RprocBusy, match="stop it first") as info:
        rproc.firmware = rig.firmware
    assert info.value.errno == errno.EBUSY and isinstance(info.value, (OSError, AmplinkError))
    assert rproc.firmware == rig.other_firmware
    rproc.shutdown()
    rig.tree.write(rig.dev, "firmware", f"{rig.firmware}\n")  # a trailing newline is accepted
    assert rproc.firmware == rig.firmware


def test_firmware_names_are_checked(rig: Rig, rproc: LinuxRemoteProc) -> None:
    for bad in ("", "two\nlines", "nul\0"):
        with pytest.raises(InvalidControlValue) as info:
            rproc.firmware = bad
        assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidControlValue) as info:  # the kernel's own check
        rig.tree.write(rig.dev, "firmware", "\n")
    assert info.value.errno == errno.EINVAL
    assert rproc.firmware == rig.firmware


def test_boot_and_shutdown_count_users(rproc: LinuxRemoteProc) -> None:
    rproc.boot()
    rproc.boot()
    assert rproc.state is RprocState.RUNNING and rproc.users == 2
    rproc.shutdown()
    assert rproc.state is RprocState.RUNNING
    rproc.shutdown()
    assert rproc.state is RprocState.OFFLINE and rproc.users == 0
    with pytest.raises(NotBooted) as info:
        rproc.shutdown()
    assert isinstance(info.value, RuntimeError) and info.value.errno == errno.EINVAL


def test_acquire_is_boot_then_shutdown(rproc: LinuxRemoteProc) -> None:
    with rproc.acquire():
        assert rproc.state is RprocState.RUNNING
    assert rproc.state is RprocState.OFFLINE


def test_a_second_owner_gets_ebusy_and_stop_works_for_anyone(rig: Rig,
                                                             rproc: LinuxRemoteProc) -> None:
    rproc.boot()
    other = LinuxRemoteProc(rig.dev, rig.tree)
    with pytest.raises(RprocBusy, match="started elsewhere"):
        other.boot()
    assert other.users == 0
    other.stop()
    assert rproc.state is RprocState.OFFLINE
    other.stop()  # already offline: nothing to do
    rproc.shutdown()  # its "stop" finds the processor offline: no error


def test_state_writes_follow_the_kernel(rig: Rig, rproc: LinuxRemoteProc) -> None:
    tree, dev = rig.tree, rig.dev
    tree.write(dev, "state", "start\n")
    assert rproc.state is RprocState.RUNNING
    with pytest.raises(RprocBusy):
        tree.write(dev, "state", "start")
    for bad in ("bogus", "detach", "start now"):
        with pytest.raises(InvalidControlValue):
            tree.write(dev, "state", bad)
    tree.write(dev, "state", "stop")
    assert rproc.state is RprocState.OFFLINE
    with pytest.raises(InvalidControlValue):
        tree.write(dev, "state", "stop")


def test_missing_firmware_fails_the_boot(rig: Rig, rproc: LinuxRemoteProc) -> None:
    rproc.firmware = rig.missing_firmware
    with pytest.raises(FirmwareNotFound) as info:
        rproc.boot()
    assert info.value.errno == errno.ENOENT and isinstance(info.value, FileNotFoundError)
    assert rig.missing_firmware in str(info.value)
    assert rproc.state is RprocState.OFFLINE and rproc.users == 0


def test_crash_without_recovery_stays_crashed(rproc: LinuxRemoteProc) -> None:
    rproc.boot()
    rproc.recovery = False
    assert rproc.recovery is False
    rproc.crash()
    assert wait_for(lambda: rproc.state is RprocState.CRASHED, TIMEOUT)
    with pytest.raises(RprocBusy, match="recover it first"):
        rproc.coredump = CoredumpMode.ENABLED
    with pytest.raises(InvalidControlValue, match="recover it first"):
        rproc.stop()
    rproc.crash()  # handled once: still crashed, no error
    rproc.recover()
    assert wait_for(lambda: rproc.state is RprocState.RUNNING, TIMEOUT)
    rproc.shutdown()
    assert rproc.state is RprocState.OFFLINE


def test_crash_with_recovery_restarts(rproc: LinuxRemoteProc) -> None:
    rproc.boot()
    rproc.crash(CrashReason.WATCHDOG)
    assert wait_for(lambda: rproc.state is RprocState.RUNNING, TIMEOUT)
    rproc.shutdown()


def test_enabling_recovery_recovers_a_crashed_processor(rproc: LinuxRemoteProc) -> None:
    rproc.boot()
    rproc.recovery = False
    rproc.crash()
    assert wait_for(lambda: rproc.state is RprocState.CRASHED, TIMEOUT)
    rproc.recovery = True
    assert wait_for(lambda: rproc.state is RprocState.RUNNING, TIMEOUT)
    rproc.shutdown()


def test_recover_ignores_a_processor_that_did_not_crash(rproc: LinuxRemoteProc) -> None:
    rproc.recover()
    assert rproc.state is RprocState.OFFLINE


def test_recovery_and_coredump_values(rig: Rig, rproc: LinuxRemoteProc) -> None:
    for mode in CoredumpMode:
        rproc.coredump = mode
        assert rproc.coredump is mode
    rig.tree.write(rig.dev, "coredump", "disabled\n")
    assert rproc.coredump is CoredumpMode.DISABLED
    rig.tree.write(rig.dev, "recovery", "disabled\n")
    assert rig.tree.read(rig.dev, "recovery") == "disabled\n"
    for attr in ("coredump", "recovery"):
        with pytest.raises(InvalidControlValue):
            rig.tree.write(rig.dev, attr, "bogus")


def test_name_is_read_only(rig: Rig) -> None:
    with pytest.raises(ControlPermissionError) as info:
        rig.tree.write(rig.dev, "name", "renamed")
    assert isinstance(info.value, PermissionError)


def test_trace_while_running(rig: Rig, rproc: LinuxRemoteProc) -> None:
    rproc.boot()
    assert wait_for(lambda: rig.trace_text in rproc.trace(), TIMEOUT), rproc.trace()
    rproc.shutdown()
    assert rproc.trace() == ""


def test_held_device_stops_when_released(rig: Rig) -> None:
    held = LinuxRemoteProc(rig.dev, rig.tree, hold_device=True)
    held.boot()
    assert held.state is RprocState.RUNNING
    device = rig.tree.open_device(rig.dev)
    try:
        assert device.shutdown_on_release() is True  # one flag per processor
    finally:
        device.set_shutdown_on_release(False)  # else this close would stop it (kernel caveat)
        device.close()
    device = rig.tree.open_device(rig.dev)
    device.set_shutdown_on_release(True)
    device.close()
    assert held.state is RprocState.OFFLINE  # as the kernel does when a process dies
    held.close()


def test_held_device_last_shutdown_stops_and_clears_the_flag(rig: Rig) -> None:
    held = LinuxRemoteProc(rig.dev, rig.tree, hold_device=True)
    held.boot()
    held.boot()
    held.shutdown()
    assert held.state is RprocState.RUNNING
    held.shutdown()
    assert held.state is RprocState.OFFLINE
    device = rig.tree.open_device(rig.dev)
    try:
        assert device.shutdown_on_release() is False
        with pytest.raises(InvalidControlValue):
            device.write("start\n")  # the device compares the exact bytes
    finally:
        device.close()


def test_subscribers_see_crash_and_recovery(rproc: LinuxRemoteProc) -> None:
    rproc.poll_interval = 0.02
    events: list[RprocEvent] = []
    unsubscribe = rproc.subscribe(events.append)
    try:
        rproc.boot()
        assert wait_for(lambda: any(e.state is RprocState.RUNNING for e in events), TIMEOUT), events
        rproc.recovery = False
        rproc.crash()
        assert wait_for(lambda: any(e.kind == "crash" for e in events), TIMEOUT), events
        rproc.recover()
        assert wait_for(lambda: any(e.kind == "recovered" for e in events), TIMEOUT), events
    finally:
        unsubscribe()
        rproc.close()
    states = [e.state for e in events if e.kind == "state"]
    assert states[:3] == [RprocState.RUNNING, RprocState.CRASHED, RprocState.RUNNING]


def test_the_state_watch_runs_while_anyone_is_subscribed(rproc: LinuxRemoteProc) -> None:
    """One watcher thread for all subscribers: it ends with the last one, and the next
    subscriber starts a new one; a subscriber that raises does not stop the others."""
    rproc.poll_interval = 0.02

    def watchers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"amplink-{rproc.dev}-events"]

    def broken(event: RprocEvent) -> None:
        raise RuntimeError("a subscriber's bug")

    events: list[RprocEvent] = []
    first, second = rproc.subscribe(broken), rproc.subscribe(events.append)
    try:
        assert len(watchers()) == 1
        rproc.boot()
        assert wait_for(lambda: any(e.state is RprocState.RUNNING for e in events), TIMEOUT)
        first()
        assert len(watchers()) == 1  # the other one still listens
    finally:
        first()
        second()
    assert wait_for(lambda: not watchers(), TIMEOUT)
    third = rproc.subscribe(events.append)
    try:
        assert len(watchers()) == 1
        rproc.shutdown()
        assert wait_for(lambda: events[-1].state is RprocState.OFFLINE, TIMEOUT)
    finally:
        third()
        rproc.close()
