"""The firmware's end of the buffer socket: what the host attached, mapped, and nothing else.

:class:`DeviceBuffers` runs one daemon thread that maps each buffer the host attaches
(its fd arrives by ``SCM_RIGHTS``) and unmaps each one it detaches, answering every
request (see :mod:`amplink.platforms.sim_abi`). :meth:`DeviceBuffers.dma` is how the
firmware reaches host memory by device address, :meth:`DeviceBuffers.ref` by attachment
id (the hand-over references); both check the whole range against the attachments and
their direction. An access outside them is not performed: it is counted, reported to the
host (its IOMMU records the fault) and raised as :class:`~amplink.memory.IommuFault`.
"""

from __future__ import annotations

import array
import bisect
import errno
import logging
import mmap
import os
import socket
import stat
import threading
from collections import Counter
from dataclasses import dataclass

from ..memory.access import Access
from ..memory.errors import IommuFault, PeerBufferError
from ..memory.iommu import Fault, IommuFaultReason
from ..platforms import sim_abi as L
from . import attachmsg
from .attachmsg import AttachMsg

log = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
_U64 = 1 << 64


@dataclass(slots=True)
class _Mapped:
    id: int
    da: int
    length: int
    access: int
    mm: mmap.mmap
    view: memoryview  # the attached bytes, writable only with write access

    @property
    def end(self) -> int:
        return self.da + self.length


