"""The dma-buf uapi numbers and sync flags are Linux's; a memfd is not a dma-buf."""

from __future__ import annotations

import os

import pytest

from amplink.memory import Access
from amplink.memory import dmabuf as uapi


def test_ioctl_numbers_are_the_kernels():
    # include/uapi/linux/dma-buf.h, dma-heap.h, udmabuf.h on a 64-bit Linux
    assert uapi.DMA_BUF_IOCTL_SYNC == 0x40086200
    assert uapi.DMA_HEAP_IOCTL_ALLOC == 0xC0184800
    assert uapi.UDMABUF_CREATE == 0x40187542
    assert uapi.HEAP_ALLOCATION.size == 24 and uapi.UDMABUF_CREATE_ARGS.size == 24


@pytest.mark.parametrize("access,end,flags", [
    (Access.READ, False, 1), (Access.WRITE, False, 2), (Access.READ_WRITE, False, 3),
    (Access.READ, True, 5), (Access.WRITE, True, 6), (Access.READ_WRITE, True, 7),
])
def test_sync_flags(access, end, flags):
    assert uapi.sync_flags(access, end) == flags


def test_access_values_are_libmetals_and_dma_bufs():
    assert (Access.READ, Access.WRITE, Access.READ_WRITE) == (1, 2, 3)
    assert (uapi.DMA_BUF_SYNC_READ, uapi.DMA_BUF_SYNC_WRITE, uapi.DMA_BUF_SYNC_RW) == (1, 2, 3)


def test_a_memfd_is_not_a_dma_buf():
    fd = os.memfd_create("not-a-dmabuf", os.MFD_CLOEXEC)
    try:
        assert not uapi.is_dmabuf(fd)
    finally:
        os.close(fd)
    assert not uapi.is_dmabuf(fd)  # a closed fd neither
