"""The errors of the OpenAMP Linux-userspace platform."""

from __future__ import annotations

from ...errors import PeerTimeout

__all__ = ["PeerTimeout", "StaleSharedMemory"]


class StaleSharedMemory(PeerTimeout):
    """A client found no live server, only the resource table of an earlier, dead run.

    The table's vdev status still has DRIVER_OK (0x04): the host of that run got as far
    as the handshake, and its server is gone. Starting the server side fixes it: the
    server rewrites the table and the host zeroes the rings.
    """
