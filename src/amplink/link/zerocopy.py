"""Zero copy: received messages held in the peer's buffer, transmit buffers loaned to fill.

A :class:`HeldMessage` is a view of the receive buffer the peer wrote: valid until it is
released (explicitly, or by leaving its ``with`` block). A :class:`TxLoan` is a free
transmit buffer handed out to be filled in place and sent, or given back unsent. Either
one that is garbage-collected while it still has its buffer gives it back.

Both views are live shared memory, and the peer is not trusted: it may change the
bytes of a held message while you look at them (a correct peer does not, a hostile one
may). Copy out what you validate (``bytes(msg.view[:16])``), then use the copy. Views
you cut from them (slices, casts) are yours: release them before the message or loan
goes, or they point at a buffer the peer owns again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from .._args import int_arg
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

    __slots__ = ("view", "src", "_link", "_handle", "_kept", "_released", "__weakref__")

    def __init__(self, link: Link | None, view: memoryview, src: int, handle: Any) -> None:
        self.view = view.toreadonly()
        view.release()
        self.src = src
        self._link = link  # None: a copy in the same shape, holding no buffer
        self._handle = handle
        self._kept = False  # a callback kept it past its return
        self._released = False

    @classmethod
    def of_copy(cls, data: bytes, src: int) -> HeldMessage:
        """A message already copied out, in the same shape (releasing it frees nothing)."""
        return cls(None, memoryview(data), src, None)

    @property
    def released(self) -> bool:
        """True once the buffer went back (for a copy: once :meth:`release` was called)."""
        return self._released

    def hold(self) -> Self:
        """In a callback: keep the message after the callback returns (release it later)."""
        self._kept = True
        return self

    def release(self) -> None:
        """Give the buffer back to the peer; the view raises from now on. Idempotent."""
        if self._released:
            return
        handle = self._invalidate()
        if self._link is not None:
            self._link._release_held(handle)

    def _invalidate(self) -> Any:
        """Void the view (the link gives the buffer back itself); returns its handle."""
        self._released = True
        self.view.release()
        return self._handle

    def __del__(self) -> None:
        # collected unreleased: the buffer goes back (the view died with the message)
        if not self._released and self._link is not None:
            self._released = True
            self._link._give_back(self._handle, loan=False)

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


class TxLoan:
    """A transmit buffer loaned by :meth:`Endpoint.loan`: fill :attr:`view`, then
    :meth:`send` (the buffer is the peer's from then on) or :meth:`drop` (back unsent).

    ``view`` is writable and as long as the link's MTU; sending more than that is
    refused. Leaving a ``with`` block unsent drops the loan; so does garbage collection.
    """

    __slots__ = ("view", "_ep", "_handle", "_done", "__weakref__")

    def __init__(self, ep: Endpoint, handle: Any, view: memoryview) -> None:
        self.view = view
        self._ep = ep
        self._handle = handle
        self._done = False

    @property
    def done(self) -> bool:
        """True once sent or dropped."""
        return self._done

    def _finish(self) -> None:
        self._done = True
        self.view.release()

    def send(self, length: int, dst: int | None = None) -> None:
        """Send the first ``length`` bytes of :attr:`view` to ``dst`` (default: the
        endpoint's destination). Never blocks: the buffer is already ours."""
        if self._done:
            raise EndpointClosed("this loan was sent or dropped already: loan another buffer")
        if not 0 <= int_arg(length, "length") <= len(self.view):
            raise MessageTooLarge(f"length {length} does not fit the loaned buffer of "
                                  f"{len(self.view)} bytes")
        ep = self._ep
        target = ep._dst() if dst is None else dst
        link = ep._link
        if not (type(target) is int and 0 <= target < 0xFFFF_FFFF):  # the common case inline
            link._check_addresses(ep.addr, target)
        self._finish()
        link._send_loan(ep, self._handle, target, length)

    def drop(self) -> None:
        """Give the buffer back unsent. Idempotent."""
        if not self._done:
            self._finish()
            self._ep._link._drop_loan(self._handle)

    def _invalidate(self) -> Any:
        """Void the loan (its link is closing); returns its handle."""
        if not self._done:
            self._finish()
        return self._handle

    def __del__(self) -> None:
        if not self._done:  # collected unsent: the buffer goes back
            self._done = True
            self._ep._link._give_back(self._handle, loan=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()

    def __repr__(self) -> str:
        state = "done" if self._done else f"{len(self.view)} B"
        return f"<TxLoan of endpoint 0x{self._ep.addr:x}, {state}>"
