"""The buffers one side shares with its peers, and who holds each of them.

A :class:`BufferTable` gives each buffer an id, lends buffers to peers (the buffer goes
to the peer: :meth:`SharedBuffer.to_device`), takes them back when a peer says "done",
and takes back at once every buffer of a peer that died. A peer may also hand a buffer
it holds back for a while (:meth:`BufferTable.borrow`: the CPU's until
:meth:`BufferTable.give_back` returns it to that peer), e.g. a frame it filled.
Whatever a peer sends, a :class:`BufferRef` (id, offset, length), a release or a loan
back, is checked against the table; each failed check is a counted fault raised as
:class:`PeerBufferError`, never an access outside a buffer.

A reference travels as ``struct { u32 id; u64 offset; u64 length; }``, little-endian and
packed (20 bytes): :meth:`BufferRef.pack` / :meth:`BufferRef.unpack`.
"""

from __future__ import annotations

import enum
import logging
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from .._args import int_arg, str_arg
from ..errors import InvalidArgument
from .buffers import BufferSlice, SharedBuffer
from .errors import OwnershipError, PeerBufferError

log = logging.getLogger(__name__)

_REF = struct.Struct("<IQQ")
#: the holder of a buffer that no peer holds
LOCAL = "local"
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


class BufferFaultReason(enum.StrEnum):
    """Why a peer's reference or release was refused."""

    MALFORMED = "malformed reference"
    UNKNOWN_ID = "unknown buffer id"
    OUT_OF_RANGE = "range outside the buffer"
    NOT_HELD = "the peer does not hold this buffer"
    DOUBLE_RELEASE = "the peer released this buffer already"
    ACCESS = "an access the buffer does not allow"


@dataclass(frozen=True, slots=True)
class BufferRef:
    """A reference to ``length`` bytes at ``offset`` of table entry ``id``.

    Any values can be represented (a decoded one holds what the peer sent); :meth:`pack`
    refuses what does not fit the wire format and :meth:`BufferTable.resolve` checks the
    rest.
    """

    id: int
    offset: int
    length: int

    SIZE: ClassVar[int] = _REF.size

    def pack(self) -> bytes:
        """The 20-byte wire form; :class:`InvalidArgument` (a ``ValueError``) if a field
        does not fit its width."""
        if not (0 <= self.id <= U32_MAX and 0 <= self.offset <= U64_MAX
                and 0 <= self.length <= U64_MAX):
            raise InvalidArgument(f"{self} does not fit u32 id, u64 offset, u64 length")
        return _REF.pack(self.id, self.offset, self.length)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> BufferRef:
        """Decode a reference from exactly :attr:`SIZE` bytes (else :class:`PeerBufferError`)."""
        if len(data) != _REF.size:
            raise PeerBufferError(BufferFaultReason.MALFORMED,
                                  f"a reference is {_REF.size} bytes, got {len(data)}")
        return cls(*_REF.unpack(data))


@dataclass(frozen=True, slots=True)
class BufferTableStatistics:
    """One table at one moment."""

    name: str
    entries: int
    held_locally: int
    held_by_peer: Mapping[str, int]
    faults: int
    faults_by_reason: Mapping[str, int] = field(default_factory=dict)
    reclaimed: int = 0


@dataclass(slots=True)
class _Entry:
    buffer: SharedBuffer
    holder: str = LOCAL
    last_holder: str = LOCAL  # who released it last: tells a double release from a stray one
    lender: str | None = None  # the peer that handed it to us for a while (borrow)


