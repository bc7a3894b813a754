"""The shared-memory layout of a simulated rpmsg link and the fd-passing convention.

A simulated processor gets, by inheritance, one shared-memory fd that starts with a
remoteproc resource table holding one rpmsg vdev; the vrings and the host's buffer
pool follow. The environment variables below tell the firmware where things are.
Firmware in any language can follow this convention (see the C example).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..memory.allocator import RegionAllocator, align_up
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
ENV_NAME = "AMPLINK_NAME"              # the processor's name

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
