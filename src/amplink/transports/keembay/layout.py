"""Where everything of a Keem Bay link lies in its shared memory, and the descriptor the
host writes there for the VPU.

The IPC area is one range of shared memory (a carveout of the simulated processor, or a
memfd for a pair in one process), seen by both nodes at the same device addresses::

    page 0      descriptor: magic, version, the sizes below, the nodes' states,
                each node's FIFO (control block + 128 entries), its open-channel bitmap
    pools       CPU pool, VPU pool: ``headers`` 64-byte IPC headers each
    data        CPU slots, VPU slots: one ``slot_size`` payload slot per header (the
                inline data of small messages), then the CPU heap and the VPU heap:
                the rest, halved, where shared buffers are allocated at run time

The pools come first and the data areas last, so the *payload window* (where a header's
``data_addr`` may point) is one range that covers no header, FIFO or descriptor.

Both nodes derive the layout from ``(headers, slot_size, size)`` with :meth:`KmbLayout.
compute`; the VPU reads those numbers (and the GP share both nodes' senders keep) from
the descriptor the host wrote and checks them before it uses any of it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import InvalidArgument, RemoteProtocolError
from ...memory.allocator import align_up
from .wire import (
    KMB_IPC_ALIGNMENT,
    KMB_IPC_FIFO_DEPTH,
    KMB_IPC_MAX_CHANNELS,
    NODE_CPU,
    NODE_VPU,
    U32_LIMIT,
)

PAGE = 0x1000
#: "KMBI", version 1
KMB_IPC_MAGIC = 0x49424D4B
KMB_IPC_VERSION = 1
#: magic, version, headers, slot_size, size, fifo_share, state[CPU], state[VPU]
DESCRIPTOR = struct.Struct("<8I")
STATE_OFFSET = {NODE_CPU: 24, NODE_VPU: 28}
#: a node's state word, written by that node only
STATE_DOWN = 0
STATE_UP = 1
STATE_TORN_DOWN = 2

#: a FIFO: write index, read index, overflow flag, "not empty" interrupt enable, "room
#: wanted" (u32 each), then the entries from byte 64
FIFO_WR, FIFO_RD, FIFO_OVERFLOW, FIFO_IRQ, FIFO_ROOM = 0, 4, 8, 12, 16
FIFO_ENTRIES = 64
FIFO_SIZE = FIFO_ENTRIES + 4 * KMB_IPC_FIFO_DEPTH
FIFO_OFFSET = {NODE_CPU: 0x100, NODE_VPU: 0x400}
#: one bit per channel, set while the node has it open (for a sender that wants to wait
#: for the receiver's channel instead of losing messages to it)
BITMAP_SIZE = KMB_IPC_MAX_CHANNELS // 8
BITMAP_OFFSET = {NODE_CPU: 0x800, NODE_VPU: 0x800 + BITMAP_SIZE}

#: limits a descriptor is checked against
MAX_HEADERS = 4096
MIN_SLOT = KMB_IPC_ALIGNMENT
MAX_SLOT = 1 << 20


@dataclass(frozen=True, slots=True)
class NodeLayout:
    """One node's part: offsets in the region that holds the IPC area."""

    pool: int
    slots: int
    heap: int
    heap_size: int


