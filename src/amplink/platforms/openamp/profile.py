"""OpenAMP's Linux-userspace profile: the shared-memory layout and its resource table.

Both processes map the POSIX shared memory object "openamp.shm" (0x80000 bytes); a
device address is the byte offset in it. With the defaults of :class:`OpenAmpConfig`:

========  ===================================================================
0x00000   resource table, 88 B, written by the socket server before it listens
0x04000   vring 0 (device -> driver), 256 entries, used ring aligned to 0x1000
0x08000   vring 1 (driver -> device)
0x10000   256 x 512 B driver RX buffers, posted at start
0x30000   256 x 512 B driver TX buffers, handed out from the bottom
========  ===================================================================

The table a client reads was written by the other process: it is parsed and checked
(:func:`read_resource_table`) before any of its values is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...errors import FirmwareError, RemoteProtocolError
from ...memory.region import POSIX_SHM_DIR, SharedRegion
from ...remoteproc.rsc_table import ResourceTable
from ...rpmsg.wire import RPMSG_HDR_SIZE
from ...virtio.ring import check_ring_params, vring_size
from ...virtio.vdev import VIRTIO_ID_RPMSG, VIRTIO_RPMSG_F_NS, VdevEntry, VringEntry
from ..openamp_abi import OPENAMP_SHM_NAME, OPENAMP_SHM_SIZE, OPENAMP_SOCKET_PATH

#: where the resource table lies in the shared memory
RSC_TABLE_OFFSET = 0
#: the most bytes a client parses as the table (OpenAMP's is 88)
MAX_TABLE_SIZE = 0x1000
#: notify ids of OpenAMP's table: the vdev, vring 0, vring 1
VDEV_NOTIFYID = 0
VRING_NOTIFYIDS = (1, 2)
#: a descriptor table must start on a 16-byte boundary (and the ring fields with it)
VRING_DESC_ALIGN = 16
#: sun_path holds 108 bytes including the terminating NUL
SOCKET_PATH_MAX = 107

Span = tuple[str, int, int]  # what, offset, length


def layout_problem(spans: list[Span], size: int) -> str | None:
    """Why ``spans`` cannot share a memory of ``size`` bytes (outside or overlapping), or None."""
    for what, start, length in spans:
        if start < 0 or length <= 0 or start + length > size:
            return (f"{what} at 0x{start:x}+0x{length:x} lies outside the shared memory of "
                    f"0x{size:x} bytes")
    ordered = sorted(spans, key=lambda s: s[1])
    for (what_a, start_a, len_a), (what_b, start_b, _) in zip(ordered, ordered[1:], strict=False):
        if start_a + len_a > start_b:
            return (f"{what_a} at 0x{start_a:x}+0x{len_a:x} overlaps {what_b} at "
                    f"0x{start_b:x}")
    return None


@dataclass(frozen=True)
class OpenAmpConfig:
    """Names and addresses of one OpenAMP-profile link; the defaults are OpenAMP's.

    Give each pair that runs side by side its own ``shm_name`` and ``socket_path``.
    The vring fields describe the table a *server* writes; a client uses the table it
    finds. The buffer offsets (RX at ``rx_buffers``, TX at ``tx_buffers``, ``buf_size``
    bytes each) are the host's, who owns every buffer.
    """

    shm_name: str = OPENAMP_SHM_NAME
    shm_size: int = OPENAMP_SHM_SIZE
    socket_path: str = OPENAMP_SOCKET_PATH
    vring0_da: int = 0x4000
    vring1_da: int = 0x8000
    vring_align: int = 0x1000
    vring_num: int = 256
    rx_buffers: int = 0x10000
    tx_buffers: int = 0x30000
    buf_size: int = 512

    def __post_init__(self) -> None:
        bare = self.shm_name.lstrip("/")
        if not bare or "/" in bare:
            raise ValueError(f"the shared memory name must be one path component, e.g. "
                             f"{OPENAMP_SHM_NAME!r}; got {self.shm_name!r}")
        path = os.fsencode(self.socket_path)
        if not path or len(path) > SOCKET_PATH_MAX:
            raise ValueError(f"the socket path must be 1..{SOCKET_PATH_MAX} bytes (sun_path); "
                             f"got {self.socket_path!r}")
        if not RPMSG_HDR_SIZE < self.buf_size <= 0xFFFF + RPMSG_HDR_SIZE:
            raise ValueError(f"buf_size must be in {RPMSG_HDR_SIZE + 1}..{0xFFFF + RPMSG_HDR_SIZE}"
                             f", got {self.buf_size}")
        check_ring_params(self.vring_num, self.vring_align)
        for what, da in (("vring0_da", self.vring0_da), ("vring1_da", self.vring1_da)):
            if da % VRING_DESC_ALIGN:
                raise ValueError(f"{what} = 0x{da:x} must be a multiple of {VRING_DESC_ALIGN}")
        ring = vring_size(self.vring_num, self.vring_align)
        pool = self.vring_num * self.buf_size
        problem = layout_problem([
            ("the resource table", RSC_TABLE_OFFSET, len(self.table_bytes())),
            ("vring 0", self.vring0_da, ring), ("vring 1", self.vring1_da, ring),
            ("the RX buffers", self.rx_buffers, pool), ("the TX buffers", self.tx_buffers, pool),
        ], self.shm_size)
        if problem is not None:
            raise ValueError(f"OpenAMP profile layout: {problem}")

    @property
    def shm_path(self) -> str:
        """The shared memory object's path (``/dev/shm/NAME``)."""
        return os.path.join(POSIX_SHM_DIR, self.shm_name.lstrip("/"))

    @property
    def mtu(self) -> int:
        """The largest payload: 496 B with 512 B buffers (OpenAMP truncates longer ones)."""
        return self.buf_size - RPMSG_HDR_SIZE

    def resource_table(self) -> ResourceTable:
        """The table a server writes: one rpmsg vdev offering the name service, two vrings."""
        vrings = [VringEntry(da, self.vring_align, self.vring_num, notifyid)
                  for da, notifyid in zip((self.vring0_da, self.vring1_da), VRING_NOTIFYIDS,
                                          strict=True)]
        vdev = VdevEntry(id=VIRTIO_ID_RPMSG, notifyid=VDEV_NOTIFYID,
                         dfeatures=1 << VIRTIO_RPMSG_F_NS, vrings=vrings)
        return ResourceTable([vdev])

    def table_bytes(self) -> bytes:
        """The encoded table (88 bytes, as OpenAMP's)."""
        return self.resource_table().build()


