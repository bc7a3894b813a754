"""The interface between the rpmsg bus and whatever carries its messages.

The bus knows nothing of vrings, FIFOs or mailboxes: a transport moves
``(src, dst, payload)`` messages and tells when the peer may have done something.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import LinkDown
from ..notify.waiter import Waiter

Deliver = Callable[[int, int, bytes], None]


class Transport(ABC):
    """A message carrier with a doorbell. Methods are called with the bus lock held."""

    #: largest payload one message carries
    mtu: int
    #: True when the peer agreed to name-service announcements
    supports_ns: bool
    #: sleeps on the doorbell and the peer's lifeline
    waiter: Waiter
    #: set once the peer is gone; every later call fails with it
    down: LinkDown | None = None
    #: set when the peer broke the receiving / sending direction beyond repair; calls
    #: in that direction fail with it while the other direction goes on
    rx_broken: LinkDown | None = None
    tx_broken: LinkDown | None = None
    #: False if the peer never rings when it frees a transmit buffer (OpenAMP): a
    #: blocked send then polls every :attr:`tx_poll_interval` seconds instead of sleeping
    tx_kicks: bool = True
    tx_poll_interval: float = 0.001

    @abstractmethod
    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        """Send one message if a transmit buffer is free now; False if none is."""

    @abstractmethod
    def receive(self, deliver: Deliver, budget: int) -> int:
        """Take up to ``budget`` received buffers, handing the valid messages to ``deliver``.

        Returns the number of buffers taken (malformed ones included), so that a peer
        flooding garbage cannot hold the caller.
        """

    @abstractmethod
    def rx_pending(self) -> bool:
        """Cheap check: may a message be waiting?"""

    @abstractmethod
    def tx_available(self) -> bool:
        """Cheap check: may a transmit buffer be free?"""

    @abstractmethod
    def arm(self, *, rx: bool, tx: bool) -> bool:
        """Ask the peer to ring for received messages and/or freed transmit buffers.

        Returns True if work arrived meanwhile (the caller must not sleep then).
        """

    @abstractmethod
    def disarm(self) -> None:
        """Tell the peer not to ring (we are busy or polling)."""

    #: messages sent before the peer went away that it never consumed (set by mark_down)
    unconsumed_at_down: int = 0

    def in_flight(self) -> int:
        """Messages sent that the peer has not consumed yet (0 if the transport cannot tell)."""
        return 0

    def mark_down(self, reason: str) -> None:
        """Record that the peer is gone; wakes every waiter.

        rpmsg has no acknowledgements, so sends into the ring succeed until the peer's
        death is noticed: the error says how many of them the peer never consumed.
        """
        if self.down is None:
            lost = self.in_flight()
            self.unconsumed_at_down = lost
            if lost:
                reason += (f"; {lost} message{'s' if lost != 1 else ''} sent before were "
                           "never consumed by the peer")
            self.down = LinkDown(reason)
        self.waiter.wake()

    def broken(self, *, tx: bool) -> LinkDown | None:
        """Why calls in one direction cannot succeed (peer gone or that direction broken)."""
        return self.down or (self.tx_broken if tx else self.rx_broken)

    def statistics(self) -> Mapping[str, Any]:
        """Transport-specific counters (merged into the link's statistics)."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Release everything the transport owns."""
