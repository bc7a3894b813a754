"""Building Keem Bay links: the CPU node (host), the VPU node (firmware), or both in one
process (:class:`KeemBayPair`, for tests and for trying firmware logic).

The host initialises the IPC area (descriptor, pools, FIFOs) and goes up; the VPU reads
the descriptor (untrusted), waits for the host to be up, and goes up itself. From the
call on, the builders own the doorbell: if a step fails they close what they built and
the doorbell before the error propagates.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Self

from ..._args import int_arg
from ...errors import InvalidArgumentType, NotSupported, PeerTimeout
from ...link.runtime import Link
from ...memory.providers import CarveoutProvider
from ...memory.region import SharedRegion
from ...notify.doorbell import Doorbell, Notify, doorbell_pair
from ...notify.waiter import Waiter
from .backend import KeemBayBackend
from .layout import DESCRIPTOR, PAGE, STATE_OFFSET, STATE_UP, KmbLayout
from .wire import NODE_CPU, NODE_VPU

#: where the IPC area of an in-process pair is seen (below 4 GiB: 32-bit addresses)
PAIR_DA = 0x8000_0000
#: how long the VPU waits for the host to initialise the IPC area
HOST_UP_TIMEOUT = 20.0
#: the GP share of the peer's FIFO: an HS message finds at most this many GP entries
#: ahead of it (about 3 us each to take in, in Python), while a GP sender that fills it
#: sleeps until the reader makes room. Measured (bench/keembay_bench.py and one-way runs
#: interleaved with virtio): at 16 a blocking GP sender reaches about 70% of rpmsg over
#: virtio's message rate, at 32 about the same rate, at 128 (the whole FIFO, what the
#: driver did) more, with up to 127 entries ahead of an HS message
DEFAULT_FIFO_SHARE = 32


@dataclass(frozen=True)
class KmbConfig:
    """The sizes of a Keem Bay link and its senders' policy.

    ``headers`` per node's pool (more than the FIFO's 128, so that a peer that does not
    read fills its FIFO, EBUSY, before the pool, ENOMEM); ``slot_size``, the largest
    payload sent inline (the link's MTU; more goes by reference); ``heap_size``, the
    shared buffers of each node (in-process pairs; a simulated processor's heaps are what
    its carveout leaves); ``fifo_share``, how many entries of the peer's FIFO all GP
    channels of a sender together may hold (an HS message finds at most that many ahead of
    it; both nodes keep it: the host writes it in the descriptor).
    """

    headers: int = 256
    slot_size: int = 512
    heap_size: int = 1 << 20
    fifo_share: int = DEFAULT_FIFO_SHARE

    def __post_init__(self) -> None:
        int_arg(self.heap_size, "heap_size", minimum=0)
        KmbLayout.compute(PAIR_DA, self.area_size, self.headers, self.slot_size,
                          fifo_share=self.fifo_share)

    @property
    def area_size(self) -> int:
        """The bytes of an IPC area with these sizes."""
        return KmbLayout.needed(self.headers, self.slot_size, self.heap_size)


def init_area(region: SharedRegion, layout: KmbLayout) -> None:
    """The host's first step: zero the descriptor page, the pools and the FIFOs, and write
    the descriptor (both nodes DOWN)."""
    region.fill(layout.offset, PAGE)
    for node in (NODE_CPU, NODE_VPU):
        region.fill(layout.nodes[node].pool, layout.headers * 64)
    region.write(layout.offset, layout.descriptor())


def _assemble(region: SharedRegion, layout: KmbLayout, node: int, doorbell: Doorbell, *,
              owned: Iterable[Any], link_options: dict[str, Any]) -> Link:
    waiter = None
    try:
        waiter = Waiter(doorbell)
        backend = KeemBayBackend(region, layout, node, doorbell, waiter)
    except BaseException:
        if waiter is not None:
            waiter.close()
        doorbell.close()
        raise
    try:
        link = Link(backend, **link_options)
    except BaseException:
        backend.close()
        raise
    backend.link_wait = link.wait_until
    backend.owned.extend(owned)
    backend.go_up()
    backend.ring()  # a peer waiting for us to come up looks again
    return link


def cpu_link(region: SharedRegion, layout: KmbLayout, doorbell: Doorbell, *,
             name: str = "cpu", owned: Iterable[Any] = (), **link_options: Any) -> Link:
    """The host's link: initialise the IPC area ``layout`` in ``region`` and go up.
    ``owned`` objects close with the link; ``link_options`` go to :class:`Link`."""
    init_area(region, layout)
    return _assemble(region, layout, NODE_CPU, doorbell, owned=owned,
                     link_options=dict(name=name, **link_options))


def vpu_link(region: SharedRegion, da: int, size: int, doorbell: Doorbell, *,
             offset: int = 0, name: str = "vpu", timeout: float = HOST_UP_TIMEOUT,
             owned: Iterable[Any] = (), **link_options: Any) -> Link:
    """The firmware's link on the IPC area of ``size`` bytes at device address ``da``
    (``offset`` in ``region``): wait up to ``timeout`` s for the host to be up, check its
    descriptor, go up."""
    try:
        region.check(offset, size)
        _wait_host(region, offset, doorbell, timeout)
        layout = KmbLayout.from_descriptor(region.read(offset, DESCRIPTOR.size), da, size,
                                           offset)
    except BaseException:
        doorbell.close()
        raise
    return _assemble(region, layout, NODE_VPU, doorbell, owned=owned,
                     link_options=dict(name=name, **link_options))


def _wait_host(region: SharedRegion, offset: int, doorbell: Doorbell, timeout: float) -> None:
    """Wait until the host's state word says UP (it rings when it gets there)."""
    deadline = time.monotonic() + timeout
    state = offset + STATE_OFFSET[NODE_CPU]
    waiter = Waiter(_Borrowed(doorbell))
    try:
        while region.read_u32(state) != STATE_UP:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeout(f"the host did not bring the Keem Bay IPC area up within "
                                  f"{timeout} s: is it running?")
            waiter.wait(min(remaining, 0.01))
    finally:
        waiter.close()


class _Borrowed(Doorbell):
    """A doorbell lent to a waiter for a while: closing the waiter leaves it open."""

    def __init__(self, doorbell: Doorbell) -> None:
        self._doorbell = doorbell
        self.edge_triggered = doorbell.edge_triggered

    def kick(self) -> None:
        self._doorbell.kick()

    def fileno(self) -> int:
        return self._doorbell.fileno()

    def clear(self) -> None:
        self._doorbell.clear()

    def close(self) -> None:
        pass


@dataclass
class KeemBayPair:
    """Both nodes of a Keem Bay link in this process, over one memfd: ``cpu`` (the host)
    and ``vpu`` (the firmware side), with the whole endpoint API."""

    cpu: Link
    vpu: Link
    region: SharedRegion
    layout: KmbLayout

    @classmethod
    def create(cls, config: KmbConfig | None = None, *, notify: Notify = "eventfd",
               **link_options: Any) -> Self:
        """``notify``: "eventfd", "socket" (the peer's death can be played: shut its
        socket) or "poll"; ``link_options`` go to both :class:`Link` objects."""
        config = config or KmbConfig()
        cpu_bell, vpu_bell = doorbell_pair(notify)
        with ExitStack() as undo:
            undo.callback(vpu_bell.close)
            undo.callback(cpu_bell.close)
            size = config.area_size
            region = SharedRegion.memfd(size, "amplink-keembay", da_base=PAIR_DA)
            undo.callback(region.close)
            layout = KmbLayout.compute(PAIR_DA, size, config.headers, config.slot_size,
                                       fifo_share=config.fifo_share)
            cpu = cpu_link(region, layout, cpu_bell, **link_options)
            undo.callback(cpu.close)
            vpu = vpu_link(region, PAIR_DA, size, vpu_bell, timeout=1.0, **link_options)
            undo.pop_all()
        return cls(cpu, vpu, region, layout)

    def close(self) -> None:
        self.cpu.close()
        self.vpu.close()
        self.region.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def heap(link: Link) -> CarveoutProvider:
    """The shared buffers of this node of a Keem Bay link: allocate from it what you send
    by reference (``ep.send_reference(buffer)``)."""
    backend = link.backend
    if not isinstance(backend, KeemBayBackend):
        raise InvalidArgumentType(f"link {link.name} is not a Keem Bay link")
    if backend.heap is None:
        raise NotSupported(f"link {link.name}: its IPC area leaves this node no heap")
    return backend.heap


def wait_peer_channel(link: Link, channel: int, timeout: float | None) -> bool:
    """Wait until the peer has ``channel`` open (a message sent before would be dropped
    by it); False on timeout. The peer rings when it opens a channel."""
    backend = link.backend
    if not isinstance(backend, KeemBayBackend):
        raise InvalidArgumentType(f"link {link.name} is not a Keem Bay link")

    def ready() -> bool:
        return backend.peer_open(channel)

    return link.wait_until(ready, timeout, tx=False)
