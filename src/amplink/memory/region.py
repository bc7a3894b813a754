"""Shared memory regions: memfd, POSIX shared memory objects, and plain files.

A region is one mapping of a shared object, with every access bounds-checked and a
device-address window: the peer sees offset ``o`` at device address ``da_base + o``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Self

from ..errors import AddressError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

POSIX_SHM_DIR = "/dev/shm"


def _checked_size(size: int) -> int:
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"region size must be a positive integer, got {size!r}")
    return size


class SharedRegion:
    """A bounds-checked mapping of shared memory.

    Build one with :meth:`memfd`, :meth:`posix`, :meth:`file` or :meth:`from_fd`.
    The ``mm`` attribute is the raw ``mmap`` for hot paths that have validated their
    offsets already; everything else goes through the checked accessors.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        *,
        kind: str,
        name: str | None = None,
        da_base: int = 0,
        unlink_path: str | None = None,
        map_offset: int = 0,
    ) -> None:
        self.size = _checked_size(size)
        if da_base < 0 or da_base + size > 1 << 64:
            raise AddressError(f"device base 0x{da_base:x} + size 0x{size:x} exceeds 64 bits")
        self.fd = fd
        self.kind = kind
        self.name = name
        self.da_base = da_base
        self._unlink_path = unlink_path
        self.map_offset = map_offset
        # map_offset: where the region starts in the file (a multiple of the page size)
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                            offset=map_offset)
        # Typed views for fields the peer reads while we write them: an item store is
        # one machine store, whereas struct.pack_into zero-fills the field first.
        self._whole = memoryview(self.mm)
        self.u16 = self._whole[:size & ~1].cast("H")
        self.u32 = self._whole[:size & ~3].cast("I")
        self.closed = False

    # -- constructors --
    @classmethod
    def memfd(cls, size: int, name: str = "amplink", *, da_base: int = 0) -> Self:
        """An anonymous shared region (the default for simulation); share it by its fd.

        Its size is sealed: a peer that gets the fd cannot shrink it under our mapping
        (which would turn our next access into SIGBUS) nor grow it.
        """
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, _checked_size(size))
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            return cls(fd, size, kind="memfd", name=name, da_base=da_base)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def posix(
        cls,
        name: str,
        size: int,
        *,
        create: bool = True,
        exclusive: bool = False,
        unlink_on_close: bool = False,
        da_base: int = 0,
    ) -> Self:
        """A named POSIX shared memory object (``/dev/shm/NAME``, as ``shm_open`` does).

        Unlike a memfd it cannot be sealed: a peer that truncates the object makes the
        next access past the new end a SIGBUS. Use it only with peers you run yourself
        (OpenAMP's profile needs it).

        The object is extended to ``size`` if it is smaller; it is never shrunk.
        """
        bare = name.lstrip("/")
        if not bare or "/" in bare:
            raise ValueError(f"POSIX shared memory name must be one path component: {name!r}")
        path = os.path.join(POSIX_SHM_DIR, bare)
        flags = os.O_RDWR | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | (os.O_EXCL if exclusive else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if os.fstat(fd).st_size < _checked_size(size):
                os.ftruncate(fd, size)
            return cls(
                fd, size, kind="posix", name=bare, da_base=da_base,
                unlink_path=path if unlink_on_close else None,
            )
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def file(cls, path: str | os.PathLike[str], size: int, *, da_base: int = 0) -> Self:
        """A region backed by a regular file (created and extended as needed)."""
        fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _checked_size(size):
                os.ftruncate(fd, size)
            return cls(fd, size, kind="file", name=os.fspath(path), da_base=da_base)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, size: int | None = None, *, da_base: int = 0,
                map_offset: int = 0) -> Self:
        """Map an inherited or received fd; the region takes ownership of ``fd``.

        ``map_offset`` (a multiple of the page size) is where the region starts in the file.
        """
        actual = os.fstat(fd).st_size
        if size is None:
            size = actual - map_offset
        if map_offset < 0 or map_offset + size > actual:
            raise AddressError(f"fd {fd} holds {actual} bytes, {size} requested at offset "
                               f"{map_offset}")
        return cls(fd, size, kind="fd", da_base=da_base, map_offset=map_offset)

    # -- address translation --
    def check(self, offset: int, length: int = 1) -> int:
        """Return ``offset`` if ``[offset, offset + length)`` lies inside the region."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise AddressError(
                f"range 0x{offset:x}+0x{length:x} is outside the region of 0x{self.size:x} bytes"
            )
        return offset

    def da_to_offset(self, da: int, length: int = 1) -> int:
        """Translate a device address (and the length used there) to a region offset."""
        offset = da - self.da_base
        if offset < 0 or length < 0 or offset + length > self.size:
            raise AddressError(
                f"device address 0x{da:x}+0x{length:x} is outside "
                f"[0x{self.da_base:x}, 0x{self.da_base + self.size:x})"
            )
        return offset

    def offset_to_da(self, offset: int) -> int:
        """Translate a region offset to the device address the peer uses."""
        self.check(offset, 0)
        return self.da_base + offset

    # -- checked access --
    def read(self, offset: int, length: int) -> bytes:
        self.check(offset, length)
        return self.mm[offset:offset + length]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self.check(offset, n)
        self.mm[offset:offset + n] = data

    def fill(self, offset: int, length: int, value: int = 0) -> None:
        self.check(offset, length)
        self.mm[offset:offset + length] = bytes([value]) * length

    def view(self, offset: int, length: int) -> memoryview:
        """A writable view; release it (``with`` or ``.release()``) before :meth:`close`."""
        self.check(offset, length)
        return memoryview(self.mm)[offset:offset + length]

    def read_u8(self, offset: int) -> int:
        return self.mm[self.check(offset, 1)]

    def write_u8(self, offset: int, value: int) -> None:
        self.mm[self.check(offset, 1)] = value

    def read_u16(self, offset: int) -> int:
        return _U16.unpack_from(self.mm, self.check(offset, 2))[0]

    def write_u16(self, offset: int, value: int) -> None:
        _U16.pack_into(self.mm, self.check(offset, 2), value)

    def read_u32(self, offset: int) -> int:
        return _U32.unpack_from(self.mm, self.check(offset, 4))[0]

    def write_u32(self, offset: int, value: int) -> None:
        _U32.pack_into(self.mm, self.check(offset, 4), value)

    def read_u64(self, offset: int) -> int:
        return _U64.unpack_from(self.mm, self.check(offset, 8))[0]

    def write_u64(self, offset: int, value: int) -> None:
        _U64.pack_into(self.mm, self.check(offset, 8), value)

    # -- lifetime --
    def close(self) -> None:
        """Unmap and close the fd (and unlink a POSIX object created with unlink_on_close)."""
        if self.closed:
            return
        self.closed = True
        try:
            for view in (self.u16, self.u32, self._whole):
                view.release()
            self.mm.close()
        finally:
            os.close(self.fd)
            if self._unlink_path is not None:
                try:
                    os.unlink(self._unlink_path)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SharedRegion(kind={self.kind}, name={self.name!r}, size=0x{self.size:x}, "
            f"da_base=0x{self.da_base:x})"
        )
