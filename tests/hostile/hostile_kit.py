"""Tools for playing a hostile peer against an in-process :class:`LinkPair`.

Both buses of a LinkPair are driven from one thread: send on one, then receive on the
other with a timeout. The hostile side writes straight into the shared region at the
offsets the pair placed its vrings and buffers at (``LinkPair.resources``), so the code
under test reads exactly what a misbehaving peer in another process would have written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from amplink import Endpoint
from amplink.link import Link as AmplinkLink
from amplink.platforms.inprocess import LinkPair
from amplink.platforms.sim.layout import LinkConfig
from amplink.virtio.ring import DESC_SIZE, USED_ELEM_SIZE, VringLayout

SERVICE = "hostile-svc"
RPMSG_HDR = struct.Struct("<IIIHH")  # src, dst, reserved, len, flags
HDR_SIZE = 16
DESC = struct.Struct("<QIHH")  # addr, len, flags, next


@dataclass
class Link:
    """A LinkPair with one channel bound on both sides, plus raw access to its rings."""

    pair: LinkPair
    config: LinkConfig
    pool_offset: int  # region offset of the buffer pool (host RX buffers, then TX)
    vr0: VringLayout  # device -> host (the host's RX)
    vr1: VringLayout  # host -> device (the host's TX)
    host_ep: Endpoint
    dev_ep: Endpoint

    @property
    def n(self) -> int:
        return self.config.num_buffers

    @property
    def host(self) -> AmplinkLink:
        return self.pair.host

    @property
    def device(self) -> AmplinkLink:
        return self.pair.device

    @property
    def region(self):
        return self.pair.region

    # -- raw ring access ---------------------------------------------------------------
    def used_idx(self, vr: VringLayout) -> int:
        return self.region.read_u16(vr.used + 2)

    def set_used_idx(self, vr: VringLayout, value: int) -> None:
        self.region.write_u16(vr.used + 2, value & 0xFFFF)

    def avail_idx(self, vr: VringLayout) -> int:
        return self.region.read_u16(vr.avail + 2)

    def set_avail_idx(self, vr: VringLayout, value: int) -> None:
        self.region.write_u16(vr.avail + 2, value & 0xFFFF)

    def used_elem_offset(self, vr: VringLayout, idx: int) -> int:
        return vr.used_ring + USED_ELEM_SIZE * (idx % vr.num)

    def used_elem(self, vr: VringLayout, idx: int) -> tuple[int, int]:
        off = self.used_elem_offset(vr, idx)
        return self.region.read_u32(off), self.region.read_u32(off + 4)

    def set_used_elem(self, vr: VringLayout, idx: int, head: int | None = None,
                      length: int | None = None) -> None:
        off = self.used_elem_offset(vr, idx)
        if head is not None:
            self.region.write_u32(off, head)
        if length is not None:
            self.region.write_u32(off + 4, length)

    def avail_slot_offset(self, vr: VringLayout, idx: int) -> int:
        return vr.avail_ring + 2 * (idx % vr.num)

    def avail_head(self, vr: VringLayout, idx: int) -> int:
        return self.region.read_u16(self.avail_slot_offset(vr, idx))

    def desc_offset(self, vr: VringLayout, head: int) -> int:
        return vr.desc + DESC_SIZE * head

    def desc(self, vr: VringLayout, head: int) -> tuple[int, int, int, int]:
        return DESC.unpack(self.region.read(self.desc_offset(vr, head), DESC_SIZE))

    def set_desc(self, vr: VringLayout, head: int, *, addr: int | None = None,
                 length: int | None = None, flags: int | None = None,
                 next_: int | None = None) -> None:
        old = self.desc(vr, head)
        new = (old[0] if addr is None else addr, old[1] if length is None else length,
               old[2] if flags is None else flags, old[3] if next_ is None else next_)
        self.region.write(self.desc_offset(vr, head), DESC.pack(*new))

    def buffer_offset(self, vr: VringLayout, head: int) -> int:
        """Region offset of the buffer descriptor ``head`` points at (as the host wrote it)."""
        return self.desc(vr, head)[0] - self.region.da_base

    def last_used_elem(self, vr: VringLayout) -> tuple[int, int]:
        """The entry the device published last on ``vr``."""
        return self.used_elem(vr, self.used_idx(vr) - 1)

    def last_avail_head(self, vr: VringLayout) -> int:
        return self.avail_head(vr, self.avail_idx(vr) - 1)

    def header(self, offset: int) -> tuple[int, int, int, int, int]:
        return RPMSG_HDR.unpack(self.region.read(offset, HDR_SIZE))

    def set_header(self, offset: int, *, src: int | None = None, dst: int | None = None,
                   length: int | None = None, flags: int | None = None,
                   reserved: int | None = None) -> None:
        old = self.header(offset)
        new = (old[0] if src is None else src, old[1] if dst is None else dst,
               old[2] if reserved is None else reserved, old[3] if length is None else length,
               old[4] if flags is None else flags)
        self.region.write(offset, RPMSG_HDR.pack(*new))

    def inject_used(self, vr: VringLayout, head: int, length: int) -> None:
        """A hostile device publishes one *extra* used entry on ``vr``.

        The entry goes into the next slot and used.idx moves on by one; the honest device
        half's private copy of its used index is moved on too, so that its later entries
        follow the injected one instead of overwriting it (as one misbehaving device
        would behave). The driver must see exactly one bogus entry.
        """
        queue = self.device.backend.tx if vr is self.vr0 else self.device.backend.rx
        idx = self.used_idx(vr)
        assert queue._next_used == idx, "the device's used index and the ring disagree"
        self.set_used_elem(vr, idx, head, length)
        self.set_used_idx(vr, idx + 1)
        queue._next_used = (idx + 1) & 0xFFFF

    # -- well-formed traffic ---------------------------------------------------------------
    def device_sends(self, payload: bytes, timeout: float = 1.0) -> None:
        self.dev_ep.sendto(payload, self.host_ep.addr, timeout=timeout)

    def host_sends(self, payload: bytes, timeout: float = 1.0) -> None:
        self.host_ep.send(payload, timeout=timeout)

    def check_host_rx_capacity(self, rounds: int = 3, tag: bytes = b"rx") -> None:
        """Every RX buffer of the host still cycles: ``rounds`` bursts of N device messages.

        A burst of N messages the host has not yet read needs all N RX buffers posted.
        """
        for r in range(rounds):
            sent = [tag + b"-%d-%d" % (r, i) for i in range(self.n)]
            for payload in sent:
                self.device_sends(payload)
            got = [self.host_ep.recv(timeout=1.0) for _ in sent]
            assert got == sent
        assert not self.host.poll(), "the host received messages nobody sent"

    def check_host_tx_capacity(self, rounds: int = 3, tag: bytes = b"tx",
                               timeout: float = 1.0) -> None:
        """Every TX buffer of the host still cycles: ``rounds`` bursts of N host messages."""
        for r in range(rounds):
            sent = [tag + b"-%d-%d" % (r, i) for i in range(self.n)]
            for payload in sent:
                self.host_sends(payload, timeout=timeout)
            got = [self.dev_ep.recv(timeout=1.0) for _ in sent]
            assert got == sent
        assert not self.device.poll(), "the device received messages nobody sent"

    def check_exchange(self, tag: bytes = b"ok") -> None:
        """One well-formed message each way arrives intact."""
        self.host_sends(tag + b"-down")
        assert self.dev_ep.recv(timeout=1.0) == tag + b"-down"
        self.device_sends(tag + b"-up")
        assert self.host_ep.recv(timeout=1.0) == tag + b"-up"

    def close(self) -> None:
        self.pair.close()


def faults(bus: AmplinkLink) -> dict[str, int]:
    return dict(bus.statistics().backend["protocol_faults"])


def fault_total(bus: AmplinkLink) -> int:
    return sum(faults(bus).values())


def open_link(config: LinkConfig | None = None, *, notify: str = "eventfd") -> Link:
    config = config or LinkConfig(num_buffers=8)
    # callbacks run in the thread that polls: the tests see their effects at once
    pair = LinkPair.create(config, notify=notify, dispatch="caller")  # type: ignore[arg-type]
    try:
        dev_ep = pair.device.create_endpoint(SERVICE, announce=True)
        host_ep = pair.host.open_channel(SERVICE, timeout=2.0)
        vdev = pair.resources.vdevs[0]
        assert vdev.buffers is not None
        vr0, vr1 = (VringLayout(ring.offset, config.num_buffers, config.align)
                    for ring in vdev.vrings)
        link = Link(pair, config, vdev.buffers.offset, vr0, vr1, host_ep, dev_ep)
        # the device learns the host's address from its first message
        link.check_exchange(b"hello")
    except BaseException:
        pair.close()
        raise
    return link


def close_link(link: Link) -> None:
    """Close both sides; mark them down first so that closing an announced endpoint does
    not wait for a TX buffer on a link a test wedged on purpose."""
    link.device.mark_down("test over")
    link.host.mark_down("test over")
    link.close()
