"""Resource processing: allocate what the firmware's table asks for, in a copy of the table.

As Linux does, the table from the image is copied (the *cached* table) and processed
into the copy, keeping its layout byte for byte (the firmware was compiled against it):

* carveouts: allocated from the processor's pool when da and pa are FW_RSC_ADDR_ANY,
  else honoured if inside the pool (reserved there) or an internal memory; the chosen
  da and pa are written back. There is no IOMMU, so a fixed da must equal a fixed pa;
* devmem: checked to lie inside the platform's memory (da == pa), reserved in the pool;
* trace buffers: translated through the carveouts and internal memories; amplink also
  accepts da = FW_RSC_ADDR_ANY and allocates the buffer (Linux does not);
* vdevs: each vring is placed in the pool (allocated, or reserved at its fixed da, which
  must be a multiple of its align) and gets the next notify id (from 0, in table
  order); status and gfeatures are reset for the driver; an rpmsg vdev also gets the
  driver's buffer pool (2 x num buffers);
* vendor entries go to the platform hook; unknown types were skipped by the parser.

Carveouts, devmem and internal memories are handled first, so that a trace entry may
name a carveout that comes later in the table. Nothing here starts or kicks anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import AddressError, FirmwareError
from ..virtio.ring import vring_size
from ..virtio.vdev import (
    VDEV_NUM_VRINGS_OFFSET,
    VIRTIO_ID_RPMSG,
    VRING_NUM_OFFSET,
    VdevControl,
    VdevEntry,
    vring_entry_offset,
)
from .addrmap import DeviceAddressMap
from .constants import (
    CARVEOUT_DA_OFFSET,
    CARVEOUT_LEN_OFFSET,
    CARVEOUT_PA_OFFSET,
    FW_RSC_ADDR_ANY,
    TRACE_DA_OFFSET,
    TRACE_LEN_OFFSET,
)
from .devmem import Allocation, DeviceMemory
from .rsc_table import (
    Carveout,
    DevMem,
    ResourceTable,
    Trace,
    VendorHook,
    VendorResource,
    process_vendor,
)

_U32_LIMIT = 1 << 32
#: rpmsg buffers and trace text need no more than this alignment
_SMALL_ALIGN = 16


@dataclass
class VdevResource:
    """A processed vdev: its entry (with the vrings placed) and its rpmsg buffer pool."""

    index: int  # the vdev's number among the vdevs, in table order
    entry_index: int  # its position in the resource table
    entry: VdevEntry
    vrings: list[Allocation]
    buffers: Allocation | None  # rpmsg vdevs only

    @property
    def is_rpmsg(self) -> bool:
        """Whether this vdev carries rpmsg (virtio id 7)."""
        return self.entry.id == VIRTIO_ID_RPMSG

    @property
    def notifyids(self) -> tuple[int, ...]:
        """The notify ids of its vrings."""
        return tuple(v.notifyid for v in self.entry.vrings)


@dataclass
class ProcessedResources:
    """The outcome of processing: the processed table, where it goes, and what was allocated."""

    table: ResourceTable | None
    table_bytes: bytes
    table_location: Allocation | None
    addr_map: DeviceAddressMap
    carveouts: list[Allocation] = field(default_factory=list)
    traces: list[Allocation] = field(default_factory=list)
    vdevs: list[VdevResource] = field(default_factory=list)
    #: what a coredump holds: carveouts, internal memories and the host's allocations
    dump_segments: list[Allocation] = field(default_factory=list)

    def vdev_control(self, vdev: VdevResource) -> VdevControl:
        """Live access to ``vdev``'s entry in the placed table."""
        assert self.table is not None and self.table_location is not None
        loc = self.table_location
        return VdevControl(loc.region, loc.offset + self.table.body_offset(vdev.entry_index))

    def write_table(self) -> None:
        """Copy the processed table to its place in device memory."""
        if self.table_location is not None:
            loc = self.table_location
            loc.region.write(loc.offset, self.table_bytes)


def _fail(index: int, what: str, rtype: str, pos: int, problem: str) -> FirmwareError:
    name = f" {what!r}" if what else ""
    return FirmwareError(f"resource entry {index} ({rtype}{name}): {problem} (at byte 0x{pos:x})")


def _check_u32(alloc: Allocation, fail: Callable[[str], FirmwareError]) -> Allocation:
    if alloc.da + alloc.length > _U32_LIMIT:
        raise fail(f"the chosen address 0x{alloc.da:x}+0x{alloc.length:x} does not fit the "
                   "table's 32-bit fields: give the processor memory below 4 GiB")
    return alloc


