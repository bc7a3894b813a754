"""The error types of amplink.

One root, :class:`AmplinkError`; each subclass also derives from the built-in exception
that ordinary Python code would catch for the same condition.
"""

from __future__ import annotations

import errno


class AmplinkError(Exception):
    """Root of every error amplink raises on purpose."""


class MessageTooLarge(AmplinkError, ValueError):
    """The payload exceeds the link's MTU (EMSGSIZE); nothing was sent."""

    errno = errno.EMSGSIZE


class NoBufferAvailable(AmplinkError, BlockingIOError):
    """No transmit buffer is free right now (a ``try_*`` call); retry or use the blocking call."""

    def __init__(self, message: str = "no TX buffer free: retry later or use the blocking send"):
        super().__init__(errno.EAGAIN, message)


class SendTimeout(AmplinkError, TimeoutError):
    """A blocking send waited its whole timeout for a free transmit buffer."""


class ReceiveTimeout(AmplinkError, TimeoutError):
    """A blocking receive got no message within its timeout."""


class EndpointClosed(AmplinkError, OSError):
    """The endpoint (or link) was closed by this side; create a new one to go on."""


class PeerTimeout(AmplinkError, TimeoutError):
    """The peer did not do its part in time (connect, set DRIVER_OK, announce a channel)."""


class LinkDown(AmplinkError, ConnectionError):
    """The peer is gone: it exited, crashed, or broke the shared-memory protocol for good.

    ``LinkDown(message)``, or ``LinkDown(errno, message)`` when a kernel said so (EPIPE,
    ENODEV, ENXIO from a device that went away): ``.errno`` then keeps its answer.
    """

    def again(self) -> LinkDown:
        """A fresh error with the same errno and message, to raise once more (one object
        raised in many threads would collect all their tracebacks)."""
        if self.errno is not None and self.strerror is not None:
            return LinkDown(self.errno, self.strerror)
        return LinkDown(str(self))


class RemoteProtocolError(AmplinkError):
    """The peer wrote something into shared memory that breaks the protocol."""


class FirmwareError(AmplinkError, ValueError):
    """A firmware image or resource table is malformed; the message names field and offset."""


class AddressError(AmplinkError, ValueError):
    """An address or offset is outside the region or otherwise not acceptable."""


class NotSupported(AmplinkError, OSError):
    """The backend lacks the capability this call needs (EOPNOTSUPP, as Zephyr's -ENOTSUP)."""

    def __init__(self, message: str, err: int = errno.EOPNOTSUPP) -> None:
        super().__init__(err, message)


class InvalidArgument(AmplinkError, ValueError):
    """A public call got an argument value it cannot use; the message names the argument."""


class InvalidArgumentType(AmplinkError, TypeError):
    """A public call got an argument of a type it cannot use; the message names the argument
    and what is accepted."""


class ServiceError(AmplinkError, OSError):
    """The amplink service refused a request or broke its protocol; ``errno`` says why
    (see :mod:`amplink.transports.service`)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


class AccessDenied(ServiceError, PermissionError):
    """EACCES: the service's policy does not allow this client to do that (it is logged
    by the service)."""

    def __init__(self, message: str, err: int = errno.EACCES) -> None:
        super().__init__(err, message)


class UnknownTarget(ServiceError, FileNotFoundError):
    """ENOENT: the service has no such processor, link or channel."""

    def __init__(self, message: str, err: int = errno.ENOENT) -> None:
        super().__init__(err, message)


class ServiceUnavailable(ServiceError, ConnectionError):
    """No amplink service answers at that socket (none runs, or it is on its way out)."""
