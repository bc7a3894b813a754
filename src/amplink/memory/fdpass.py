"""Passing a buffer to another process: its fd by SCM_RIGHTS, with a small header.

One message on a Unix ``SOCK_SEQPACKET`` (or ``SOCK_DGRAM``) socket carries one buffer:
exactly one fd and the header ``struct { char magic[4] = "AMBF"; u32 id; u32 flags;
u16 name_len; u16 reserved = 0; u64 offset; u64 size; char name[name_len]; }``
(little-endian, packed, name UTF-8 and at most 64 bytes). The buffer is ``[offset,
offset + size)`` of the fd.

The receiver trusts nothing: the header is decoded strictly, the fd must be a memory
object (a regular file, such as a memfd, or a dma-buf) holding the whole range by
``fstat``, and a memfd must be sealed against shrinking, or a sender could truncate it
under the receiver's mapping (a SIGBUS at the next access). Every fd received with a
refused message is closed.
"""

from __future__ import annotations

import array
import enum
import fcntl
import os
import select
import socket
import stat
import struct
from dataclasses import dataclass

from ..errors import InvalidArgument, LinkDown, ReceiveTimeout
from .buffers import SharedBuffer
from .dmabuf import is_dmabuf
from .errors import PeerBufferError

MAGIC = b"AMBF"
_HEADER = struct.Struct("<4sIIHHQQ")
HEADER_SIZE = _HEADER.size
MAX_NAME = 64
#: the receiver maps the buffer read-only (the sender also sends a read-only fd if it can)
FLAG_READ_ONLY = 1
_KNOWN_FLAGS = FLAG_READ_ONLY
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x10)
_MAX_FDS = 8  # room for a few fds: more than one is refused, and every one is closed


class FdPassFault(enum.StrEnum):
    """Why a received buffer message was refused."""

    MALFORMED = "malformed buffer header"
    TRUNCATED = "message or its file descriptors were truncated"
    FD_COUNT = "a buffer message carries exactly one file descriptor"
    NOT_MEMORY = "the file descriptor is not a mappable memory object"
    OUT_OF_RANGE = "offset and size do not fit the memory object"
    UNSEALED = "the memory object can be shrunk under our mapping (no F_SEAL_SHRINK)"


@dataclass(frozen=True, slots=True)
class BufferHeader:
    """What travels with a buffer's fd: the sender's id, the range and flags, a name."""

    id: int
    offset: int
    size: int
    flags: int = 0
    name: str = ""

    @property
    def read_only(self) -> bool:
        return bool(self.flags & FLAG_READ_ONLY)

    def pack(self) -> bytes:
        """The wire form; :class:`InvalidArgument` (a ``ValueError``) if a field does not
        fit or the name is too long or not printable."""
        name = self.name.encode()
        if not (0 <= self.id <= _U32_MAX and 0 <= self.offset <= _U64_MAX
                and 0 < self.size <= _U64_MAX and not self.flags & ~_KNOWN_FLAGS
                and self.flags >= 0 and len(name) <= MAX_NAME and self.name.isprintable()):
            raise InvalidArgument(f"{self!r} cannot be sent")
        return _HEADER.pack(MAGIC, self.id, self.flags, len(name), 0, self.offset,
                            self.size) + name

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> BufferHeader:
        """Decode a header a peer sent; :class:`PeerBufferError` unless it is exactly one
        well-formed header."""
        if len(data) < _HEADER.size:
            raise _bad(FdPassFault.MALFORMED, f"{len(data)} bytes, a header is at least "
                                              f"{_HEADER.size}")
        magic, id, flags, name_len, reserved, offset, size = _HEADER.unpack_from(data)
        if magic != MAGIC or reserved or flags & ~_KNOWN_FLAGS or size == 0:
            raise _bad(FdPassFault.MALFORMED, f"magic {magic!r}, reserved {reserved}, "
                                              f"flags 0x{flags:x}, size {size}")
        if name_len > MAX_NAME or len(data) != _HEADER.size + name_len:
            raise _bad(FdPassFault.MALFORMED, f"name of {name_len} bytes in a message of "
                                              f"{len(data)}")
        try:
            name = bytes(data[_HEADER.size:]).decode()
        except UnicodeDecodeError:
            raise _bad(FdPassFault.MALFORMED, "name is not UTF-8") from None
        if not name.isprintable():
            raise _bad(FdPassFault.MALFORMED, f"name {name!r} is not printable")
        return cls(id, offset, size, flags, name)


def _bad(reason: FdPassFault, detail: str) -> PeerBufferError:
    return PeerBufferError(reason, detail)


def _wire_name(name: str) -> str:
    """``name`` made printable and cut to MAX_NAME bytes on a character boundary."""
    printable = "".join(c if c.isprintable() else "?" for c in name)
    return printable.encode()[:MAX_NAME].decode(errors="ignore")