class _Processor:
    """One processing run over a cached table."""

    def __init__(self, table: ResourceTable, memory: DeviceMemory, buf_size: int,
                 vendor_hook: VendorHook | None) -> None:
        self.table = table
        self.memory = memory
        self.buf_size = buf_size
        self.vendor_hook = vendor_hook
        self.addr_map = DeviceAddressMap()
        for region in memory.internal:
            self.addr_map.add(region.da_base, region.size, region, 0, name="internal memory")
        self.out = ProcessedResources(table, b"", None, self.addr_map)
        self.out.dump_segments += [Allocation("internal memory", r.da_base, r, 0, r.size)
                                   for r in memory.internal]
        self.next_notifyid = 0

    def _take(self, fail: Callable[[str], FirmwareError], name: str, size: int,
              da: int = FW_RSC_ADDR_ANY, align: int = 0x1000) -> Allocation:
        try:
            if da == FW_RSC_ADDR_ANY:
                alloc = self.memory.alloc(name, size, align)
            else:
                alloc = self.memory.reserve(name, da, size)
        except (MemoryError, ValueError) as exc:
            raise fail(str(exc)) from None
        return _check_u32(alloc, fail)

    # -- pass 1 --------------------------------------------------------------------------
    def carveout(self, i: int, c: Carveout) -> None:
        pos = self.table.body_offset(i)

        def fail(problem: str, at: int = 0) -> FirmwareError:
            return _fail(i, c.name, "RSC_CARVEOUT", pos + at, problem)

        if c.len == 0:
            raise fail("field len = 0: an empty carveout", CARVEOUT_LEN_OFFSET)
        fixed = {a for a in (c.da, c.pa) if a != FW_RSC_ADDR_ANY}
        if len(fixed) > 1:
            raise fail(f"fields da = 0x{c.da:x} and pa = 0x{c.pa:x} differ: the platform has "
                       "no IOMMU, so a carveout's device address is its physical address",
                       CARVEOUT_DA_OFFSET)
        name = c.name or f"carveout{i}"
        if fixed:
            (addr,) = fixed
            internal = self.memory.internal_range(addr, c.len)
            if internal is not None:  # already mapped, and dumped with its memory
                region, offset = internal
                self.out.carveouts.append(Allocation(name, addr, region, offset, c.len))
                c.da = c.pa = addr
                return
            alloc = self._take(lambda p: fail(p, CARVEOUT_DA_OFFSET if c.da == addr
                                              else CARVEOUT_PA_OFFSET), name, c.len, addr)
        else:
            alloc = self._take(fail, name, c.len)
        c.da = c.pa = alloc.da
        try:
            self.addr_map.add(alloc.da, alloc.length, alloc.region, alloc.offset, name=name)
        except AddressError as exc:
            raise fail(str(exc), CARVEOUT_DA_OFFSET) from None
        self.out.carveouts.append(alloc)
        self.out.dump_segments.append(alloc)

    def devmem(self, i: int, d: DevMem) -> None:
        pos = self.table.body_offset(i)

        def fail(problem: str, at: int = CARVEOUT_DA_OFFSET) -> FirmwareError:
            return _fail(i, d.name, "RSC_DEVMEM", pos + at, problem)

        if d.len == 0:
            raise fail("field len = 0: an empty mapping", CARVEOUT_LEN_OFFSET)
        if FW_RSC_ADDR_ANY in (d.da, d.pa):
            raise fail("fields da and pa must both be given: device memory is not allocated")
        if d.da != d.pa:
            raise fail(f"fields da = 0x{d.da:x} and pa = 0x{d.pa:x} differ: the platform has "
                       "no IOMMU to map one onto the other")
        if self.memory.internal_range(d.da, d.len) is None:
            self._take(fail, d.name or f"devmem{i}", d.len, d.da)

    # -- pass 2 --------------------------------------------------------------------------
    def trace(self, i: int, t: Trace) -> None:
        pos = self.table.body_offset(i)

        def fail(problem: str, at: int = TRACE_DA_OFFSET) -> FirmwareError:
            return _fail(i, t.name, "RSC_TRACE", pos + at, problem)

        if t.len == 0:
            raise fail("field len = 0: an empty trace buffer", TRACE_LEN_OFFSET)
        name = t.name or f"trace{len(self.out.traces)}"
        if t.da == FW_RSC_ADDR_ANY:
            alloc = self._take(fail, name, t.len, align=_SMALL_ALIGN)
            t.da = alloc.da
            self.out.dump_segments.append(alloc)
        else:
            try:
                region, offset = self.addr_map.translate(t.da, t.len)
            except AddressError:
                raise fail(f"field da = 0x{t.da:x} with len 0x{t.len:x} is not inside a "
                           "carveout or the processor's internal memory") from None
            alloc = Allocation(name, t.da, region, offset, t.len)
        self.out.traces.append(alloc)

    def vdev(self, i: int, v: VdevEntry) -> None:
        pos = self.table.body_offset(i)
        n = len(self.out.vdevs)

        def fail(problem: str, at: int = 0) -> FirmwareError:
            return _fail(i, "", "RSC_VDEV", pos + at, problem)

        rpmsg = v.id == VIRTIO_ID_RPMSG
        if rpmsg and len(v.vrings) != 2:
            raise fail(f"an rpmsg vdev needs 2 vrings, it has {len(v.vrings)}",
                       VDEV_NUM_VRINGS_OFFSET)
        rings: list[Allocation] = []
        for k, ring in enumerate(v.vrings):
            at = vring_entry_offset(k)

            def ring_fail(problem: str, k: int = k, at: int = at) -> FirmwareError:
                return fail(f"vring {k}: {problem}", at)

            if ring.da != FW_RSC_ADDR_ANY and ring.da % ring.align:
                raise ring_fail(f"field da = 0x{ring.da:x} is not a multiple of its align "
                                f"{ring.align}")
            alloc = self._take(ring_fail, f"vdev{n}vring{k}", vring_size(ring.num, ring.align),
                               ring.da, max(ring.align, _SMALL_ALIGN))
            ring.da = alloc.da
            ring.notifyid = self.next_notifyid
            self.next_notifyid += 1
            rings.append(alloc)
            self.out.dump_segments.append(alloc)
        buffers = None
        if rpmsg:
            count = sum(ring.num for ring in v.vrings)
            buffers = self._take(lambda p: fail(p, vring_entry_offset(0) + VRING_NUM_OFFSET),
                                 f"vdev{n}buffer", count * self.buf_size)
            self.out.dump_segments.append(buffers)
        v.status = 0
        v.gfeatures = 0
        self.out.vdevs.append(VdevResource(n, i, v, rings, buffers))

    def vendor(self, i: int, entry: VendorResource) -> None:
        process_vendor(entry, self.vendor_hook, index=i, offset=self.table.body_offset(i))


