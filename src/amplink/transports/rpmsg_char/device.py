"""The seam: every system call on an rpmsg character device goes through a :class:`DeviceOps`.

:class:`OsDeviceOps` makes the real calls; tests pass a fake kernel that implements
the same few calls over socketpairs (whose fds are real, so epoll and asyncio watch
them as they watch ``/dev/rpmsgN``). Errors are raised as the system call raises them
(OSError with the kernel's errno); the backend maps them (:mod:`.errors`).
"""

from __future__ import annotations

import fcntl
import os
import select
from pathlib import Path
from typing import Protocol


class DeviceOps(Protocol):
    """The system calls the rpmsg_char backend makes."""

    def open(self, path: Path, flags: int) -> int:
        """open(2); returns the fd."""

    def read(self, fd: int, size: int) -> bytes:
        """read(2): one message (cut to ``size``; the kernel drops the rest)."""

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        """write(2): one message."""

    def ioctl(self, fd: int, request: int, arg: bytes | int) -> bytes | int:
        """ioctl(2): a bytes ``arg`` is passed by pointer and its (possibly updated) copy
        returned; an int is passed as the value and the call's result returned."""

    def poll(self, fd: int, events: int) -> int:
        """poll(2) of one fd without waiting: its revents."""

    def close(self, fd: int) -> None:
        """close(2)."""

    def kernel_release(self) -> str:
        """The kernel's release string (``uname -r``)."""


class OsDeviceOps:
    """The real system calls."""

    def open(self, path: Path, flags: int) -> int:
        return os.open(path, flags)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        return os.write(fd, data)

    def ioctl(self, fd: int, request: int, arg: bytes | int) -> bytes | int:
        result: bytes | int = fcntl.ioctl(fd, request, arg)
        return result

    def poll(self, fd: int, events: int) -> int:
        poller = select.poll()
        poller.register(fd, events)
        ready = poller.poll(0)
        return ready[0][1] if ready else 0

    def close(self, fd: int) -> None:
        os.close(fd)

    def kernel_release(self) -> str:
        return os.uname().release


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a release string such as ``6.1.0-18-amd64``; (0, 0) if unknown."""
    parts = release.split(".", 2)
    try:
        return int(parts[0]), int(parts[1].split("-")[0])
    except (IndexError, ValueError):
        return (0, 0)
