"""Errors of the remote-processor lifecycle (the codecs raise FirmwareError).

They carry the errno the kernel's remoteproc files answer with: each is an
:class:`OSError` (``.errno``) and an :class:`~amplink.errors.AmplinkError`, so a refusal
reads the same whether it comes from the lifecycle engine, a simulator's supervisor or
Linux (:mod:`amplink.platforms.linux.errors` adds the other errnos of the control files).
"""

from __future__ import annotations

from ..errors import AmplinkError


class RprocControlError(AmplinkError, OSError):
    """An operation was refused; ``errno`` is the kernel's (or supervisor's) answer."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return str(self.strerror)


class RprocBusy(RprocControlError):
    """EBUSY: not now, in this state (e.g. a firmware change while not offline, a coredump
    setting while crashed, a second start)."""


class NotBooted(RprocControlError, RuntimeError):
    """EINVAL: ``shutdown()`` without a matching ``boot()``: the processor has no users."""
