"""Errors of shared buffers: providers, CPU/device ownership, the IOMMU, peers' references.

Each derives from :class:`~amplink.errors.AmplinkError` (or one of its subclasses) and
from the built-in exception ordinary Python code would catch for the same condition.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..errors import AddressError, AmplinkError, RemoteProtocolError

if TYPE_CHECKING:
    from .iommu import Fault


class ProviderUnavailable(AmplinkError, OSError):
    """The kernel lacks what a buffer provider needs; ``filename`` is the device node."""

    def __init__(self, err: int, message: str, node: str) -> None:
        super().__init__(err, message, node)

    def __str__(self) -> str:
        return str(self.strerror)


class BufferClosed(AmplinkError, ValueError):
    """The buffer (or its provider's memory) was closed."""


class OwnershipError(AmplinkError, RuntimeError):
    """The buffer is not the caller's to use now: the device owns it, the CPU is inside an
    access bracket, or it is still attached; the message names the buffer and its owner."""


class ViewsOutstanding(OwnershipError, BufferError):
    """Views derived from a CPU access bracket's view are still alive after the bracket
    (slices, numpy arrays, ctypes objects); release them before the device gets the buffer."""


class ReadOnlyBuffer(AmplinkError, PermissionError):
    """Write access to a buffer mapped read-only (e.g. one a peer passed read-only)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)

    def __str__(self) -> str:
        return str(self.strerror)


class IommuFault(AddressError):
    """A device access that the IOMMU refused; ``fault`` is the recorded fault."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(str(fault))
        self.fault = fault


class PeerBufferError(RemoteProtocolError, ValueError):
    """A peer sent a buffer reference or buffer message that does not hold; ``reason`` says
    which check failed (a :class:`~amplink.memory.table.BufferFaultReason` or a
    :class:`~amplink.memory.fdpass.FdPassFault`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
