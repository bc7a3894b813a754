"""The shared-memory layout of simulated processors and the fd-passing convention.

A simulated processor is a child process. It inherits, by fd number given in the
environment variables below, one shared-memory fd (a memfd), eventfd doorbells and a
lifeline socket. Firmware in any language can follow this convention; Python firmware
gets it for free from :mod:`amplink.firmware`, and ``amplink/firmware/examples/
native_echo.c`` is a C example.

The memory (``AMPLINK_SHM_FD``, ``AMPLINK_SHM_SIZE`` bytes) is the processor's physical
memory: its byte at offset ``o`` has device address ``AMPLINK_DA_BASE + o``, and every
address in the resource table, vring descriptor and rpmsg buffer is such a device
address (there is no IOMMU). The processed resource table is at offset
``AMPLINK_RSC_TABLE`` and is ``AMPLINK_RSC_SIZE`` bytes long; the firmware parses it
(untrusted, bounds-checked) to find its vdevs, trace buffers and carveouts.

Two hosts follow the convention:

* :class:`~amplink.platforms.sim.SimProcessor` plans a fixed layout (:class:`SimLayout`):
  the table (one rpmsg vdev) at offset 0, then the vrings and the buffer pool.
* :class:`~amplink.platforms.sim.SimRemoteProc` runs the remoteproc lifecycle: it takes
  the firmware's own resource table (Python firmware: its module's ``RESOURCE_TABLE``;
  a native executable: its ``.resource_table`` ELF section; neither: the default of
  :func:`default_resource_table`), allocates carveouts, trace buffers, vrings and
  buffers in the memory, and writes the processed table there before it starts the
  child.

Doorbells: ``AMPLINK_KICK_RX_FD`` is an eventfd the host writes to kick the firmware
(the firmware reads it), ``AMPLINK_KICK_TX_FD`` one the firmware writes to kick the
host; they serve the first rpmsg vdev. ``AMPLINK_VDEV<i>_KICK_RX_FD`` and
``AMPLINK_VDEV<i>_KICK_TX_FD`` give the pair of rpmsg vdev ``i`` (0, 1, ... in table
order; i = 0 repeats the unnumbered pair). The firmware must not touch a vdev's vrings
before the host set DRIVER_OK (bit 0x04) in its status byte.

The lifeline is an AF_UNIX stream socket. Host -> firmware: end of file means the host
is gone (or stops the processor): the firmware must exit. Firmware -> host, bytes:

* ``R`` once, when the firmware is up (after DRIVER_OK): the host's start completes;
* ``H``, a watchdog heartbeat; with ``AMPLINK_WATCHDOG_MS`` set (and not 0) the host
  declares a watchdog crash when no ``H`` came for that many milliseconds after ``R``;
* ``F``, a reason, a newline: a fatal error (the reason: at most
  :data:`FATAL_REASON_MAX` bytes of UTF-8); the host declares a crash and stops the
  firmware (it need not exit itself).

Other bytes are ignored. The process exiting (or the lifeline closing) while the
processor is running is a crash too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..memory.allocator import RegionAllocator, align_up
from ..remoteproc.constants import FW_RSC_ADDR_ANY
from ..remoteproc.rsc_table import ResourceTable
from ..rpmsg.wire import RPMSG_BUF_SIZE, VIRTIO_RPMSG_F_NS
from ..virtio.ring import VIRTIO_RING_F_EVENT_IDX, check_ring_params, vring_size
from ..virtio.vdev import VIRTIO_ID_RPMSG, VdevEntry, VringEntry

ENV_SHM_FD = "AMPLINK_SHM_FD"          # inherited fd of the shared memory (memfd)
ENV_SHM_SIZE = "AMPLINK_SHM_SIZE"      # its size in bytes
ENV_DA_BASE = "AMPLINK_DA_BASE"        # device address of its first byte
ENV_RSC_TABLE = "AMPLINK_RSC_TABLE"    # offset of the resource table in it
ENV_RSC_SIZE = "AMPLINK_RSC_SIZE"      # bytes reserved for the table
ENV_KICK_RX_FD = "AMPLINK_KICK_RX_FD"  # eventfd the host writes to kick the firmware
ENV_KICK_TX_FD = "AMPLINK_KICK_TX_FD"  # eventfd the firmware writes to kick the host
ENV_LIFELINE_FD = "AMPLINK_LIFELINE_FD"  # socket: write one byte when up; EOF = host gone
ENV_BUF_SIZE = "AMPLINK_BUF_SIZE"      # rpmsg buffer size (512)
ENV_POLL = "AMPLINK_POLL"              # "1": the firmware should poll instead of sleeping
ENV_SPIN_US = "AMPLINK_SPIN_US"        # spin this many microseconds before each sleep
ENV_NAME = "AMPLINK_NAME"              # the processor's name
ENV_WATCHDOG_MS = "AMPLINK_WATCHDOG_MS"  # heartbeat period the host expects (absent/0: none)
ENV_VDEV_KICK_RX_FD = "AMPLINK_VDEV{index}_KICK_RX_FD"  # per rpmsg vdev (format with index)
ENV_VDEV_KICK_TX_FD = "AMPLINK_VDEV{index}_KICK_TX_FD"

# The lifeline protocol, firmware -> host.
LIFELINE_READY = b"R"
LIFELINE_HEARTBEAT = b"H"
LIFELINE_FATAL = b"F"
LIFELINE_FATAL_END = b"\n"
FATAL_REASON_MAX = 200

#: exit status of ``python -m amplink.firmware --resource-table SPEC`` (how the host reads
#: a Python firmware's table) when the module does not exist
TABLE_READER_NO_MODULE = 66  # EX_NOINPUT

RSC_TABLE_OFFSET = 0
RSC_TABLE_SPACE = 0x1000
_POOL_ALIGN = 0x1000


@dataclass(frozen=True)
class LinkConfig:
    """Sizes of one rpmsg link: buffers per direction, buffer size, ring alignment."""

    num_buffers: int = 256
    buf_size: int = RPMSG_BUF_SIZE
    align: int = 0x1000
    event_idx: bool = False

    def __post_init__(self) -> None:
        check_ring_params(self.num_buffers, self.align)
        if not 16 < self.buf_size <= 0xFFFF + 16 or self.buf_size % 8:
            raise ValueError(f"buf_size must be a multiple of 8 in 24..65551, got {self.buf_size}")


@dataclass(frozen=True)
class SimLayout:
    """Offsets of everything in the shared memory of one simulated rpmsg link."""

    config: LinkConfig
    size: int
    table: bytes
    vdev_body_offset: int
    vring_offsets: tuple[int, int]
    pool_offset: int

    @classmethod
    def plan(cls, config: LinkConfig, da_base: int = 0) -> SimLayout:
        n, align = config.num_buffers, config.align
        ring = vring_size(n, align)
        pool_size = 2 * n * config.buf_size
        total = (align_up(RSC_TABLE_SPACE, align) + 2 * align_up(ring, align) + _POOL_ALIGN
                 + pool_size)
        alloc = RegionAllocator(total)
        alloc.alloc(RSC_TABLE_SPACE, 8)
        rings = (alloc.alloc(ring, align), alloc.alloc(ring, align))
        pool = alloc.alloc(pool_size, _POOL_ALIGN)
        features = 1 << VIRTIO_RPMSG_F_NS
        if config.event_idx:
            features |= 1 << VIRTIO_RING_F_EVENT_IDX
        vdev = VdevEntry(
            id=VIRTIO_ID_RPMSG, notifyid=0, dfeatures=features,
            vrings=[VringEntry(da_base + rings[0], align, n, 0),
                    VringEntry(da_base + rings[1], align, n, 1)],
        )
        table = ResourceTable([vdev])
        raw = table.build()
        return cls(config, total, raw, RSC_TABLE_OFFSET + table.body_offset(0), rings, pool)


def default_resource_table(config: LinkConfig) -> ResourceTable:
    """The table of firmware that declares none: one rpmsg vdev, the host places its vrings."""
    features = 1 << VIRTIO_RPMSG_F_NS
    if config.event_idx:
        features |= 1 << VIRTIO_RING_F_EVENT_IDX
    vrings = [VringEntry(FW_RSC_ADDR_ANY, config.align, config.num_buffers, FW_RSC_ADDR_ANY)
              for _ in range(2)]
    vdev = VdevEntry(id=VIRTIO_ID_RPMSG, dfeatures=features, vrings=vrings)
    return ResourceTable([vdev])
