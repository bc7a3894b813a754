"""A simulated IOMMU: the address-filter table of one simulated processor.

:meth:`Iommu.attach` maps a buffer (or a slice of one) into the processor's IOVA window
and returns the device address; :meth:`Iommu.translate` is what the processor's memory
accesses go through: it yields the backing buffer and offset only if the whole range is
attached with a direction that allows the access. Anything else is a **fault**: recorded
(address, length, access, reason), counted, reported to subscribers (the IOMMU fault
interrupt) and raised as :class:`IommuFault`.

IOVA space is handed out in whole pages, as a real IOMMU maps it, so two attachments
never share a page; accesses are checked to the byte, so the rest of a partly used page
is not reachable.
"""

from __future__ import annotations

import bisect
import enum
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .._args import int_arg
from .._subscribers import Subscribers
from ..errors import AddressError, InvalidArgument
from .access import Access, checked_access
from .allocator import RegionAllocator, align_up
from .buffers import PAGE_SIZE, BufferSlice, SharedBuffer
from .errors import IommuFault, ReadOnlyBuffer

log = logging.getLogger(__name__)

_DA_LIMIT = 1 << 64


class IommuFaultReason(enum.StrEnum):
    """Why a device access was refused."""

    UNMAPPED = "no attachment at this address"
    PARTIAL = "range runs past the end of its attachment"
    DIRECTION = "access not allowed by the attachment's direction"
    BAD_REQUEST = "malformed request (address, length or access)"


@dataclass(frozen=True, eq=False, slots=True)
class Attachment:
    """``length`` bytes of ``buffer`` from ``offset``, seen by the device at ``da``."""

    iommu: str
    da: int
    length: int
    buffer: SharedBuffer
    offset: int
    direction: Access
    span: int  # IOVA bytes reserved: ``length`` rounded up to whole pages

    @property
    def end(self) -> int:
        """The first device address past the attached bytes."""
        return self.da + self.length


@dataclass(frozen=True, slots=True)
class Fault:
    """One refused device access. ``access`` is what the device asked for (as given)."""

    iommu: str
    da: object
    length: object
    access: object
    reason: IommuFaultReason
    sequence: int  # 1 for the IOMMU's first fault, and so on

    def __str__(self) -> str:
        def hexed(v: object) -> str:
            return f"0x{v:x}" if type(v) is int else repr(v)

        access = self.access
        what = (Access(access).name or repr(access)
                if isinstance(access, int) and 1 <= access <= 3 else repr(access))
        return (f"IOMMU {self.iommu}: fault #{self.sequence}: {what} of "
                f"{hexed(self.length)} bytes at {hexed(self.da)}: {self.reason.value}")


@dataclass(frozen=True, slots=True)
class IommuStatistics:
    """One IOMMU at one moment."""

    name: str
    window_base: int
    window_size: int
    attachments: int
    attached_bytes: int
    faults: int
    faults_by_reason: Mapping[str, int] = field(default_factory=dict)
    last_fault: Fault | None = None


