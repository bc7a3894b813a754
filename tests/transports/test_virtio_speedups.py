"""The virtio backends' C engine against their pure-Python methods, on the same bytes.

Two in-process link pairs are laid out alike: one with the pure-Python rings and backend
methods, one with the C ones. The same operations go to both backends - sends, batches,
copying and zero-copy receives, releases - while a hostile peer writes the same garbage
into both regions (used lengths, rpmsg headers, extra used entries, descriptor lengths).
Every result, fault count, kick count and byte of shared memory must agree.
"""

from __future__ import annotations

import logging
import struct
from contextlib import contextmanager

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from amplink._accel import speedups
from amplink.platforms.inprocess import LinkPair
from amplink.platforms.sim.layout import LinkConfig
from amplink.transports import virtio as virtio_transport
from amplink.virtio.device import PyDeviceQueue
from amplink.virtio.driver import PyDriverQueue
from amplink.virtio.ring import DESC, VringLayout

pytestmark = pytest.mark.skipif(speedups is None, reason="amplink._speedups is not built here")

NUM = 8
BUF = 128
CONFIG = LinkConfig(num_buffers=NUM, buf_size=BUF)
HOST_ADDR, DEV_ADDR = 1024, 1025
RPMSG_HDR = struct.Struct("<IIIHH")


@contextmanager
def _pair(pure: bool):
    if pure:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(virtio_transport, "DriverQueue", PyDriverQueue)
            mp.setattr(virtio_transport, "DeviceQueue", PyDeviceQueue)
            pair = LinkPair.create(CONFIG, dispatch="caller")
    else:
        pair = LinkPair.create(CONFIG, dispatch="caller")
    try:
        assert (pair.host.backend._engine is None) == pure
        yield pair
    finally:
        pair.close()


def _outcome(call):
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return ("raised", type(exc).__name__)


