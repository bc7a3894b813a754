"""The Linux dma-buf uapi amplink uses: ioctl numbers, the CPU access sync, detection.

From include/uapi/linux/dma-buf.h, dma-heap.h and udmabuf.h. Only the ioctls are here;
the providers that allocate with them are in :mod:`.providers`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from .access import Access

# asm-generic/ioctl.h: nr in bits 0-7, type 8-15, size 16-29, direction 30-31
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


_SYNC = struct.Struct("<Q")  # struct dma_buf_sync { __u64 flags; }
#: struct dma_heap_allocation_data { __u64 len; __u32 fd; __u32 fd_flags; __u64 heap_flags; }
HEAP_ALLOCATION = struct.Struct("<QIIQ")
#: struct udmabuf_create { __u32 memfd; __u32 flags; __u64 offset; __u64 size; }
UDMABUF_CREATE_ARGS = struct.Struct("<IIQQ")

DMA_BUF_SYNC_READ = 1
DMA_BUF_SYNC_WRITE = 2
DMA_BUF_SYNC_RW = 3
DMA_BUF_SYNC_START = 0
DMA_BUF_SYNC_END = 4
DMA_BUF_IOCTL_SYNC = _ioc(_IOC_WRITE, "b", 0, _SYNC.size)  # 0x40086200
DMA_HEAP_IOCTL_ALLOC = _ioc(_IOC_READ | _IOC_WRITE, "H", 0, HEAP_ALLOCATION.size)
UDMABUF_CREATE = _ioc(_IOC_WRITE, "u", 0x42, UDMABUF_CREATE_ARGS.size)
UDMABUF_FLAGS_CLOEXEC = 0x01

DMA_HEAP_DIR = "/dev/dma_heap"
UDMABUF_DEVICE = "/dev/udmabuf"


def sync_flags(access: Access, end: bool) -> int:
    """The ``dma_buf_sync.flags`` for the start or end of a CPU access bracket."""
    return int(access) | (DMA_BUF_SYNC_END if end else DMA_BUF_SYNC_START)


def dma_buf_sync(fd: int, access: Access, end: bool) -> None:
    """Issue ``DMA_BUF_IOCTL_SYNC`` on a dma-buf fd (retried on EINTR/EAGAIN, as the
    kernel's documentation asks); any other failure is the kernel's ``OSError``."""
    arg = _SYNC.pack(sync_flags(access, end))
    while True:
        try:
            fcntl.ioctl(fd, DMA_BUF_IOCTL_SYNC, arg)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINTR, errno.EAGAIN):
                raise


def is_dmabuf(fd: int) -> bool:
    """True if ``fd`` is a dma-buf (its /proc link names the dma-buf file system)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return target.startswith(("/dmabuf:", "anon_inode:dmabuf"))
