"""Providers: sealed memfds, carveout sub-allocation, and the dma-buf providers (which
skip, with the reason naming the device node, where the kernel lacks them)."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
from buffer_kit import assert_nothing_left, fds_named, unique

from amplink.errors import AddressError, InvalidArgument
from amplink.memory import (
    Access,
    BufferClosed,
    CarveoutProvider,
    DmaHeapProvider,
    MemfdProvider,
    ProviderUnavailable,
    SharedRegion,
    UdmabufProvider,
    list_dma_heaps,
)
from amplink.memory.providers import MEMFD_SEALS


@pytest.fixture
def name():
    tag = unique("prov-test")
    yield tag
    assert_nothing_left(tag)


# -- memfd --------------------------------------------------------------------------------
def test_a_memfd_buffer_is_sealed_against_shrinking_and_growing(name):
    with MemfdProvider().allocate(0x2000, name=name) as buf:
        assert fcntl.fcntl(buf.fd, fcntl.F_GET_SEALS) == MEMFD_SEALS
        for size in (0, 0x1000, 0x4000):
            with pytest.raises(PermissionError):
                os.ftruncate(buf.fd, size)
        assert [f.endswith(f"/memfd:{name} (deleted)") for f in fds_named(name)] == [True]


# -- carveout -----------------------------------------------------------------------------
@pytest.fixture
def region(name):
    with SharedRegion.memfd(0x10000, name) as region:
        yield region


def test_carveout_buffers_are_blocks_of_the_region_at_their_offsets(name, region):
    carveout = CarveoutProvider(region, 0x4000, 0x8000, da=0x9000_0000, name="dsp-pool")
    a = carveout.allocate(0x100, name="a")
    b = carveout.allocate(0x1001, name="b")
    try:
        assert (a.fd, b.fd) == (region.fd, region.fd)
        assert (a.offset, b.offset) == (0x4000, 0x5000)  # page-aligned blocks, first fit
        assert a.provider == "carveout:dsp-pool"
        assert carveout.device_address(b) == 0x9000_1000
        assert carveout.used_bytes == 0x1101
        b.write(b"through the buffer", 0x800)
        assert region.read(0x5800, 18) == b"through the buffer"
        region.write(0x4000, b"through the region")
        assert a.read(0, 18) == b"through the region"
    finally:
        a.close()
        b.close()
    assert carveout.used_bytes == 0
    assert carveout.allocate(0x8000, name="all").offset == 0x4000  # blocks merged back


def test_a_carveout_of_a_region_mapped_from_inside_its_file(name):
    # a region may start inside its file (vhost-user guest memory): buffers map the
    # right bytes of the file, and the region sees them at its own offsets
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, 0x6000)
    with SharedRegion.from_fd(fd, 0x4000, map_offset=0x2000) as region:
        carveout = CarveoutProvider(region, 0x1000, 0x2000, da=0x4000_0000)
        with carveout.allocate(0x100, name=name) as buf:
            assert (buf.offset, carveout.device_address(buf)) == (0x3000, 0x4000_0000)
            buf.write(b"inside")
            assert region.read(0x1000, 6) == b"inside"
            assert os.pread(region.fd, 6, 0x3000) == b"inside"


def test_carveout_exhaustion_names_the_carveout(region):
    carveout = CarveoutProvider(region, name="tcm")
    buf = carveout.allocate(0x10000)
    try:
        with pytest.raises(MemoryError, match="carveout 'tcm'"):
            carveout.allocate(1)
    finally:
        buf.close()


def test_carveout_parameters_are_checked(region):
    with pytest.raises(AddressError):
        CarveoutProvider(region, 0x8000, 0x10000)
    with pytest.raises(InvalidArgument, match="page-aligned"):
        CarveoutProvider(region, 0x100, 0x1000)
    with pytest.raises(InvalidArgument, match="page-aligned"):
        CarveoutProvider(region, 0, 0x1000, da=0x10)
    carveout = CarveoutProvider(region)
    with carveout.allocate(1) as buf, pytest.raises(InvalidArgument, match="no fixed device"):
        carveout.device_address(buf)


def test_device_address_refuses_a_foreign_buffer(region, name):
    carveout = CarveoutProvider(region, 0, 0x1000, da=0x1000, name="one")
    with MemfdProvider().allocate(16, name=name) as other:
        with pytest.raises(InvalidArgument, match="not from carveout 'one'"):
            carveout.device_address(other)


def test_a_carveout_buffer_does_not_map_a_closed_region(name):
    region = SharedRegion.memfd(0x4000, name)
    buf = CarveoutProvider(region).allocate(0x1000)
    region.close()
    with pytest.raises(BufferClosed, match="region of carveout"):
        buf.read()
    buf.close()  # never mapped: nothing else to release


def test_a_carveout_in_posix_shared_memory_leaves_nothing_behind(name):
    with SharedRegion.posix(name, 0x4000, exclusive=True, unlink_on_close=True) as region:
        buf = CarveoutProvider(region, 0x1000, 0x2000).allocate(0x800, name=name)
        buf.write(b"shm")
        assert region.read(0x1000, 3) == b"shm"
        buf.close()
    assert not os.path.exists(f"/dev/shm/{name}")


# -- dma-buf heaps and udmabuf --------------------------------------------------------------
def heap_or_skip(heap: str = "system") -> DmaHeapProvider:
    try:
        return DmaHeapProvider(heap)
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))


def udmabuf_or_skip() -> UdmabufProvider:
    try:
        return UdmabufProvider()
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("make", [heap_or_skip, udmabuf_or_skip], ids=["dma-heap", "udmabuf"])
def test_real_dma_buf_round_trip(make, name):
    with make() as provider, provider.allocate(0x3000, name=name) as buf:
        assert buf.is_dmabuf
        with buf.cpu_access(Access.WRITE) as view:  # DMA_BUF_IOCTL_SYNC START/END
            view[-4:] = b"tail"
        assert buf.read(0x3000 - 4) == b"tail"


def test_a_missing_heap_is_reported_with_its_node(tmp_path):
    with pytest.raises(ProviderUnavailable) as info:
        DmaHeapProvider("system", heap_dir=str(tmp_path))
    node = str(tmp_path / "system")
    assert info.value.filename == node and info.value.errno == errno.ENOENT
    assert str(info.value).startswith(f"dma-buf heap {node} is not available")


def test_a_missing_udmabuf_is_reported_with_its_node(tmp_path):
    node = str(tmp_path / "udmabuf")
    with pytest.raises(ProviderUnavailable, match=f"udmabuf device {node} is not available"):
        UdmabufProvider(node)


@pytest.mark.parametrize("make", [
    lambda path: DmaHeapProvider(path.name, heap_dir=str(path.parent)),
    lambda path: UdmabufProvider(str(path)),
], ids=["dma-heap", "udmabuf"])
def test_a_node_that_is_not_the_device_is_reported(tmp_path, make):
    impostor = tmp_path / "impostor"
    impostor.write_bytes(b"")
    with make(impostor) as provider:
        with pytest.raises(ProviderUnavailable, match=f"{impostor} does not answer") as info:
            provider.allocate(0x1000)
        assert info.value.errno == errno.ENOTTY
    with pytest.raises(BufferClosed):
        provider.allocate(0x1000)


def test_heap_names_are_one_path_component():
    with pytest.raises(InvalidArgument, match="heap must be one path component"):
        DmaHeapProvider("../system")


def test_list_dma_heaps(tmp_path):
    assert list_dma_heaps(str(tmp_path / "none")) == []
    (tmp_path / "system").touch()
    (tmp_path / "cma").touch()
    assert list_dma_heaps(str(tmp_path)) == ["cma", "system"]
    assert set(list_dma_heaps()) == (set(os.listdir("/dev/dma_heap"))
                                     if os.path.isdir("/dev/dma_heap") else set())
