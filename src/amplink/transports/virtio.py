"""rpmsg over two virtio split rings, in either role: the virtio backend of a link.

vring 0 carries device -> driver, vring 1 driver -> device. The driver (host) owns
every buffer: the first half of its pool is posted on vring 0 for the device to fill,
the second half is its transmit pool, fresh first, then recycled from vring 1.

Both roles offer everything rpmsg can: the name service (when negotiated), loaned
transmit buffers and held receive buffers (zero copy). A :class:`VirtioProfile` (Linux
or OpenAMP) carries every way the two dialects differ, passed once.

The methods below are the pure-Python path. When the rings are the C ones
(``amplink._speedups``, see :mod:`amplink._accel`), an engine over them replaces the hot
methods of each backend instance (sending, batches, receiving, waiting for the peer,
arming), with the same checks and results; an eventfd doorbell is then rung from C.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .._accel import IMPLEMENTATION, speedups
from ..errors import FirmwareError, InvalidArgument, LinkDown, PeerTimeout, RemoteProtocolError
from ..link.backend import Backend, Capabilities, Deliver
from ..link.core import NameServiceRules
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell, EventfdDoorbell
from ..notify.waiter import Waiter
from ..rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_HDR, RPMSG_HDR_SIZE, RPMSG_RESERVED_ADDRESSES
from ..virtio.device import DeviceQueue
from ..virtio.driver import DriverQueue
from ..virtio.ring import VIRTIO_RING_F_EVENT_IDX, VringLayout, vring_size
from ..virtio.vdev import (
    VDEV_NUM_VRINGS_OFFSET,
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_RPMSG_F_NS,
    VdevControl,
    VdevEntry,
    VringEntry,
)

#: how the driver sets up the vdev: Linux's status sequence or OpenAMP's
Handshake = Literal["linux", "openamp"]


@dataclass(frozen=True)
class VirtioProfile:
    """Every way a wire dialect of rpmsg over virtio differs from another."""

    name: str
    #: how the driver sets the vdev up: Linux writes the status 0 -> 1 -> 3, the features,
    #: then 7; OpenAMP writes the features and kicks, then (after the rings) only 0x04
    handshake: Handshake
    #: the peer rings when it frees a transmit buffer (OpenAMP never does: poll)
    peer_kicks_tx: bool
    #: the name-service rules of the dialect
    ns_rules: NameServiceRules


LINUX = VirtioProfile("linux", "linux", peer_kicks_tx=True, ns_rules=NameServiceRules())
OPENAMP = VirtioProfile(
    "openamp", "openamp", peer_kicks_tx=False,
    ns_rules=NameServiceRules(adopt_announced=True,
                              announce_destroy_min_addr=RPMSG_RESERVED_ADDRESSES))

#: features amplink's rpmsg implements
SUPPORTED_FEATURES = (1 << VIRTIO_RPMSG_F_NS) | (1 << VIRTIO_RING_F_EVENT_IDX)

_pack_header = RPMSG_HDR.pack_into
_unpack_header = RPMSG_HDR.unpack_from

#: the methods of a backend instance that its C engine replaces (backend name: engine name)
_ENGINE_METHODS = {
    "try_send": "try_send", "send_many": "send_many", "receive": "receive",
    "receive_copies": "receive_copies", "release": "release", "rx_pending": "rx_pending",
    "tx_available": "tx_available", "wait_pending": "wait_pending", "arm": "arm",
    "disarm": "disarm", "_take_tx": "take_tx", "_post_tx": "post_tx",
}


def ring_layout(region: SharedRegion, vring: VringEntry) -> VringLayout:
    """Where a vring of the vdev entry lies in ``region`` (checked: the peer wrote it)."""
    try:
        offset = region.da_to_offset(vring.da, vring_size(vring.num, vring.align))
    except ValueError as exc:
        raise RemoteProtocolError(f"vring at da 0x{vring.da:x}: {exc}") from None
    layout = VringLayout(offset, vring.num, vring.align)
    # The queues address fields through u16/u32 views: a misaligned ring would make
    # them read neighbouring fields (virtio requires 16-byte descriptor tables anyway).
    if layout.desc % 16 or layout.used % 4:
        raise RemoteProtocolError(
            f"vring at da 0x{vring.da:x} (align {vring.align}) is not 16-byte aligned with a "
            "4-byte aligned used ring")
    return layout


def _check_two_vrings(vdev: VdevControl, entry: VdevEntry) -> None:
    if len(entry.vrings) != 2:
        raise FirmwareError(
            f"RSC_VDEV entry: field num_of_vrings = {len(entry.vrings)}, rpmsg needs 2 (at "
            f"byte 0x{vdev.entry_offset + VDEV_NUM_VRINGS_OFFSET:x} of the shared memory)")


class _VirtioRpmsgBackend(Backend):
    role: ClassVar[str]  # "driver" or "device"
    #: the ring this side receives on and the one it sends on
    rx: Any
    tx: Any

    def __init__(self, region: SharedRegion, vdev: VdevControl, doorbell: Doorbell,
                 waiter: Waiter, features: int, buf_size: int, profile: VirtioProfile,
                 rx_buffers: int) -> None:
        if buf_size <= RPMSG_HDR_SIZE or buf_size > 0xFFFF + RPMSG_HDR_SIZE:
            raise InvalidArgument(
                f"buf_size: the rpmsg buffer size must be in 17..65551, got {buf_size}")
        self.region = region
        self.vdev = vdev
        self.doorbell = doorbell
        self.waiter = waiter
        self.features = features
        self.profile = profile
        self.event_idx = bool(features & (1 << VIRTIO_RING_F_EVENT_IDX))
        self.buf_size = buf_size
        self.mtu = buf_size - RPMSG_HDR_SIZE
        self.tx_kicks = profile.peer_kicks_tx
        self.capabilities = Capabilities(
            max_payload=self.mtu, name_service=bool(features & (1 << VIRTIO_RPMSG_F_NS)),
            tx_loan=True, rx_hold=True, addressing="rpmsg",
            address_range=(0, RPMSG_ADDR_ANY - 1), dynamic_base=RPMSG_RESERVED_ADDRESSES,
            rx_buffers=rx_buffers)
        self._mm = region.mm
        # views of received payloads and loaned buffers are cut from this one
        self._whole = memoryview(region.mm)
        self.malformed_rx = 0
        self._views_wanted = False
        self._engine: Any = None  # the C engine, when the rings are C rings
        self._closed = False
        self._buffer_counts: dict[str, int] = {}
        #: objects (regions, sockets) closed together with the backend
        self.owned: list[Any] = []

    @property
    def supports_ns(self) -> bool:
        return self.capabilities.name_service

    @property  # type: ignore[override]
    def views_wanted(self) -> bool:
        return self._views_wanted

    @views_wanted.setter
    def views_wanted(self, value: bool) -> None:
        self._views_wanted = value
        if self._engine is not None:
            self._engine.views = value

    def _use_engine(self, engine: Any) -> None:
        """Let the C ``engine`` carry this instance's hot methods (see the module doc)."""
        self._engine = engine
        for name, engine_name in _ENGINE_METHODS.items():
            setattr(self, name, getattr(engine, engine_name))

    def _engine_options(self, spare: list[Any]) -> dict[str, Any]:
        doorbell = self.doorbell
        # a plain eventfd doorbell is rung from C; any other kind through _kick
        kick_fd = doorbell.tx_fd if type(doorbell) is EventfdDoorbell else -1
        return dict(rx=self.rx, tx=self.tx, spare=spare, buf_size=self.buf_size,
                    whole=self._whole, malformed=self._malformed, kick=self._kick,
                    kick_fd=kick_fd)

    def _malformed(self, queue: Any, reason: str) -> None:
        """A received message the peer wrote wrongly: counted, its buffer goes back."""
        self.malformed_rx += 1
        queue.faults(reason)

    def _watch_rings(self, rx_queue: Any, tx_queue: Any) -> None:
        """A ring the peer broke fails its own direction only; the other one goes on."""
        def broke(tx: bool, where: str, reason: str) -> None:
            error = LinkDown(f"{where}: the peer broke the ring protocol ({reason})")
            if tx:
                self.tx_broken = error
            else:
                self.rx_broken = error
            self.waiter.wake()

        rx_queue.on_broken = lambda reason: broke(False, rx_queue.faults.where, reason)
        tx_queue.on_broken = lambda reason: broke(True, tx_queue.faults.where, reason)
        self.waiter.on_hangup = self.mark_down

    def _kick(self) -> None:
        try:
            self.doorbell.kick()
        except LinkDown as exc:
            self.mark_down(str(exc))

    def _queues(self) -> tuple[Any, Any]:
        return self.rx, self.tx

    def _count_buffers(self) -> dict[str, int]:
        return {}

    def statistics(self) -> Mapping[str, Any]:
        faults: dict[str, int] = {}
        for queue in self._queues():
            for reason, count in queue.faults.counts.items():
                faults[reason] = faults.get(reason, 0) + count
        engine_kicks = 0 if self._engine is None else self._engine.kicks
        stats = {
            "kind": "virtio", "role": self.role, "profile": self.profile.name,
            "implementation": "python" if self._engine is None else IMPLEMENTATION,
            "buf_size": self.buf_size, "features": self.features, "event_idx": self.event_idx,
            "kicks_sent": getattr(self.doorbell, "kicks_sent", 0) + engine_kicks,
            "malformed_rx": self.malformed_rx, "protocol_faults": faults,
            "unconsumed_at_down": self.unconsumed_at_down,
        }
        stats.update(self._buffer_counts if self._closed else self._count_buffers())
        return stats

    def close(self) -> None:
        if self._closed:
            return
        self._buffer_counts = self._count_buffers()  # the last look: the memory may go next
        self._closed = True
        if self._engine is not None:
            self._engine.close()  # before the doorbell's fds go
        self._whole.release()
        self.waiter.close()
        self.doorbell.close()
        for resource in self.owned:
            resource.close()


