"""A hostile peer's writes into its own side of an rpmsg-over-virtio link.

The conformance suite's peer (in this process, or the agent firmware in a child) calls
:func:`write_garbage` on *its* link to damage what the side under test reads: the
device (remote) writes into vring 0 and the host's receive buffers, the driver (host)
into vring 1 and its transmit buffers. The ring halves keep private copies of their
indices, so the garbage is written through them (a misbehaving peer in another
process would simply write different bytes): the honest code of the peer then goes on
after the bad entries instead of overwriting them.

Reaches into the virtio backends on purpose; a backend of another kind raises
NotSupported (its own peer must supply its own garbage).
"""

from __future__ import annotations

from amplink.errors import InvalidArgument, NotSupported
from amplink.link import Link
from amplink.rpmsg.wire import RPMSG_HDR, RPMSG_HDR_SIZE
from amplink.transports.virtio import DeviceRpmsgBackend, DriverRpmsgBackend

#: what :func:`write_garbage` can do
KINDS = ("entries", "break")
#: the address the malformed messages claim to be for (they must never be delivered)
GARBAGE_DST = 0x400

Expected = dict[str, int]


def write_garbage(link: Link, kind: str) -> Expected:
    """Write garbage of ``kind`` into this side's half of the link; return what the other
    side must count: ``{"protocol_faults": n, "malformed_rx": m}`` (at least that many),
    or ``{"broken": 1}`` when its receiving direction must break.

    * ``entries``: one ring entry naming no buffer, one message whose header claims more
      bytes than its buffer holds, one buffer shorter than an rpmsg header; then a kick.
    * ``break``: the ring's index moves more than a ring ahead (beyond repair).
    """
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {KINDS}, got {kind!r}")
    backend = link.backend
    # The peer's own threads (dispatcher, runner) must not touch the ring meanwhile.
    with link._lock:
        if isinstance(backend, DeviceRpmsgBackend):
            expected = _device_garbage(backend, kind)
        elif isinstance(backend, DriverRpmsgBackend):
            expected = _driver_garbage(backend, kind)
        else:
            raise NotSupported(f"no garbage writer for {type(backend).__name__}")
        backend.doorbell.kick()
    return expected


def _device_garbage(backend: DeviceRpmsgBackend, kind: str) -> Expected:
    """The device writes vring 0 (its used ring) and the host's receive buffers."""
    tx = backend.tx
    if kind == "break":
        # used.idx a ring and one past what was returned: no working device does that
        tx._u16[tx._used_idx] = (tx._next_used + tx.num + 1) & 0xFFFF
        return {"broken": 1}
    # an extra used entry naming a descriptor outside the table, published as a real one
    idx = tx._next_used
    elem = tx._used_ring + 2 * (idx & tx._mask)
    tx._u32[elem] = tx.num
    tx._u32[elem + 1] = 64
    tx._next_used = (idx + 1) & 0xFFFF
    tx._u16[tx._used_idx] = tx._next_used
    for hdr_len, used_len in ((0xFFFF, backend.buf_size), (0, RPMSG_HDR_SIZE // 2)):
        buf = tx.pop_avail()
        if buf is None:
            raise RuntimeError("the host posted no receive buffer to damage")
        head, offset, _length = buf
        RPMSG_HDR.pack_into(backend._mm, offset, 0x401, GARBAGE_DST, 0, hdr_len, 0)
        tx.push_used(head, used_len)
    return {"protocol_faults": 3, "malformed_rx": 2}


def _driver_garbage(backend: DriverRpmsgBackend, kind: str) -> Expected:
    """The driver writes vring 1 (its avail ring, descriptors) and its transmit buffers."""
    tx = backend.tx
    if kind == "break":
        # avail.idx a ring and one past what was offered
        tx._u16[tx._avail_idx] = (tx._next_avail + tx.num + 1) & 0xFFFF
        return {"broken": 1}
    # an avail entry naming a descriptor outside the table
    tx._u16[tx._avail_ring + (tx._next_avail & tx._mask)] = tx.num
    tx._next_avail = (tx._next_avail + 1) & 0xFFFF
    tx.publish()
    for hdr_len, desc_len in ((0xFFFF, backend.buf_size), (0, RPMSG_HDR_SIZE // 2)):
        offset = backend._take_tx()
        if offset is None:
            raise RuntimeError("no transmit buffer free to send garbage in")
        RPMSG_HDR.pack_into(backend._mm, offset, 0x401, GARBAGE_DST, 0, hdr_len, 0)
        tx.add(backend._da_base + offset, desc_len, offset)
    tx.publish()
    return {"protocol_faults": 3, "malformed_rx": 2}
