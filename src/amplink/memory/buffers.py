"""Shared buffers: a file descriptor, an offset and a size, mapped lazily, with an owner.

The model is Linux's dma-buf. A buffer is the CPU's or a device's (:meth:`SharedBuffer.
to_device`, :meth:`SharedBuffer.to_cpu`); the CPU touches it only inside an access bracket
(:meth:`SharedBuffer.cpu_access`, dma-buf's ``DMA_BUF_IOCTL_SYNC`` START ... END), which
hands out a memoryview and releases it at its end.

How a view is kept from outliving its bracket: the bracket maps nothing itself; it takes
a private memoryview ``P`` of the buffer's mapping and hands out ``U = memoryview(
PickleBuffer(P))``. ``U`` then holds an *export* of ``P``, and so does every slice, cast
or ``memoryview(U)`` the caller derives from ``U`` (they share ``U``'s managed buffer).
At the end of the bracket ``U`` is released, then ``P``: ``P.release()`` fails with
``BufferError`` exactly when something derived from ``U`` is still alive. That is
reported (:class:`ViewsOutstanding`), and the buffer refuses to go to the device or be
closed until those views are gone; it never unmaps memory that a live view points into.
"""

from __future__ import annotations

import mmap
import os
import pickle
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .._args import int_arg, str_arg
from ..errors import AddressError, InvalidArgument, InvalidArgumentType
from .access import Access, checked_access
from .dmabuf import dma_buf_sync
from .errors import BufferClosed, OwnershipError, ReadOnlyBuffer, ViewsOutstanding

PAGE_SIZE = mmap.PAGESIZE
# Before Python 3.13 an mmap keeps a dup of its fd: a mapped buffer holds two fds.
_MMAP_OPTIONS: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
#: the owner of a buffer that no device holds
CPU = "cpu"
_WRITE = int(Access.WRITE)  # a plain int: enum attribute and flag operations are slow


@dataclass(frozen=True, slots=True)
class BufferSlice:
    """``length`` bytes of ``buffer`` from ``offset`` (checked to lie inside it)."""

    buffer: SharedBuffer
    offset: int
    length: int

    def __post_init__(self) -> None:
        self.buffer.check(self.offset, self.length)


