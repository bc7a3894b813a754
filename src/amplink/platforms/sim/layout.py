"""Where the default resource table of a simulated processor puts its rpmsg link.

:class:`LinkConfig` sizes one rpmsg link; :func:`default_resource_table` is the table of
firmware that declares none; :func:`place_link` makes processor memory holding that
table's link, processed as :class:`~.rproc.SimRemoteProc` processes any table (used by
the in-process :class:`~amplink.platforms.inprocess.LinkPair`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..._args import int_arg
from ...errors import InvalidArgument, InvalidArgumentType
from ...memory.allocator import align_up
from ...memory.region import SharedRegion
from ...remoteproc.constants import FW_RSC_ADDR_ANY
from ...remoteproc.devmem import PAGE_SIZE, DeviceMemory
from ...remoteproc.resources import ProcessedResources, process_resources
from ...remoteproc.rsc_table import ResourceTable
from ...rpmsg.wire import RPMSG_BUF_SIZE
from ...virtio.ring import VIRTIO_RING_F_EVENT_IDX, VRING_MAX_SIZE, vring_size
from ...virtio.vdev import VIRTIO_ID_RPMSG, VIRTIO_RPMSG_F_NS, VdevEntry, VringEntry


@dataclass(frozen=True)
class LinkConfig:
    """Sizes of one rpmsg link: buffers per direction, buffer size, ring alignment."""

    num_buffers: int = 256
    buf_size: int = RPMSG_BUF_SIZE
    align: int = 0x1000
    event_idx: bool = False

    def __post_init__(self) -> None:
        int_arg(self.num_buffers, "num_buffers", minimum=1, maximum=VRING_MAX_SIZE)
        int_arg(self.align, "align", minimum=1)
        if self.num_buffers & (self.num_buffers - 1):
            raise InvalidArgument(f"num_buffers must be a power of two, got {self.num_buffers}")
        if self.align & (self.align - 1):
            raise InvalidArgument(f"align must be a power of two, got {self.align}")
        int_arg(self.buf_size, "buf_size", minimum=24, maximum=0xFFFF + 16)
        if self.buf_size % 8:
            raise InvalidArgument(f"buf_size must be a multiple of 8, got {self.buf_size}")
        if not isinstance(self.event_idx, bool):
            raise InvalidArgumentType(f"event_idx must be a bool, got {self.event_idx!r}")


def default_resource_table(config: LinkConfig) -> ResourceTable:
    """The table of firmware that declares none: one rpmsg vdev, the host places its vrings."""
    features = 1 << VIRTIO_RPMSG_F_NS
    if config.event_idx:
        features |= 1 << VIRTIO_RING_F_EVENT_IDX
    vrings = [VringEntry(FW_RSC_ADDR_ANY, config.align, config.num_buffers, FW_RSC_ADDR_ANY)
              for _ in range(2)]
    vdev = VdevEntry(id=VIRTIO_ID_RPMSG, dfeatures=features, vrings=vrings)
    return ResourceTable([vdev])


def _link_memory_size(config: LinkConfig) -> int:
    """Room for the default table's vrings, buffers and table, placed from address 0.

    Each vring starts on its alignment, the buffers and the table on a page (see
    :func:`process_resources`); the table (one vdev entry) takes less than a page.
    """
    rings = 2 * align_up(vring_size(config.num_buffers, config.align),
                         max(config.align, PAGE_SIZE))
    return rings + align_up(2 * config.num_buffers * config.buf_size, PAGE_SIZE) + PAGE_SIZE


def place_link(config: LinkConfig, name: str) -> tuple[DeviceMemory, ProcessedResources]:
    """New processor memory (a memfd called ``name``) holding the default table's link.

    The table is processed into it as :class:`SimRemoteProc` processes a firmware's
    table, and written there: ``resources.table_location`` is the table,
    ``resources.vdevs[0]`` the rpmsg vdev with its ``vrings`` and ``buffers``.
    """
    memory = DeviceMemory(SharedRegion.memfd(_link_memory_size(config), name))
    try:
        resources = process_resources(default_resource_table(config).build(), memory,
                                      buf_size=config.buf_size)
        resources.write_table()
    except BaseException:
        memory.close()
        raise
    return memory, resources
