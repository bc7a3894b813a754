"""SharedRegion: every kind of backing, bounds checks on every accessor, da translation."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import AddressError, AmplinkError
from amplink.memory import SharedRegion
from amplink.memory.region import POSIX_SHM_DIR

SIZE = 0x1000


@pytest.fixture
def region():
    with SharedRegion.memfd(SIZE, "test-region") as r:
        yield r


@pytest.fixture
def shm_name():
    """A POSIX shm name nobody else uses; the object is unlinked afterwards in any case."""
    if not os.path.isdir(POSIX_SHM_DIR):
        pytest.skip(f"{POSIX_SHM_DIR} is not available")
    name = f"amplink-test-{os.getpid()}-{uuid.uuid4().hex}"
    yield name
    try:
        os.unlink(os.path.join(POSIX_SHM_DIR, name))
    except FileNotFoundError:
        pass


# -- constructors --
def test_memfd_is_zeroed_and_writable(region):
    assert region.kind == "memfd"
    assert region.size == SIZE
    assert region.read(0, SIZE) == bytes(SIZE)
    region.write(0x10, b"hello")
    assert region.read(0x10, 5) == b"hello"


def test_memfd_is_shared_through_its_fd(region):
    # A second mapping of the same fd sees the writes of the first.
    with SharedRegion.from_fd(os.dup(region.fd)) as other:
        assert other.kind == "fd"
        assert other.size == SIZE
        region.write_u32(0x20, 0xDEADBEEF)
        assert other.read_u32(0x20) == 0xDEADBEEF
        other.write(0x100, b"back")
        assert region.read(0x100, 4) == b"back"


@pytest.mark.parametrize("size", [0, -1, 1.5, "10"])
def test_bad_size_is_refused(size):
    with pytest.raises((ValueError, TypeError)):
        SharedRegion.memfd(size)


def test_posix_create_share_and_unlink(shm_name):
    path = os.path.join(POSIX_SHM_DIR, shm_name)
    with SharedRegion.posix(shm_name, SIZE, exclusive=True) as a:
        assert a.kind == "posix"
        assert os.path.exists(path)
        a.write(0, b"posix")
        # a second opener (no create) maps the same object
        with SharedRegion.posix("/" + shm_name, SIZE, create=False) as b:
            assert b.read(0, 5) == b"posix"
        # exclusive creation of an existing name fails
        with pytest.raises(FileExistsError):
            SharedRegion.posix(shm_name, SIZE, exclusive=True)
    # not unlinked unless asked
    assert os.path.exists(path)
    os.unlink(path)


def test_posix_unlink_on_close(shm_name):
    path = os.path.join(POSIX_SHM_DIR, shm_name)
    region = SharedRegion.posix(shm_name, SIZE, unlink_on_close=True)
    assert os.path.exists(path)
    region.close()
    assert not os.path.exists(path)
    region.close()  # idempotent


def test_posix_missing_without_create(shm_name):
    with pytest.raises(FileNotFoundError):
        SharedRegion.posix(shm_name, SIZE, create=False)


@pytest.mark.parametrize("name", ["", "/", "a/b", "/a/b"])
def test_posix_bad_names(name):
    with pytest.raises(ValueError):
        SharedRegion.posix(name, SIZE)


def test_posix_never_shrinks(shm_name):
    with SharedRegion.posix(shm_name, 2 * SIZE, unlink_on_close=True) as big:
        big.write(2 * SIZE - 1, b"\x7f")
        with SharedRegion.posix(shm_name, SIZE, create=False) as small:
            assert small.size == SIZE
        assert os.fstat(big.fd).st_size == 2 * SIZE
        assert big.read_u8(2 * SIZE - 1) == 0x7F


def test_file_backed_region(tmp_path):
    path = tmp_path / "shm.bin"
    with SharedRegion.file(path, SIZE) as r:
        assert r.kind == "file"
        assert path.stat().st_size == SIZE
        r.write(0x40, b"persist")
    assert path.read_bytes()[0x40:0x47] == b"persist"
    # reopening maps the same contents
    with SharedRegion.file(str(path), SIZE) as r:
        assert r.read(0x40, 7) == b"persist"


def test_from_fd_sizes(region):
    fd = os.dup(region.fd)
    with SharedRegion.from_fd(fd, SIZE // 2) as part:
        assert part.size == SIZE // 2
        with pytest.raises(AddressError):
            part.read(SIZE // 2, 1)


def test_from_fd_larger_than_the_object_is_refused(region):
    fd = os.dup(region.fd)
    try:
        with pytest.raises(AddressError):
            SharedRegion.from_fd(fd, SIZE + 1)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def test_close_is_idempotent_and_closes_the_fd():
    r = SharedRegion.memfd(SIZE)
    fd = r.fd
    r.close()
    assert r.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    r.close()


# -- bounds checks --
# (accessor name, call) pairs; each call is made with an offset that must be refused.
ACCESSORS = {
    "check": lambda r, off: r.check(off, 1),
    "read": lambda r, off: r.read(off, 1),
    "write": lambda r, off: r.write(off, b"\x01"),
    "fill": lambda r, off: r.fill(off, 1),
    "view": lambda r, off: r.view(off, 1),
    "read_u8": lambda r, off: r.read_u8(off),
    "write_u8": lambda r, off: r.write_u8(off, 1),
    "read_u16": lambda r, off: r.read_u16(off),
    "write_u16": lambda r, off: r.write_u16(off, 1),
    "read_u32": lambda r, off: r.read_u32(off),
    "write_u32": lambda r, off: r.write_u32(off, 1),
    "read_u64": lambda r, off: r.read_u64(off),
    "write_u64": lambda r, off: r.write_u64(off, 1),
    "offset_to_da": lambda r, off: r.offset_to_da(off),
    "da_to_offset": lambda r, off: r.da_to_offset(r.da_base + off),
}
WIDTH = {"read_u16": 2, "write_u16": 2, "read_u32": 4, "write_u32": 4, "read_u64": 8,
         "write_u64": 8}


@pytest.mark.parametrize("name", sorted(ACCESSORS))
@pytest.mark.parametrize("where", ["negative", "far-negative", "past-end", "straddle-end"])
def test_every_accessor_is_bounds_checked(region, name, where):
    width = WIDTH.get(name, 1)
    offset = {
        "negative": -1,
        "far-negative": -SIZE - 8,
        "past-end": SIZE + 1 if name == "offset_to_da" else SIZE,
        "straddle-end": SIZE - width + 1,
    }[where]
    if where == "straddle-end" and width == 1:
        offset = SIZE + 7 if name == "offset_to_da" else SIZE
    before = region.read(0, SIZE)
    with pytest.raises(AddressError) as info:
        ACCESSORS[name](region, offset)
    assert isinstance(info.value, AmplinkError)
    assert isinstance(info.value, ValueError)
    assert region.read(0, SIZE) == before  # a refused write changed nothing


@pytest.mark.parametrize("call", [
    lambda r: r.check(0, -1),
    lambda r: r.read(0, -1),
    lambda r: r.read(8, -8),
    lambda r: r.fill(0, -1),
    lambda r: r.view(0, -1),
    lambda r: r.view(16, -4),
    lambda r: r.da_to_offset(r.da_base, -1),
    lambda r: r.check(0, SIZE + 1),
    lambda r: r.read(1, SIZE),
    lambda r: r.write(1, bytes(SIZE)),
    lambda r: r.fill(SIZE - 3, 4),
], ids=["check", "read", "read-back", "fill", "view", "view-back", "da_to_offset",
        "check-long", "read-long", "write-long", "fill-long"])
def test_negative_and_oversized_lengths_are_refused(region, call):
    with pytest.raises(AddressError):
        call(region)


def test_accessors_at_the_edges_work(region):
    region.write_u8(SIZE - 1, 0xAB)
    assert region.read_u8(SIZE - 1) == 0xAB
    region.write_u16(SIZE - 2, 0xBEEF)
    assert region.read_u16(SIZE - 2) == 0xBEEF
    region.write_u32(SIZE - 4, 0x12345678)
    assert region.read_u32(SIZE - 4) == 0x12345678
    region.write_u64(SIZE - 8, 0x0102030405060708)
    assert region.read_u64(SIZE - 8) == 0x0102030405060708
    assert region.read(SIZE - 8, 8) == bytes.fromhex("0807060504030201")  # little-endian
    region.fill(0, SIZE, 0x5A)
    assert region.read(0, SIZE) == b"\x5a" * SIZE
    assert region.read(SIZE, 0) == b""
    with region.view(SIZE - 4, 4) as v:
        v[:] = b"abcd"
    assert region.read(SIZE - 4, 4) == b"abcd"


# -- device-address translation --
DA_BASE = 0x3000_0000


@pytest.fixture
def da_region():
    with SharedRegion.memfd(SIZE, da_base=DA_BASE) as r:
        yield r


def test_da_translation_both_ways(da_region):
    r = da_region
    assert r.da_to_offset(DA_BASE) == 0
    assert r.da_to_offset(DA_BASE + 0x123) == 0x123
    assert r.offset_to_da(0) == DA_BASE
    assert r.offset_to_da(0x123) == DA_BASE + 0x123
    assert r.da_to_offset(DA_BASE + SIZE - 16, 16) == SIZE - 16


@pytest.mark.parametrize("da,length", [
    (DA_BASE - 1, 1), (0, 1), (DA_BASE + SIZE, 1), (DA_BASE + SIZE - 15, 16),
    (DA_BASE, SIZE + 1), (DA_BASE, -1), (DA_BASE + SIZE + 0x1000, 0), (-1, 1),
])
def test_da_outside_the_window_is_refused(da_region, da, length):
    with pytest.raises(AddressError):
        da_region.da_to_offset(da, length)


def test_da_base_must_fit_64_bits():
    with pytest.raises(AddressError):
        SharedRegion.memfd(SIZE, da_base=(1 << 64) - SIZE + 1)
    with pytest.raises(AddressError):
        SharedRegion.memfd(SIZE, da_base=-1)
    with SharedRegion.memfd(SIZE, da_base=(1 << 64) - SIZE) as top:
        assert top.offset_to_da(SIZE - 1) == (1 << 64) - 1


@settings(max_examples=100, deadline=None)
@given(offset=st.integers(0, SIZE - 1), length=st.integers(0, SIZE))
def test_da_round_trip(offset, length):
    with SharedRegion.memfd(SIZE, da_base=DA_BASE) as r:
        da = r.offset_to_da(offset)
        if offset + length <= SIZE:
            assert r.da_to_offset(da, length) == offset
        else:
            with pytest.raises(AddressError):
                r.da_to_offset(da, length)
