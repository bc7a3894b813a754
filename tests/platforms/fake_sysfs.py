"""A fake Linux kernel for the linux platform tests: a temporary /sys, /dev and /lib/firmware.

Plain files cannot refuse a write, so :class:`FakeRemoteprocKernel` plugs into the
seam (:class:`~amplink.platforms.linux.SysfsAttributes`) as its ``FileOps``: a write
is validated and applied by :class:`~amplink.service.model.RemoteprocModel` (the
kernel's semantics, the same model the simulator's supervisor serves) and answered
like the syscall (OSError with the errno, the reason only in :attr:`dmesg`); the model
then re-renders the files, and every read goes through those real files.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from fake_rproc import FakeProcessor

from amplink.platforms.linux import RprocControlError, SysfsAttributes
from amplink.platforms.linux.attributes import RprocDevice
from amplink.remoteproc.api import CrashReason
from amplink.remoteproc.states import RprocState
from amplink.service.model import RemoteprocModel


class FakeHardware(FakeProcessor):
    """A processor that only changes state; it boots if its firmware file exists."""

    def __init__(self, name: str, firmware: str, firmware_dir: Path,
                 trace_text: str = "fake firmware: up\n") -> None:
        super().__init__(name, firmware, recovery=True)
        self.firmware_dir = firmware_dir
        self.trace_text = trace_text
        self.boots = 0
        self.crashes: list[CrashReason] = []

    def boot(self) -> None:
        if self.users == 0:
            if not (self.firmware_dir / self._firmware).is_file():
                raise FileNotFoundError(errno.ENOENT, f"request_firmware {self._firmware}")
            self._set(RprocState.RUNNING)
            self.boots += 1
        self.users += 1

    def shutdown(self) -> None:
        assert self.users > 0, "shutdown without boot"
        self.users -= 1
        if self.users == 0:
            self._set(RprocState.OFFLINE)

    def recover(self) -> None:
        self._set(RprocState.RUNNING, "recovered")

    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        self.crashes.append(reason)
        self._set(RprocState.CRASHED, "crash")
        if self._recovery:
            self.recover()

    def trace(self) -> str:
        return self.trace_text


class FakeCharDevice(RprocDevice):
    """An open fake /dev/remoteprocN."""

    def __init__(self, kernel: FakeRemoteprocKernel, dev: str) -> None:
        self.kernel = kernel
        self.dev = dev
        self.closed = False
        kernel.open_devices += 1

    def write(self, command: str) -> None:
        self.kernel.syscall(lambda: self.kernel.model.cdev_write(self.dev, command))

    def set_shutdown_on_release(self, enabled: bool) -> None:
        self.kernel.syscall(lambda: self.kernel.model.cdev_set_release(self.dev, enabled))

    def shutdown_on_release(self) -> bool:
        return self.kernel.model.cdev_get_release(self.dev)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.kernel.open_devices -= 1
            self.kernel.model.cdev_release(self.dev)


class FakeRemoteprocKernel:
    """Owns ``base``/{sys/class/remoteproc, sys/kernel/debug/remoteproc, dev, lib/firmware}.

    ``sysfs_config=False`` mimics a kernel before 5.13 (recovery and coredump in debugfs);
    ``debugfs=False`` one without debugfs.
    """

    def __init__(self, base: Path, *, sysfs_config: bool = True, debugfs: bool = True) -> None:
        self.class_root = base / "sys/class/remoteproc"
        self.debug_root = base / "sys/kernel/debug/remoteproc" if debugfs else None
        self.dev_root = base / "dev"
        self.firmware_dir = base / "lib/firmware"
        for path in (self.dev_root, self.firmware_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.model = RemoteprocModel(self.class_root, self.debug_root, sysfs_config=sysfs_config)
        self.open_devices = 0
        self.dmesg: list[str] = []  # the reasons the kernel logs for its refusals

    def add(self, name: str, firmware: str = "fw.elf", *, install: bool = True
            ) -> tuple[str, FakeHardware]:
        """A new offline processor (its firmware file installed unless ``install`` is False)."""
        if install:
            self.install(firmware)
        hw = FakeHardware(name, firmware, self.firmware_dir)
        dev = self.model.add(hw)
        (self.dev_root / dev).touch()  # the character device node
        return dev, hw

    def install(self, firmware: str) -> None:
        (self.firmware_dir / firmware).write_bytes(b"\x7fELF fake")

    def tree(self) -> SysfsAttributes:
        """The seam over this kernel, as the linux platform uses it."""
        return SysfsAttributes(self.class_root, debug_root=self.debug_root,
                               dev_root=self.dev_root, firmware_dir=self.firmware_dir, ops=self)

    def syscall(self, fn: Callable[[], object]) -> None:
        """Run a model operation and answer like the kernel: an errno, the reason to dmesg."""
        try:
            fn()
        except RprocControlError as exc:
            self.dmesg.append(str(exc))
            raise OSError(exc.errno, os.strerror(exc.errno)) from None

    # -- FileOps: what plain files cannot do ------------------------------------------
    def write(self, path: Path, data: bytes) -> None:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        try:
            value = data.decode()
        except UnicodeDecodeError:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        dev, attr = path.parent.name, path.name
        if path.parent.parent == self.class_root:
            self.syscall(lambda: self.model.store(dev, attr, value))
        elif self.debug_root is not None and path.parent.parent == self.debug_root:
            self.syscall(lambda: self.model.debug_store(dev, attr, value))
        else:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    def open_device(self, path: Path) -> RprocDevice:
        if not path.exists() or path.parent != self.dev_root:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        self.model.processor(path.name)
        return FakeCharDevice(self, path.name)