class Side:
    """One pair as the operations see it: its backends, rings and kept buffers."""

    def __init__(self, pair: LinkPair) -> None:
        self.pair = pair
        self.region = pair.region
        vdev = pair.resources.vdevs[0]
        self.vr0, self.vr1 = (VringLayout(r.offset, NUM, CONFIG.align) for r in vdev.vrings)
        self.kept: dict[str, list] = {"host": [], "device": []}

    def backend(self, who: str):
        return (self.pair.host if who == "host" else self.pair.device).backend

    def state(self) -> tuple:
        stats = [self.backend(who).statistics() for who in ("host", "device")]
        return (self.region.read(0, self.region.size),
                [(s["malformed_rx"], s["protocol_faults"], s["kicks_sent"]) for s in stats])

    # -- operations ------------------------------------------------------------------------
    def send(self, who: str, sizes: list[int], many: bool):
        backend = self.backend(who)
        src, dst = (HOST_ADDR, DEV_ADDR) if who == "host" else (DEV_ADDR, HOST_ADDR)
        payloads = [bytes([0x41 + i % 26]) * n for i, n in enumerate(sizes)]
        if many:
            return backend.send_many(src, dst, payloads, 0)
        return [backend.try_send(src, dst, p) for p in payloads]

    def receive(self, who: str, budget: int, views: bool, keep: bool):
        backend = self.backend(who)
        if not views:
            return backend.receive_copies(budget)
        got = []

        def deliver(src, dst, payload, handle):
            got.append((src, dst, type(payload).__name__, bytes(payload)))
            if keep:
                self.kept[who].append(handle)
            return keep

        backend.views_wanted = True
        try:
            return backend.receive(deliver, budget), got
        finally:
            backend.views_wanted = False

    def exchange(self, sender: str, size: int, damage: list[tuple], receiving: tuple):
        receiver = "device" if sender == "host" else "host"
        sent = self.send(sender, [size], False)
        for what in damage:
            self.corrupt(*what)
        return sent, self.receive(receiver, *receiving)

    def release(self, who: str, index: int):
        kept = self.kept[who]
        if not kept:
            return None
        return self.backend(who).release(kept.pop(index % len(kept)))

    def loan(self, who: str, size: int, send: bool):
        backend = self.backend(who)
        slot = backend.loan()
        if slot is None:
            return None
        handle, view = slot
        view[:size] = b"L" * size
        src, dst = (HOST_ADDR, DEV_ADDR) if who == "host" else (DEV_ADDR, HOST_ADDR)
        if send:
            backend.send_loan(handle, src, dst, size)
        else:
            backend.drop_loan(handle)  # an idle buffer again (the device: a spare)
        return len(view)

    # -- what a hostile peer writes ----------------------------------------------------------
    def _last_used(self, vr: VringLayout) -> int:
        return vr.used_ring + 8 * ((self.region.read_u16(vr.used + 2) - 1) % NUM)

    def _avail_head(self, vr: VringLayout, back: int = 1) -> int:
        region = self.region
        return region.read_u16(vr.avail_ring + 2 * ((region.read_u16(vr.avail + 2) - back) % NUM))

    def _u32(self, offset: int, value: int | None, delta: int) -> None:
        """Write ``value``, or (None) the value there moved by ``delta``."""
        old = self.region.read_u32(offset)
        self.region.write_u32(offset, (old + delta if value is None else value) & 0xFFFF_FFFF)

    def corrupt(self, what: str, value: int | None, delta: int) -> None:
        region = self.region
        if what == "used_len":  # of the device's last message to the host
            self._u32(self._last_used(self.vr0) + 4, value, delta)
        elif what == "used_id":
            self._u32(self._last_used(self.vr0), value, delta)
        elif what in ("hdr_len", "hdr_dst", "tx_hdr_len"):
            if what == "tx_hdr_len":  # the host's last message, before the device reads it
                vr, head = self.vr1, self._avail_head(self.vr1)
            else:
                vr, head = self.vr0, region.read_u32(self._last_used(self.vr0)) % NUM
            offset = DESC.unpack(region.read(vr.desc + 16 * head, 16))[0] - region.da_base
            src, dst, res, length, flags = RPMSG_HDR.unpack(region.read(offset, 16))
            if what == "hdr_dst":
                dst = (dst + delta if value is None else value) & 0xFFFF_FFFF
            else:
                length = (length + delta if value is None else value) & 0xFFFF
            region.write(offset, RPMSG_HDR.pack(src, dst, res, length, flags))
        elif what == "inject_used":  # an extra used entry on the host's RX ring
            idx = region.read_u16(self.vr0.used + 2)
            elem = self.vr0.used_ring + 8 * (idx % NUM)
            region.write_u32(elem, (NUM + delta if value is None else value) & 0xFFFF_FFFF)
            region.write_u32(elem + 4, BUF + delta)
            region.write_u16(self.vr0.used + 2, (idx + 1) & 0xFFFF)
            self.pair.device.backend.tx._next_used = (idx + 1) & 0xFFFF
        elif what in ("tx_desc_len", "rx_desc_len"):
            # the host's last posted message / a receive buffer it posted for the device
            vr = self.vr1 if what == "tx_desc_len" else self.vr0
            head = self._avail_head(vr, 1 if what == "tx_desc_len" else 1 + delta % NUM)
            self._u32(vr.desc + 16 * head + 8, value, delta)

who = st.sampled_from(["host", "device"])
sizes = st.lists(st.one_of(st.integers(0, 16), st.just(BUF - 16)), min_size=1, max_size=12)
# what, an absolute value (None: the value there moved by delta), delta
corruption = (st.sampled_from(["used_len", "used_id", "hdr_len", "hdr_dst", "inject_used",
                               "tx_desc_len", "tx_hdr_len", "rx_desc_len"]),
              st.one_of(st.none(), st.none(),
                        st.sampled_from([0, 8, 15, 16, 17, BUF - 16, BUF - 15, BUF, BUF + 16]),
                        st.integers(0, 2**32 - 1)),
              st.integers(-3, 3))
