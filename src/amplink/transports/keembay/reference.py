"""Payloads sent by reference, and the shared buffers lent to the peer with them.

A message sent by reference carries only the device address and size of its payload,
which stays where it is: in a shared buffer of the link's heap (the dma-buf model of
:mod:`amplink.memory`: allocated at run time, owned by the CPU or by a device). The
buffer is handed to the peer's side when it is sent (``to_device``), and comes back
(``to_cpu``) when the peer has freed the message's header, i.e. consumed the payload: the
sender finds that out on a later scan, as it finds any header FREE.
"""

from __future__ import annotations

from collections.abc import Callable

from ..._args import timeout_arg
from ...memory.buffers import SharedBuffer

#: ``wait_until(ready, timeout, tx=...) -> bool`` of the link the reference went over
Waiting = Callable[..., bool]


class KmbReference:
    """``size`` bytes at device address ``da`` (a part of ``buffer``, if one was sent)
    sent by reference. ``done`` once the peer has consumed it (the buffer is the CPU's
    again); ``lost`` if the link closed before that (the buffer came back anyway)."""

    __slots__ = ("da", "size", "buffer", "done", "lost", "waiting")

    def __init__(self, da: int, size: int, buffer: SharedBuffer | None) -> None:
        self.da = da
        self.size = size
        self.buffer = buffer
        self.done = False
        self.lost = False
        #: set by the link builder: how to wait on the link it went over
        self.waiting: Waiting | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the peer has consumed the payload (or the link closed); False on
        timeout. Looks at the link's headers while it waits (nobody else has to)."""
        if self.waiting is None:
            raise RuntimeError("this reference was not sent over a link")
        return self.waiting(lambda: self.done or self.lost, timeout_arg(timeout), tx=True)

    def __repr__(self) -> str:
        state = "done" if self.done else "lost" if self.lost else "in flight"
        return f"<KmbReference 0x{self.da:x}+0x{self.size:x} {state}>"


class Lender:
    """The buffers lent to the peer's side, counted: a buffer with several references
    in flight (slices of it) goes back when the last one is done."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._lent: dict[int, tuple[SharedBuffer, int]] = {}  # id(buffer) -> (it, count)

    def lend(self, buffer: SharedBuffer) -> None:
        key = id(buffer)
        entry = self._lent.get(key)
        if entry is None:
            buffer.to_device(self.device)  # OwnershipError while the CPU uses it
            self._lent[key] = (buffer, 1)
        else:
            self._lent[key] = (buffer, entry[1] + 1)

    def give_back(self, buffer: SharedBuffer) -> None:
        key = id(buffer)
        entry = self._lent.get(key)
        if entry is None:
            return
        if entry[1] > 1:
            self._lent[key] = (buffer, entry[1] - 1)
            return
        del self._lent[key]
        if not buffer.closed:
            buffer.to_cpu()

    @property
    def lent(self) -> int:
        """Buffers lent now."""
        return len(self._lent)