def _check_socket(sock: socket.socket) -> None:
    if sock.family != socket.AF_UNIX or sock.type not in (socket.SOCK_SEQPACKET,
                                                          socket.SOCK_DGRAM):
        raise InvalidArgument("sock must be an AF_UNIX SOCK_SEQPACKET or SOCK_DGRAM socket")


def send_buffer(sock: socket.socket, buffer: SharedBuffer, *, id: int = 0,
                read_only: bool = False) -> BufferHeader:
    """Send ``buffer``'s fd, range and name as one message; returns the header sent.

    With ``read_only`` (or for a read-only buffer) the receiver maps it read-only; a
    memfd's fd is then reopened read-only for the message (through /proc/self/fd), so
    that the receiver cannot write it at all. Ownership does not change: lend the buffer
    through a :class:`~amplink.memory.table.BufferTable` for that.
    """
    _check_socket(sock)
    read_only = read_only or buffer.read_only
    header = BufferHeader(id, buffer.offset, buffer.size,
                          FLAG_READ_ONLY if read_only else 0, _wire_name(buffer.name))
    data = header.pack()
    fd = buffer.fd
    sent_fd = fd
    if read_only and not buffer.is_dmabuf:
        sent_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [sent_fd]))])
    finally:
        if sent_fd != fd:
            os.close(sent_fd)
    return header


def recv_buffer(sock: socket.socket, *, timeout: float | None = None,
                require_sealed: bool = True,
                max_size: int | None = None) -> tuple[BufferHeader, SharedBuffer]:
    """Receive one buffer message: the header and the buffer, mapped on first access.

    Raises :class:`~amplink.errors.ReceiveTimeout` after ``timeout`` seconds without a
    message, :class:`~amplink.errors.LinkDown` when the peer closed its end, and
    :class:`PeerBufferError` (``reason`` a :class:`FdPassFault`) for a message that does
    not hold up; the fds of a refused message are closed. ``require_sealed=False``
    accepts memory objects that cannot be sealed (POSIX shared memory, files) from a
    peer you trust not to truncate them; ``max_size`` bounds the size a peer may claim.
    """
    _check_socket(sock)
    if timeout is not None:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(max(0.0, timeout) * 1000):
            raise ReceiveTimeout(f"no buffer message within {timeout} s")
    data, ancillary, msg_flags, _ = sock.recvmsg(
        _HEADER.size + MAX_NAME + 1, socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    try:
        if not data and not fds and sock.type == socket.SOCK_SEQPACKET:
            raise LinkDown("the peer closed its end of the buffer socket")
        if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise _bad(FdPassFault.TRUNCATED, f"message flags 0x{msg_flags:x}")
        if len(fds) != 1:
            raise _bad(FdPassFault.FD_COUNT, f"got {len(fds)}")
        header = BufferHeader.unpack(data)
        if max_size is not None and header.size > max_size:
            raise _bad(FdPassFault.OUT_OF_RANGE, f"size 0x{header.size:x} exceeds the "
                                                 f"limit 0x{max_size:x}")
        return header, _import(fds[0], header, require_sealed)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def import_buffer(fd: int, header: BufferHeader, *, require_sealed: bool = True
                  ) -> SharedBuffer:
    """Check an fd a peer passed against ``header`` as :func:`recv_buffer` does, and wrap
    it: the buffer takes the fd. :class:`PeerBufferError` (and the fd still the
    caller's to close) if it does not hold up."""
    return _import(fd, header, require_sealed)


def _import(fd: int, header: BufferHeader, require_sealed: bool) -> SharedBuffer:
    """Check a received fd against the header and wrap it (the buffer takes the fd)."""
    st = os.fstat(fd)
    dmabuf = is_dmabuf(fd)
    access_mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if not (stat.S_ISREG(st.st_mode) or dmabuf) or access_mode == os.O_WRONLY:
        raise _bad(FdPassFault.NOT_MEMORY, f"mode 0o{st.st_mode:o}, access mode {access_mode}")
    if header.offset > st.st_size or header.size > st.st_size - header.offset:
        raise _bad(FdPassFault.OUT_OF_RANGE, f"0x{header.offset:x}+0x{header.size:x} in an "
                                             f"object of 0x{st.st_size:x} bytes")
    read_only = header.read_only or access_mode == os.O_RDONLY
    if not dmabuf:  # a dma-buf's size is fixed for its life
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:  # not a memfd/shmem file: it cannot be sealed
            seals = 0
        if require_sealed and not seals & fcntl.F_SEAL_SHRINK:
            raise _bad(FdPassFault.UNSEALED, f"seals 0x{seals:x}")
        if seals & (fcntl.F_SEAL_WRITE | _F_SEAL_FUTURE_WRITE):
            read_only = True  # a shared writable mapping would be refused
    return SharedBuffer(fd, header.size, offset=header.offset,
                        name=header.name or f"peer-buffer-{header.id}", provider="peer",
                        read_only=read_only, dmabuf=dmabuf)
