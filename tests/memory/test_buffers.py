"""SharedBuffer: sizes, lazy mapping, CPU access brackets, stale views, ownership, close."""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import threading
import warnings

import pytest
from buffer_kit import assert_nothing_left, fds_named, mappings_named, unique

from amplink.errors import AddressError, AmplinkError, InvalidArgument, InvalidArgumentType
from amplink.memory import (
    CPU,
    Access,
    BufferClosed,
    MemfdProvider,
    OwnershipError,
    ReadOnlyBuffer,
    SharedBuffer,
    ViewsOutstanding,
    allocate_buffer,
)

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def name():
    tag = unique("buf-test")
    yield tag
    assert_nothing_left(tag)


@pytest.mark.parametrize("size", [1, 7, 4095, 4096, 4097, 3 * MiB + 5])
def test_any_size_round_trips(name, size):
    with allocate_buffer(size, name=name) as buf:
        assert buf.size == size and buf.owner == CPU and buf.provider == "memfd"
        data = bytes(i % 251 for i in range(size))
        buf.write(data)
        assert buf.read() == data
        assert buf.read(size - 1, 1) == data[-1:]


@pytest.mark.parametrize("size,error", [(0, InvalidArgument), (-1, InvalidArgument),
                                        (1.5, InvalidArgumentType), (None, InvalidArgumentType),
                                        (True, InvalidArgumentType)])
def test_bad_sizes(size, error):
    with pytest.raises(error, match="size must be"):
        allocate_buffer(size)