class SharedBuffer:
    """A run-time allocated piece of shared memory, passed around as a file descriptor.

    Build one with a provider (:mod:`amplink.memory.providers`) or, for an fd received
    from a peer, with :func:`amplink.memory.fdpass.recv_buffer`. The buffer's bytes are
    ``[offset, offset + size)`` of ``fd``; they are mapped on first CPU access only, and
    the kernel allocates a page only when it is touched.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        *,
        offset: int = 0,
        name: str = "buffer",
        provider: str = "fd",
        read_only: bool = False,
        dmabuf: bool = False,
        owns_fd: bool = True,
        check_fd: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """Wrap ``fd`` (taken over if ``owns_fd``). ``dmabuf``: issue the dma-buf sync
        ioctl around CPU access. ``check_fd`` raises if the fd's owner has closed it (a
        carveout's region) and ``on_close`` runs at :meth:`close` (returns a carveout
        block)."""
        self.size = int_arg(size, "size", minimum=1)
        self.offset = int_arg(offset, "offset", minimum=0)
        self.name = str_arg(name, "name")
        self.provider = provider
        self.read_only = read_only
        self.is_dmabuf = dmabuf
        self._fd = fd
        self._owns_fd = owns_fd
        self._check_fd = check_fd
        self._on_close = on_close
        self._lock = threading.Lock()
        self._owner = CPU
        self._brackets = 0
        self._lingering: list[memoryview] = []  # private views a bracket could not release
        self._attachments: dict[object, str] = {}
        self._mm: mmap.mmap | None = None
        self._delta = 0  # offset of the buffer inside its page-aligned mapping
        self.closed = False
        # a buffer dropped without close() still gives back its fd and memory (the mmap
        # object unmaps itself when collected)
        self._finalizer = weakref.finalize(self, _collected, name, fd if owns_fd else -1,
                                           on_close)

    # -- identity -------------------------------------------------------------------------
    @property
    def fd(self) -> int:
        """The backing file descriptor (shared with a carveout's other buffers)."""
        if self.closed:
            raise BufferClosed(f"buffer {self.name!r} is closed")
        return self._fd

    @property
    def owner(self) -> str:
        """``"cpu"`` or the name of the device that holds the buffer."""
        return self._owner

    @property
    def mapped(self) -> bool:
        """Whether this process has mapped the buffer yet (the first CPU access maps it)."""
        return self._mm is not None

    @property
    def attachments(self) -> tuple[str, ...]:
        """Where the buffer is attached (IOMMU name and device address), for messages."""
        with self._lock:
            return tuple(self._attachments.values())

    def check(self, offset: int, length: int) -> None:
        """Raise :class:`~amplink.errors.AddressError` unless ``[offset, offset + length)``
        lies inside the buffer (``length`` may be 0); :class:`InvalidArgumentType` unless
        both are ints."""
        for value, what in ((offset, "offset"), (length, "length")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgumentType(f"{what} must be an int, got "
                                          f"{type(value).__name__} {value!r}")
        if offset < 0 or length < 0 or offset > self.size or length > self.size - offset:
            raise AddressError(
                f"range {offset!r}+{length!r} is outside buffer {self.name!r} "
                f"of 0x{self.size:x} bytes")

    def slice(self, offset: int, length: int) -> BufferSlice:
        """A checked sub-range, e.g. to attach only part of the buffer to a device."""
        return BufferSlice(self, offset, length)

    # -- ownership ------------------------------------------------------------------------
    def to_device(self, device: str = "device") -> None:
        """Hand the buffer to ``device``: from now on CPU access is an error until
        :meth:`to_cpu`. Refused while the CPU is inside an access bracket or still holds
        views derived from one."""
        if type(device) is not str:
            str_arg(device, "device")  # InvalidArgumentType unless it is a str (subclass)
        if not device or device == CPU:
            raise InvalidArgument(f"device must be a non-empty name other than {CPU!r}, "
                                  f"got {device!r}")
        with self._lock:
            if self.closed or self._owner != CPU or self._brackets:
                self._check_open()
                if self._owner != CPU:
                    raise OwnershipError(f"buffer {self.name!r} is owned by device "
                                         f"{self._owner!r}, not by the CPU")
                raise OwnershipError(
                    f"buffer {self.name!r} is in {self._brackets} CPU access bracket(s): "
                    f"end them before handing it to device {device!r}")
            if self._lingering:
                self._release_lingering(f"handing it to device {device!r}")
            self._owner = device

    def to_cpu(self) -> None:
        """Take the buffer back from the device that holds it."""
        with self._lock:
            if self.closed or self._owner == CPU:
                self._check_open()
                raise OwnershipError(f"buffer {self.name!r} is owned by the CPU already")
            self._owner = CPU

    # -- CPU access -----------------------------------------------------------------------
    def cpu_access(self, access: Access | int = Access.READ_WRITE, offset: int = 0,
                   length: int | None = None) -> CpuAccess:
        """A bracket of CPU access to ``[offset, offset + length)`` (all by default).

        Use it as ``with buf.cpu_access(Access.WRITE) as view: ...``. The view is
        read-only unless ``access`` includes WRITE, and it is released when the bracket
        ends: using it afterwards raises ``ValueError``. A slice (or numpy array, ...)
        derived from the view still alive at the end makes the bracket raise
        :class:`ViewsOutstanding`; copy out (``bytes(view[a:b])``) what must outlive it.
        Raises :class:`OwnershipError` when a device owns the buffer and
        :class:`ReadOnlyBuffer` for write access to a read-only buffer.
        """
        access = checked_access(access)
        if length is None:
            self.check(offset, 0)
            length = self.size - offset
        self.check(offset, length)
        return CpuAccess(self, access, offset, length)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """A copy of ``[offset, offset + length)`` (to the end by default), in a bracket."""
        with self.cpu_access(Access.READ, offset, length) as view:
            return bytes(view)

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        """Copy ``data`` into the buffer at ``offset``, in a bracket."""
        with self.cpu_access(Access.WRITE, offset, len(data)) as view:
            view[:] = data

    def _begin(self, access: Access, writes: bool) -> mmap.mmap:
        with self._lock:
            self._check_open()
            if self._owner != CPU:
                raise OwnershipError(
                    f"buffer {self.name!r} is owned by device {self._owner!r}: "
                    f"CPU access needs to_cpu() first")
            if writes and self.read_only:
                raise ReadOnlyBuffer(f"buffer {self.name!r} is read-only")
            mm = self._mm if self._mm is not None else self._map()
            self._brackets += 1
        if self.is_dmabuf:
            try:
                dma_buf_sync(self._fd, access, end=False)
            except BaseException:
                with self._lock:
                    self._brackets -= 1
                raise
        return mm

    def _end(self, access: Access, leftovers: list[memoryview]) -> None:
        try:
            if self.is_dmabuf:
                dma_buf_sync(self._fd, access, end=True)
        finally:
            with self._lock:
                self._brackets -= 1
                self._lingering.extend(leftovers)

    def _map(self) -> mmap.mmap:
        """Map the pages holding the buffer (the caller holds the lock)."""
        if self._check_fd is not None:
            self._check_fd()
        base = self.offset - self.offset % PAGE_SIZE
        self._delta = self.offset - base
        prot = mmap.PROT_READ | (0 if self.read_only else mmap.PROT_WRITE)
        self._mm = mmap.mmap(self._fd, self._delta + self.size, mmap.MAP_SHARED, prot,
                             offset=base, **_MMAP_OPTIONS)
        return self._mm

    def _release_lingering(self, doing: str) -> None:
        """Release the views earlier brackets could not (the caller holds the lock)."""
        still = []
        for view in self._lingering:
            try:
                view.release()
            except BufferError:
                still.append(view)
        self._lingering = still
        if still:
            raise ViewsOutstanding(
                f"buffer {self.name!r}: views derived from a CPU access bracket are still "
                f"alive; release them (or drop every reference) before {doing}")

    # -- attachments (kept by amplink.memory.iommu) ----------------------------------------
    def _attached(self, key: object, where: str) -> None:
        with self._lock:
            self._check_open()
            self._attachments[key] = where

    def _detached(self, key: object) -> None:
        with self._lock:
            self._attachments.pop(key, None)

    # -- lifetime -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise BufferClosed(f"buffer {self.name!r} is closed")

    def close(self) -> None:
        """Unmap, close the fd (if the buffer owns it) and give the memory back.

        Refused (:class:`OwnershipError`) while a device owns the buffer, the CPU is
        inside a bracket, views derived from a bracket are alive, or the buffer is
        attached to an IOMMU: it never unmaps what something may still be using.
        """
        with self._lock:
            if self.closed:
                return
            if self._owner != CPU:
                raise OwnershipError(
                    f"buffer {self.name!r} is owned by device {self._owner!r}: take it "
                    f"back (to_cpu, or reclaim from a dead peer) before closing")
            if self._brackets:
                raise OwnershipError(f"buffer {self.name!r} is in a CPU access bracket")
            if self._attachments:
                raise OwnershipError(
                    f"buffer {self.name!r} is still attached at "
                    f"{', '.join(self._attachments.values())}: detach it first")
            self._release_lingering("closing it")
            self.closed = True
            mm, self._mm = self._mm, None
            self._finalizer.detach()
        try:
            if mm is not None:
                mm.close()
        finally:
            try:
                if self._owns_fd:
                    os.close(self._fd)
            finally:
                if self._on_close is not None:
                    self._on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"owner={self._owner}"
        return (f"SharedBuffer({self.name!r}, size=0x{self.size:x}, provider={self.provider}, "
                f"{state})")


def _collected(name: str, fd: int, on_close: Callable[[], None] | None) -> None:
    """Release what a buffer held when it is garbage-collected without :meth:`close`."""
    warnings.warn(f"shared buffer {name!r} was not closed", ResourceWarning, stacklevel=1)
    try:
        if fd >= 0:
            os.close(fd)
    finally:
        if on_close is not None:
            on_close()


class CpuAccess:
    """One CPU access bracket of a buffer (see :meth:`SharedBuffer.cpu_access`).

    ``with`` it once: entering begins CPU access (dma-buf sync START) and returns the
    view; leaving releases the view and ends it (sync END).
    """

    __slots__ = ("_buffer", "_access", "_writes", "_start", "_stop", "_private", "_view",
                 "_used")

    def __init__(self, buffer: SharedBuffer, access: Access, offset: int, length: int) -> None:
        self._buffer = buffer
        self._access = access
        self._writes = bool(int(access) & _WRITE)
        self._start = offset
        self._stop = offset + length
        self._private: memoryview | None = None
        self._view: memoryview | None = None
        self._used = False

    def __enter__(self) -> memoryview:
        if self._used:
            raise RuntimeError("a CPU access bracket can be entered only once")
        self._used = True
        buffer = self._buffer
        mm = buffer._begin(self._access, self._writes)
        try:
            delta = buffer._delta
            whole = memoryview(mm)
            with whole:
                window = whole[delta + self._start:delta + self._stop]
                self._private = window if self._writes else window.toreadonly()
            # the handed-out view holds an export of the private one: see the module doc
            exporter = pickle.PickleBuffer(self._private)
            try:
                self._view = memoryview(exporter)
            finally:
                exporter.release()
        except BaseException:
            self._end_bracket()
            raise
        return self._view

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        leftovers = self._end_bracket()
        if leftovers and exc_type is None:
            raise ViewsOutstanding(
                f"buffer {self._buffer.name!r}: a view derived from the CPU access bracket "
                f"outlives it (a slice, cast, numpy array or ctypes object of the view); "
                f"copy out what you need instead, e.g. bytes(view[a:b])")

    def _end_bracket(self) -> list[memoryview]:
        leftovers = []
        for view in (self._view, self._private):
            if view is None:
                continue
            try:
                view.release()
            except BufferError:
                leftovers.append(view)
        self._view = self._private = None
        self._buffer._end(self._access, leftovers)
        return leftovers
