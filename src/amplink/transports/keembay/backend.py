"""Keem Bay IPC as a link backend: one node (CPU or VPU) of the two on a link.

Sending takes the first FREE header of this node's pool round-robin, fills it (the
payload in the header's inline slot, or, sent by reference, anywhere in the payload
window), marks it ALLOCATED and writes its address into the *peer's* FIFO; a sleeping
peer is woken by the FIFO's "not empty" doorbell. Receiving pops this node's FIFO,
checks each entry and header (see :mod:`.wire`: the peer is not trusted), delivers the
payload and marks the header FREE, at once or, for a held message, at its release. The
sender is never told: it finds its headers FREE on later scans (so a sender blocked
for a header polls, :attr:`tx_poll_interval`); one blocked for room in the FIFO asks
to be rung when the reader has taken entries out ("room wanted", amplink's addition).

Sends that cannot go at once wait in the driver's transmit queues (:mod:`.scheduler`),
served round-robin as room appears. All general-purpose channels together may hold at
most ``fifo_share`` entries of the peer's FIFO: the FIFO is first-in first-out, so that
bounds how many GP messages a later high-speed one can find ahead of it; the receiver
hands HS messages over before the GP ones it took out with them.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from ...errors import AddressError, InvalidArgument, LinkDown
from ...link.backend import Backend, Capabilities, Deliver, SeenChannel
from ...memory.buffers import BufferSlice, SharedBuffer
from ...memory.providers import CarveoutProvider
from ...memory.region import SharedRegion
from ...notify.doorbell import Doorbell
from ...notify.waiter import Waiter
from ...rpmsg.wire import RPMSG_ADDR_ANY
from .errors import (
    KEEMBAY_ERRORS,
    BadDataAddress,
    ChannelAlreadyOpen,
    ChannelClosed,
    FifoBusy,
    MisalignedData,
    NoFreeHeader,
)
from .fifo import FifoReader, FifoWriter
from .layout import STATE_TORN_DOWN, STATE_UP, KmbLayout
from .pool import HeaderPool
from .reference import KmbReference, Lender, Waiting
from .scheduler import Queued, TxScheduler
from .wire import (
    DATA_ALIGNMENT,
    GP_QUEUE,
    HEADER,
    IPC_BUF_ALLOCATED,
    IPC_BUF_FREE,
    KMB_IPC_ALIGNMENT,
    KMB_IPC_MAX_CHANNELS,
    KMB_IPC_NUM_HS_CHANNELS,
    NODE_CPU,
    NODE_NAMES,
    NODE_VPU,
    STATUS_OFFSET,
    U32_LIMIT,
    Fault,
    channel_name,
    check_entry,
    check_header,
    tx_queue,
)

log = logging.getLogger(__name__)

#: how often a blocked sender looks for freed headers and FIFO room (the peer never tells)
TX_POLL_INTERVAL = 0.0002
#: what the peer's side is called when a shared buffer is handed to it
PEER_DEVICE = {NODE_CPU: "host", NODE_VPU: "vpu"}

_pack_header = HEADER.pack_into
_unpack_header = HEADER.unpack_from

# why the last send was refused (for no_buffer_error)
_NO_HEADER, _FIFO_FULL, _GP_SHARE, _QUEUED = range(4)


class KeemBayBackend(Backend):
    """Node ``node`` of the Keem Bay link laid out as ``layout`` in ``region`` (see the
    module docstring; its GP share is the layout's). ``doorbell`` rings the peer's FIFO
    interrupt and is rung by it."""

    errors = KEEMBAY_ERRORS
    tx_kicks = False  # headers are freed silently: a blocked sender polls
    tx_poll_interval = TX_POLL_INTERVAL

    def __init__(self, region: SharedRegion, layout: KmbLayout, node: int, doorbell: Doorbell,
                 waiter: Waiter) -> None:
        if node not in NODE_NAMES:
            raise InvalidArgument(f"node must be 0 (CPU) or 1 (VPU), got {node!r}")
        self.node = node
        self.peer = peer = 1 - node
        self.layout = layout
        self.region = region
        self.doorbell = doorbell
        self.waiter = waiter
        self.fifo_share = layout.fifo_share
        self.capabilities = Capabilities(
            max_payload=layout.slot_size, name_service=False, tx_loan=True, rx_hold=True,
            send_by_reference=True, addressing="channel",
            address_range=(0, KMB_IPC_MAX_CHANNELS - 1), dynamic_base=None,
            # the peer's open channels are its bitmap (discover_channels)
            channel_discovery=True,
            # what the peer can leave in our FIFO before it must wait for us to drain: its
            # GP share (its HS channels may add more); so max_held is half of it
            rx_buffers=min(layout.fifo_share, layout.headers))
        self._mm = region.mm
        self._whole = memoryview(region.mm)
        self._u32 = region.u32
        self.pool = HeaderPool(region, layout, node)
        self._slots = layout.nodes[node].slots
        self._slot_size = layout.slot_size
        self._slot_da = layout.to_da(self._slots)
        self._pool_da = layout.to_da(layout.nodes[node].pool)
        self._peer_pool = layout.nodes[peer].pool
        self._peer_pool_da = layout.to_da(self._peer_pool)
        self._window_da = layout.window_da
        self._da_to_offset = layout.offset - layout.da
        self.tx_fifo = FifoWriter(region, layout.fifo(peer))
        self.rx_fifo = FifoReader(region, layout.fifo(node))
        self._state = layout.state(node) // 4
        self._peer_state = layout.state(peer) // 4
        self._bitmap = layout.bitmap(node)
        self._peer_bitmap = layout.bitmap(peer)
        node_layout = layout.nodes[node]
        #: shared buffers of this node, allocated at run time in its heap; they can be
        #: sent by reference (None if the IPC area left no room for a heap)
        self.heap = (CarveoutProvider(region, node_layout.heap, node_layout.heap_size,
                                      da=layout.to_da(node_layout.heap),
                                      name=f"keembay-{NODE_NAMES[node].lower()}-heap")
                     if node_layout.heap_size else None)
        self.open_channels: set[int] = set()
        self._sched = TxScheduler()
        #: checked messages taken out of the FIFO, not handed over yet (GP ones behind HS)
        self._backlog: deque[tuple[int, tuple[int, ...], int, int]] = deque()
        self._loans = 0  # headers loaned out, each with a FIFO entry reserved
        self._refs: dict[int, KmbReference] = {}  # header index -> reference in flight
        #: references made (their buffers lent) that are not on their way yet
        self._unsent: set[KmbReference] = set()
        self._lender = Lender(PEER_DEVICE[peer])
        #: the link's wait_until (set by the link's builder): references wait with it
        self.link_wait: Waiting | None = None
        self._refused = _NO_HEADER
        self._closed = False
        self._last_stats: dict[str, Any] = {}
        self.faults: Counter[str] = Counter()
        self.malformed_rx = 0
        self.messages_out = 0
        self.queued_sends = 0
        self.no_header = 0
        self.fifo_full = 0
        self.gp_share_full = 0
        self.references_done = 0
        #: objects (regions, sockets) closed together with the backend
        self.owned: list[Any] = []
        self.waiter.on_hangup = self.mark_down

    # -- state -------------------------------------------------------------------------------
    def go_up(self) -> None:
        """Say this node is up (after the host initialised the area / the VPU attached)."""
        self._u32[self._state] = STATE_UP

    def _peer_gone(self) -> bool:
        """The peer tore the link down (checked wherever we look for work)."""
        if self._u32[self._peer_state] != STATE_TORN_DOWN:
            return False
        if self.down is None:
            self.mark_down(f"the {NODE_NAMES[self.peer]} tore the link down")
        return True

    def ring(self) -> None:
        """Ring the peer's doorbell (its FIFO's "not empty" interrupt)."""
        try:
            self.doorbell.kick()
        except LinkDown as exc:
            self.mark_down(str(exc))

    def peer_open(self, channel: int) -> bool:
        """Whether the peer has ``channel`` open now (its bitmap, read as it stands)."""
        if not 0 <= channel < KMB_IPC_MAX_CHANNELS:
            return False
        return bool(self._mm[self._peer_bitmap + channel // 8] >> (channel % 8) & 1)

    def discover_channels(self) -> list[SeenChannel]:
        """The channels the peer has open, named ``kmb-N`` (its bitmap as it stands: the
        peer may change it at any time, and any bit pattern is a valid set of channels)."""
        bits = bytes(self._mm[self._peer_bitmap:self._peer_bitmap + KMB_IPC_MAX_CHANNELS // 8])
        return [SeenChannel(channel_name(channel), channel, channel)
                for byte_index, byte in enumerate(bits) if byte
                for channel in range(byte_index * 8, byte_index * 8 + 8)
                if byte >> (channel % 8) & 1]

    # -- channels ----------------------------------------------------------------------------
    def open_endpoint(self, addr: int | None, name: str | None, dst: int) -> int:
        if addr is None:
            if dst == RPMSG_ADDR_ANY:
                addr = self._free_gp_channel()
            else:
                if not 0 <= dst < KMB_IPC_MAX_CHANNELS:
                    raise AddressError(f"channel {dst} is outside 0..{KMB_IPC_MAX_CHANNELS - 1}")
                if dst in self.open_channels:
                    raise ChannelAlreadyOpen(f"channel {dst} is open already on this node")
                addr = dst
        elif dst not in (RPMSG_ADDR_ANY, addr):
            raise InvalidArgument(f"a Keem Bay channel is both ends: an endpoint on channel "
                                  f"{addr} cannot have destination {dst}")
        self.open_channels.add(addr)
        self._mm[self._bitmap + addr // 8] |= 1 << (addr % 8)
        self.ring()  # a peer may wait for this channel to open
        return addr

    def _free_gp_channel(self) -> int:
        for channel in range(KMB_IPC_NUM_HS_CHANNELS, KMB_IPC_MAX_CHANNELS):
            if channel not in self.open_channels:
                return channel
        raise AddressError("every general-purpose channel (10..1023) is open")

    def close_endpoint(self, addr: int) -> None:
        self.open_channels.discard(addr)
        self._mm[self._bitmap + addr // 8] &= ~(1 << (addr % 8)) & 0xFF

    # -- sending -----------------------------------------------------------------------------
    def _check_channel(self, src: int, dst: int) -> None:
        if src != dst:
            raise InvalidArgument(f"a Keem Bay message travels on one channel, which is both "
                                  f"ends: source {src} and destination {dst} differ")
        if dst not in self.open_channels:
            raise ChannelClosed(f"channel {dst} is not open on this node: open it (an "
                                "endpoint on it) before sending on it")

    def try_send(self, src: int, dst: int, payload: Any) -> bool:
        if src != dst or dst not in self.open_channels:
            self._check_channel(src, dst)
        queue = dst if dst < KMB_IPC_NUM_HS_CHANNELS else GP_QUEUE  # tx_queue(): hot path
        sched = self._sched
        if sched.waiting:
            self._pump()
            if sched.queues[queue]:
                self._refused = _QUEUED  # behind messages of its queue that wait
                return False
        return self._transmit(dst, payload, queue)

    def _transmit(self, channel: int, payload: Any, queue: int) -> bool:
        """Put one message on its way if there is room (FIFO, share, header)."""
        fifo = self.tx_fifo
        room = fifo.room()
        loans = self._loans
        if room <= loans:
            if room <= 0:
                fifo.overflow()  # the write the hardware drops
            self._refused = _FIFO_FULL
            self.fifo_full += 1
            return False
        if queue == GP_QUEUE and fifo.in_fifo[GP_QUEUE] + loans >= self.fifo_share:
            self._refused = _GP_SHARE
            self.gp_share_full += 1
            return False
        index = self.pool.take()
        if index is None:
            self._refused = _NO_HEADER
            self.no_header += 1
            return False
        if self._refs:
            self._complete(index)  # freed by the peer since we last looked
        if type(payload) is KmbReference:
            da, size = payload.da, payload.size
            self._refs[index] = payload
            self._unsent.discard(payload)
        else:
            size = len(payload)
            start = self._slots + index * self._slot_size
            self._mm[start:start + size] = payload
            da = self._slot_da + index * self._slot_size
        self._post(index, da, size, channel, queue)
        return True

    def _post(self, index: int, da: int, size: int, channel: int, queue: int) -> None:
        header = self.pool.base + index * KMB_IPC_ALIGNMENT
        _pack_header(self._mm, header, da, size, channel, self.node, self.peer,
                     IPC_BUF_ALLOCATED)
        fifo = self.tx_fifo
        fifo.put(self._pool_da + index * KMB_IPC_ALIGNMENT | self.node, queue)
        self.messages_out += 1
        if fifo.irq_enabled():
            self.ring()

    def no_buffer_error(self) -> FifoBusy | NoFreeHeader:
        refused = self._refused
        if refused == _NO_HEADER:
            return NoFreeHeader()
        if refused == _GP_SHARE:
            return FifoBusy(f"the general-purpose channels hold their share of the "
                            f"{NODE_NAMES[self.peer]}'s FIFO ({self.fifo_share} entries): "
                            "retry later")
        if refused == _QUEUED:
            return FifoBusy("earlier messages of this transmit queue wait for room: retry "
                            "later")
        return FifoBusy()

    def _room_for(self, queue: int) -> bool:
        fifo = self.tx_fifo
        loans = self._loans
        if fifo.room() <= loans:
            return False
        return queue != GP_QUEUE or fifo.in_fifo[GP_QUEUE] + loans < self.fifo_share

    def tx_available(self) -> bool:
        """Room for a message on any channel (a GP one needs the most)."""
        if self._refs:
            self._reap()
        return self._room_for(GP_QUEUE) and self.pool.allocated() < self.pool.count

    def _can_progress(self) -> bool:
        """Whether a waiting sender could go now: room for the head of a waiting queue
        (with none waiting: for any message). Never True when nothing can move, or a
        waiter would spin."""
        sched = self._sched
        if not sched.waiting:
            return self.tx_available()
        return self.pool.allocated() < self.pool.count and any(
            queue and self._room_for(q) for q, queue in enumerate(sched.queues))

    # -- the transmit queues -----------------------------------------------------------------
    def enqueue(self, src: int, dst: int, payload: Any) -> Queued:
        item = Queued(src, dst, payload, tx_queue(dst))
        self._sched.push(item)
        return item

    def sent(self, ticket: Queued) -> bool:
        if not ticket.sent:
            self._pump()
        return ticket.sent

    def withdraw(self, ticket: Queued) -> bool:
        if ticket.sent:
            return False
        self._sched.remove(ticket)
        return True

    def _pump(self) -> None:
        """Play the transmitter: send queued messages round-robin while there is room."""
        sched = self._sched
        while sched.waiting:
            item = sched.next(self._room_for)
            if item is None:
                return
            if item.dst not in self.open_channels:
                continue  # closed while it waited: its sender withdraws it and is told
            if not self._transmit(item.dst, item.payload, item.queue):
                sched.put_back(item)  # no FREE header: nothing can go
                return
            item.sent = True
            self.queued_sends += 1

    # -- loans -------------------------------------------------------------------------------
    def loan(self) -> tuple[Any, memoryview] | None:
        if not self._room_for(GP_QUEUE):  # where it goes is known only when it is sent
            self._refused = _FIFO_FULL
            return None
        index = self.pool.take()
        if index is None:
            self._refused = _NO_HEADER
            return None
        if self._refs:
            self._complete(index)
        self.pool.held.add(index)
        self._loans += 1
        start = self._slots + index * self._slot_size
        return index, self._whole[start:start + self._slot_size]

    def send_loan(self, handle: Any, src: int, dst: int, length: int) -> None:
        try:
            self._check_channel(src, dst)
        except BaseException:
            self.drop_loan(handle)
            raise
        self.pool.held.discard(handle)
        self._loans -= 1
        self._post(handle, self._slot_da + handle * self._slot_size, length, dst,
                   tx_queue(dst))

    def drop_loan(self, handle: Any) -> None:
        self.pool.held.discard(handle)
        self._loans -= 1
        self.pool.free(handle)

    # -- by reference ------------------------------------------------------------------------
    def reference(self, target: Any) -> KmbReference:
        if isinstance(target, SharedBuffer):
            target = target.slice(0, target.size)
        if isinstance(target, BufferSlice):
            buffer = target.buffer
            if self.heap is None or buffer.provider != f"carveout:{self.heap.name}":
                raise BadDataAddress(
                    f"buffer {buffer.name!r} is not in this link's shared memory: allocate "
                    f"it from the link's heap (keembay heap of the {NODE_NAMES[self.node]})")
            da, size = self.heap.device_address(buffer) + target.offset, target.length
        elif (isinstance(target, tuple) and len(target) == 2
              and all(type(v) is int for v in target)):
            buffer = None
            da, size = target
        else:
            raise InvalidArgument(f"send by reference takes a SharedBuffer, a BufferSlice or "
                                  f"(device address, size), got {target!r}")
        lo, hi = self._window_da
        if not (0 <= size < U32_LIMIT and lo <= da and da + size <= hi):
            raise BadDataAddress(f"payload 0x{da:x}+0x{size:x} is outside the shared memory "
                                 f"the peer can address (0x{lo:x}..0x{hi:x})")
        if da % DATA_ALIGNMENT:
            raise MisalignedData(f"payload address 0x{da:x} is not aligned to "
                                 f"{DATA_ALIGNMENT} bytes")
        ref = KmbReference(da, size, buffer)
        ref.waiting = self.link_wait
        if buffer is not None:
            self._lender.lend(buffer)
        self._unsent.add(ref)
        return ref

    def drop_reference(self, ref: KmbReference) -> None:
        if ref in self._unsent:
            self._unsent.discard(ref)
            if ref.buffer is not None:
                self._lender.give_back(ref.buffer)

    def _complete(self, index: int) -> None:
        """The header of a reference is FREE again: the peer is done with the payload."""
        ref = self._refs.pop(index, None)
        if ref is not None:
            self.references_done += 1
            if ref.buffer is not None:
                self._lender.give_back(ref.buffer)
            ref.done = True

    def _reap(self) -> None:
        status = self.pool.status
        for index in [i for i in self._refs if status(i) == IPC_BUF_FREE]:
            self._complete(index)

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, deliver: Deliver, budget: int) -> int:
        """Take entries out of the FIFO and hand their messages to ``deliver``.

        High-speed first: when the entries taken in hold messages of both kinds, those
        of the HS channels are handed over now and the GP ones stay for the next call
        (each channel's messages keep their order), so a waiter for an HS message does
        not wait until the GP messages ahead of it in the FIFO are handed over too.
        """
        self._peer_gone()  # what it sent before still counts
        backlog = self._backlog
        room = budget - len(backlog)
        entries = self.rx_fifo.pop(room) if room > 0 else []
        faults = self._check(entries) if entries else 0
        if entries and self.rx_fifo.room_wanted():
            self.ring()  # its sender waits for the room just made
        handed = self._hand_over(deliver, budget) if backlog else 0
        if self._sched.waiting:
            self._pump()
        if self._refs:
            self._reap()
        return faults + handed

    def _check(self, entries: list[int]) -> int:
        """Check entries and their headers; the good ones join the backlog as ``(channel,
        fields, header offset, index)``. Returns how many were dropped."""
        mm = self._mm
        me, peer = self.node, self.peer
        pool, pool_da, headers = self._peer_pool, self._peer_pool_da, self.layout.headers
        window = self._window_da
        append = self._backlog.append
        dropped = 0
        for entry in entries:
            index = check_entry(entry, peer=peer, pool_da=pool_da, headers=headers)
            if type(index) is not int:
                self._fault(index, entry)
                dropped += 1
                continue
            header = pool + index * KMB_IPC_ALIGNMENT
            fields = _unpack_header(mm, header)  # a copy: the peer may change the header
            fault = check_header(fields, me=me, peer=peer, window=window)
            if fault is not None:
                self._fault(fault, entry)
                dropped += 1
                if fault.frees:
                    mm[header + STATUS_OFFSET] = IPC_BUF_FREE
                continue
            append((fields[2], fields, header, index))
        return dropped

    def _hand_over(self, deliver: Deliver, budget: int) -> int:
        """Deliver from the backlog: its HS messages only, if it holds both kinds; else
        up to ``budget`` in order. Returns how many were handed over."""
        backlog = self._backlog
        hs = [item for item in backlog if item[0] < KMB_IPC_NUM_HS_CHANNELS]
        if hs and len(hs) < len(backlog):
            batch = hs
            self._backlog = deque(item for item in backlog if item[0] >= KMB_IPC_NUM_HS_CHANNELS)
        else:
            batch = [backlog.popleft() for _ in range(min(budget, len(backlog)))]
        mm = self._mm
        whole = self._whole
        to_offset = self._da_to_offset
        views = self.views_wanted
        for channel, fields, header, index in batch:
            start = fields[0] + to_offset
            end = start + fields[1]
            kept = False
            try:
                kept = deliver(channel, channel, whole[start:end] if views else mm[start:end],
                               index)
            finally:  # the header goes back unless kept, whatever delivery did
                if not kept:
                    mm[header + STATUS_OFFSET] = IPC_BUF_FREE
        return len(batch)

    def _fault(self, fault: Fault | int, entry: int) -> None:
        assert isinstance(fault, Fault)
        self.faults[fault.name] += 1
        self.malformed_rx += 1
        level = logging.WARNING if self.malformed_rx == 1 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "Keem Bay %s: FIFO entry 0x%08x dropped: %s", NODE_NAMES[self.node],
                    entry, fault.value)

    def release(self, handle: Any) -> None:
        self._mm[self._peer_pool + handle * KMB_IPC_ALIGNMENT + STATUS_OFFSET] = IPC_BUF_FREE

    def rx_pending(self) -> bool:
        return (bool(self._backlog) or self.rx_fifo.pending()
                or self._u32[self._peer_state] == STATE_TORN_DOWN)

    def in_flight(self) -> int:
        return 0 if self._closed else self.pool.allocated() - self._loans

    # -- notifications -----------------------------------------------------------------------
    def arm(self, *, rx: bool, tx: bool) -> bool:
        pending = False
        if rx:
            pending = self.rx_fifo.arm() or bool(self._backlog) or self._peer_gone()
        if tx and not pending:
            self.tx_fifo.want_room()
            pending = self._can_progress()
        return pending

    def disarm(self) -> None:
        self.rx_fifo.disarm()

    # -- state -------------------------------------------------------------------------------
    def statistics(self) -> Mapping[str, Any]:
        if self._closed:
            return self._last_stats
        return {
            "kind": "keembay", "node": NODE_NAMES[self.node], "headers": self.layout.headers,
            "slot_size": self.layout.slot_size, "fifo_share": self.fifo_share,
            "headers_allocated": self.pool.allocated(), "loaned": self._loans,
            "kicks_sent": getattr(self.doorbell, "kicks_sent", 0),
            "messages_out": self.messages_out, "queued_sends": self.queued_sends,
            "tx_waiting": self._sched.waiting, "rx_backlog": len(self._backlog),
            "no_header": self.no_header,
            "fifo_full": self.fifo_full, "gp_share_full": self.gp_share_full,
            "fifo_overflows_seen": self.rx_fifo.overflows,
            "bad_read_index": self.tx_fifo.bad_read_index,
            "bad_write_index": self.rx_fifo.bad_write_index,
            "malformed_rx": self.malformed_rx, "protocol_faults": dict(self.faults),
            "references_in_flight": len(self._refs), "buffers_lent": self._lender.lent,
            "references_done": self.references_done,
            "open_channels": len(self.open_channels),
            "unconsumed_at_down": self.unconsumed_at_down,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._last_stats = dict(self.statistics())
        self._u32[self._state] = STATE_TORN_DOWN
        self.ring()
        for ref in [*self._refs.values(), *self._unsent]:  # the peer will not read them
            ref.lost = True
            if ref.buffer is not None:
                self._lender.give_back(ref.buffer)
        self._refs.clear()
        self._unsent.clear()
        self._sched.clear()
        self._closed = True
        self._whole.release()
        self.waiter.close()
        self.doorbell.close()
        for resource in self.owned:
            resource.close()