def test_mapping_is_lazy_and_a_gib_costs_only_what_is_touched(name):
    with allocate_buffer(GiB, name=name) as buf:
        assert not buf.mapped and mappings_named(name) == []
        for page in (0, 12345, GiB // 4096 - 1):
            with buf.cpu_access(Access.WRITE, page * 4096, 8) as view:
                view[:] = page.to_bytes(8, "little")
        assert buf.mapped and len(mappings_named(name)) == 1
        for page in (0, 12345, GiB // 4096 - 1):
            assert buf.read(page * 4096, 8) == page.to_bytes(8, "little")
        with buf.cpu_access(Access.READ) as view:
            assert len(view) == GiB  # a view of the whole gibibyte, still nothing touched
        # three pages touched: the memfd holds three pages, not a gibibyte
        assert os.fstat(buf.fd).st_blocks * 512 <= 3 * 4096 * 4


def test_a_read_bracket_gives_a_read_only_view_and_write_brackets_writable_ones(name):
    with allocate_buffer(64, name=name) as buf:
        with buf.cpu_access(Access.READ) as view:
            assert view.readonly
            with pytest.raises(TypeError):
                view[0] = 1
        for access in (Access.WRITE, Access.READ_WRITE, 2, 3):
            with buf.cpu_access(access) as view:
                assert not view.readonly
                view[0] = access
            assert buf.read(0, 1) == bytes([access])


@pytest.mark.parametrize("access,error", [
    (0, InvalidArgument), (4, InvalidArgument), (-1, InvalidArgument),
    (True, InvalidArgumentType), ("READ", InvalidArgumentType), (None, InvalidArgumentType),
])
def test_bad_access_values(name, access, error):
    with allocate_buffer(64, name=name) as buf, pytest.raises(error, match="access must be"):
        buf.cpu_access(access)


def test_the_view_is_released_when_the_bracket_ends(name):
    with allocate_buffer(64, name=name) as buf:
        with buf.cpu_access(Access.WRITE) as view:
            view[0] = 1
        with pytest.raises(ValueError, match="released"):
            view[0] = 2
        with pytest.raises(ValueError, match="released"):
            bytes(view)
        assert buf.read(0, 1) == b"\x01"


def test_a_sub_range_bracket_sees_only_its_range(name):
    with allocate_buffer(0x3000, name=name) as buf:
        with buf.cpu_access(Access.WRITE, 0x1ff0, 0x20) as view:
            assert len(view) == 0x20
            view[:] = b"\xab" * 0x20
        assert buf.read(0x1fef, 0x22) == b"\0" + b"\xab" * 0x20 + b"\0"
        with buf.cpu_access(Access.READ, 0x2000) as view:  # to the end by default
            assert len(view) == 0x1000


@pytest.mark.parametrize("offset,length", [
    (-1, 1), (0, -1), (0, 0x1001), (0x1000, 1), (0x1001, 0), (1 << 64, 1),
    (0x800, (1 << 64) - 0x7ff),  # wraps a 64-bit sum to a small number
])
def test_brackets_and_copies_are_bounds_checked(name, offset, length):
    with allocate_buffer(0x1000, name=name) as buf:
        with pytest.raises(AddressError):
            buf.cpu_access(Access.READ, offset, length)
        with pytest.raises(AddressError):
            buf.slice(offset, length)
        with pytest.raises(AddressError):
            buf.read(offset, length)


def test_a_slice_derived_from_the_view_is_reported_and_blocks_the_device(name):
    with allocate_buffer(64, name=name) as buf:
        with pytest.raises(ViewsOutstanding, match=name):
            with buf.cpu_access(Access.WRITE) as view:
                kept = view[8:16]
        kept[0] = 7  # still live shared memory: exactly why the device may not have it
        with pytest.raises(ViewsOutstanding):
            buf.to_device("dsp0")
        assert buf.owner == CPU
        with pytest.raises(ViewsOutstanding):
            buf.close()
        del kept
        buf.to_device("dsp0")
        assert buf.owner == "dsp0"
        buf.to_cpu()
        assert buf.read(8, 1) == b"\x07"


@pytest.mark.parametrize("derive", [
    lambda v: v.cast("I"),
    lambda v: memoryview(v),
    lambda v: v[::2],
    lambda v: (ctypes.c_char * 8).from_buffer(v),
])
def test_every_kind_of_derived_view_is_caught(name, derive):
    with allocate_buffer(64, name=name) as buf:
        with pytest.raises(ViewsOutstanding):
            with buf.cpu_access(Access.WRITE) as view:
                derived = derive(view)
        with pytest.raises(ViewsOutstanding):
            buf.to_device("dsp0")
        del derived
        buf.to_device("dsp0")
        buf.to_cpu()


def test_views_outstanding_does_not_hide_the_callers_exception(name):
    with allocate_buffer(64, name=name) as buf:
        with pytest.raises(KeyError):
            with buf.cpu_access() as view:
                kept = view[:4]
                raise KeyError("the caller's own")
        # the bracket ended, but the slice still blocks the hand-over
        with pytest.raises(ViewsOutstanding):
            buf.to_device("dsp0")
        del kept
        buf.to_device("dsp0")
        buf.to_cpu()


def test_copies_made_inside_the_bracket_are_fine(name):
    with allocate_buffer(64, name=name) as buf:
        with buf.cpu_access(Access.WRITE) as view:
            view[:4] = b"abcd"
            header = bytes(view[:4])  # the temporary slice dies at once
        assert header == b"abcd"
        buf.to_device("dsp0")
        buf.to_cpu()


def test_cpu_access_while_the_device_owns_it_is_an_error_naming_buffer_and_owner(name):
    with allocate_buffer(64, name=name) as buf:
        buf.to_device("dsp0")
        for call in (lambda: buf.cpu_access(Access.READ).__enter__(),
                     lambda: buf.read(), lambda: buf.write(b"x")):
            with pytest.raises(OwnershipError, match=f"{name}.*dsp0"):
                call()
        with pytest.raises(OwnershipError, match="dsp0"):
            buf.to_device("dsp1")
        with pytest.raises(OwnershipError, match="dsp0"):
            buf.close()
        buf.to_cpu()
        with pytest.raises(OwnershipError, match="CPU already"):
            buf.to_cpu()
        assert isinstance(OwnershipError("x"), AmplinkError | RuntimeError)


def test_handing_to_the_device_inside_a_bracket_is_an_error(name):
    with allocate_buffer(64, name=name) as buf:
        with buf.cpu_access(Access.READ):
            with pytest.raises(OwnershipError, match=f"{name}.*bracket"):
                buf.to_device("dsp0")
            with pytest.raises(OwnershipError):
                buf.close()
        buf.to_device("dsp0")
        buf.to_cpu()


@pytest.mark.parametrize("offset,length", [(1.0, 1), (0, 2.0), (True, 1), (0, None)])
def test_offsets_and_lengths_must_be_ints(name, offset, length):
    with allocate_buffer(0x1000, name=name) as buf:
        with pytest.raises(InvalidArgumentType, match="(offset|length) must be an int"):
            buf.slice(offset, length)
        if length is not None:  # None means "to the end" there
            with pytest.raises(InvalidArgumentType):
                buf.cpu_access(Access.READ, offset, length)


@pytest.mark.parametrize("device,error", [("", InvalidArgument), (CPU, InvalidArgument),
                                          (None, InvalidArgumentType),
                                          (3, InvalidArgumentType)])
def test_device_names_are_checked(name, device, error):
    with allocate_buffer(64, name=name) as buf, pytest.raises(error, match="device must be"):
        buf.to_device(device)


def test_nested_and_concurrent_brackets_all_count(name):
    with allocate_buffer(64, name=name) as buf:
        with buf.cpu_access(Access.READ) as outer, buf.cpu_access(Access.WRITE) as inner:
            inner[0] = 5
            assert outer[0] == 5
        entered = threading.Event()
        leave = threading.Event()

        def hold() -> None:
            with buf.cpu_access(Access.READ):
                entered.set()
                assert leave.wait(10)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert entered.wait(10)
            with pytest.raises(OwnershipError):
                buf.to_device("dsp0")
        finally:
            leave.set()
            thread.join(10)
        assert not thread.is_alive()
        buf.to_device("dsp0")
        buf.to_cpu()


def test_a_bracket_is_entered_once(name):
    with allocate_buffer(64, name=name) as buf:
        bracket = buf.cpu_access()
        with bracket:
            pass
        with pytest.raises(RuntimeError):
            bracket.__enter__()
        buf.to_device("dsp0")  # the failed re-entry left no bracket open
        buf.to_cpu()


def test_a_read_only_buffer_gives_read_only_views_and_refuses_writes(name):
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    os.pwrite(fd, b"hello", 0)
    with SharedBuffer(fd, 4096, name=name, read_only=True) as buf:
        assert buf.read(0, 5) == b"hello"
        with buf.cpu_access(Access.READ) as view:
            assert view.readonly
        for access in (Access.WRITE, Access.READ_WRITE):
            with pytest.raises(ReadOnlyBuffer, match=name) as info:
                buf.cpu_access(access).__enter__()
            assert info.value.errno == errno.EACCES
        with pytest.raises(PermissionError):
            buf.write(b"x")


def test_a_closed_buffer_refuses_everything_and_closes_once(name):
    buf = allocate_buffer(64, name=name)
    buf.read()
    buf.close()
    buf.close()
    assert buf.closed
    for call in (lambda: buf.read(), lambda: buf.to_device("d"), lambda: buf.fd):
        with pytest.raises(BufferClosed, match=name):
            call()


def test_close_releases_fd_and_mapping(name):
    buf = MemfdProvider().allocate(1 << 24, name=name)
    buf.write(b"x", 1 << 23)
    # the buffer's fd, and before Python 3.13 the dup an mmap object keeps
    assert 1 <= len(fds_named(name)) <= 2 and len(mappings_named(name)) == 1
    buf.close()
    assert_nothing_left(name)


def test_a_failed_dma_buf_sync_leaves_no_bracket_open(name):
    # A memfd claimed to be a dma-buf: the kernel answers the real DMA_BUF_IOCTL_SYNC
    # with ENOTTY, which shows the ioctl is issued, and the failure undoes the bracket.
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    with SharedBuffer(fd, 4096, name=name, dmabuf=True) as buf:
        with pytest.raises(OSError) as info:
            buf.cpu_access(Access.READ).__enter__()
        assert info.value.errno == errno.ENOTTY
        buf.to_device("dsp0")  # no bracket was left open
        buf.to_cpu()


def test_buffers_at_an_offset_of_their_fd(name):
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, 0x3000)
    os.pwrite(fd, b"XY", 0x1800)
    spare = os.dup(fd)
    try:
        with SharedBuffer(fd, 0x100, offset=0x17ff, name=name) as buf:
            assert buf.read(0, 4) == b"\0XY\0"
            buf.write(b"Z", 0xff)
            with pytest.raises(AddressError):
                buf.write(b"ZZ", 0xff)
        assert os.pread(spare, 3, 0x18fd) == b"\0Z\0"
    finally:
        os.close(spare)


def test_a_buffer_dropped_without_close_gives_its_fd_back(name):
    buf = allocate_buffer(4096, name=name)
    buf.write(b"x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del buf
        gc.collect()
    assert [str(w.message) for w in caught] == [f"shared buffer {name!r} was not closed"]
    assert_nothing_left(name)
