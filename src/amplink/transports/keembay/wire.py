"""The Keem Bay IPC wire: nodes, channels, the IPC header and the FIFO entry.

Names follow Intel's driver (drivers/soc/intel/keembay-ipc.c, 2020-2021). Everything
here is a plain function of its arguments: the header and entry codecs and the checks a
receiver applies to what its peer wrote, so they can be tested and fuzzed alone.

The header, one per 64-byte slot of a node's pool (little-endian, packed)::

    struct kmb_ipc_buf { u32 data_addr; u32 data_size; u16 channel;
                         u8 src_node; u8 dst_node; u8 status; }

A FIFO entry is the header's 32-bit device address; headers are 64-byte aligned, so its
low 6 bits are free and carry the writer's id.
"""

from __future__ import annotations

import enum
import struct

#: the two nodes of the one link
NODE_CPU = 0
NODE_VPU = 1
NODE_NAMES = {NODE_CPU: "CPU", NODE_VPU: "VPU"}

#: channel ids are 0..1023, unique per link; 0..9 are high-speed (HS), the rest general
#: purpose (GP)
KMB_IPC_MAX_CHANNELS = 1024
KMB_IPC_NUM_HS_CHANNELS = 10
#: the driver's transmit queues: one per HS channel, and one all GP channels share
KMB_IPC_NUM_TX_QUEUES = KMB_IPC_NUM_HS_CHANNELS + 1
GP_QUEUE = KMB_IPC_NUM_HS_CHANNELS

#: one header per 64-byte slot; status FREE / ALLOCATED
KMB_IPC_ALIGNMENT = 64
IPC_BUF_FREE = 0
IPC_BUF_ALLOCATED = 1
HEADER = struct.Struct("<IIHBBB")
HEADER_SIZE = HEADER.size  # 13 of the slot's 64 bytes
STATUS_OFFSET = 12

#: the hardware FIFO of each node: 128 entries of 32 bits
KMB_IPC_FIFO_DEPTH = 128
WRITER_ID_MASK = KMB_IPC_ALIGNMENT - 1
ADDRESS_MASK = 0xFFFF_FFFF & ~WRITER_ID_MASK

#: payloads start on a 64-byte cache line: the memory is not coherent on the real chip,
#: and cache maintenance of a payload sharing a line with other data would corrupt it
DATA_ALIGNMENT = KMB_IPC_ALIGNMENT
U32_LIMIT = 1 << 32


def is_hs(channel: int) -> bool:
    """Whether ``channel`` is a high-speed channel (0..9)."""
    return 0 <= channel < KMB_IPC_NUM_HS_CHANNELS


#: what a discovered channel is called: ``kmb-`` and its number in decimal (``kmb-10``)
CHANNEL_PREFIX = "kmb-"


def channel_name(channel: int) -> str:
    """The name a link that discovers Keem Bay channels gives channel ``channel``."""
    return f"{CHANNEL_PREFIX}{channel}"


def tx_queue(channel: int) -> int:
    """The transmit queue of ``channel``: its own for HS channels, :data:`GP_QUEUE` for GP."""
    return channel if channel < KMB_IPC_NUM_HS_CHANNELS else GP_QUEUE


def fifo_entry(header_da: int, writer: int) -> int:
    """The FIFO entry announcing the header at ``header_da`` from node ``writer``."""
    if header_da & WRITER_ID_MASK or not 0 <= header_da < U32_LIMIT:
        raise ValueError(f"header address 0x{header_da:x} is not a 64-byte aligned 32-bit "
                         "address")
    if not 0 <= writer <= WRITER_ID_MASK:
        raise ValueError(f"writer id {writer} does not fit the entry's low 6 bits")
    return header_da | writer


def split_entry(entry: int) -> tuple[int, int]:
    """``(header device address, writer id)`` of a FIFO entry (any 32-bit value)."""
    return entry & ADDRESS_MASK, entry & WRITER_ID_MASK


class Fault(enum.StrEnum):
    """What a receiver finds wrong with a FIFO entry or the header it names, and the
    errno the driver answers the same condition with. Entries that name no header of
    the sender's pool are dropped and left alone (freeing them would write where the
    peer pointed); the others are dropped and their header freed."""

    UNKNOWN_WRITER = "entry from a node that is not the peer"
    OUTSIDE_POOL = "header address outside the sender's pool"
    NOT_ALLOCATED = "header is not ALLOCATED"
    BAD_NODE = "header's source or destination node is wrong"
    BAD_CHANNEL = "channel id outside 0..1023"
    BAD_ADDRESS = "payload outside the shared memory"
    MISALIGNED = "payload not aligned to 64 bytes"

    @property
    def frees(self) -> bool:
        """Whether the receiver frees the header of an entry dropped for this fault."""
        return self not in (Fault.UNKNOWN_WRITER, Fault.OUTSIDE_POOL, Fault.NOT_ALLOCATED)


def check_entry(entry: int, *, peer: int, pool_da: int, headers: int) -> Fault | int:
    """The index of the header a FIFO entry names in the peer's pool, or why not."""
    header_da, writer = split_entry(entry)
    if writer != peer:
        return Fault.UNKNOWN_WRITER
    index, rest = divmod(header_da - pool_da, KMB_IPC_ALIGNMENT)
    if rest or not 0 <= index < headers:
        return Fault.OUTSIDE_POOL
    return index


def check_header(fields: tuple[int, int, int, int, int, int], *, me: int, peer: int,
                 window: tuple[int, int]) -> Fault | None:
    """Why the decoded header ``fields`` cannot be delivered to node ``me`` (None: it can).

    ``window`` is ``[start, end)``, the device addresses a payload may occupy.
    """
    data_addr, data_size, channel, src, dst, status = fields
    if status != IPC_BUF_ALLOCATED:
        return Fault.NOT_ALLOCATED
    if src != peer or dst != me:
        return Fault.BAD_NODE
    if channel >= KMB_IPC_MAX_CHANNELS:
        return Fault.BAD_CHANNEL
    if data_addr < window[0] or data_addr + data_size > window[1]:
        return Fault.BAD_ADDRESS
    if data_addr % DATA_ALIGNMENT:
        return Fault.MISALIGNED
    return None
