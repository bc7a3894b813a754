"""The host's end of a processor's buffer socket: attach buffers, hear its faults.

A :class:`BufferPort` belongs to one run of one processor (a firmware process). It owns
the processor's view of the host's buffers: :meth:`attach` maps a buffer (or slice) in
the processor's :class:`~amplink.memory.Iommu` and passes its fd to the firmware, which
maps it at the same device address (see :mod:`amplink.platforms.sim_abi`); the
:attr:`table` tracks which buffers the processor holds. The firmware's reports of
accesses outside what is attached go through :meth:`Iommu.translate
<amplink.memory.Iommu.translate>`, which records them as faults (its subscribers hear
them). :meth:`close` (the run ended, or the firmware died) takes every buffer back.

The processor's own memory the other way: a firmware hands over a buffer of one of its
carveouts by device address (SEND id 0); :meth:`own_memory` gives the host's view of
it, only inside the carveouts the port was given.
"""

from __future__ import annotations

import array
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LinkDown, PeerTimeout
from ..memory.access import Access, checked_access
from ..memory.buffers import BufferSlice, CpuAccess, SharedBuffer
from ..memory.errors import BufferClosed, IommuFault, OwnershipError, PeerBufferError
from ..memory.iommu import Attachment, Fault, Iommu
from ..memory.table import BufferFaultReason, BufferTable
from ..platforms import sim_abi as L
from . import attachmsg
from .attachmsg import AttachMsg

if TYPE_CHECKING:
    from ..remoteproc.devmem import Allocation

log = logging.getLogger(__name__)

DEFAULT_ACK_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class AttachedBuffer:
    """One attachment as :meth:`BufferPort.attached` lists it."""

    id: int
    name: str
    da: int
    length: int
    access: str
    holder: str


class OwnerPort(Protocol):
    """What the owning side of a :class:`~amplink.handover.BufferChannel` (and of
    :class:`~amplink.handover.LargeMessages`) needs of its port: a :class:`BufferPort`,
    or :class:`~amplink.transports.service_buffers.ServicePort` for a processor held by
    the amplink service."""

    peer: str
    table: BufferTable

    def attach(self, target: SharedBuffer | BufferSlice,
               access: Access | int = Access.READ_WRITE) -> Any:
        """Attach a buffer to the peer (once); returns the attachment."""
        ...

    def detach(self, attachment: Any) -> None:
        """Undo :meth:`attach`."""
        ...

    def id_of(self, buffer: SharedBuffer) -> int | None:
        """The attachment id of the whole ``buffer`` (None if it is not attached)."""
        ...

    def attachment(self, att_id: int) -> Any:
        """The attachment with id ``att_id`` (None if there is none)."""
        ...


