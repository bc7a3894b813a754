"""The linux platform on what only a file tree can show: old kernels, missing debugfs,
malformed files, the real-syscall FileOps, tree detection, the kernel's parsing quirks."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
from fake_sysfs import FakeRemoteprocKernel

from amplink.platforms.linux import (
    ControlSocketTree,
    InvalidControlValue,
    LinuxRemoteProc,
    MalformedAttribute,
    NotSupported,
    ProcessorNotFound,
    RprocControlError,
    SysfsAttributes,
    list_processors,
    open_tree,
)
from amplink.remoteproc.api import CrashReason
from amplink.remoteproc.coredump import CoredumpMode
from amplink.remoteproc.states import RprocState


@pytest.fixture
def kernel(tmp_path: Path) -> FakeRemoteprocKernel:
    return FakeRemoteprocKernel(tmp_path)


def test_files_hold_what_the_kernel_prints(kernel: FakeRemoteprocKernel) -> None:
    dev, _ = kernel.add("dsp0")
    LinuxRemoteProc(dev, kernel.tree()).boot()
    files = {p.name: p.read_text() for p in (kernel.class_root / dev).iterdir()}
    assert files == {"state": "running\n", "firmware": "fw.elf\n", "name": "dsp0\n",
                     "recovery": "enabled\n", "coredump": "disabled\n"}
    assert (kernel.debug_root / dev / "trace0").read_text() == "fake firmware: up\n"


def test_refusals_are_errnos_and_the_reason_goes_to_dmesg(kernel: FakeRemoteprocKernel) -> None:
    dev, _ = kernel.add("dsp0")
    rproc = LinuxRemoteProc(dev, kernel.tree())
    rproc.boot()
    kernel.dmesg.clear()
    with pytest.raises(RprocControlError) as info:
        kernel.tree().write(dev, "firmware", "other.elf")
    assert info.value.errno == errno.EBUSY
    assert "Device or resource busy" in str(info.value)  # all a real write(2) says
    assert kernel.dmesg == [f"{dev}: cannot change the firmware while running"]


def test_firmware_name_ends_at_the_first_newline(kernel: FakeRemoteprocKernel) -> None:
    dev, _ = kernel.add("dsp0")
    kernel.tree().write(dev, "firmware", "a.elf\nb.elf")
    assert LinuxRemoteProc(dev, kernel.tree()).firmware == "a.elf"


def test_kernels_before_5_13_keep_recovery_and_coredump_in_debugfs(tmp_path: Path) -> None:
    kernel = FakeRemoteprocKernel(tmp_path, sysfs_config=False)
    dev, _ = kernel.add("dsp0")
    assert not (kernel.class_root / dev / "recovery").exists()
    rproc = LinuxRemoteProc(dev, kernel.tree())
    rproc.recovery = False
    rproc.coredump = CoredumpMode.INLINE
    assert (kernel.debug_root / dev / "recovery").read_text() == "disabled\n"
    assert rproc.recovery is False and rproc.coredump is CoredumpMode.INLINE
    rproc.boot()
    rproc.crash()
    assert rproc.state is RprocState.CRASHED
    rproc.recover()
    assert rproc.state is RprocState.RUNNING


def test_without_debugfs(tmp_path: Path) -> None:
    kernel = FakeRemoteprocKernel(tmp_path, debugfs=False)
    dev, _ = kernel.add("dsp0")
    rproc = LinuxRemoteProc(dev, kernel.tree())
    rproc.boot()
    assert rproc.trace() == ""
    with pytest.raises(NotSupported, match="debugfs"):
        rproc.crash()
    old = FakeRemoteprocKernel(tmp_path / "old", sysfs_config=False, debugfs=False)
    dev, _ = old.add("dsp0")
    with pytest.raises(NotSupported, match="no recovery setting"):
        _ = LinuxRemoteProc(dev, old.tree()).recovery


def test_crash_types_follow_the_kernel_enum(kernel: FakeRemoteprocKernel) -> None:
    dev, hw = kernel.add("dsp0")
    rproc = LinuxRemoteProc(dev, kernel.tree())
    rproc.boot()
    for reason in (CrashReason.MMUFAULT, CrashReason.WATCHDOG, CrashReason.INJECTED,
                   CrashReason.UNKNOWN):
        rproc.crash(reason)  # recovery is enabled: back to running each time
    assert hw.crashes == [CrashReason.MMUFAULT, CrashReason.WATCHDOG, CrashReason.FATAL_ERROR,
                          CrashReason.UNKNOWN]
    tree = kernel.tree()
    tree.write_debug(dev, "crash", "0x1\n")  # kstrtouint: base 0, one newline
    tree.write_debug(dev, "crash", "02")
    assert hw.crashes[-2:] == [CrashReason.WATCHDOG, CrashReason.FATAL_ERROR]
    for bad, err in (("watchdog", errno.EINVAL), ("-1", errno.EINVAL), ("09", errno.EINVAL),
                     ("4294967296", errno.ERANGE)):
        with pytest.raises(InvalidControlValue) as info:
            tree.write_debug(dev, "crash", bad)
        assert info.value.errno == err


def test_crash_reports_on_a_stopped_processor_are_ignored(kernel: FakeRemoteprocKernel) -> None:
    dev, hw = kernel.add("dsp0")
    LinuxRemoteProc(dev, kernel.tree()).crash()
    assert hw.crashes == [] and hw.state is RprocState.OFFLINE


def test_malformed_files_are_reported(kernel: FakeRemoteprocKernel) -> None:
    dev, _ = kernel.add("dsp0")
    rproc = LinuxRemoteProc(dev, kernel.tree())
    (kernel.class_root / dev / "state").write_text("invalid\n")  # what the kernel prints
    with pytest.raises(MalformedAttribute, match="not a remoteproc state"):
        _ = rproc.state
    (kernel.class_root / dev / "recovery").write_text("maybe\n")
    with pytest.raises(MalformedAttribute):
        _ = rproc.recovery
    (kernel.class_root / dev / "firmware").write_bytes(b"\xff\xfe\n")
    with pytest.raises(MalformedAttribute, match="text"):
        _ = rproc.firmware
    (kernel.class_root / dev / "coredump").write_text("x" * 5000)
    with pytest.raises(MalformedAttribute, match="more than"):
        _ = rproc.coredump


def test_duplicate_names_are_qualified(kernel: FakeRemoteprocKernel) -> None:
    kernel.add("dsp")
    kernel.add("dsp")
    kernel.add("m4")
    tree = kernel.tree()
    assert list_processors(tree) == {"dsp@remoteproc0": "remoteproc0",
                                     "dsp@remoteproc1": "remoteproc1", "m4": "remoteproc2"}
    with pytest.raises(ProcessorNotFound, match="several processors"):
        LinuxRemoteProc.find("dsp", tree)
    assert LinuxRemoteProc.find("dsp@remoteproc1", tree).dev == "remoteproc1"


def test_the_other_device_file_closing_stops_a_held_processor(
        kernel: FakeRemoteprocKernel) -> None:
    """The kernel's caveat: one flag per processor, acted on at every release."""
    dev, _ = kernel.add("dsp0")
    held = LinuxRemoteProc(dev, kernel.tree(), hold_device=True)
    held.boot()
    kernel.tree().open_device(dev).close()
    assert held.state is RprocState.OFFLINE
    held.close()


