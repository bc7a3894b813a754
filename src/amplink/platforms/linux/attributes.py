"""The seam: every access to a remoteproc control file goes through a :class:`ControlTree`.

Two trees implement it:

* :class:`SysfsAttributes` - files: ``/sys/class/remoteproc/remoteprocN/<attr>``,
  debugfs ``/sys/kernel/debug/remoteproc/remoteprocN/<file>`` and ``/dev/remoteprocN``.
  Reads are plain file reads. Writes and device opens go through a :class:`FileOps`:
  the real system calls by default, or a fake kernel in tests, which validates and
  applies the write and re-renders the files (plain files cannot refuse a write).
* :class:`ControlSocketTree` - a simulator's tree (see :mod:`amplink.service.supervisor`):
  the same files for ``cat``, but every operation goes through the control socket so
  that refusals carry an errno like the kernel's.

Both turn every errno into the typed errors of :mod:`.errors`. :func:`open_tree` picks
the right one for a root directory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

from ..linux_abi import CLASS_ROOT, DEBUG_ROOT, DEV_ROOT, FIRMWARE_DIR
from . import protocol
from .errors import (
    MalformedAttribute,
    NotSupported,
    ProcessorNotFound,
    RprocControlError,
    SupervisorError,
    error_from_oserror,
)

DEVICE_NAME = re.compile(r"remoteproc[0-9]{1,9}")
_FILE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_ATTRIBUTE = 4096  # sysfs hands out at most one page
MAX_DEBUG_FILE = protocol.MAX_MESSAGE // 2  # trace buffers; JSON escaping may double it

RPROC_SET_SHUTDOWN_ON_RELEASE = 0x4004B701  # _IOW(0xB7, 1, __s32)
RPROC_GET_SHUTDOWN_ON_RELEASE = 0x8004B702  # _IOR(0xB7, 2, __s32)
_S32 = struct.Struct("i")


def check_device(dev: str) -> str:
    """``dev`` if it is a ``remoteprocN`` name; ProcessorNotFound otherwise."""
    if not isinstance(dev, str) or not DEVICE_NAME.fullmatch(dev):
        raise ProcessorNotFound(errno.ENOENT, f"{dev!r} is not a remoteprocN device name")
    return dev


def _check_file_name(name: str) -> str:
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise ProcessorNotFound(errno.ENOENT, f"{name!r} is not a control file name")
    return name


def device_sort_key(dev: str) -> int:
    """Sort ``remoteprocN`` names by N (remoteproc10 after remoteproc2)."""
    return int(dev.removeprefix("remoteproc"))


def decode_text(data: bytes, what: str) -> str:
    """Control file content as text; MalformedAttribute if it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedAttribute(f"{what} does not hold text: {data[:64]!r}") from None


class RprocDevice(ABC):
    """An open ``/dev/remoteprocN``: start/stop and the shutdown-on-release flag.

    The kernel keeps one flag per processor (not per open file) and acts on every
    close of any file of the device: with the flag set, each release of a running
    processor is a shutdown.
    """

    @abstractmethod
    def write(self, command: str) -> None:
        """Write ``command`` ("start", "stop", "detach"), without a newline."""

    @abstractmethod
    def set_shutdown_on_release(self, enabled: bool) -> None:
        """RPROC_SET_SHUTDOWN_ON_RELEASE."""

    @abstractmethod
    def shutdown_on_release(self) -> bool:
        """RPROC_GET_SHUTDOWN_ON_RELEASE."""

    @abstractmethod
    def close(self) -> None:
        """Close the file (the release)."""


class FileOps(Protocol):
    """The system calls that plain files cannot model: writes and character devices."""

    def write(self, path: Path, data: bytes) -> None:
        """One write(2) of ``data`` to the existing file ``path``; OSError as the syscall."""

    def open_device(self, path: Path) -> RprocDevice:
        """Open the character device ``path``; OSError as open(2)."""