class DeviceBuffers:
    """The buffers the host attached to this processor (the firmware side). Thread-safe."""

    def __init__(self, sock: socket.socket, name: str = "firmware") -> None:
        self.name = name
        self._sock = sock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._by_id: dict[int, _Mapped] = {}
        self._starts: list[int] = []
        self._sorted: list[_Mapped] = []
        self._retired: list[_Mapped] = []  # detached while views of them were alive
        self._faults: Counter[str] = Counter()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="amplink-device-buffers")
        self._thread.start()

    # -- access ----------------------------------------------------------------------------
    def dma(self, da: int, length: int, access: Access | int = Access.READ) -> memoryview:
        """A view of ``[da, da + length)`` for ``access``; read-only unless it writes.

        Only a range inside one attachment whose direction allows ``access`` is reached;
        anything else is a fault (counted, reported to the host, :class:`IommuFault`).
        """
        reason = IommuFaultReason.BAD_REQUEST
        if (type(da) is int and type(length) is int and int(access) in (1, 2, 3)
                and da >= 0 and length > 0 and da + length <= _U64):
            with self._lock:
                at = bisect.bisect_right(self._starts, da) - 1
                m = self._sorted[at] if at >= 0 else None
            if m is None or da >= m.end:
                reason = IommuFaultReason.UNMAPPED
            elif da + length > m.end:
                reason = IommuFaultReason.PARTIAL
            elif int(access) & ~m.access:
                reason = IommuFaultReason.DIRECTION
            else:
                return _cut(m, da - m.da, length, int(access))
        raise self._fault(da, length, access, reason)

    def ref(self, att_id: int, offset: int, length: int, access: int) -> memoryview:
        """A view of ``length`` bytes at ``offset`` of attachment ``att_id`` for
        ``access`` (a peer's reference: every value is checked)."""
        m = self._by_id.get(att_id)
        if m is None:
            raise self._fault(att_id, length, access, IommuFaultReason.UNMAPPED, by_id=True)
        if offset < 0 or length < 0 or offset > m.length or length > m.length - offset:
            raise self._fault(m.da + offset, length, access, IommuFaultReason.PARTIAL)
        if access & ~m.access or not 1 <= access <= 3:
            raise self._fault(m.da + offset, length, access, IommuFaultReason.DIRECTION)
        return _cut(m, offset, length, access)

    def attachments(self) -> list[tuple[int, int, int, Access]]:
        """``(id, da, length, access)`` of every attachment, by device address."""
        with self._lock:
            return [(m.id, m.da, m.length, Access(m.access)) for m in self._sorted]

    def wait_attached(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until at least ``count`` buffers are attached; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._by_id) >= count or self._closed,
                                          timeout) and len(self._by_id) >= count

    def statistics(self) -> dict[str, int]:
        """Attachments and the faults by reason."""
        with self._lock:
            return {"attachments": len(self._by_id), "faults": sum(self._faults.values()),
                    **{f"faults_{k.lower()}": v for k, v in self._faults.items()}}

    def _fault(self, da: object, length: object, access: object, reason: IommuFaultReason,
               *, by_id: bool = False) -> IommuFault:
        with self._lock:
            self._faults[reason.name] += 1
            sequence = sum(self._faults.values())
        if (not by_id and isinstance(da, int) and isinstance(length, int)
                and isinstance(access, int) and 0 <= da < _U64 and 0 <= length < _U64
                and 0 <= access <= 3):
            report = AttachMsg(L.ATTACH_OP_FAULT, 0, 0, da, 0, length, int(access))
        else:  # the host's IOMMU sees an address it cannot have mapped: an unmapped fault
            report = AttachMsg(L.ATTACH_OP_FAULT, 0, 0, _U64 - 1, 0, 1, Access.READ)
        try:
            self._sock.send(report.pack())
        except OSError:
            pass  # the host is gone
        what = "attachment id" if by_id else "device address"
        fault = Fault(self.name, da, length, access, reason, sequence)
        log.warning("%s (%s)", fault, what)
        return IommuFault(fault)

    # -- the socket ------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while True:
                data, ancillary, flags, _ = self._sock.recvmsg(
                    attachmsg.SIZE + 1, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC)
                fds = array.array("i")
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(payload[:len(payload) - len(payload) % 4])
                if not data and not fds:
                    break  # the host hung up
                try:
                    self._handle(data, list(fds))
                finally:
                    for fd in fds:
                        os.close(fd)
        except OSError as exc:
            log.debug("buffer socket: %s", exc)
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()

    def _handle(self, data: bytes, fds: list[int]) -> None:
        try:
            msg = AttachMsg.unpack(data)
        except PeerBufferError as exc:
            log.warning("buffer socket: %s", exc)
            return
        if msg.op == L.ATTACH_OP_ATTACH:
            status = self._attach(msg, fds)
        elif msg.op == L.ATTACH_OP_DETACH:
            status = self._detach(msg.id)
        else:
            return
        self._sock.send(AttachMsg(L.ATTACH_OP_ACK, msg.id, msg.seq, status=status).pack())

    def _attach(self, msg: AttachMsg, fds: list[int]) -> int:
        if (len(fds) != 1 or msg.length == 0 or not 1 <= msg.access <= 3
                or msg.id in self._by_id or msg.da + msg.length > _U64):
            return errno.EINVAL
        try:
            st = os.fstat(fds[0])
            if not stat.S_ISREG(st.st_mode) or msg.offset + msg.length > st.st_size:
                return errno.EINVAL
            base = msg.offset - msg.offset % _PAGE
            delta = msg.offset - base
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if msg.access & Access.WRITE else 0)
            mm = mmap.mmap(fds[0], delta + msg.length, mmap.MAP_SHARED, prot, offset=base)
        except OSError as exc:
            return exc.errno or errno.EIO
        view = memoryview(mm)[delta:delta + msg.length]
        m = _Mapped(msg.id, msg.da, msg.length, msg.access, mm, view)
        with self._changed:
            at = bisect.bisect_left(self._starts, m.da)
            if (at > 0 and self._sorted[at - 1].end > m.da) or (
                    at < len(self._starts) and self._starts[at] < m.end):
                view.release()
                mm.close()
                return errno.EEXIST
            self._starts.insert(at, m.da)
            self._sorted.insert(at, m)
            self._by_id[m.id] = m
            self._changed.notify_all()
        return 0

    def _detach(self, att_id: int) -> int:
        with self._changed:
            m = self._by_id.pop(att_id, None)
            if m is None:
                return errno.ENOENT
            at = self._sorted.index(m)
            del self._starts[at], self._sorted[at]
            self._retired.append(m)
            retired, self._retired = self._retired, []
            self._changed.notify_all()
        for old in retired:
            try:
                old.view.release()
                old.mm.close()
            except BufferError:  # views of it are alive: unmapped when they are gone
                with self._lock:
                    self._retired.append(old)
        return 0

    def close(self) -> None:
        """Hang up (the host sees it) and unmap what no view still uses."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(2.0)
        self._sock.close()
        with self._lock:
            maps = list(self._by_id.values()) + self._retired
            self._by_id.clear()
            self._starts, self._sorted, self._retired = [], [], []
        for m in maps:
            try:
                m.view.release()
                m.mm.close()
            except BufferError:
                pass  # a view is alive: the mapping ends with the process


def _cut(m: _Mapped, offset: int, length: int, access: int) -> memoryview:
    view = m.view[offset:offset + length]
    return view if access & 2 else view.toreadonly()
