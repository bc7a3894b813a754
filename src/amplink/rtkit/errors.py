"""The typed errors of RTKit co-processors.

Each carries the errno Linux's rtkit.c answers with (``ETIME`` for an ack that did not
come within 1 s, ``EINVAL`` for a refusal) and derives from the built-in exception that
ordinary Python code would catch for the same condition.
"""

from __future__ import annotations

import enum
import errno

from ..errors import AddressError, AmplinkError, LinkDown, RemoteProtocolError


class RtkitError(AmplinkError, OSError):
    """An RTKit operation failed; ``errno`` is the one Linux's rtkit.c returns."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return str(self.strerror)


class RtkitTimeout(RtkitError, TimeoutError):
    """ETIME: the co-processor did not answer (HELLO, EPMAP, a power-state ack, a pong)
    within the protocol's timeout (1 s)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ETIME, message)


class RtkitProtocolError(RtkitError, RemoteProtocolError):
    """EINVAL: the co-processor said something the protocol does not allow (a version out
    of range, an ack of another state, an endpoint map that never ends, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


class RtkitCrashed(RtkitError, LinkDown):
    """EINVAL: the co-processor crashed; every send fails until it is reinitialised."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)

    def again(self) -> RtkitCrashed:
        """A fresh error of the same type and message (a link raises it once per call)."""
        return RtkitCrashed(str(self.strerror))


class RtkitNotRunning(RtkitError, ValueError):
    """EINVAL: the call needs a running co-processor (or a discovered endpoint)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


class RtkitUndiscoveredEndpoint(RtkitNotRunning, AddressError):
    """EINVAL: the co-processor did not announce that endpoint in its endpoint map (an
    :class:`~amplink.errors.AddressError` too: a link refuses the address)."""


class DropReason(enum.StrEnum):
    """Why a message from the co-processor was dropped (each is counted)."""

    UNDISCOVERED_ENDPOINT = "message to an endpoint the co-processor did not announce"
    UNKNOWN_SYSTEM_ENDPOINT = "message to a system endpoint the host does not know"
    UNEXPECTED = "message not expected in this state"
    UNKNOWN_TYPE = "unknown message type"
    AFTER_CRASH = "message after the co-processor crashed"
    EPMAP_OVERFLOW = "endpoint map repeats a base or never ends"
    SYSLOG_NOT_READY = "syslog message before its buffer and INIT"
    SYSLOG_INDEX = "syslog index past the entry count"
    SYSLOG_LAYOUT = "syslog entries do not fit the syslog buffer"
    NO_LISTENER = "application message with no open endpoint"
    QUEUE_FULL = "application endpoint's receive queue is full"
    BUFFER_REFUSED = "buffer request refused"
    REPLY_OVERFLOW = "reply dropped: the co-processor does not read its mailbox"


class BufferRefusal(enum.StrEnum):
    """Why a buffer request was refused."""

    EMPTY = "a buffer of zero pages"
    OVER_BUDGET = "more memory than the co-processor may have"
    DUPLICATE = "that endpoint has a buffer already"
    UNMAPPABLE = "the IOVA cannot be mapped"
    MMIO_RANGE = "the range runs outside the device-local memory"


class BufferRequestError(RemoteProtocolError, ValueError):
    """A buffer request the host refused; ``reason`` is a :class:`BufferRefusal`."""

    def __init__(self, reason: BufferRefusal, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class CrashlogError(RemoteProtocolError, ValueError):
    """A crashlog that does not hold up (bad header, sizes, no terminator); the message
    names the offset."""