class BufferTable:
    """Buffer ids, and which side holds each buffer. Thread-safe."""

    def __init__(self, name: str = "buffers", *, max_entries: int = 65536) -> None:
        int_arg(max_entries, "max_entries", minimum=1, maximum=U32_MAX)
        self.name = name
        self.max_entries = max_entries
        self._entries: dict[int, _Entry] = {}
        self._next_id = 1
        self._faults: Counter[str] = Counter()
        self._reclaimed = 0
        self._lock = threading.Lock()

    # -- this side ------------------------------------------------------------------------
    def add(self, buffer: SharedBuffer, *, id: int | None = None) -> int:
        """Register a buffer (held locally); returns its id, ``id`` if given (1..2**32-1,
        unused). ``MemoryError`` when the table is full."""
        with self._lock:
            return self._add(buffer, id)

    def _add(self, buffer: SharedBuffer, id: int | None) -> int:
        """:meth:`add` (the caller holds the lock)."""
        if len(self._entries) >= self.max_entries:
            raise MemoryError(f"buffer table {self.name!r} is full "
                              f"({self.max_entries} entries)")
        if any(e.buffer is buffer for e in self._entries.values()):
            raise InvalidArgument(f"buffer {buffer.name!r} is in table {self.name!r} "
                                  f"already")
        if id is None:
            while self._next_id in self._entries:
                self._next_id = self._next_id % U32_MAX + 1
            id = self._next_id
            self._next_id = id % U32_MAX + 1
        elif int_arg(id, "id", minimum=1, maximum=U32_MAX) in self._entries:
            raise InvalidArgument(f"id {id} is in use in table {self.name!r}")
        self._entries[id] = _Entry(buffer)
        return id

    def get(self, id: int) -> SharedBuffer:
        """The buffer with ``id`` (``KeyError`` if there is none)."""
        with self._lock:
            return self._entry(id).buffer

    def holder(self, id: int) -> str:
        """``"local"`` or the name of the peer holding buffer ``id``."""
        with self._lock:
            return self._entry(id).holder

    def held_by(self, peer: str) -> list[int]:
        """The ids of the buffers ``peer`` holds."""
        with self._lock:
            return [id for id, e in self._entries.items() if e.holder == peer]

    def ids(self) -> list[int]:
        """Every id in the table."""
        with self._lock:
            return list(self._entries)

    def remove(self, id: int) -> SharedBuffer:
        """Take buffer ``id`` out of the table (it must be held locally, not borrowed);
        returns it."""
        with self._lock:
            entry = self._entry(id)
            if entry.holder != LOCAL or entry.lender is not None:
                holder = entry.holder if entry.lender is None else entry.lender
                raise OwnershipError(f"buffer {entry.buffer.name!r} (id {id}) is held by "
                                     f"peer {holder!r}")
            del self._entries[id]
            return entry.buffer

    def lend(self, id: int, peer: str) -> BufferRef:
        """Hand buffer ``id`` to ``peer`` (the buffer goes to the device ``peer``); returns
        the reference to the whole buffer to send it. Refused (:class:`OwnershipError`)
        if the buffer is not the CPU's to give."""
        _check_peer(peer)
        with self._lock:
            entry = self._entry(id)
            self._lend(entry, id, peer)
            return BufferRef(id, 0, entry.buffer.size)

    def lend_as(self, id: int, buffer: SharedBuffer, peer: str) -> None:
        """Hand ``buffer`` to ``peer`` as entry ``id``, adding it under that id first if
        the table has no entry ``id`` (the hot path of a hand-over: one lock)."""
        _check_peer(peer)
        with self._lock:
            entry = self._entries.get(id)
            if entry is None:
                self._add(buffer, id)
                entry = self._entries[id]
            elif entry.buffer is not buffer:
                raise InvalidArgument(f"id {id} of table {self.name!r} is buffer "
                                      f"{entry.buffer.name!r}, not {buffer.name!r}")
            self._lend(entry, id, peer)

    def _lend(self, entry: _Entry, id: int, peer: str) -> None:
        if entry.holder != LOCAL or entry.lender is not None:
            holder = entry.holder if entry.lender is None else entry.lender
            raise OwnershipError(f"buffer {entry.buffer.name!r} (id {id}) is held by "
                                 f"peer {holder!r} already")
        entry.buffer.to_device(peer)
        entry.holder = peer

    def give_back(self, id: int) -> str:
        """Return a borrowed buffer to the peer that handed it over (:meth:`borrow`): the
        device's again. Returns that peer's name."""
        with self._lock:
            entry = self._entry(id)
            peer = entry.lender
            if peer is None:
                raise OwnershipError(f"buffer {entry.buffer.name!r} (id {id}) is not "
                                     f"borrowed from a peer")
            entry.buffer.to_device(peer)
            entry.holder, entry.lender = peer, None
            return peer

    def close(self) -> None:
        """Close every buffer and empty the table; refused while peers hold buffers
        (reclaim them first)."""
        with self._lock:
            lent = sorted({e.holder for e in self._entries.values() if e.holder != LOCAL})
            if lent:
                raise OwnershipError(f"buffer table {self.name!r}: peers {lent} still hold "
                                     f"buffers")
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            entry.buffer.close()

    # -- what the peer says ---------------------------------------------------------------
    def resolve(self, peer: str, ref: BufferRef) -> BufferSlice:
        """The slice a peer's reference names: the id must be known and held by ``peer``,
        and ``[offset, offset + length)`` inside the buffer (values of any size or sign
        are checked, so nothing wraps). Else a counted :class:`PeerBufferError`."""
        _check_peer(peer)
        with self._lock:
            entry = self._peer_entry(peer, ref.id, releasing=False)
            self._check_range(entry, peer, ref.id, ref.offset, ref.length)
            return BufferSlice(entry.buffer, ref.offset, ref.length)

    def release(self, peer: str, id: int, offset: int = 0, length: int = 0) -> SharedBuffer:
        """``peer`` is done with buffer ``id``: it comes back to the CPU. ``offset`` and
        ``length`` (a result range the peer names) must lie inside the buffer. Refused, as
        a counted :class:`PeerBufferError`, for an unknown id, a buffer the peer does not
        hold, one it released already, or a range outside it; the table is unchanged."""
        _check_peer(peer)
        with self._lock:
            entry = self._peer_entry(peer, id, releasing=True)
            self._check_range(entry, peer, id, offset, length)
            entry.buffer.to_cpu()
            entry.holder = LOCAL
            entry.last_holder = peer
            return entry.buffer

    def recall(self, peer: str, id: int) -> bool:
        """Take back buffer ``id`` lent to ``peer`` that never reached it (sending its
        reference failed): the CPU's again. False if ``peer`` does not hold it (the peer
        went away meanwhile and it was reclaimed)."""
        _check_peer(peer)
        with self._lock:
            entry = self._entries.get(id)
            if entry is None or entry.holder != peer:
                return False
            entry.buffer.to_cpu()
            entry.holder = LOCAL
            entry.last_holder = LOCAL  # a DONE for it now is a stray one
            return True

    def borrow(self, peer: str, id: int, offset: int, length: int) -> BufferSlice:
        """``peer`` hands buffer ``id``, which it holds, back for a while (e.g. with data
        in ``[offset, offset + length)``): the CPU's until :meth:`give_back`. Checked as
        :meth:`release` (a counted :class:`PeerBufferError`, the table unchanged)."""
        _check_peer(peer)
        with self._lock:
            entry = self._peer_entry(peer, id, releasing=False)
            self._check_range(entry, peer, id, offset, length)
            entry.buffer.to_cpu()
            entry.holder, entry.lender = LOCAL, peer
            return BufferSlice(entry.buffer, offset, length)

    def reclaim(self, peer: str) -> list[int]:
        """Take back every buffer ``peer`` holds (it died or went away); returns their ids.
        Buffers borrowed from it stay the CPU's."""
        _check_peer(peer)
        with self._lock:
            ids = [id for id, e in self._entries.items() if e.holder == peer]
            for id in ids:
                entry = self._entries[id]
                entry.buffer.to_cpu()
                entry.holder = LOCAL
                entry.last_holder = LOCAL  # a late release from the dead peer is a stray one
            for entry in self._entries.values():
                if entry.lender == peer:
                    entry.lender = None
                    entry.last_holder = LOCAL
            self._reclaimed += len(ids)
        if ids:
            log.info("buffer table %r: reclaimed %d buffer(s) from peer %r", self.name,
                     len(ids), peer)
        return ids

    def statistics(self) -> BufferTableStatistics:
        """A snapshot of entries, holders and faults."""
        with self._lock:
            held = Counter(e.holder for e in self._entries.values())
            local = held.pop(LOCAL, 0)
            return BufferTableStatistics(self.name, len(self._entries), local, dict(held),
                                         sum(self._faults.values()), dict(self._faults),
                                         self._reclaimed)

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals (the caller holds the lock) ----------------------------------------------
    def _entry(self, id: int) -> _Entry:
        try:
            return self._entries[id]
        except (KeyError, TypeError):
            raise KeyError(f"no buffer with id {id!r} in table {self.name!r}") from None

    def _peer_entry(self, peer: str, id: object, *, releasing: bool) -> _Entry:
        if type(id) is not int:
            raise self._fault(BufferFaultReason.MALFORMED, peer, f"buffer id {id!r}")
        entry = self._entries.get(id)
        if entry is None:
            raise self._fault(BufferFaultReason.UNKNOWN_ID, peer, f"id {id}")
        if entry.holder != peer:
            reason = (BufferFaultReason.DOUBLE_RELEASE
                      if releasing and entry.holder == LOCAL and entry.last_holder == peer
                      else BufferFaultReason.NOT_HELD)
            raise self._fault(reason, peer, f"buffer {id} ({entry.buffer.name!r})")
        return entry

    def _check_range(self, entry: _Entry, peer: str, id: int, offset: int,
                     length: int) -> None:
        size = entry.buffer.size
        if (type(offset) is not int or type(length) is not int or offset < 0
                or length < 0 or offset > size or length > size - offset):
            raise self._fault(BufferFaultReason.OUT_OF_RANGE, peer,
                              f"{offset!r}+{length!r} in buffer {id} of 0x{size:x} bytes")

    def _fault(self, reason: BufferFaultReason, peer: str, what: str) -> PeerBufferError:
        self._faults[reason.name] += 1
        if log.isEnabledFor(logging.WARNING):
            log.warning("buffer table %r: peer %r: %s: %s", self.name, peer, reason.value, what)
        return PeerBufferError(reason, f"peer {peer!r}: {what}")


def _check_peer(peer: str) -> None:
    if type(peer) is str and peer and peer != LOCAL:
        return
    if not str_arg(peer, "peer") or peer == LOCAL:
        raise InvalidArgument(f"peer must be a non-empty name other than {LOCAL!r}, "
                              f"got {peer!r}")
