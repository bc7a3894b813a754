"""The Keem Bay driver's error codes as amplink's typed errors.

Each class derives from the amplink error a caller of any link already handles, and
carries the errno the driver returned for the same condition in ``.errno``::

    ENOENT  ChannelClosed       (EndpointClosed)     the channel is not open
    ENOMEM  NoFreeHeader        (NoBufferAvailable)  no FREE header in the sender's pool
    ENXIO   BadDataAddress      (AddressError)       payload outside the shared memory
    EFAULT  MisalignedData      (AddressError)       payload not on a 64-byte boundary
    EBUSY   FifoBusy            (NoBufferAvailable)  the peer's FIFO is full
    EPIPE   LinkTornDown        (LinkDown)           the link was torn down
    ETIME   RecvTimeout         (ReceiveTimeout)     nothing arrived in time
    EEXIST  ChannelAlreadyOpen  (AddressError)       the channel is open already
"""

from __future__ import annotations

import errno

from ...errors import (
    AddressError,
    EndpointClosed,
    LinkDown,
    NoBufferAvailable,
    ReceiveTimeout,
)
from ...link.backend import ErrorTypes


class _Errno(OSError):
    """The message alone in ``str()`` (the errno is in ``.errno``): a message the runtime
    wraps in another error must not repeat the prefix."""

    def __str__(self) -> str:
        return str(self.strerror)


class ChannelClosed(_Errno, EndpointClosed):
    """ENOENT: the channel is not open (or was closed while a call waited on it)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOENT, message)


class NoFreeHeader(_Errno, NoBufferAvailable):
    """ENOMEM: every header of the sender's pool is ALLOCATED (the peer has not freed
    them yet, or never will)."""

    def __init__(self, message: str = "no FREE IPC header in this node's pool: the peer has "
                                      "not processed what was sent (retry later)") -> None:
        BlockingIOError.__init__(self, errno.ENOMEM, message)  # the errno, not EAGAIN


class FifoBusy(_Errno, NoBufferAvailable):
    """EBUSY: the destination FIFO is full (the write was dropped and its overflow flag
    set), or the channel's transmit queue holds its share of it."""

    def __init__(self, message: str = "the peer's FIFO is full (overflow): retry later") -> None:
        BlockingIOError.__init__(self, errno.EBUSY, message)


class BadDataAddress(AddressError):
    """ENXIO: the payload is not in memory the peer can address."""

    errno = errno.ENXIO


class MisalignedData(AddressError):
    """EFAULT: the payload does not start on a 64-byte boundary."""

    errno = errno.EFAULT


class LinkTornDown(_Errno, LinkDown):
    """EPIPE: the link was torn down (the peer closed it, died, or broke it)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPIPE, message)

    def again(self) -> LinkTornDown:
        return LinkTornDown(str(self))


class RecvTimeout(_Errno, ReceiveTimeout):
    """ETIME: no message arrived within the timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ETIME, message)


class ChannelAlreadyOpen(AddressError):
    """EEXIST: the channel is open already on this node."""

    errno = errno.EEXIST


#: what a Keem Bay link raises where every link raises the generic type
KEEMBAY_ERRORS = ErrorTypes(closed=ChannelClosed, down=LinkTornDown,
                            recv_timeout=RecvTimeout, in_use=ChannelAlreadyOpen)
