"""Passing buffers by SCM_RIGHTS in one process: the header codec, and a hostile sender
whose every bad message is refused with its fds closed."""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import socket
import struct

import pytest
from buffer_kit import assert_nothing_left, fds_named, unique
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import InvalidArgument, LinkDown, ReceiveTimeout, RemoteProtocolError
from amplink.memory import (
    Access,
    BufferHeader,
    CarveoutProvider,
    FdPassFault,
    OwnershipError,
    PeerBufferError,
    ReadOnlyBuffer,
    SharedRegion,
    allocate_buffer,
    recv_buffer,
    send_buffer,
)
from amplink.memory.fdpass import FLAG_READ_ONLY, HEADER_SIZE, MAGIC, MAX_NAME

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
RAW = struct.Struct("<4sIIHHQQ")


@pytest.fixture
def name():
    tag = unique("fdpass-test")
    yield tag
    assert_nothing_left(tag)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def raw_send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def sealed_memfd(name: str, size: int, seals: int = fcntl.F_SEAL_SHRINK) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


# -- header codec ---------------------------------------------------------------------------
def test_header_wire_format():
    header = BufferHeader(7, 0x1000, 0x2000, FLAG_READ_ONLY, "frame")
    assert header.pack() == RAW.pack(b"AMBF", 7, 1, 5, 0, 0x1000, 0x2000) + b"frame"
    assert HEADER_SIZE == 32


names = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn")),
                max_size=20).filter(lambda s: s.isprintable() and len(s.encode()) <= MAX_NAME)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, U32), st.integers(0, U64), st.integers(1, U64), st.sampled_from([0, 1]),
       names)
def test_every_sendable_header_round_trips(id, offset, size, flags, name):
    header = BufferHeader(id, offset, size, flags, name)
    assert BufferHeader.unpack(header.pack()) == header


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=HEADER_SIZE + MAX_NAME + 4)
       | st.builds(lambda h, tail: RAW.pack(*h) + tail,
                   st.tuples(st.sampled_from([MAGIC, b"AMBG"]), st.integers(0, U32),
                             st.integers(0, 3), st.integers(0, 80), st.integers(0, 1),
                             st.integers(0, U64), st.integers(0, U64)),
                   st.binary(max_size=80)))
def test_any_bytes_decode_strictly_or_fail_typed(data):
    try:
        header = BufferHeader.unpack(data)
    except PeerBufferError as exc:
        assert exc.reason is FdPassFault.MALFORMED
    else:
        assert header.pack() == data  # only canonical encodings are accepted


@pytest.mark.parametrize("header", [
    BufferHeader(-1, 0, 1), BufferHeader(U32 + 1, 0, 1), BufferHeader(0, -1, 1),
    BufferHeader(0, 0, 0), BufferHeader(0, 0, U64 + 1), BufferHeader(0, 0, 1, 2),
    BufferHeader(0, 0, 1, -1), BufferHeader(0, 0, 1, 0, "x" * 65),
    BufferHeader(0, 0, 1, 0, "bad\nname"),
])
def test_unsendable_headers(header):
    with pytest.raises(InvalidArgument):
        header.pack()


# -- passing --------------------------------------------------------------------------------
def test_a_buffer_passed_and_mapped_again_shares_its_bytes(pair, name):
    a, b = pair
    with allocate_buffer(0x5000, name=name) as buf:
        buf.write(b"from the sender", 0x4000)
        sent = send_buffer(a, buf, id=42)
        header, got = recv_buffer(b, timeout=5)
        with got:
            assert header == sent == BufferHeader(42, 0, 0x5000, 0, name)
            assert (got.name, got.size, got.provider, got.read_only) == (name, 0x5000, "peer",
                                                                         False)
            assert got.read(0x4000, 15) == b"from the sender"
            got.write(b"from the receiver", 0x10)
            assert buf.read(0x10, 17) == b"from the receiver"


def test_a_carveout_buffer_travels_as_the_carveout_fd_and_an_offset(pair, name):
    a, b = pair
    with SharedRegion.memfd(0x8000, name) as region:
        carveout = CarveoutProvider(region, 0x2000, 0x4000)
        with carveout.allocate(0x100, name="piece") as buf:
            buf.write(b"carved")
            send_buffer(a, buf, id=1)
            header, got = recv_buffer(b, timeout=5)
            with got:
                assert (header.offset, header.size, got.offset) == (0x2000, 0x100, 0x2000)
                assert got.read(0, 6) == b"carved"
                assert os.fstat(got.fd).st_ino == os.fstat(region.fd).st_ino