class CharDevice(RprocDevice):
    """A real ``/dev/remoteprocN`` (Linux >= 5.10, CONFIG_REMOTEPROC_CDEV)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def _fileno(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, f"{self.path} is closed")
        return self._fd

    def write(self, command: str) -> None:
        data = command.encode()
        if os.write(self._fileno(), data) != len(data):
            raise OSError(errno.EIO, f"short write of {command!r}")

    def set_shutdown_on_release(self, enabled: bool) -> None:
        fcntl.ioctl(self._fileno(), RPROC_SET_SHUTDOWN_ON_RELEASE, _S32.pack(int(enabled)))

    def shutdown_on_release(self) -> bool:
        buf = bytearray(_S32.size)
        fcntl.ioctl(self._fileno(), RPROC_GET_SHUTDOWN_ON_RELEASE, buf, True)
        return bool(_S32.unpack(buf)[0])

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class OsFileOps:
    """The real system calls."""

    def write(self, path: Path, data: bytes) -> None:
        # No O_CREAT: a sysfs attribute exists or the write is wrong. O_TRUNC, as the shell's
        # `echo start > state`: sysfs ignores it, and a tree of plain files (a test rig, a
        # copy) then holds the value written, as a read of sysfs would give it.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)  # sysfs takes a value in exactly one write
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} B)")

    def open_device(self, path: Path) -> RprocDevice:
        return CharDevice(path)


class ControlTree(ABC):
    """Where remote processors are controlled: the kernel's files, or a simulator's."""

    root: Path
    #: where firmware files are looked up (None: the tree resolves names itself)
    firmware_dir: Path | None = None

    @abstractmethod
    def devices(self) -> list[str]:
        """The ``remoteprocN`` names, in numeric order."""

    @abstractmethod
    def read(self, dev: str, attr: str) -> str:
        """The text of attribute ``attr`` (trailing newline included, as the kernel prints it)."""

    @abstractmethod
    def write(self, dev: str, attr: str, value: str) -> None:
        """Write ``value`` to attribute ``attr``; typed error on refusal."""

    @abstractmethod
    def read_debug(self, dev: str, name: str) -> str | None:
        """The text of debugfs file ``name`` (e.g. trace0), or None if it does not exist."""

    @abstractmethod
    def write_debug(self, dev: str, name: str, value: str) -> None:
        """Write to debugfs file ``name`` (e.g. crash); NotSupported if it does not exist."""

    @abstractmethod
    def open_device(self, dev: str) -> RprocDevice:
        """Open ``/dev/remoteprocN`` (or the simulator's equivalent)."""

    @abstractmethod
    def exists(self, dev: str) -> bool:
        """Whether processor ``dev`` exists."""


class _MappedDevice(RprocDevice):
    """Wraps a device so that every OSError becomes a typed error."""

    def __init__(self, device: RprocDevice, what: str) -> None:
        self._device = device
        self._what = what

    def write(self, command: str) -> None:
        try:
            self._device.write(command)
        except OSError as exc:
            raise error_from_oserror(exc, f"{self._what} {command!r}") from None

    def _ioctl_error(self, exc: OSError, name: str) -> RprocControlError:
        if exc.errno in (errno.EINVAL, errno.ENOTTY):
            # the kernel answers an unknown ioctl of this device with EINVAL
            return NotSupported(exc.errno, f"{self._what}: this kernel has no {name}")
        return error_from_oserror(exc, f"{self._what} {name}")

    def set_shutdown_on_release(self, enabled: bool) -> None:
        try:
            self._device.set_shutdown_on_release(enabled)
        except OSError as exc:
            raise self._ioctl_error(exc, "RPROC_SET_SHUTDOWN_ON_RELEASE") from None

    def shutdown_on_release(self) -> bool:
        try:
            return self._device.shutdown_on_release()
        except OSError as exc:
            raise self._ioctl_error(exc, "RPROC_GET_SHUTDOWN_ON_RELEASE") from None

    def close(self) -> None:
        try:
            self._device.close()
        except OSError as exc:
            raise error_from_oserror(exc, f"{self._what} close") from None


def _read_file(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise MalformedAttribute(f"{path} holds more than {limit} B")
        return b"".join(chunks)
    finally:
        os.close(fd)


class SysfsAttributes(ControlTree):
    """Control files on a file system: the kernel's, or a fake kernel's tree.

    ``root`` is the remoteproc class directory, ``debug_root`` its debugfs directory
    (None: no debugfs), ``dev_root`` the directory of the ``remoteprocN`` character
    devices, ``firmware_dir`` where the kernel looks for firmware files (used in
    messages; the kernel also honours firmware_class.path). ``ops`` performs writes
    and device opens.
    """

    def __init__(self, root: Path | str = CLASS_ROOT, *,
                 debug_root: Path | str | None = DEBUG_ROOT,
                 dev_root: Path | str = DEV_ROOT,
                 firmware_dir: Path | str = FIRMWARE_DIR,
                 ops: FileOps | None = None) -> None:
        self.root = Path(root)
        self.debug_root = None if debug_root is None else Path(debug_root)
        self.dev_root = Path(dev_root)
        self.firmware_dir = Path(firmware_dir)
        self.ops: FileOps = ops or OsFileOps()

    def __repr__(self) -> str:
        return f"SysfsAttributes({str(self.root)!r})"

    def devices(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []  # no remoteproc class: no processors (or no CONFIG_REMOTEPROC)
        except OSError as exc:
            raise error_from_oserror(exc, str(self.root)) from None
        return sorted((n for n in names if DEVICE_NAME.fullmatch(n)), key=device_sort_key)

    def exists(self, dev: str) -> bool:
        return (self.root / check_device(dev)).is_dir()

    def _attr_path(self, dev: str, attr: str) -> Path:
        return self.root / check_device(dev) / _check_file_name(attr)

    def read(self, dev: str, attr: str) -> str:
        path = self._attr_path(dev, attr)
        try:
            data = _read_file(path, MAX_ATTRIBUTE)
        except OSError as exc:
            raise error_from_oserror(exc, str(path)) from None
        return decode_text(data, str(path))

    def write(self, dev: str, attr: str, value: str) -> None:
        path = self._attr_path(dev, attr)
        try:
            self.ops.write(path, value.encode())
        except OSError as exc:
            raise error_from_oserror(exc, str(path)) from None

    def _debug_path(self, dev: str, name: str) -> Path | None:
        if self.debug_root is None:
            return None
        return self.debug_root / check_device(dev) / _check_file_name(name)

    def read_debug(self, dev: str, name: str) -> str | None:
        path = self._debug_path(dev, name)
        if path is None:
            return None
        try:
            data = _read_file(path, MAX_DEBUG_FILE)
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            raise error_from_oserror(exc, f"{path} (debugfs is usually root-only: run as "
                                          "root)") from None
        except OSError as exc:
            raise error_from_oserror(exc, str(path)) from None
        return decode_text(data, str(path))

    def write_debug(self, dev: str, name: str, value: str) -> None:
        path = self._debug_path(dev, name)
        if path is None or not path.exists():
            raise NotSupported(errno.EOPNOTSUPP, f"{path or name}: no such debugfs file (mount "
                               "debugfs on /sys/kernel/debug, as root)")
        try:
            self.ops.write(path, value.encode())
        except OSError as exc:
            raise error_from_oserror(exc, str(path)) from None

    def open_device(self, dev: str) -> RprocDevice:
        path = self.dev_root / check_device(dev)
        try:
            device = self.ops.open_device(path)
        except FileNotFoundError:
            raise NotSupported(errno.ENOENT, f"{path} does not exist (the kernel needs "
                               "CONFIG_REMOTEPROC_CDEV, Linux >= 5.10)") from None
        except OSError as exc:
            raise error_from_oserror(exc, str(path)) from None
        return _MappedDevice(device, str(path))


class _SocketDevice(RprocDevice):
    """A supervisor connection standing for an open ``/dev/remoteprocN``."""

    def __init__(self, conn: protocol.Connection, dev: str) -> None:
        self._conn: protocol.Connection | None = conn
        self._what = f"{dev} device"

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._conn is None:
            raise RprocControlError(errno.EBADF, f"{self._what} is closed")
        return self._conn.request(message, self._what)

    def write(self, command: str) -> None:
        self._request({"op": "dev_write", "value": command})

    def set_shutdown_on_release(self, enabled: bool) -> None:
        self._request({"op": "dev_set_release", "value": int(enabled)})

    def shutdown_on_release(self) -> bool:
        response = self._request({"op": "dev_get_release"})
        try:
            return protocol.field(response, "value", int) != 0
        except ValueError as exc:
            raise SupervisorError(f"{self._what}: malformed answer: {exc}") from None

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.release()


class ControlSocketTree(ControlTree):
    """A simulator's tree, controlled through its supervisor's socket (same errnos as Linux)."""

    def __init__(self, root: Path | str, *, timeout: float = 30.0) -> None:
        self.root = Path(root)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ControlSocketTree({str(self.root)!r})"

    def request(self, message: dict[str, Any], what: str) -> dict[str, Any]:
        """One request on a fresh connection (the supervisor may come and go between calls)."""
        return protocol.request(self.root, message, what, self.timeout)

    def _value(self, response: dict[str, Any], what: str) -> str:
        try:
            value = protocol.field(response, "value", str)
        except ValueError as exc:
            raise SupervisorError(f"{what}: malformed answer: {exc}") from None
        if len(value) > MAX_DEBUG_FILE:
            raise MalformedAttribute(f"{what} holds more than {MAX_DEBUG_FILE} characters")
        return value

    def devices(self) -> list[str]:
        response = self.request({"op": "list"}, str(self.root))
        try:
            devices = protocol.field(response, "devices", list)
            if not all(isinstance(d, str) and DEVICE_NAME.fullmatch(d) for d in devices):
                raise ValueError(f"not a list of device names: {devices!r:.200}")
        except ValueError as exc:
            raise SupervisorError(f"{self.root}: malformed answer: {exc}") from None
        return sorted(devices, key=device_sort_key)

    def exists(self, dev: str) -> bool:
        return check_device(dev) in self.devices()

    def read(self, dev: str, attr: str) -> str:
        what = f"{check_device(dev)}/{_check_file_name(attr)}"
        response = self.request({"op": "read", "dev": dev, "attr": attr}, what)
        return self._value(response, what)

    def write(self, dev: str, attr: str, value: str) -> None:
        what = f"{check_device(dev)}/{_check_file_name(attr)}"
        self.request({"op": "write", "dev": dev, "attr": attr, "value": value}, what)

    def read_debug(self, dev: str, name: str) -> str | None:
        what = f"debug/{check_device(dev)}/{_check_file_name(name)}"
        try:
            response = self.request({"op": "debug_read", "dev": dev, "attr": name}, what)
        except ProcessorNotFound:
            if not self.exists(dev):
                raise
            return None
        return self._value(response, what)

    def write_debug(self, dev: str, name: str, value: str) -> None:
        what = f"debug/{check_device(dev)}/{_check_file_name(name)}"
        self.request({"op": "debug_write", "dev": dev, "attr": name, "value": value}, what)

    def open_device(self, dev: str) -> RprocDevice:
        what = f"{check_device(dev)} device"
        conn = protocol.Connection(self.root / protocol.CONTROL_SOCKET, self.timeout)
        try:
            conn.request({"op": "dev_open", "dev": dev}, what)
        except BaseException:
            conn.close()
            raise
        return _SocketDevice(conn, dev)


def is_simulator_tree(root: Path | str) -> bool:
    """Whether ``root`` is a simulator's tree (it has a control socket)."""
    try:
        return stat.S_ISSOCK(os.stat(Path(root) / protocol.CONTROL_SOCKET).st_mode)
    except OSError:
        return False


def open_tree(root: Path | str | None = None, *,
              debug_root: Path | str | None = DEBUG_ROOT,
              dev_root: Path | str = DEV_ROOT,
              firmware_dir: Path | str = FIRMWARE_DIR,
              timeout: float = 30.0) -> ControlTree:
    """The tree at ``root`` (default ``/sys/class/remoteproc``): a simulator's if it has a
    control socket, else files (the other arguments then apply)."""
    root = CLASS_ROOT if root is None else Path(root)
    if is_simulator_tree(root):
        return ControlSocketTree(root, timeout=timeout)
    return SysfsAttributes(root, debug_root=debug_root, dev_root=dev_root,
                           firmware_dir=firmware_dir)