class DriverRpmsgBackend(_VirtioRpmsgBackend):
    """The host side: virtio driver, owner of the buffer pool."""

    role = "driver"

    def __init__(self, region: SharedRegion, vdev: VdevControl, entry: VdevEntry,
                 pool_offset: int, doorbell: Doorbell, waiter: Waiter, *,
                 buf_size: int = 512, features: int = SUPPORTED_FEATURES,
                 tx_offset: int | None = None, profile: VirtioProfile = LINUX) -> None:
        """Negotiate, zero both rings, post the RX buffers and set DRIVER_OK (the way
        ``profile.handshake`` says).

        The RX buffers lie at ``pool_offset``, the TX buffers right after them or at
        ``tx_offset``.
        """
        _check_two_vrings(vdev, entry)
        accepted = entry.dfeatures & features & 0xFFFFFFFF
        rx_layout = ring_layout(region, entry.vrings[0])
        tx_layout = ring_layout(region, entry.vrings[1])
        super().__init__(region, vdev, doorbell, waiter, accepted, buf_size, profile,
                         rx_layout.num)
        self.rx = DriverQueue(region, rx_layout, event_idx=self.event_idx, name="vring0")
        self.tx = DriverQueue(region, tx_layout, event_idx=self.event_idx, name="vring1")
        self._watch_rings(self.rx, self.tx)
        if tx_offset is None:
            tx_offset = pool_offset + rx_layout.num * buf_size
        region.check(pool_offset, rx_layout.num * buf_size)
        region.check(tx_offset, tx_layout.num * buf_size)
        self._rx_buffers = [pool_offset + i * buf_size for i in range(rx_layout.num)]
        # popped from the end: lowest addresses first, as OpenAMP hands them out
        self._fresh_tx = [tx_offset + i * buf_size for i in range(tx_layout.num)][::-1]
        self._da_base = region.da_base
        if speedups is not None and isinstance(self.rx, speedups.DriverRing):
            self._use_engine(speedups.DriverRpmsg(**self._engine_options(self._fresh_tx),
                                                  da_base=self._da_base))
        self._handshake(vdev, accepted, profile.handshake)

    def _handshake(self, vdev: VdevControl, accepted: int, handshake: Handshake) -> None:
        if handshake == "openamp":
            vdev.gfeatures = accepted
            self._kick()
        else:
            # Linux's order: status 0 -> ACKNOWLEDGE -> DRIVER, features, rings, DRIVER_OK.
            vdev.status = 0
            vdev.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE)
            vdev.add_status(VIRTIO_CONFIG_S_DRIVER)
            vdev.gfeatures = accepted
        self.rx.reset()
        self.tx.reset()
        self.tx.disable_interrupts()
        for offset in self._rx_buffers:
            self.rx.add(self._da_base + offset, self.buf_size, offset, writable=True)
        self.rx.publish()
        self.rx.disable_interrupts()
        if handshake == "openamp":
            vdev.status = VIRTIO_CONFIG_S_DRIVER_OK
        else:
            vdev.add_status(VIRTIO_CONFIG_S_DRIVER_OK)
        self._kick()

    # -- sending -----------------------------------------------------------------------------
    def _take_tx(self) -> int | None:
        if self._fresh_tx:
            return self._fresh_tx.pop()
        used = self.tx.pop_used()
        return None if used is None else used[0]

    def _post_tx(self, offset: int, src: int, dst: int, n: int) -> None:
        _pack_header(self._mm, offset, src, dst, 0, n, 0)
        self.tx.add(self._da_base + offset, RPMSG_HDR_SIZE + n, offset)
        if self.tx.publish():
            self._kick()

    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        if len(payload) > self.mtu:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the MTU of {self.mtu}")
        # _take_tx and _post_tx inline: the hot path
        if self._fresh_tx:
            offset = self._fresh_tx.pop()
        else:
            used = self.tx.pop_used()
            if used is None:
                return False
            offset = used[0]
        n = len(payload)
        mm = self._mm
        start = offset + RPMSG_HDR_SIZE
        mm[start:start + n] = payload
        _pack_header(mm, offset, src, dst, 0, n, 0)
        tx = self.tx
        tx.add(self._da_base + offset, RPMSG_HDR_SIZE + n, offset)
        if tx.publish():
            self._kick()
        return True

    def send_many(self, src: int, dst: int, payloads: Sequence[bytes | bytearray | memoryview],
                  start: int) -> int:
        mtu = self.mtu
        mm = self._mm
        tx = self.tx
        da_base = self._da_base
        sent = 0
        try:
            for i in range(start, len(payloads)):
                payload = payloads[i]
                n = len(payload)
                if n > mtu:
                    raise ValueError(f"payload of {n} bytes exceeds the MTU of {mtu}")
                offset = self._take_tx()
                if offset is None:
                    break
                begin = offset + RPMSG_HDR_SIZE
                mm[begin:begin + n] = payload
                _pack_header(mm, offset, src, dst, 0, n, 0)
                tx.add(da_base + offset, RPMSG_HDR_SIZE + n, offset)
                sent += 1
        finally:  # one publication, one kick at most, for what was posted
            if sent and tx.publish():
                self._kick()
        return sent

    def loan(self) -> tuple[Any, memoryview] | None:
        offset = self._take_tx()
        if offset is None:
            return None
        start = offset + RPMSG_HDR_SIZE
        return offset, self._whole[start:start + self.mtu]

    def send_loan(self, handle: Any, src: int, dst: int, length: int) -> None:
        self._post_tx(handle, src, dst, length)

    def drop_loan(self, handle: Any) -> None:
        self._fresh_tx.append(handle)  # an idle buffer again

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, deliver: Deliver, budget: int) -> int:
        rx = self.rx
        mm = self._mm
        whole = self._whole
        buf_size = self.buf_size
        da_base = self._da_base
        taken = 0  # malformed buffers count too: a flooding peer cannot keep us here
        try:
            while taken < budget:
                used = rx.pop_used()
                if used is None:
                    break
                taken += 1
                offset, used_len = used
                kept = False
                try:
                    src, dst, _res, length, _flags = _unpack_header(mm, offset)
                    # Linux lets used_len < 16 wrap; len is bounded by both limits.
                    if (used_len < RPMSG_HDR_SIZE
                            or length > min(used_len, buf_size) - RPMSG_HDR_SIZE):
                        self._malformed(rx, "rpmsg header length exceeds the used length or "
                                            "buffer")
                    else:
                        start = offset + RPMSG_HDR_SIZE
                        end = start + length
                        kept = deliver(src, dst, whole[start:end] if self.views_wanted
                                       else mm[start:end], offset)
                finally:  # the buffer goes back unless kept, whatever delivery did
                    if not kept:
                        rx.add(da_base + offset, buf_size, offset, writable=True)
        finally:
            if rx.publish():
                self._kick()
        return taken

    def receive_copies(self, budget: int) -> tuple[int, list[tuple[int, int, bytes]]]:
        rx = self.rx
        mm = self._mm
        buf_size = self.buf_size
        da_base = self._da_base
        got: list[tuple[int, int, bytes]] = []
        taken = 0
        try:
            while taken < budget:
                used = rx.pop_used()
                if used is None:
                    break
                taken += 1
                offset, used_len = used
                try:
                    src, dst, _res, length, _flags = _unpack_header(mm, offset)
                    if (used_len < RPMSG_HDR_SIZE
                            or length > min(used_len, buf_size) - RPMSG_HDR_SIZE):
                        self._malformed(rx, "rpmsg header length exceeds the used length or "
                                            "buffer")
                    else:
                        start = offset + RPMSG_HDR_SIZE
                        got.append((src, dst, mm[start:start + length]))
                finally:  # copied: the buffer goes straight back
                    rx.add(da_base + offset, buf_size, offset, writable=True)
        finally:
            if rx.publish():
                self._kick()
        return taken, got

    def release(self, handle: Any) -> None:
        self.rx.add(self._da_base + handle, self.buf_size, handle, writable=True)
        if self.rx.publish():
            self._kick()

    def rx_pending(self) -> bool:
        return self.rx.used_pending()

    def in_flight(self) -> int:
        return 0 if self._closed else self.tx.outstanding()

    def tx_available(self) -> bool:
        return bool(self._fresh_tx) or self.tx.used_pending()

    def arm(self, *, rx: bool, tx: bool) -> bool:
        pending = False
        if rx:
            pending = self.rx.enable_interrupts()
        if tx:
            pending = self.tx.enable_interrupts() or pending
        return pending

    def disarm(self) -> None:
        self.rx.disable_interrupts()
        self.tx.disable_interrupts()

    def _count_buffers(self) -> dict[str, int]:
        # idle buffers: never used, or returned by the device (whether reclaimed yet or not)
        return {"tx_buffers": self.tx.num, "tx_buffers_free": self.tx.num - self.tx.outstanding(),
                "tx_buffers_never_used": len(self._fresh_tx)}