def test_read_only_passing_gives_an_fd_the_receiver_cannot_write(pair, name):
    a, b = pair
    with allocate_buffer(0x1000, name=name) as buf:
        buf.write(b"look, don't touch")
        header = send_buffer(a, buf, id=3, read_only=True)
        assert header.read_only
        _, got = recv_buffer(b, timeout=5)
        with got:
            assert got.read_only and got.read(0, 17) == b"look, don't touch"
            with pytest.raises(ReadOnlyBuffer):
                got.write(b"x")
            assert fcntl.fcntl(got.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            with pytest.raises(PermissionError):  # even bypassing amplink
                mmap.mmap(got.fd, 0x1000, mmap.MAP_SHARED, mmap.PROT_WRITE)
            # a receiver passes on no more than it got
            send_buffer(a, got)
            _, again = recv_buffer(b, timeout=5)
            with again:
                assert again.read_only


def test_a_write_sealed_memfd_is_mapped_read_only(pair, name):
    a, b = pair
    fd = sealed_memfd(name, 0x1000, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE)
    try:
        raw_send(a, BufferHeader(1, 0, 0x1000, 0, name).pack(), [fd])
    finally:
        os.close(fd)
    _, got = recv_buffer(b, timeout=5)
    with got:
        assert got.read_only and got.read(0, 4) == b"\0" * 4


def test_a_buffer_in_posix_shm_needs_require_sealed_false(pair, name):
    a, b = pair
    with SharedRegion.posix(name, 0x2000, exclusive=True, unlink_on_close=True) as region:
        with CarveoutProvider(region).allocate(0x1000, name=name) as buf:
            send_buffer(a, buf)
            with pytest.raises(PeerBufferError, match="no F_SEAL_SHRINK"):
                recv_buffer(b, timeout=5)
            send_buffer(a, buf)
            _, got = recv_buffer(b, timeout=5, require_sealed=False)
            got.close()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_timeout_and_peer_gone(pair):
    a, b = pair
    with pytest.raises(ReceiveTimeout):
        recv_buffer(b, timeout=0.05)
    a.close()
    with pytest.raises(LinkDown):
        recv_buffer(b, timeout=5)


def test_only_message_sockets_carry_buffers(name):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with allocate_buffer(16, name=name) as buf, pytest.raises(InvalidArgument,
                                                                  match="SEQPACKET"):
            send_buffer(a, buf)
        with pytest.raises(InvalidArgument):
            recv_buffer(b, timeout=1)
    finally:
        a.close()
        b.close()


# -- a hostile sender ---------------------------------------------------------------------
def refused(sock: socket.socket, reason: FdPassFault, **options: object) -> PeerBufferError:
    with pytest.raises(PeerBufferError) as info:
        recv_buffer(sock, timeout=5, **options)  # type: ignore[arg-type]
    assert info.value.reason is reason, info.value
    return info.value


@pytest.mark.parametrize("data,reason", [
    (b"", FdPassFault.MALFORMED),
    (b"AMBF", FdPassFault.MALFORMED),
    (RAW.pack(b"XXXX", 1, 0, 0, 0, 0, 0x1000), FdPassFault.MALFORMED),
    (RAW.pack(MAGIC, 1, 4, 0, 0, 0, 0x1000), FdPassFault.MALFORMED),  # unknown flag
    (RAW.pack(MAGIC, 1, 0, 0, 1, 0, 0x1000), FdPassFault.MALFORMED),  # reserved
    (RAW.pack(MAGIC, 1, 0, 0, 0, 0, 0), FdPassFault.MALFORMED),  # empty
    (RAW.pack(MAGIC, 1, 0, 4, 0, 0, 0x1000) + b"ab", FdPassFault.MALFORMED),  # short name
    (RAW.pack(MAGIC, 1, 0, 2, 0, 0, 0x1000) + b"\xff\xfe", FdPassFault.MALFORMED),
    (RAW.pack(MAGIC, 1, 0, 2, 0, 0, 0x1000) + b"\x1b[", FdPassFault.MALFORMED),
    (RAW.pack(MAGIC, 1, 0, 70, 0, 0, 0x1000) + b"a" * 70, FdPassFault.TRUNCATED),
    (RAW.pack(MAGIC, 1, 0, 0, 0, 0, 0x1001), FdPassFault.OUT_OF_RANGE),
    (RAW.pack(MAGIC, 1, 0, 0, 0, 1, 0x1000), FdPassFault.OUT_OF_RANGE),
    (RAW.pack(MAGIC, 1, 0, 0, 0, U64, 2), FdPassFault.OUT_OF_RANGE),
    (RAW.pack(MAGIC, 1, 0, 0, 0, 2, U64), FdPassFault.OUT_OF_RANGE),
])
def test_bad_headers_are_refused_and_the_fd_closed(pair, name, data, reason):
    a, b = pair
    fd = sealed_memfd(name, 0x1000)
    try:
        raw_send(a, data, [fd])
    finally:
        os.close(fd)
    refused(b, reason)
    assert fds_named(name) == []


@pytest.mark.parametrize("count,reason", [(0, FdPassFault.FD_COUNT), (2, FdPassFault.FD_COUNT),
                                          (8, FdPassFault.FD_COUNT),
                                          (20, FdPassFault.TRUNCATED)])
def test_anything_but_one_fd_is_refused_and_every_fd_closed(pair, name, count, reason):
    a, b = pair
    fd = sealed_memfd(name, 0x1000)
    try:
        raw_send(a, BufferHeader(1, 0, 0x1000).pack(), [fd] * count)
    finally:
        os.close(fd)
    refused(b, reason)
    assert fds_named(name) == []


def test_the_object_must_be_memory(pair):
    a, b = pair
    r, w = os.pipe()
    other_a, other_b = socket.socketpair()
    try:
        for fd in (r, w, other_a.fileno()):
            raw_send(a, BufferHeader(1, 0, 1).pack(), [fd])
            refused(b, FdPassFault.NOT_MEMORY)
        dev_zero = os.open("/dev/zero", os.O_RDWR)
        raw_send(a, BufferHeader(1, 0, 1).pack(), [dev_zero])
        os.close(dev_zero)
        refused(b, FdPassFault.NOT_MEMORY)
    finally:
        for fd in (r, w):
            os.close(fd)
        other_a.close()
        other_b.close()


def test_a_write_only_fd_is_refused(pair, name):
    a, b = pair
    fd = sealed_memfd(name, 0x1000)
    wo = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
    try:
        raw_send(a, BufferHeader(1, 0, 0x1000).pack(), [wo])
    finally:
        os.close(wo)
        os.close(fd)
    refused(b, FdPassFault.NOT_MEMORY)


def test_an_unsealed_memfd_is_refused(pair, name):
    # the sender could shrink it under our mapping: the next access would be a SIGBUS
    a, b = pair
    fd = sealed_memfd(name, 0x1000, seals=0)
    try:
        raw_send(a, BufferHeader(1, 0, 0x1000).pack(), [fd])
        refused(b, FdPassFault.UNSEALED)
        raw_send(a, BufferHeader(1, 0, 0x1000).pack(), [fd])
        _, got = recv_buffer(b, timeout=5, require_sealed=False)  # a peer trusted not to
        got.close()
    finally:
        os.close(fd)


def test_max_size_bounds_what_a_peer_may_claim(pair, name):
    a, b = pair
    fd = sealed_memfd(name, 0x2000)
    try:
        raw_send(a, BufferHeader(1, 0, 0x2000).pack(), [fd])
        refused(b, FdPassFault.OUT_OF_RANGE, max_size=0x1000)
        raw_send(a, BufferHeader(1, 0, 0x1000).pack(), [fd])
        _, got = recv_buffer(b, timeout=5, max_size=0x1000)
        got.close()
    finally:
        os.close(fd)


def test_received_fds_are_close_on_exec(pair, name):
    a, b = pair
    with allocate_buffer(16, name=name) as buf:
        fd = os.open(f"/proc/self/fd/{buf.fd}", os.O_RDWR)  # without O_CLOEXEC
        try:
            raw_send(a, BufferHeader(1, 0, 16).pack(), [fd])
        finally:
            os.close(fd)
        _, got = recv_buffer(b, timeout=5)
        with got:
            assert fcntl.fcntl(got.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_a_received_buffer_obeys_the_ownership_rules(pair, name):
    a, b = pair
    with allocate_buffer(16, name=name) as buf:
        send_buffer(a, buf)
        _, got = recv_buffer(b, timeout=5)
        with got:
            got.to_device("dsp0")
            with pytest.raises(OwnershipError, match="owned by device 'dsp0'"):
                got.read()
            got.to_cpu()
            with got.cpu_access(Access.READ) as view:
                assert view.readonly


def test_send_refuses_a_closed_buffer(pair, name):
    buf = allocate_buffer(16, name=name)
    buf.close()
    with pytest.raises(ValueError, match="closed"):
        send_buffer(pair[0], buf)


def test_a_refused_message_is_a_protocol_error_not_an_io_error(pair):
    a, b = pair
    raw_send(a, b"junk", [])
    err = refused(b, FdPassFault.FD_COUNT)
    assert isinstance(err, RemoteProtocolError) and not isinstance(err, OSError)
