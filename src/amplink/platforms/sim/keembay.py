"""Simulated Keem Bay VPUs: firmware in a child process, the host the CPU node.

The firmware declares its IPC area as a carveout named ``keembay-ipc`` in its resource
table (:func:`amplink.firmware.keembay.resource_table`); the lifecycle engine places
it in the processor's memory like any carveout. The platform then, for every run:

* before the child starts, marks the area's host state DOWN (after a crash the memory
  still says UP from the last run, and the new firmware must not take that for the host);
* spawns the child with one more doorbell pair, the FIFOs' "not empty" interrupts;
* once the child runs, initialises the area and builds the host's CPU-node link over
  it (:meth:`KeemBayOps.links`); the engine removes it with the run.

Everything else (loading, crash detection, recovery, coredumps, trace) is the simulator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import FirmwareError, InvalidArgument, InvalidArgumentType
from ...link.runtime import Link
from ...remoteproc.devmem import Allocation
from ...remoteproc.ops import StartInfo
from ...remoteproc.resources import ProcessedResources
from ...transports.keembay.layout import PAGE, KmbLayout
from ...transports.keembay.link import KmbConfig, cpu_link
from ..sim_abi import KEEMBAY_CARVEOUT
from .processor import SimProcessor
from .rproc import SimOps, SimRemoteProc

#: the processor's memory: room for a generous IPC carveout (sparse: unused pages cost
#: nothing)
KEEMBAY_MEMORY_SIZE = 64 << 20


def keembay_area(resources: ProcessedResources) -> Allocation:
    """Where the processed table put the IPC area (FirmwareError if it declares none)."""
    for alloc in resources.carveouts:
        if alloc.name == KEEMBAY_CARVEOUT:
            return alloc
    raise FirmwareError(f"the firmware's resource table has no carveout {KEEMBAY_CARVEOUT!r}: "
                        "Keem Bay firmware declares its IPC area (see "
                        "amplink.firmware.keembay.resource_table)")


class KeemBayOps(SimOps):
    """The simulator's operations for firmware that talks Keem Bay IPC (see the module
    docstring); ``kmb`` sizes the pools and slots and sets the GP share of both nodes."""

    extra_doorbells = 1
    kmb = KmbConfig()

    def start(self, info: StartInfo) -> None:
        area = keembay_area(info.resources)
        area.region.fill(area.offset, PAGE)  # no stale "host UP" for the new firmware
        super().start(info)

    def links(self, resources: ProcessedResources, *, name: str) -> list[Link]:
        assert self.process is not None, "links are built for a started processor"
        area = keembay_area(resources)
        try:
            layout = KmbLayout.compute(area.da, area.length, self.kmb.headers,
                                       self.kmb.slot_size, offset=area.offset,
                                       fifo_share=self.kmb.fifo_share)
        except InvalidArgument as exc:
            raise FirmwareError(f"carveout {KEEMBAY_CARVEOUT!r} (0x{area.length:x} bytes at "
                                f"0x{area.da:x}): {exc}") from None
        doorbell = self.process.take_doorbell(len(self._rpmsg_order))
        return [cpu_link(area.region, layout, doorbell, name=name, poll_mode=self.poll_mode,
                         spin=self.spin)]


class KeemBayRemoteProc(SimRemoteProc):
    """A simulated Keem Bay VPU with the remoteproc lifecycle: ``rproc.link`` is the host's
    CPU-node link (see :class:`SimRemoteProc` for the other options)."""

    ops_class = KeemBayOps
    ops: KeemBayOps

    def __init__(self, firmware: str, *, kmb: KmbConfig | None = None,
                 memory_size: int = KEEMBAY_MEMORY_SIZE, **options: Any) -> None:
        super().__init__(firmware, memory_size=memory_size, **options)
        if kmb is not None:
            if not isinstance(kmb, KmbConfig):
                raise InvalidArgumentType(f"kmb must be a KmbConfig, got {kmb!r}")
            self.ops.kmb = kmb


class KeemBayProcessor(SimProcessor):
    """A simulated Keem Bay VPU started and stopped once (see :class:`SimProcessor`):
    after :meth:`start`, :attr:`link` is the host's CPU-node link."""

    rproc_class = KeemBayRemoteProc
    rproc: KeemBayRemoteProc

    def __init__(self, firmware: str, *, kmb: KmbConfig | None = None,
                 args: Sequence[str] = (), **options: Any) -> None:
        super().__init__(firmware, args=args, **options)
        if kmb is not None:
            if not isinstance(kmb, KmbConfig):
                raise InvalidArgumentType(f"kmb must be a KmbConfig, got {kmb!r}")
            self.rproc.ops.kmb = kmb