class DeviceRpmsgBackend(_VirtioRpmsgBackend):
    """The remote side: virtio device; uses the buffers the driver posts."""

    role = "device"

    def __init__(self, region: SharedRegion, vdev: VdevControl, entry: VdevEntry,
                 doorbell: Doorbell, waiter: Waiter, *, buf_size: int = 512,
                 profile: VirtioProfile = LINUX) -> None:
        _check_two_vrings(vdev, entry)
        accepted = vdev.gfeatures
        if accepted & ~entry.dfeatures:
            raise RemoteProtocolError(
                f"driver accepted features 0x{accepted:x} the device never offered "
                f"(0x{entry.dfeatures:x})"
            )
        tx_layout = ring_layout(region, entry.vrings[0])
        rx_layout = ring_layout(region, entry.vrings[1])
        super().__init__(region, vdev, doorbell, waiter, accepted, buf_size, profile,
                         rx_layout.num)
        self.tx = DeviceQueue(region, tx_layout, device_writes=True, event_idx=self.event_idx,
                              name="vring0")
        self.rx = DeviceQueue(region, rx_layout, device_writes=False, event_idx=self.event_idx,
                              name="vring1")
        self._watch_rings(self.rx, self.tx)
        # driver buffers taken but unused: big enough for a message, just not the one at
        # hand, or a loan given back
        self._spares: list[tuple[int, int, int]] = []
        if speedups is not None and isinstance(self.rx, speedups.DeviceRing):
            self._use_engine(speedups.DeviceRpmsg(**self._engine_options(self._spares)))
        self.tx.disable_notify()
        self.rx.disable_notify()

    # -- sending -----------------------------------------------------------------------------
    def _take_tx(self, need: int) -> tuple[int, int, int] | None:
        """A driver buffer of at least ``need`` bytes: ``(head, offset, length)``."""
        tx = self.tx
        spares = self._spares
        if spares and spares[-1][2] >= need:
            return spares.pop()
        for _ in range(tx.num + 1):
            buf = tx.pop_avail()
            if buf is None:
                return None
            if buf[2] >= need:
                return buf
            if buf[2] >= self.buf_size:
                spares.append(buf)  # big enough for a full message, just not this one
                return None
            tx.faults("driver posted an RX buffer smaller than the rpmsg buffer size")
            tx.push_used(buf[0], 0)
        return None

    def _post_tx(self, handle: tuple[int, int, int], src: int, dst: int, n: int) -> None:
        head, offset, _length = handle
        _pack_header(self._mm, offset, src, dst, 0, n, 0)
        self.tx.push_used(head, RPMSG_HDR_SIZE + n)
        if self.tx.notify_needed():
            self._kick()

    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        n = len(payload)
        if n > self.mtu:
            raise ValueError(f"payload of {n} bytes exceeds the MTU of {self.mtu}")
        taken = self._take_tx(RPMSG_HDR_SIZE + n)
        if taken is None:
            return False
        head, offset, _length = taken
        mm = self._mm
        start = offset + RPMSG_HDR_SIZE
        mm[start:start + n] = payload
        _pack_header(mm, offset, src, dst, 0, n, 0)  # _post_tx inline: the hot path
        tx = self.tx
        tx.push_used(head, RPMSG_HDR_SIZE + n)
        if tx.notify_needed():
            self._kick()
        return True

    def send_many(self, src: int, dst: int, payloads: Sequence[bytes | bytearray | memoryview],
                  start: int) -> int:
        mtu = self.mtu
        mm = self._mm
        tx = self.tx
        sent = 0
        try:
            for i in range(start, len(payloads)):
                payload = payloads[i]
                n = len(payload)
                if n > mtu:
                    raise ValueError(f"payload of {n} bytes exceeds the MTU of {mtu}")
                taken = self._take_tx(RPMSG_HDR_SIZE + n)
                if taken is None:
                    break
                head, offset, _length = taken
                begin = offset + RPMSG_HDR_SIZE
                mm[begin:begin + n] = payload
                _pack_header(mm, offset, src, dst, 0, n, 0)
                tx.push_used(head, RPMSG_HDR_SIZE + n)
                sent += 1
        finally:  # one notification check, one kick at most, for what was sent
            if sent and tx.notify_needed():
                self._kick()
        return sent

    def loan(self) -> tuple[Any, memoryview] | None:
        taken = self._take_tx(self.buf_size)
        if taken is None:
            return None
        start = taken[1] + RPMSG_HDR_SIZE
        return taken, self._whole[start:start + self.mtu]

    def send_loan(self, handle: Any, src: int, dst: int, length: int) -> None:
        self._post_tx(handle, src, dst, length)

    def drop_loan(self, handle: Any) -> None:
        self._spares.append(handle)

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, deliver: Deliver, budget: int) -> int:
        rx = self.rx
        mm = self._mm
        whole = self._whole
        limit = self.buf_size - RPMSG_HDR_SIZE  # the MTU holds whatever the driver posts
        taken = 0  # malformed buffers count too: a flooding peer cannot keep us here
        try:
            while taken < budget:
                buf = rx.pop_avail()
                if buf is None:
                    break
                taken += 1
                head, offset, length = buf
                kept = False
                try:
                    if length < RPMSG_HDR_SIZE:
                        self._malformed(rx, "TX buffer shorter than an rpmsg header")
                    else:
                        src, dst, _res, plen, _flags = _unpack_header(mm, offset)
                        if plen > min(length - RPMSG_HDR_SIZE, limit):
                            self._malformed(rx, "rpmsg header length exceeds the buffer or the "
                                                "MTU")
                        else:
                            start = offset + RPMSG_HDR_SIZE
                            end = start + plen
                            kept = deliver(src, dst, whole[start:end] if self.views_wanted
                                           else mm[start:end], (head, length))
                finally:  # the buffer goes back unless kept, whatever delivery did
                    if not kept:
                        rx.push_used(head, length)
        finally:
            if rx.notify_needed():
                self._kick()
        return taken

    def receive_copies(self, budget: int) -> tuple[int, list[tuple[int, int, bytes]]]:
        rx = self.rx
        mm = self._mm
        limit = self.buf_size - RPMSG_HDR_SIZE
        got: list[tuple[int, int, bytes]] = []
        taken = 0
        try:
            while taken < budget:
                buf = rx.pop_avail()
                if buf is None:
                    break
                taken += 1
                head, offset, length = buf
                try:
                    if length < RPMSG_HDR_SIZE:
                        self._malformed(rx, "TX buffer shorter than an rpmsg header")
                    else:
                        src, dst, _res, plen, _flags = _unpack_header(mm, offset)
                        if plen > min(length - RPMSG_HDR_SIZE, limit):
                            self._malformed(rx, "rpmsg header length exceeds the buffer or the "
                                                "MTU")
                        else:
                            start = offset + RPMSG_HDR_SIZE
                            got.append((src, dst, mm[start:start + plen]))
                finally:  # copied: the buffer goes straight back
                    rx.push_used(head, length)
        finally:
            if rx.notify_needed():
                self._kick()
        return taken, got

    def release(self, handle: Any) -> None:
        head, length = handle
        self.rx.push_used(head, length)
        if self.rx.notify_needed():
            self._kick()

    def rx_pending(self) -> bool:
        return self.rx.avail_pending()

    def in_flight(self) -> int:
        return 0 if self._closed else self.tx.returned_unconsumed()

    def tx_available(self) -> bool:
        return bool(self._spares) or self.tx.avail_pending()

    def arm(self, *, rx: bool, tx: bool) -> bool:
        pending = False
        if rx:
            pending = self.rx.enable_notify()
        if tx:
            pending = self.tx.enable_notify() or pending
        return pending

    def disarm(self) -> None:
        self.rx.disable_notify()
        self.tx.disable_notify()


def read_vdev_entry(region: SharedRegion, entry_offset: int) -> VdevEntry:
    """Decode the vdev entry the driver side wrote (untrusted: checked)."""
    return VdevEntry.unpack(region.mm, entry_offset, region.size - entry_offset)


def wait_for_driver_ok(vdev: VdevControl, waiter: Waiter, timeout: float) -> None:
    """Device side: wait until the driver set DRIVER_OK; never touch the rings before."""
    deadline = time.monotonic() + timeout
    while not vdev.status & VIRTIO_CONFIG_S_DRIVER_OK:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerTimeout(
                f"the driver did not set DRIVER_OK within {timeout} s (status "
                f"0x{vdev.status:02x}): is the host side running?"
            )
        waiter.wait(min(remaining, 0.001))
