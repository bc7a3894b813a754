"""Errors of the remote-processor lifecycle (the codecs raise FirmwareError)."""

from __future__ import annotations

import errno

from ..errors import AmplinkError


class RprocBusy(AmplinkError, RuntimeError):
    """The setting cannot change in the processor's current state (sysfs: EBUSY)."""

    errno = errno.EBUSY


class NotBooted(AmplinkError, RuntimeError):
    """``shutdown()`` without a matching ``boot()``: the processor has no users."""

    errno = errno.EINVAL

