"""The Linux kernel's rpmsg character devices, over the fake kernel of the transport tests.

The side under test is an ``rpmsg_char_link`` whose system calls a
``FakeRpmsgKernel`` answers (tests/transports/fake_rpmsg_char.py); the far side is that
fake's model of the remote processor, driven by :class:`FakeKernelPeer`. Addressing is
"pair" (each /dev/rpmsgN talks to one fixed remote address), so the cases written for
rpmsg's any-to-any addresses skip it, naming the capability; the echo-channel cases
(``pair_cases.py``) and the peer-death cases run. The same backend runs against a real
kernel in tests/kernel.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backends import RUN_PREFIX, BackendCase, Harness, Side
from peer_ops import PEER_SEND_TIMEOUT, payloads
from peers import Peer

from amplink.errors import InvalidArgument, NotSupported, ReceiveTimeout
from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.rpmsg.wire import RPMSG_ADDR_ANY
from amplink.transports.rpmsg_char import rpmsg_char_link
from amplink.transports.rpmsg_char.uapi import MAX_LOCAL_ADDRESS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transports"))
from fake_rpmsg_char import FakeChannel, FakeOps, FakeRpmsgKernel  # noqa: E402

#: the remote's transmit buffers as the kernel counts them (finite: a send can block)
TX_BUFFERS = 16
#: the remote addresses the peer's channels get
REMOTE_BASE = 0x400


class FakeKernelPeer(Peer):
    """The fake kernel's remote processor, as a :class:`Peer`.

    A remote endpoint exists only as a channel it announced (``create`` needs a name
    and ``announce``). What the side under test sends to it is consumed when the peer
    receives it (``recv``), which frees a transmit buffer of the kernel's; an echo
    channel consumes and answers at once. Commands the model has no counterpart for
    (filling the host's receive buffers, garbage, statistics) raise NotSupported.
    """

    role: Side = "device"
    COMMANDS = frozenset({"create", "close", "info", "send", "send_many", "send_random",
                          "recv", "recv_many", "take_all", "drain", "ping"})

    def __init__(self, kernel: FakeRpmsgKernel) -> None:
        self.k = kernel
        self._channels: dict[int, FakeChannel] = {}
        self._inbox: dict[int, deque[tuple[bytes, int]]] = {}
        self._cond = threading.Condition()
        self._next = REMOTE_BASE
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="conformance-fake")

    def start(self, op: str, **kwargs: Any) -> Future[Any]:
        return self._pool.submit(self._method(op), **kwargs)

    def call(self, op: str, **kwargs: Any) -> Any:
        return self._method(op)(**kwargs)

    def _method(self, op: str) -> Callable[..., Any]:
        if op not in self.COMMANDS:
            raise NotSupported(f"the fake kernel's remote has no counterpart of {op!r}")
        return getattr(self, "_" + op)  # type: ignore[no-any-return]

    def die(self) -> float:
        t0 = time.monotonic()
        self.k.remove_device()  # the processor stopped: every device goes (EPIPE)
        return t0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- what the remote does when the host writes to it ----------------------------------------
    def _free_buffer(self) -> None:
        with self.k.lock:
            if self.k.tx_free is not None:
                self.k.tx_free += 1

    def _keep(self, kernel: FakeRpmsgKernel, payload: bytes, src: int, dst: int) -> None:
        with self._cond:
            self._inbox[dst].append((payload, src))
            self._cond.notify_all()

    def _echo(self, kernel: FakeRpmsgKernel, payload: bytes, src: int, dst: int) -> None:
        self._free_buffer()
        kernel.send_to(src, payload)

    # -- the commands ----------------------------------------------------------------------------
    def _create(self, name: str | None = None, addr: int = RPMSG_ADDR_ANY,
                dst: int = RPMSG_ADDR_ANY, announce: bool = False, echo: bool = False) -> int:
        if name is None or not announce:
            raise NotSupported("a remote endpoint is seen by the kernel only as a channel it "
                               "announced: create it with a name and announce=True")
        if addr == RPMSG_ADDR_ANY:
            addr = self._next
            self._next += 1
        with self._cond:
            self._inbox[addr] = deque()
        self._channels[addr] = self.k.announce(name, addr, self._echo if echo else self._keep)
        return addr

    def _close(self, addr: int) -> None:
        channel = self._channels.pop(addr, None)
        if channel is not None and self.k.device_present:
            self.k.remove_channel(channel)

    def _info(self, addr: int) -> dict[str, Any]:
        return {"closed": addr not in self._channels}

    def _send(self, addr: int, data: bytes, dst: int | None = None,
              timeout: float = PEER_SEND_TIMEOUT) -> None:
        if dst is None:
            raise InvalidArgument("the fake remote needs the local address to send to (dst)")
        self.k.send_to(dst, data)  # dropped if nothing is open there, as the kernel does

    def _send_many(self, addr: int, dst: int, items: list[bytes],
                   timeout: float = PEER_SEND_TIMEOUT) -> int:
        for payload in items:
            self._send(addr, payload, dst)
        return len(items)

    def _send_random(self, addr: int, dst: int, seed: int, count: int,
                     timeout: float = PEER_SEND_TIMEOUT) -> int:
        return self._send_many(addr, dst, payloads(seed, count, self.k.mtu))

    def _recv(self, addr: int, timeout: float) -> tuple[bytes, int]:
        with self._cond:
            inbox = self._inbox[addr]
            if not self._cond.wait_for(lambda: bool(inbox), timeout):
                raise ReceiveTimeout(f"no message for the remote's 0x{addr:x} in {timeout} s")
            item = inbox.popleft()
        self._free_buffer()  # consumed: the kernel's buffer is free again
        return item

    def _recv_many(self, addr: int, count: int, timeout: float) -> list[tuple[bytes, int]]:
        return [self._recv(addr, timeout) for _ in range(count)]

    def _take_all(self, addr: int) -> list[tuple[bytes, int]]:
        got: list[tuple[bytes, int]] = []
        while True:
            with self._cond:
                if not self._inbox[addr]:
                    return got
            got.append(self._recv(addr, 0))

    def _drain(self) -> int:
        return 0  # what the host writes reaches the remote's handler at once

    def _ping(self) -> str:
        return "pong"


@contextmanager
def _fake_kernel_link(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    root = Path(tempfile.mkdtemp(prefix=RUN_PREFIX + "rpmsg-char-"))
    try:
        kernel = FakeRpmsgKernel(root)
        kernel.tx_free = TX_BUFFERS
        link = rpmsg_char_link("rpmsg_ctrl0", sys_root=kernel.sys, dev_root=kernel.dev,
                               ops=FakeOps(kernel), dispatch=dispatch)
        peer = FakeKernelPeer(kernel)
        try:
            yield Harness(local=link, peer=peer, side=side, dispatch=dispatch)
        finally:
            link.close()
            peer.close()
        left = kernel.open_endpoints()
        assert left == [], f"endpoint devices still open after the link closed: {left}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


CASES = [
    BackendCase(
        id="rpmsg-char-fake", factory=_fake_kernel_link,
        capabilities=Capabilities(
            max_payload=496, addressing="pair", address_range=(0, MAX_LOCAL_ADDRESS),
            dynamic_base=None, tx_ready=False, channel_discovery=True),
        sides=("host",), sides_note="the remote side is the fake kernel's model of firmware",
        can_kill_peer=True, hostile=False,
        hostile_note="the kernel owns the rings: user space sees whole messages only",
        extra={"echo_channel": "rpmsg-raw"},
    ),
]
