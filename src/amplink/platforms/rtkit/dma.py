"""The simulated co-processor's memory bus: every access it makes to host memory.

A real co-processor reaches the buffers the host gave it through its IOMMU (DART or
SART), which refuses anything not mapped. The simulated one is a separate process that
holds no host memory at all: it sends each access over a ``SOCK_SEQPACKET`` socket to
the host, where :class:`DmaServer` checks it with the processor's
:class:`~amplink.memory.iommu.Iommu` (``translate``) and carries it out. An access
outside what is attached is a fault the host records (counted, logged, subscribers of
the IOMMU told) and the firmware gets as :class:`DmaFault`.

Wire format (little-endian): a request is ``{u8 op; u8 pad[3]; u32 length; u64 da}``
followed, for a write, by ``length`` bytes; the answer is ``{u8 status; u8 reason;
u16 pad; u32 length}`` followed, for a read, by the bytes. ``op`` 1 reads, 2 writes;
``status`` 0 ok, 1 IOMMU fault (``reason``: the fault's reason, by its place in
:class:`~amplink.memory.iommu.IommuFaultReason`), 2 malformed request.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ...errors import AddressError, LinkDown, PeerTimeout
from ...memory.access import Access
from ...memory.errors import IommuFault
from ...memory.iommu import Iommu, IommuFaultReason
from ...notify.waiter import wait_readable

log = logging.getLogger(__name__)

REQUEST = struct.Struct("<BxxxIQ")
ANSWER = struct.Struct("<BBxxI")
OP_READ, OP_WRITE = 1, 2
STATUS_OK, STATUS_FAULT, STATUS_MALFORMED = 0, 1, 2
#: the most one request moves; the client splits larger accesses
MAX_TRANSFER = 32 << 10
_REASONS = list(IommuFaultReason)


class DmaFault(AddressError):
    """The host's IOMMU refused an access of the co-processor; ``reason`` says why."""

    def __init__(self, message: str, reason: IommuFaultReason | None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DmaStatistics:
    requests: int
    bytes_read: int
    bytes_written: int
    faults: int
    malformed: int
    unanswered: int


class DmaServer:
    """The host's end: serves the co-processor's accesses through ``iommu``.

    Non-blocking: :meth:`serve` handles what is waiting and returns, so the runtime
    polls :meth:`fileno` with its other sources.
    """

    def __init__(self, sock: socket.socket, iommu: Iommu) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.iommu = iommu
        self.closed_by_peer = False
        self._requests = self._read = self._written = 0
        self._faults = self._malformed = self._unanswered = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve(self, budget: int = 16, lock: AbstractContextManager[object] | None = None) -> int:
        """Serve up to ``budget`` waiting requests; returns how many were taken.

        Each access is made holding ``lock``, the runtime's guard against buffers being
        detached and freed meanwhile; the translation (and the IOMMU's fault subscribers
        it may call) happens before, without it.
        """
        guard = contextlib.nullcontext() if lock is None else lock
        done = 0
        while done < budget and not self.closed_by_peer:
            try:
                data = self.sock.recv(REQUEST.size + MAX_TRANSFER + 1)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.closed_by_peer = True
                break
            done += 1
            self._requests += 1
            self._answer(self._handle(data, guard))
        return done

    def _handle(self, data: bytes, lock: AbstractContextManager[object]) -> bytes:
        if len(data) < REQUEST.size:
            return self._bad(f"a request of {len(data)} bytes")
        op, length, da = REQUEST.unpack_from(data)
        body = data[REQUEST.size:]
        if op not in (OP_READ, OP_WRITE) or not 0 < length <= MAX_TRANSFER or (
                len(body) != (length if op == OP_WRITE else 0)):
            return self._bad(f"op {op}, length {length}, {len(body)} bytes of data")
        access = Access.READ if op == OP_READ else Access.WRITE
        try:
            buffer, offset = self.iommu.translate(da, length, access)
        except IommuFault as exc:  # recorded, counted and logged by the IOMMU
            self._faults += 1
            return ANSWER.pack(STATUS_FAULT, _REASONS.index(exc.fault.reason), 0)
        with lock:
            if buffer.closed or not buffer.attachments:  # detached since the translation
                self._faults += 1
                return ANSWER.pack(STATUS_FAULT, _REASONS.index(IommuFaultReason.UNMAPPED), 0)
            if op == OP_READ:
                self._read += length
                return ANSWER.pack(STATUS_OK, 0, length) + buffer.read(offset, length)
            buffer.write(body, offset)
        self._written += length
        return ANSWER.pack(STATUS_OK, 0, 0)

    def _bad(self, what: str) -> bytes:
        self._malformed += 1
        log.warning("IOMMU %s: malformed DMA request from the co-processor: %s",
                    self.iommu.name, what)
        return ANSWER.pack(STATUS_MALFORMED, 0, 0)

    def _answer(self, answer: bytes) -> None:
        try:
            self.sock.send(answer)
        except (BlockingIOError, OSError):
            self._unanswered += 1  # the co-processor does not read its answers: its loss

    def statistics(self) -> DmaStatistics:
        return DmaStatistics(self._requests, self._read, self._written, self._faults,
                             self._malformed, self._unanswered)

    def close(self) -> None:
        self.sock.close()


class DmaClient:
    """The co-processor's end: reads and writes device addresses through the host.

    An answer must come within ``timeout`` s (:class:`~amplink.errors.PeerTimeout`); the
    host closing the socket is :class:`~amplink.errors.LinkDown`.
    """

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout

    def read(self, da: int, length: int) -> bytes:
        """``length`` bytes from device address ``da``."""
        parts = []
        for at in range(0, length, MAX_TRANSFER):
            n = min(MAX_TRANSFER, length - at)
            parts.append(self._call(REQUEST.pack(OP_READ, n, da + at), da + at, n))
        return b"".join(parts)

    def write(self, da: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at device address ``da``."""
        view = memoryview(data)
        for at in range(0, len(view), MAX_TRANSFER):
            chunk = view[at:at + MAX_TRANSFER]
            self._call(REQUEST.pack(OP_WRITE, len(chunk), da + at) + chunk, da + at, len(chunk))

    def _call(self, request: bytes, da: int, length: int) -> bytes:
        try:
            self.sock.sendall(request)
        except OSError as exc:
            raise LinkDown(f"the host's memory bus is gone: {exc}") from None
        if not wait_readable(self.sock, self.timeout):
            raise PeerTimeout(f"the host did not answer a DMA access within {self.timeout} s")
        try:
            answer = self.sock.recv(ANSWER.size + MAX_TRANSFER)
        except OSError:
            answer = b""
        if len(answer) < ANSWER.size:
            raise LinkDown("the host's memory bus is gone")
        status, reason, n = ANSWER.unpack_from(answer)
        if status == STATUS_FAULT:
            why = _REASONS[reason] if reason < len(_REASONS) else None
            raise DmaFault(f"IOMMU fault: 0x{length:x} bytes at 0x{da:x}: "
                           f"{why.value if why else 'unknown reason'}", why)
        if status != STATUS_OK:
            raise DmaFault(f"the host refused the access of 0x{length:x} bytes at 0x{da:x}", None)
        return answer[ANSWER.size:ANSWER.size + n]

    def close(self) -> None:
        self.sock.close()
