"""OpenAMP's echo demo, both sides.

The host sends ``{u64 num; u64 size; u8 data[size]}`` with every data byte 0xA5, sizes
1..480 (16 + 480 = 496 B, the MTU), one message in flight, and checks each echo; it
ends the run by destroying its endpoint (a name-service destroy). The remote sends
every message back to its sender and stops when the host's endpoint is destroyed or
a payload starts with the u32 0xEF56A55A.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Literal

from ...errors import EndpointClosed
from ...link.endpoint import Endpoint
from ..openamp_abi import DEMO_MAX_SIZE

#: the payload's header: num, size (OpenAMP's two ``unsigned long``, 64-bit on Linux)
DEMO_HEADER = struct.Struct("<QQ")
DEMO_FILL = 0xA5
#: a payload starting with this u32 stops the echo remote
SHUTDOWN_MSG = 0xEF56A55A
SHUTDOWN = struct.Struct("<I")
#: problems kept in full (the others are only counted)
MAX_PROBLEMS = 10

StopReason = Literal["destroyed", "shutdown", "count"]


def demo_payload(num: int, size: int) -> bytes:
    """Message ``num`` of the demo: the header and ``size`` bytes of 0xA5."""
    return DEMO_HEADER.pack(num, size) + bytes([DEMO_FILL]) * size


def check_echo(reply: bytes, num: int, size: int) -> str | None:
    """What is wrong with the echo of message ``num`` of ``size`` data bytes, or None."""
    if len(reply) != DEMO_HEADER.size + size:
        return f"message {num}: echo of {len(reply)} B, expected {DEMO_HEADER.size + size} B"
    got_num, got_size = DEMO_HEADER.unpack_from(reply)
    if (got_num, got_size) != (num, size):
        return f"message {num}: echo says num {got_num}, size {got_size} (expected {num}, {size})"
    bad = size - reply.count(DEMO_FILL, DEMO_HEADER.size)
    if bad:
        return f"message {num}: {bad} of {size} data bytes are not 0x{DEMO_FILL:02X}"
    return None


def is_shutdown(payload: bytes) -> bool:
    """True for the demo's shutdown message (a payload starting with 0xEF56A55A)."""
    return len(payload) >= SHUTDOWN.size and SHUTDOWN.unpack_from(payload)[0] == SHUTDOWN_MSG


@dataclass
class EchoRun:
    """The host side: sends demo messages on ``ep`` and checks the echoes.

    The counters stay valid when :meth:`run` raises (e.g. LinkDown mid-run).
    """

    ep: Endpoint
    timeout: float
    sent: int = 0
    errors: int = 0
    rtts: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def max_size(self) -> int:
        """The largest data size: 480, or less if the link's MTU is smaller."""
        return min(DEMO_MAX_SIZE, self.ep.mtu - DEMO_HEADER.size)

    def run(self, count: int) -> None:
        """Send ``count`` messages of sizes 1, 2, ... (wrapping after :attr:`max_size`).

        Each waits for its echo (ReceiveTimeout after ``timeout`` s); a wrong echo is
        counted in :attr:`errors` and the run goes on, as OpenAMP's demo does.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        max_size = self.max_size
        if max_size < 1:
            raise ValueError(f"the MTU of {self.ep.mtu} B leaves no room for demo data")
        send, recv, clock = self.ep.send, self.ep.recv, time.perf_counter_ns
        for _ in range(count):
            num = self.sent
            size = num % max_size + 1
            payload = demo_payload(num, size)
            t0 = clock()
            send(payload, self.timeout)
            self.sent += 1
            reply = recv(self.timeout)
            self.rtts.append((clock() - t0) * 1e-9)
            problem = check_echo(reply, num, size)
            if problem is not None:
                self.errors += 1
                if len(self.problems) < MAX_PROBLEMS:
                    self.problems.append(problem)


@dataclass
class EchoServed:
    """What the remote side did: messages echoed and why it stopped."""

    echoed: int
    reason: StopReason


def serve_echo(ep: Endpoint, count: int = 0) -> EchoServed:
    """The remote side: echo every message on ``ep`` to its sender.

    Stops when the host destroys its endpoint (the channel is removed), at the shutdown
    message, or after ``count`` echoes (0: no limit). LinkDown propagates.
    """
    echoed = 0
    while not count or echoed < count:
        try:
            payload, src = ep.recvfrom()
        except EndpointClosed:
            return EchoServed(echoed, "destroyed")
        if is_shutdown(payload):
            return EchoServed(echoed, "shutdown")
        ep.sendto(payload, src)
        echoed += 1
    return EchoServed(echoed, "count")
