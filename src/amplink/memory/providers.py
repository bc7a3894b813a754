"""Where shared buffers come from: memfd, a processor's carveout, dma-buf heaps, udmabuf.

Every provider has ``allocate(size, *, name) -> SharedBuffer``. A memfd is the default
and works everywhere; a carveout hands out blocks of a fixed region; the dma-buf
providers need kernel support and raise :class:`ProviderUnavailable`, naming the device
node, where it is missing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Protocol, Self

from .._args import int_arg
from ..errors import InvalidArgument
from .allocator import RegionAllocator, align_up
from .buffers import PAGE_SIZE, SharedBuffer
from .dmabuf import (
    DMA_HEAP_DIR,
    DMA_HEAP_IOCTL_ALLOC,
    HEAP_ALLOCATION,
    UDMABUF_CREATE,
    UDMABUF_CREATE_ARGS,
    UDMABUF_DEVICE,
    UDMABUF_FLAGS_CLOEXEC,
)
from .errors import BufferClosed, ProviderUnavailable
from .region import SharedRegion

#: seals of a memfd buffer: a peer holding the fd can neither shrink it under our mapping
#: (a SIGBUS at the next access) nor grow it, nor remove the seals
MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class BufferProvider(Protocol):
    """Anything that allocates shared buffers."""

    def allocate(self, size: int, *, name: str = "amplink-buffer") -> SharedBuffer:
        """A new buffer of ``size`` bytes, owned by the CPU."""
        ...


def _sealed_memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, MEMFD_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class MemfdProvider:
    """Buffers backed by their own sealed memfd (``/memfd:NAME`` in /proc/PID/maps)."""

    def allocate(self, size: int, *, name: str = "amplink-buffer") -> SharedBuffer:
        """A new memfd of ``size`` bytes; nothing is allocated until pages are touched."""
        int_arg(size, "size", minimum=1)
        fd = _sealed_memfd(name, size)
        try:
            return SharedBuffer(fd, size, name=name, provider="memfd")
        except BaseException:
            os.close(fd)
            raise


def allocate_buffer(size: int, *, name: str = "amplink-buffer",
                    provider: BufferProvider | None = None) -> SharedBuffer:
    """A new shared buffer of ``size`` bytes from ``provider`` (default: a memfd)."""
    return (provider or MemfdProvider()).allocate(size, name=name)


class CarveoutProvider:
    """Buffers carved out of a fixed region: a resource-table carveout or a reserved memory
    area of a processor. A buffer's fd is the region's fd; its offset says where it is
    in the file (the region's own ``map_offset`` included).

    The managed range is ``[offset, offset + length)`` of ``region``; ``da`` is the
    device address of its start, if the processor sees it at a fixed address (for a
    remoteproc ``Allocation`` pass its ``region``, ``offset``, ``length`` and ``da``).
    Keep the region open while buffers from it are alive.
    """

    def __init__(self, region: SharedRegion, offset: int = 0, length: int | None = None, *,
                 da: int | None = None, name: str = "carveout",
                 align: int = PAGE_SIZE) -> None:
        if length is None:
            length = region.size - offset
        region.check(offset, length)
        if offset % PAGE_SIZE or (da is not None and da % PAGE_SIZE):
            raise InvalidArgument(f"carveout {name!r}: offset 0x{offset:x} and device address "
                             f"must be page-aligned")
        self.region = region
        self.offset = offset
        self.length = length
        self.da = da
        self.name = name
        self.align = align
        self._allocator = RegionAllocator(length, offset, what=f"carveout {name!r}")
        self._lock = threading.Lock()

    def allocate(self, size: int, *, name: str = "amplink-buffer",
                 align: int | None = None) -> SharedBuffer:
        """The lowest free ``size`` bytes aligned to ``align`` (default: the provider's);
        ``MemoryError`` names the carveout when nothing fits."""
        self._check_region()
        with self._lock:
            block = self._allocator.alloc(size, align or self.align)
        try:
            return SharedBuffer(
                self.region.fd, size, offset=self.region.map_offset + block, name=name,
                provider=f"carveout:{self.name}",
                owns_fd=False, check_fd=self._check_region,
                on_close=lambda: self._free(block))
        except BaseException:
            self._free(block)
            raise

    def device_address(self, buffer: SharedBuffer) -> int:
        """The fixed device address of a buffer from this carveout (needs ``da``)."""
        if self.da is None:
            raise InvalidArgument(f"carveout {self.name!r} has no fixed device address")
        block = buffer.offset - self.region.map_offset
        if buffer.provider != f"carveout:{self.name}" or not (
                self.offset <= block < self.offset + self.length):
            raise InvalidArgument(f"buffer {buffer.name!r} is not from carveout {self.name!r}")
        return self.da + (block - self.offset)

    @property
    def used_bytes(self) -> int:
        """Bytes held by live buffers (without alignment padding)."""
        with self._lock:
            return self._allocator.used_bytes

    def _free(self, block: int) -> None:
        with self._lock:
            self._allocator.free(block)

    def _check_region(self) -> None:
        # a closed region's fd number may already name another file: never map it
        if self.region.closed:
            raise BufferClosed(f"the region of carveout {self.name!r} is closed")


class _DeviceNode:
    """An open device node that allocates dma-bufs; closes with the provider."""

    def __init__(self, node: str, what: str, flags: int) -> None:
        self.node = node
        try:
            self._fd = os.open(node, flags | os.O_CLOEXEC)
        except OSError as exc:
            raise ProviderUnavailable(
                exc.errno or errno.ENODEV,
                f"{what} {node} is not available: {exc.strerror}", node) from None
        self.closed = False

    def _ioctl(self, request: int, arg: bytearray, what: str) -> int:
        if self.closed:
            raise BufferClosed(f"{self.node} was closed")
        try:
            return fcntl.ioctl(self._fd, request, arg, True)
        except OSError as exc:
            if exc.errno == errno.ENOTTY:
                raise ProviderUnavailable(
                    errno.ENOTTY, f"{self.node} does not answer {what}: it is not the "
                    f"device it should be", self.node) from None
            raise

    def close(self) -> None:
        """Close the device node (buffers already allocated stay valid)."""
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_dma_heaps(heap_dir: str = DMA_HEAP_DIR) -> list[str]:
    """The dma-buf heaps the kernel offers (names in /dev/dma_heap), none if it has none."""
    try:
        return sorted(os.listdir(heap_dir))
    except FileNotFoundError:
        return []


class DmaHeapProvider(_DeviceNode):
    """Buffers from a Linux dma-buf heap (``/dev/dma_heap/HEAP``, DMA_HEAP_IOCTL_ALLOC)."""

    def __init__(self, heap: str = "system", *, heap_dir: str = DMA_HEAP_DIR) -> None:
        if not heap or "/" in heap:
            raise InvalidArgument(f"heap must be one path component, got {heap!r}")
        self.heap = heap
        super().__init__(os.path.join(heap_dir, heap), "dma-buf heap", os.O_RDONLY)

    def allocate(self, size: int, *, name: str = "amplink-buffer") -> SharedBuffer:
        """A dma-buf of ``size`` bytes (the heap rounds it up to whole pages)."""
        int_arg(size, "size", minimum=1)
        arg = bytearray(HEAP_ALLOCATION.pack(size, 0, os.O_RDWR | os.O_CLOEXEC, 0))
        self._ioctl(DMA_HEAP_IOCTL_ALLOC, arg, "DMA_HEAP_IOCTL_ALLOC")
        fd = HEAP_ALLOCATION.unpack(arg)[1]
        try:
            return SharedBuffer(fd, size, name=name, provider=f"dma-heap:{self.heap}",
                                dmabuf=True)
        except BaseException:
            os.close(fd)
            raise


class UdmabufProvider(_DeviceNode):
    """dma-bufs made from sealed memfds by ``/dev/udmabuf`` (UDMABUF_CREATE)."""

    def __init__(self, device: str = UDMABUF_DEVICE) -> None:
        super().__init__(device, "udmabuf device", os.O_RDWR)

    def allocate(self, size: int, *, name: str = "amplink-buffer") -> SharedBuffer:
        """A dma-buf over a new memfd of ``size`` bytes rounded up to whole pages (udmabuf
        wants the memfd sealed against shrinking and not against writing)."""
        int_arg(size, "size", minimum=1)
        length = align_up(size, PAGE_SIZE)
        memfd = _sealed_memfd(name, length)
        try:
            arg = bytearray(UDMABUF_CREATE_ARGS.pack(memfd, UDMABUF_FLAGS_CLOEXEC, 0, length))
            fd = self._ioctl(UDMABUF_CREATE, arg, "UDMABUF_CREATE")
        finally:
            os.close(memfd)  # the dma-buf holds the pages
        try:
            return SharedBuffer(fd, size, name=name, provider="udmabuf", dmabuf=True)
        except BaseException:
            os.close(fd)
            raise