def read_resource_table(region: SharedRegion, config: OpenAmpConfig, *, host: bool
                        ) -> tuple[VdevEntry, int]:
    """Parse and check the table at offset 0; return the rpmsg vdev and its body's offset.

    The other process wrote it: the vrings (and, for the ``host``, the buffer pools of
    ``config`` sized by the table's vrings) must lie inside the memory without
    overlapping one another or the table. Raises RemoteProtocolError naming the defect.
    """
    where = f"the resource table in {config.shm_path}"
    hint = ("is the other side an OpenAMP-profile program using the same shared memory "
            "(name and size)?")
    raw = region.read(RSC_TABLE_OFFSET, min(MAX_TABLE_SIZE, region.size - RSC_TABLE_OFFSET))
    try:
        table = ResourceTable.parse(raw)
    except FirmwareError as exc:
        raise RemoteProtocolError(f"{where}: {exc}: {hint}") from None
    found = [(i, e) for i, e in table.items(VdevEntry) if e.id == VIRTIO_ID_RPMSG]
    if not found:
        raise RemoteProtocolError(f"{where} has no rpmsg vdev (type 3, id {VIRTIO_ID_RPMSG}): "
                                  f"{hint}")
    index, entry = found[0]
    if len(entry.vrings) != 2:
        raise RemoteProtocolError(f"{where}: the rpmsg vdev has {len(entry.vrings)} vrings, "
                                  "rpmsg needs 2")
    table_end = max(table.body_offset(i) + e.size for i, e in enumerate(table.entries))
    spans: list[Span] = [("the resource table", RSC_TABLE_OFFSET, table_end)]
    for i, vring in enumerate(entry.vrings):
        if vring.da % VRING_DESC_ALIGN:
            raise RemoteProtocolError(f"{where}: vring {i} at 0x{vring.da:x} is not "
                                      f"{VRING_DESC_ALIGN}-byte aligned")
        spans.append((f"vring {i}", vring.da, vring_size(vring.num, vring.align)))
    if host:
        spans.append(("the RX buffers", config.rx_buffers,
                      entry.vrings[0].num * config.buf_size))
        spans.append(("the TX buffers", config.tx_buffers,
                      entry.vrings[1].num * config.buf_size))
    problem = layout_problem(spans, region.size)
    if problem is not None:
        raise RemoteProtocolError(f"{where}: {problem}: {hint}")
    return entry, RSC_TABLE_OFFSET + table.body_offset(index)


def peek_vdev_status(config: OpenAmpConfig) -> int | None:
    """The vdev status byte of the table in an existing shared memory object, else None.

    Reads the object as a file (never creates nor extends it); used to explain a failed
    connection, so any defect just yields None.
    """
    try:
        with open(config.shm_path, "rb") as f:
            f.seek(RSC_TABLE_OFFSET)
            table = ResourceTable.parse(f.read(MAX_TABLE_SIZE))
    except (OSError, FirmwareError):
        return None
    return next((e.status for _, e in table.items(VdevEntry) if e.id == VIRTIO_ID_RPMSG), None)