class Iommu:
    """The device-address table of one processor over ``[window_base, window_base +
    window_size)``. Thread-safe; subscribers are called without its lock held."""

    def __init__(self, name: str, window_base: int, window_size: int, *,
                 page_size: int = PAGE_SIZE) -> None:
        int_arg(window_base, "window_base", minimum=0)
        int_arg(window_size, "window_size", minimum=1)
        if int_arg(page_size, "page_size", minimum=1) & (page_size - 1):
            raise InvalidArgument(f"page_size must be a power of two, got {page_size}")
        if (window_base % page_size or window_size % page_size
                or window_base + window_size > _DA_LIMIT):
            raise InvalidArgument(f"IOMMU {name}: window 0x{window_base:x}+0x{window_size:x} must "
                             f"be page-aligned, non-empty and inside 64 bits")
        self.name = name
        self.window_base = window_base
        self.window_size = window_size
        self.page_size = page_size
        self._iova = RegionAllocator(window_size, window_base,
                                     what=f"the IOVA window of IOMMU {name}")
        self._starts: list[int] = []  # sorted device addresses of the attachments
        self._attachments: list[Attachment] = []  # in the same order
        self._faults: Counter[str] = Counter()
        self._last_fault: Fault | None = None
        self._subscribers: Subscribers[Fault] = Subscribers(f"IOMMU {name} faults", log)
        self._lock = threading.Lock()

    # -- host side ------------------------------------------------------------------------
    def attach(self, target: SharedBuffer | BufferSlice, direction: Access | int,
               da: int | None = None, *, align: int | None = None) -> Attachment:
        """Map a buffer or slice for the device, which may access it as ``direction``
        says (READ: the device reads it, WRITE: writes it, READ_WRITE: both).

        With ``da`` the attachment goes exactly there (aligned to ``align``, default one
        page, and free); otherwise at the lowest free address so aligned. Raises
        :class:`~amplink.errors.AddressError` for a bad or busy ``da``, ``MemoryError``
        when the window is full, :class:`ReadOnlyBuffer` to let the device write a
        read-only buffer.
        """
        direction = checked_access(direction)
        if isinstance(target, BufferSlice):
            buffer, offset, length = target.buffer, target.offset, target.length
        else:
            buffer, offset, length = target, 0, target.size
        if length <= 0:
            raise InvalidArgument("cannot attach an empty range")
        if direction & Access.WRITE and buffer.read_only:
            raise ReadOnlyBuffer(f"buffer {buffer.name!r} is read-only: the device may not "
                                 f"write it")
        align = align or self.page_size
        span = align_up(length, self.page_size)
        with self._lock:
            if da is None:
                da = self._iova.alloc(span, align)
            else:
                if type(da) is not int or da % align:
                    raise AddressError(f"IOMMU {self.name}: device address {da!r} is not "
                                       f"aligned to 0x{align:x}")
                self._iova.reserve(da, span)
            attachment = Attachment(self.name, da, length, buffer, offset, direction, span)
            try:
                buffer._attached(attachment, f"IOMMU {self.name} da 0x{da:x}")
            except BaseException:
                self._iova.free(da)
                raise
            at = bisect.bisect_left(self._starts, da)
            self._starts.insert(at, da)
            self._attachments.insert(at, attachment)
        return attachment

    def detach(self, attachment: Attachment) -> None:
        """Remove an attachment; its device addresses fault from now on."""
        with self._lock:
            at = bisect.bisect_left(self._starts, attachment.da)
            if at == len(self._starts) or self._attachments[at] is not attachment:
                raise AddressError(f"IOMMU {self.name}: {attachment.buffer.name!r} at "
                                   f"0x{attachment.da:x} is not attached here")
            del self._starts[at], self._attachments[at]
            self._iova.free(attachment.da)
        attachment.buffer._detached(attachment)

    def detach_all(self) -> int:
        """Remove every attachment (the processor stopped or died); returns how many."""
        with self._lock:
            gone = self._attachments
            self._starts, self._attachments = [], []
            for attachment in gone:
                self._iova.free(attachment.da)
        for attachment in gone:
            attachment.buffer._detached(attachment)
        return len(gone)

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        """The current attachments, by device address."""
        with self._lock:
            return tuple(self._attachments)

    def subscribe(self, callback: Callable[[Fault], object]) -> Callable[[], None]:
        """Call ``callback(fault)`` on every fault (in the faulting thread, no lock held;
        an exception it raises is logged). Returns a function that unsubscribes."""
        return self._subscribers.subscribe(callback)

    def statistics(self) -> IommuStatistics:
        """A snapshot of the attachments and the faults so far."""
        with self._lock:
            return IommuStatistics(
                self.name, self.window_base, self.window_size, len(self._attachments),
                sum(a.length for a in self._attachments), sum(self._faults.values()),
                dict(self._faults), self._last_fault)

    # -- device side ----------------------------------------------------------------------
    def translate(self, da: int, length: int, access: Access | int) -> tuple[SharedBuffer, int]:
        """The buffer and offset behind ``[da, da + length)`` for a device ``access``.

        Every argument may come from firmware: anything but a whole range inside one
        attachment whose direction allows ``access`` records a fault and raises
        :class:`IommuFault`.
        """
        reason: IommuFaultReason | None = None
        if (type(da) is not int or type(length) is not int or type(access) not in (int, Access)
                or not 1 <= access <= 3 or da < 0 or length <= 0 or da + length > _DA_LIMIT):
            reason = IommuFaultReason.BAD_REQUEST
        else:
            with self._lock:
                at = bisect.bisect_right(self._starts, da) - 1
                if at < 0 or da >= self._attachments[at].end:
                    reason = IommuFaultReason.UNMAPPED
                else:
                    attachment = self._attachments[at]
                    if da + length > attachment.end:
                        reason = IommuFaultReason.PARTIAL
                    elif int(access) & ~int(attachment.direction):
                        reason = IommuFaultReason.DIRECTION
                    else:
                        return attachment.buffer, attachment.offset + (da - attachment.da)
        raise IommuFault(self._fault(da, length, access, reason))

    def _fault(self, da: object, length: object, access: object,
               reason: IommuFaultReason) -> Fault:
        with self._lock:
            self._faults[reason.name] += 1
            fault = Fault(self.name, da, length, access, reason, sum(self._faults.values()))
            self._last_fault = fault
        if log.isEnabledFor(logging.WARNING):
            log.warning("%s", fault)
        self._subscribers.emit(fault)
        return fault