def test_real_syscalls_on_plain_files(tmp_path: Path) -> None:
    """The default FileOps: what a write does to a file system that is not sysfs."""
    for n in (10, 2):
        (tmp_path / f"remoteproc{n}").mkdir()
        (tmp_path / f"remoteproc{n}" / "state").write_text("offline\n")
    (tmp_path / "not-a-device").mkdir()
    (tmp_path / "remoteproc2" / "name").write_text("m4\n")
    (tmp_path / "remoteproc2" / "firmware").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "remoteproc2").touch()
    tree = SysfsAttributes(tmp_path, debug_root=None, dev_root=tmp_path / "dev")
    assert tree.devices() == ["remoteproc2", "remoteproc10"]
    tree.write("remoteproc2", "state", "start")
    # replaced, as a store to sysfs is (O_TRUNC: sysfs ignores it, a plain file needs it)
    assert (tmp_path / "remoteproc2" / "state").read_text() == "start"
    with pytest.raises(ProcessorNotFound):
        tree.write("remoteproc2", "recovery", "enabled")  # no O_CREAT either
    with pytest.raises(RprocControlError) as info:
        tree.write("remoteproc2", "firmware", "fw.elf")
    assert info.value.errno == errno.EISDIR
    assert tree.read_debug("remoteproc2", "trace0") is None
    device = tree.open_device("remoteproc2")
    try:
        device.write("start")
        with pytest.raises(NotSupported, match="RPROC_SET_SHUTDOWN_ON_RELEASE"):
            device.set_shutdown_on_release(True)  # ENOTTY on a regular file
    finally:
        device.close()
    assert (tmp_path / "dev" / "remoteproc2").read_text() == "start"
    with pytest.raises(NotSupported, match="CONFIG_REMOTEPROC_CDEV"):
        tree.open_device("remoteproc10")
    assert SysfsAttributes(tmp_path / "missing").devices() == []


def test_open_tree_detects_a_simulator_tree(tmp_path: Path) -> None:
    assert isinstance(open_tree(tmp_path), SysfsAttributes)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(tmp_path / ".control"))
        assert isinstance(open_tree(tmp_path), ControlSocketTree)
    finally:
        server.close()
