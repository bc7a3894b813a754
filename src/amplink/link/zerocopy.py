"""Zero copy: received messages held in the peer's buffer, transmit buffers loaned to fill.

A :class:`HeldMessage` is a view of the receive buffer the peer wrote: valid until it is
released (explicitly, or by leaving its ``with`` block). A :class:`TxLoan` is a free
transmit buffer handed out to be filled in place and sent, or given back unsent; one
that is garbage-collected unsent goes back too.

Both views are live shared memory, and the peer is not trusted: it may change the
bytes of a held message while you look at them (a correct peer does not, a hostile one
may). Copy out what you validate (``bytes(msg.view[:16])``), then use the copy.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Self

from ..errors import EndpointClosed, MessageTooLarge

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .runtime import Link


class HeldMessage:
    """A received message still in the peer's buffer (see the module docstring).

    ``view`` is a read-only memoryview of the payload; ``src`` the sender's address.
    Release it as soon as you can: the ring has a fixed number of buffers, and a link
    holding too many stops receiving until some are released.
    """

    __slots__ = ("view", "src", "_link", "_handle", "_kept", "_released", "_finalizer",
                 "__weakref__")

    def __init__(self, link: Link | None, view: memoryview, src: int, handle: Any) -> None:
        self.view = view.toreadonly()
        view.release()
        self.src = src
        self._link = link
        self._handle = handle
        self._kept = False  # a callback kept it past its return
        self._released = False
        # one that is garbage-collected unreleased goes back (the view died with it)
        self._finalizer = (None if link is None
                           else weakref.finalize(self, _collected, link, handle))

    @classmethod
    def of_copy(cls, data: bytes, src: int) -> HeldMessage:
        """A message already copied out, in the same shape (releasing it frees nothing)."""
        return cls(None, memoryview(data), src, None)

    @property
    def released(self) -> bool:
        return self._released

    def hold(self) -> Self:
        """In a callback: keep the message after the callback returns (release it later)."""
        self._kept = True
        return self

    def release(self) -> None:
        """Give the buffer back to the peer; the view raises from now on. Idempotent."""
        if self._released:
            return
        link = self._link
        handle = self._invalidate()
        if link is not None:
            link._release_held(handle)

    def _invalidate(self) -> Any:
        """Void the view (the link gives the buffer back itself); returns its handle."""
        self._released = True
        if self._finalizer is not None:
            self._finalizer.detach()
        self.view.release()
        return self._handle

    def __bytes__(self) -> bytes:
        return bytes(self.view)

    def __len__(self) -> int:
        return len(self.view)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"{len(self.view)} B"
        return f"<HeldMessage from 0x{self.src:x}, {state}>"


def _collected(link: Link, handle: Any) -> None:
    link._give_back(handle, loan=False)


def _drop_unsent(link: Link, handle: Any) -> None:
    link._give_back(handle, loan=True)


class TxLoan:
    """A transmit buffer loaned by :meth:`Endpoint.loan`: fill :attr:`view`, then
    :meth:`send` (the buffer is the peer's from then on) or :meth:`drop` (back unsent).

    ``view`` is writable and as long as the link's MTU; sending more than that is
    refused. Leaving a ``with`` block unsent drops the loan; so does garbage collection.
    """

    __slots__ = ("view", "_ep", "_handle", "_finalizer", "__weakref__")

    def __init__(self, ep: Endpoint, handle: Any, view: memoryview) -> None:
        self.view = view
        self._ep = ep
        self._handle = handle
        self._finalizer = weakref.finalize(self, _drop_unsent, ep._link, handle)

    @property
    def done(self) -> bool:
        """True once sent or dropped."""
        return not self._finalizer.alive

    def _finish(self) -> None:
        if not self._finalizer.alive:
            raise EndpointClosed("this loan was sent or dropped already: loan another buffer")
        self._finalizer.detach()
        self.view.release()

    def send(self, length: int, dst: int | None = None) -> None:
        """Send the first ``length`` bytes of :attr:`view` to ``dst`` (default: the
        endpoint's destination). Never blocks: the buffer is already ours."""
        if not 0 <= length <= len(self.view):
            raise MessageTooLarge(f"length {length} does not fit the loaned buffer of "
                                  f"{len(self.view)} bytes")
        ep = self._ep
        target = ep._dst() if dst is None else dst
        ep._link._check_addresses(ep.addr, target)
        self._finish()
        ep._link._send_loan(ep, self._handle, target, length)

    def drop(self) -> None:
        """Give the buffer back unsent. Idempotent."""
        if self._finalizer.alive:
            self._finish()
            self._ep._link._drop_loan(self._handle)

    def _invalidate(self) -> Any:
        """Void the loan (its link is closing); returns its handle."""
        if self._finalizer.alive:
            self._finish()
        return self._handle

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()

    def __repr__(self) -> str:
        state = "done" if self.done else f"{len(self.view)} B"
        return f"<TxLoan of endpoint 0x{self._ep.addr:x}, {state}>"