def process_resources(
    raw: bytes | None,
    memory: DeviceMemory,
    *,
    loaded_table_da: int | None = None,
    buf_size: int = 512,
    vendor_hook: VendorHook | None = None,
) -> ProcessedResources:
    """Process the table ``raw`` (untrusted; None: the image has none) into a copy.

    ``loaded_table_da`` is where the image's own copy of the table lives in device
    memory (None: the engine allocates a place in the pool). Raises
    :class:`FirmwareError` naming the entry, field and byte offset of any problem.
    """
    if raw is None:
        empty = _Processor(ResourceTable(), memory, buf_size, vendor_hook).out
        empty.table = None
        return empty
    cached = bytearray(raw)
    table = ResourceTable.parse(cached)
    proc = _Processor(table, memory, buf_size, vendor_hook)
    for i, entry in enumerate(table.entries):
        if isinstance(entry, Carveout):
            proc.carveout(i, entry)
        elif isinstance(entry, DevMem):
            proc.devmem(i, entry)
    for i, entry in enumerate(table.entries):
        if isinstance(entry, Trace):
            proc.trace(i, entry)
        elif isinstance(entry, VdevEntry):
            proc.vdev(i, entry)
        elif isinstance(entry, VendorResource):
            proc.vendor(i, entry)
    for i, entry in enumerate(table.entries):
        if isinstance(entry, (Carveout, Trace, VdevEntry)):
            table.patch_entry(cached, i)
    out = proc.out
    out.table_bytes = bytes(cached)
    size = len(cached)
    if loaded_table_da is None:
        out.table_location = proc._take(
            lambda p: FirmwareError(f"resource table: {p}"), "resource table", size)
        out.dump_segments.append(out.table_location)
    else:
        try:
            region, offset = proc.addr_map.translate(loaded_table_da, size)
        except AddressError:
            raise FirmwareError(
                f"resource table: its loaded copy at 0x{loaded_table_da:x}+0x{size:x} is not "
                "inside a carveout or the processor's internal memory"
            ) from None
        out.table_location = Allocation("resource table", loaded_table_da, region, offset, size)
    return out