receiving = (st.integers(1, 12), st.booleans(), st.booleans())  # budget, views, keep
ops = st.lists(st.one_of(
    # a message, damaged on its way, received: the hostile peer's favourite moment
    st.tuples(st.just("exchange"), who, st.one_of(st.integers(0, 16), st.just(BUF - 16)),
              st.lists(st.tuples(*corruption), max_size=2), st.tuples(*receiving)),
    st.tuples(st.just("send"), who, st.one_of(sizes, st.just([BUF - 15])), st.booleans()),
    st.tuples(st.just("receive"), who, *receiving),
    st.tuples(st.just("release"), who, st.integers(0, 20)),
    st.tuples(st.just("loan"), who, st.integers(0, BUF - 16), st.booleans()),
    st.tuples(st.just("corrupt"), *corruption),
), min_size=5, max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=ops)
# a buffer longer than the rpmsg buffer size whose header claims more than the MTU
@example(ops=[("exchange", "host", 4, [("tx_desc_len", BUF + 16, 0), ("tx_hdr_len", BUF - 15, 0)],
               (4, False, False))])
def test_the_c_engine_and_the_python_methods_agree(ops) -> None:
    logging.disable(logging.WARNING)  # first faults are logged by both: noise here
    try:
        with _pair(pure=True) as pure_pair, _pair(pure=False) as c_pair:
            sides = (Side(pure_pair), Side(c_pair))
            assert sides[0].state() == sides[1].state()
            for op in ops:
                kind, *args = op
                if kind == "corrupt":
                    for side in sides:
                        side.corrupt(*args)
                    continue
                results = [_outcome(lambda s=side, k=kind, a=args: getattr(s, k)(*a))
                           for side in sides]
                assert results[0] == results[1], (op, results)
                assert sides[0].state() == sides[1].state(), op
    finally:
        logging.disable(logging.NOTSET)


def test_a_batch_is_one_publication_and_at_most_one_kick() -> None:
    with _pair(pure=False) as pair:
        host, device = pair.host.backend, pair.device.backend
        device.arm(rx=True, tx=False)  # the device sleeps: every publication would ring
        before = host.statistics()["kicks_sent"]
        assert host.send_many(HOST_ADDR, DEV_ADDR, [b"%d" % i for i in range(5)], 0) == 5
        assert host.statistics()["kicks_sent"] == before + 1
        taken, got = device.receive_copies(64)
        assert taken == 5 and [p for _s, _d, p in got] == [b"%d" % i for i in range(5)]
        device.arm(rx=True, tx=False)
        for _ in range(3):
            assert host.try_send(HOST_ADDR, DEV_ADDR, b"x")
        assert host.statistics()["kicks_sent"] == before + 4  # one per send


def test_the_engine_refuses_what_would_overrun_a_buffer() -> None:
    with _pair(pure=False) as pair:
        for backend in (pair.host.backend, pair.device.backend):
            with pytest.raises(ValueError, match="MTU"):
                backend.try_send(HOST_ADDR, DEV_ADDR, b"x" * (BUF - 15))
            with pytest.raises(ValueError, match="MTU"):
                backend.send_many(HOST_ADDR, DEV_ADDR, [b"x", b"x" * (BUF - 15)], 0)
            with pytest.raises(ValueError):
                backend.try_send(HOST_ADDR, 1 << 32, b"x")


def test_a_closed_engine_touches_nothing() -> None:
    with _pair(pure=False) as pair:
        backend = pair.host.backend
        engine = backend._engine
        pair.host.close()
        for call in (lambda: engine.try_send(HOST_ADDR, DEV_ADDR, b"x"),
                     lambda: engine.receive_copies(8), lambda: engine.wait_pending(False, 0.01),
                     engine.rx_pending, lambda: engine.arm(rx=True, tx=True)):
            with pytest.raises(ValueError, match="closed"):
                call()