@dataclass(frozen=True, slots=True)
class KmbLayout:
    """The layout of an IPC area of ``size`` bytes at device address ``da``, found at
    ``offset`` in the region that maps it. Every offset below is one in that region."""

    da: int
    size: int
    offset: int
    headers: int
    slot_size: int
    #: entries of the peer's FIFO all GP channels of a sender may hold at once
    fifo_share: int
    nodes: tuple[NodeLayout, NodeLayout]
    #: [start, end) offsets where payloads may lie
    window: tuple[int, int]

    @classmethod
    def compute(cls, da: int, size: int, headers: int, slot_size: int, offset: int = 0,
                fifo_share: int = KMB_IPC_FIFO_DEPTH) -> KmbLayout:
        """The layout for these sizes; InvalidArgument if they do not fit or are out of
        range (the VPU turns that into a RemoteProtocolError naming the descriptor)."""
        if not 1 <= headers <= MAX_HEADERS:
            raise InvalidArgument(f"headers must be in 1..{MAX_HEADERS}, got {headers}")
        if not MIN_SLOT <= slot_size <= MAX_SLOT or slot_size % KMB_IPC_ALIGNMENT:
            raise InvalidArgument(f"slot_size must be a multiple of {KMB_IPC_ALIGNMENT} in "
                                  f"{MIN_SLOT}..{MAX_SLOT}, got {slot_size}")
        if not 1 <= fifo_share <= KMB_IPC_FIFO_DEPTH:
            raise InvalidArgument(f"fifo_share must be in 1..{KMB_IPC_FIFO_DEPTH}, got "
                                  f"{fifo_share}")
        if da % PAGE or size % PAGE or da < 0 or da + size > U32_LIMIT:
            raise InvalidArgument(f"the IPC area 0x{da:x}+0x{size:x} must be page-aligned and "
                                  "below 4 GiB (its addresses travel in 32-bit fields)")
        pool = headers * KMB_IPC_ALIGNMENT
        data = align_up(PAGE + 2 * pool, PAGE)
        heaps = align_up(data + 2 * headers * slot_size, PAGE)
        heap_size = (size - heaps) // 2 // PAGE * PAGE
        if heap_size < 0:
            raise InvalidArgument(f"an IPC area of 0x{size:x} bytes cannot hold {headers} "
                                  f"headers and slots of {slot_size} bytes per node: it needs "
                                  f"0x{heaps:x} at least")
        o = offset
        nodes = (NodeLayout(o + PAGE, o + data, o + heaps, heap_size),
                 NodeLayout(o + PAGE + pool, o + data + headers * slot_size,
                            o + heaps + heap_size, heap_size))
        return cls(da, size, offset, headers, slot_size, fifo_share, nodes,
                   (o + data, o + heaps + 2 * heap_size))

    @classmethod
    def needed(cls, headers: int, slot_size: int, heap_size: int) -> int:
        """The size of an IPC area with heaps of (at least) ``heap_size`` bytes per node."""
        fixed = align_up(align_up(PAGE + 2 * headers * KMB_IPC_ALIGNMENT, PAGE)
                         + 2 * headers * slot_size, PAGE)
        return fixed + 2 * align_up(heap_size, PAGE)

    # -- offsets and device addresses --------------------------------------------------------
    def to_da(self, offset: int) -> int:
        """The device address of region offset ``offset``."""
        return self.da + offset - self.offset

    def to_offset(self, da: int) -> int:
        """The region offset of device address ``da`` (unchecked: see :attr:`window`)."""
        return da - self.da + self.offset

    def fifo(self, node: int) -> int:
        """The offset of ``node``'s FIFO (the one the *other* node writes)."""
        return self.offset + FIFO_OFFSET[node]

    def bitmap(self, node: int) -> int:
        return self.offset + BITMAP_OFFSET[node]

    def state(self, node: int) -> int:
        return self.offset + STATE_OFFSET[node]

    @property
    def window_da(self) -> tuple[int, int]:
        """The payload window in device addresses."""
        return self.to_da(self.window[0]), self.to_da(self.window[1])

    # -- the descriptor ----------------------------------------------------------------------
    def descriptor(self) -> bytes:
        """The descriptor the host writes at offset 0 (both nodes DOWN)."""
        return DESCRIPTOR.pack(KMB_IPC_MAGIC, KMB_IPC_VERSION, self.headers, self.slot_size,
                               self.size, self.fifo_share, STATE_DOWN, STATE_DOWN)

    @classmethod
    def from_descriptor(cls, raw: bytes, da: int, size: int, offset: int = 0) -> KmbLayout:
        """The layout the host described in ``raw`` (untrusted), for an IPC area the VPU
        knows to be ``size`` bytes at ``da`` (at ``offset`` of its region);
        RemoteProtocolError names what is wrong."""
        if len(raw) < DESCRIPTOR.size:
            raise RemoteProtocolError("Keem Bay IPC descriptor: truncated")
        magic, version, headers, slot_size, described, share, _, _ = DESCRIPTOR.unpack_from(raw)
        if magic != KMB_IPC_MAGIC or version != KMB_IPC_VERSION:
            raise RemoteProtocolError(f"Keem Bay IPC descriptor: magic 0x{magic:08x} version "
                                      f"{version}, expected 0x{KMB_IPC_MAGIC:08x} version "
                                      f"{KMB_IPC_VERSION}")
        if described != size:
            raise RemoteProtocolError(f"Keem Bay IPC descriptor: field size = 0x{described:x}, "
                                      f"but the IPC area is 0x{size:x} bytes")
        try:
            return cls.compute(da, size, headers, slot_size, offset, share)
        except InvalidArgument as exc:
            raise RemoteProtocolError(f"Keem Bay IPC descriptor: {exc}") from None