class BufferPort:
    """Attaches buffers to the peer behind ``sock`` (a SOCK_SEQPACKET socket, taken over)
    through ``iommu``; ``peer`` names the peer in the buffer table and as the device that
    owns lent buffers. ``on_fault(fault)`` is called (no lock held) for each fault the
    peer reports. ``memory``: the processor's carveouts, where its own buffers may lie.
    Thread-safe."""

    def __init__(self, peer: str, sock: socket.socket, iommu: Iommu, *,
                 on_fault: Callable[[Fault], object] | None = None,
                 ack_timeout: float = DEFAULT_ACK_TIMEOUT,
                 memory: Sequence[Allocation] = ()) -> None:
        self.peer = peer
        self._own = [(a.da, a.length, _carveout_buffer(peer, a)) for a in memory]
        self.iommu = iommu
        self.table = BufferTable(f"{peer}-buffers")
        self.ack_timeout = ack_timeout
        self._sock = sock
        self._on_fault = on_fault
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._acks: dict[int, int] = {}  # seq -> status
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._attachments: dict[int, Attachment] = {}
        self._ids_of: dict[int, int] = {}  # id(buffer) -> attachment id (the whole buffer)
        self._down: str | None = None
        self.malformed = 0
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"amplink-{peer}-buffers")
        self._reader.start()

    # -- attaching -------------------------------------------------------------------------
    def attach(self, target: SharedBuffer | BufferSlice, access: Access | int = Access.READ_WRITE,
               da: int | None = None, *, timeout: float | None = None) -> Attachment:
        """Attach a buffer or a slice to the peer (as :meth:`Iommu.attach`) and wait until
        the peer mapped it. Returns the attachment; its id is :meth:`id_of`."""
        access = checked_access(access)
        attachment = self.iommu.attach(target, access, da)
        att_id = next(self._ids)
        try:
            buffer = attachment.buffer
            self._request(AttachMsg(L.ATTACH_OP_ATTACH, att_id, 0, attachment.da,
                                    buffer.offset + attachment.offset, attachment.length,
                                    int(access)), fd=buffer.fd, timeout=timeout)
        except BaseException:
            self.iommu.detach(attachment)
            raise
        with self._lock:
            self._attachments[att_id] = attachment
            if attachment.offset == 0 and attachment.length == buffer.size:
                self._ids_of.setdefault(id(buffer), att_id)
        return attachment

    def detach(self, attachment: Attachment, *, timeout: float | None = None) -> None:
        """Detach: the peer unmaps it (this returns once it said so, or it is gone). A
        buffer the peer holds stays lent; take it back with the table first."""
        with self._lock:
            att_id = next((i for i, a in self._attachments.items() if a is attachment), None)
            if att_id is None:
                raise KeyError(f"{attachment.buffer.name!r} at 0x{attachment.da:x} is not "
                               f"attached through this port")
            del self._attachments[att_id]
            if self._ids_of.get(id(attachment.buffer)) == att_id:
                del self._ids_of[id(attachment.buffer)]
        try:
            self._request(AttachMsg(L.ATTACH_OP_DETACH, att_id), timeout=timeout)
        except LinkDown:
            pass  # the peer is gone: its mappings went with it
        finally:
            self.iommu.detach(attachment)

    def id_of(self, buffer: SharedBuffer) -> int | None:
        """The id of the attachment of the whole ``buffer`` (None if there is none)."""
        with self._lock:
            return self._ids_of.get(id(buffer))

    def attachment(self, att_id: int) -> Attachment | None:
        """The attachment with id ``att_id`` (None if there is none)."""
        with self._lock:
            return self._attachments.get(att_id)

    def attached(self) -> list[AttachedBuffer]:
        """Every attachment, with who holds its buffer now."""
        with self._lock:
            items = sorted(self._attachments.items())
        out = []
        for att_id, a in items:
            try:
                holder = self.table.holder(att_id)
            except KeyError:
                holder = "local"
            out.append(AttachedBuffer(att_id, a.buffer.name, a.da, a.length,
                                      Access(a.direction).name or "", holder))
        return out

    def own_memory(self, da: int, length: int, access: int) -> CpuAccess:
        """The host's access bracket to ``[da, da + length)`` of the processor's own memory
        (a firmware's SEND id 0): only inside one carveout, else a
        :class:`PeerBufferError` (OUT_OF_RANGE)."""
        for start, size, buffer in self._own:
            if start <= da and length <= size - (da - start) and da - start <= size:
                return buffer.cpu_access(access, da - start, length)
        raise PeerBufferError(BufferFaultReason.OUT_OF_RANGE,
                              f"0x{da:x}+0x{length:x} is not inside a carveout of {self.peer}")

    # -- the socket ------------------------------------------------------------------------
    def _request(self, msg: AttachMsg, *, fd: int | None = None,
                 timeout: float | None) -> None:
        timeout = self.ack_timeout if timeout is None else timeout
        with self._lock:
            if self._down is not None:
                raise LinkDown(f"{self.peer}: {self._down}")
            seq = next(self._seq)
        data = msg._replace(seq=seq).pack()
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd else []
        try:
            self._sock.sendmsg([data], fds)
        except OSError as exc:
            raise LinkDown(f"{self.peer}: the buffer socket: {exc}") from None
        with self._acked:
            if not self._acked.wait_for(lambda: seq in self._acks or self._down is not None,
                                        timeout):
                raise PeerTimeout(f"{self.peer}: no answer to buffer request {msg.op} (id "
                                  f"{msg.id}) within {timeout} s")
            if seq not in self._acks:
                raise LinkDown(f"{self.peer}: {self._down}")
            status = self._acks.pop(seq)
        if status:
            raise OSError(status, f"{self.peer}: the firmware could not "
                                  f"{'map' if msg.op == L.ATTACH_OP_ATTACH else 'unmap'} "
                                  f"attachment {msg.id}: {os.strerror(status)}")

    def _read(self) -> None:
        """The reader thread: acks and fault reports, until the peer or close() hangs up."""
        reason = "the firmware closed its buffer socket"
        try:
            while True:
                data = self._sock.recv(attachmsg.SIZE + 1)
                if not data:
                    break
                try:
                    msg = AttachMsg.unpack(data)
                except PeerBufferError as exc:
                    self.malformed += 1
                    log.warning("%s: buffer socket: %s", self.peer, exc)
                    continue
                if msg.op == L.ATTACH_OP_ACK:
                    with self._acked:
                        self._acks[msg.seq] = msg.status
                        self._acked.notify_all()
                elif msg.op == L.ATTACH_OP_FAULT:
                    self._fault(msg)
                else:
                    self.malformed += 1
        except (OSError, ValueError) as exc:
            reason = f"the buffer socket failed: {exc}"
        with self._acked:
            self._down = self._down or reason
            self._acked.notify_all()

    def _fault(self, msg: AttachMsg) -> None:
        """The peer reports an access outside its attachments: the IOMMU decides."""
        try:
            self.iommu.translate(msg.da, msg.length, msg.access)
        except IommuFault as exc:
            if self._on_fault is not None:
                try:
                    self._on_fault(exc.fault)
                except Exception:  # noqa: BLE001 - the reader must go on
                    log.exception("%s: fault handler failed", self.peer)

    # -- the end ---------------------------------------------------------------------------
    def close(self) -> list[int]:
        """The run ended: take back every buffer the peer held, detach everything, hang
        up. Returns the ids of the buffers taken back."""
        with self._acked:
            self._down = self._down or "the processor stopped"
            self._acked.notify_all()
            self._attachments.clear()
            self._ids_of.clear()
        reclaimed = self.table.reclaim(self.peer)
        for att_id in self.table.ids():
            self.table.remove(att_id)
        self.iommu.detach_all()
        for _da, _size, buffer in self._own:
            try:
                buffer.close()
            except OwnershipError:
                pass  # the host still reads a firmware buffer: unmapped once it is done
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(2.0)
        self._sock.close()
        return reclaimed


def _carveout_buffer(peer: str, allocation: Allocation) -> SharedBuffer:
    """The host's (lazily mapped) view of one of the processor's carveouts."""
    region = allocation.region

    def check_region() -> None:
        if region.closed:
            raise BufferClosed(f"the memory of {peer} is released")

    return SharedBuffer(region.fd, allocation.length,
                        offset=region.map_offset + allocation.offset,
                        name=f"{peer}:{allocation.name}", provider="carveout",
                        owns_fd=False, check_fd=check_region)
