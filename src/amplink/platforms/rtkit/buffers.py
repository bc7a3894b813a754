"""Serving the co-processor's buffer requests (crashlog, syslog, ioreport), three ways.

A request is ``pages`` 4 KiB pages at an IOVA. As Linux's rtkit.c and its platform
drivers do, the host answers it by what the IOVA is:

1. **0**: the host chooses. It allocates a shared buffer
   (:func:`~amplink.memory.allocate_buffer`), attaches it to the co-processor's IOMMU
   (the simulated DART/SART) and answers with the same size and the new IOVA.
2. **an address in the IOMMU's window**: the co-processor chose it. A platform hook
   (:data:`IovaHook`, Linux's ``shmem_setup``) maps memory there; the default
   allocates a buffer and attaches it at exactly that IOVA, and the host answers with
   the request echoed.
3. **an address in the co-processor's device-local memory** (its SRAM, MMIO to the
   host): nothing is allocated; the host reads the range in place through the
   bounds-checked accessors of that memory, and does not answer (the buffer is there).

The co-processor is untrusted: an empty request, one beyond the memory budget, a
second one for the same endpoint, an unmappable IOVA or a range running out of the
device memory is refused with a :class:`~amplink.rtkit.errors.BufferRequestError`
(counted by reason) and not answered. :meth:`BufferService.release_all` (the reinit)
detaches and frees everything.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import AddressError
from ...memory.access import Access
from ...memory.buffers import SharedBuffer
from ...memory.iommu import Attachment, Iommu
from ...memory.providers import allocate_buffer
from ...memory.region import SharedRegion
from ...rtkit import messages as m
from ...rtkit.errors import BufferRefusal, BufferRequestError

log = logging.getLogger(__name__)

#: ``hook(iommu, iova, size, name) -> (attachment, answer)``: map ``size`` bytes at the
#: ``iova`` the co-processor chose; ``answer``: whether the host replies to the request.
#: Raise AddressError (or MemoryError) to refuse it.
IovaHook = Callable[[Iommu, int, int, str], tuple[Attachment, bool]]


def map_at_iova(iommu: Iommu, iova: int, size: int, name: str) -> tuple[Attachment, bool]:
    """The default hook: a new buffer attached at exactly ``iova``; answered."""
    buffer = allocate_buffer(size, name=name)
    try:
        return iommu.attach(buffer, Access.READ_WRITE, da=iova), True
    except BaseException:
        buffer.close()
        raise


@dataclass(frozen=True, slots=True)
class HostBuffer:
    """A served request: ``size`` bytes at ``iova``, in host memory (``attachment``) or in
    the device's own memory (``region`` at ``offset``)."""

    ep: int
    way: str  # "host" (IOVA 0), "iova" (chosen by the co-processor) or "mmio"
    iova: int
    size: int
    attachment: Attachment | None = None
    region: SharedRegion | None = None
    offset: int = 0

    def read(self, offset: int, length: int) -> bytes:
        """A copy of ``[offset, offset + length)`` of the buffer (AddressError outside it)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise AddressError(f"0x{offset:x}+0x{length:x} is outside the "
                               f"{m.endpoint_name(self.ep)} buffer of 0x{self.size:x} bytes")
        if self.attachment is not None:
            return self.attachment.buffer.read(self.attachment.offset + offset, length)
        assert self.region is not None
        return self.region.read(self.offset + offset, length)  # checked again by the region

    def describe(self) -> str:
        return (f"{m.endpoint_name(self.ep)}: 0x{self.size:x} bytes at IOVA 0x{self.iova:x} "
                f"({self.way})")


class BufferService:
    """The buffers of one co-processor (see the module docstring). Not thread-safe: the
    runtime serialises it with the accesses it serves."""

    def __init__(self, iommu: Iommu, *, mmio: SharedRegion | None = None,
                 budget: int = 1 << 20, map_iova: IovaHook = map_at_iova,
                 name: str = "rtkit") -> None:
        self.iommu = iommu
        self.mmio = mmio
        self.budget = budget
        self.map_iova = map_iova
        self.name = name
        self.refusals: Counter[str] = Counter()
        self._buffers: dict[int, HostBuffer] = {}

    def get(self, ep: int) -> HostBuffer | None:
        return self._buffers.get(ep)

    @property
    def buffers(self) -> tuple[HostBuffer, ...]:
        return tuple(self._buffers.values())

    def _in_use(self) -> int:
        return sum(b.size for b in self._buffers.values() if b.way != "mmio")

    def _refuse(self, reason: BufferRefusal, detail: str) -> BufferRequestError:
        self.refusals[reason.name] += 1
        return BufferRequestError(reason, detail)

    def serve(self, ep: int, pages: int, iova: int) -> tuple[HostBuffer, bool]:
        """Serve one request; returns the buffer and whether to answer it."""
        size = pages * m.PAGE_SIZE
        what = f"{m.endpoint_name(ep)} buffer of {pages} pages at IOVA 0x{iova:x}"
        if not pages:
            raise self._refuse(BufferRefusal.EMPTY, what)
        if ep in self._buffers:
            raise self._refuse(BufferRefusal.DUPLICATE, what)
        mmio = self.mmio
        if iova and mmio is not None and mmio.da_base <= iova < mmio.da_base + mmio.size:
            try:
                offset = mmio.da_to_offset(iova, size)
            except AddressError as exc:
                raise self._refuse(BufferRefusal.MMIO_RANGE, f"{what}: {exc}") from None
            buffer = HostBuffer(ep, "mmio", iova, size, region=mmio, offset=offset)
            self._buffers[ep] = buffer
            return buffer, False
        if self._in_use() + size > self.budget:
            raise self._refuse(BufferRefusal.OVER_BUDGET,
                               f"{what}: 0x{self._in_use():x} of 0x{self.budget:x} bytes in use")
        name = f"{self.name}-{m.endpoint_name(ep)}"
        try:
            if iova:
                attachment, answer = self.map_iova(self.iommu, iova, size, name)
            else:
                answer = True
                attachment = self._attach_anywhere(size, name)
        except (AddressError, MemoryError) as exc:
            raise self._refuse(BufferRefusal.UNMAPPABLE, f"{what}: {exc}") from None
        buffer = HostBuffer(ep, "iova" if iova else "host", attachment.da, size,
                            attachment=attachment)
        self._buffers[ep] = buffer
        return buffer, answer

    def _attach_anywhere(self, size: int, name: str) -> Attachment:
        buffer = allocate_buffer(size, name=name)
        try:
            return self.iommu.attach(buffer, Access.READ_WRITE)
        except BaseException:
            buffer.close()
            raise

    def release_all(self) -> int:
        """Detach and free every buffer (the reinit); returns how many there were."""
        gone, self._buffers = self._buffers, {}
        for buffer in gone.values():
            if buffer.attachment is not None:
                _free(self.iommu, buffer.attachment.buffer, buffer.attachment)
        return len(gone)


def _free(iommu: Iommu, buffer: SharedBuffer, attachment: Attachment) -> None:
    try:
        iommu.detach(attachment)
    finally:
        buffer.close()
