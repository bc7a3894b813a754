"""Lending shared buffers by reference to a processor the amplink service holds.

:class:`ServicePort` is the owning side's port of a
:class:`~amplink.handover.BufferChannel` (and of
:class:`~amplink.handover.LargeMessages`) when the processor is another program's::

    link = connect_link("dsp")
    port = ServicePort("dsp", channel="rpmsg-frames")
    frames = BufferChannel(link.open_channel("rpmsg-frames", timeout=5), port=port)
    frames.send(frame, Access.READ_WRITE)      # the firmware works on frame's own pages
    frames.wait_done(timeout=5)

Attaching passes the buffer's file descriptor to the service (``SCM_RIGHTS``), which
checks it, and that the client may send on ``channel``, and attaches it to the
processor through its IOMMU: the firmware maps the same memory. The records that lend
and return the buffer then travel on the client's channel as ordinary 24-byte messages.
No byte of the buffer is copied; detaching (or closing the port, or the client's end)
unmaps it. The port keeps a connection of its own to the service: its requests wait
for the firmware's answer, never holding the link's lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RemoteProtocolError
from ..memory.access import Access, checked_access
from ..memory.buffers import BufferSlice, SharedBuffer
from ..memory.table import BufferTable
from . import service_wire as W
from .service import DEFAULT_TIMEOUT, Requests, connect_socket, endpoint_socket

#: how long attaching may take (the service waits for the firmware's answer)
ATTACH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ServiceAttachment:
    """A buffer attached through the service: its id and its device address."""

    id: int
    da: int
    buffer: SharedBuffer
    access: Access


class ServicePort:
    """The owning side's port for a processor held by the service (module docstring).

    ``processor`` names it (or its remoteprocN); ``channel`` is the channel the
    buffers are for (the client must have the "send" right on it); ``link`` the index of
    the processor's link.
    """

    def __init__(self, processor: str, *, channel: str, root: Path | str | None = None,
                 link: int = 0, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.peer = processor
        self.channel = channel
        self.table = BufferTable(f"{processor}-service-buffers")
        path = endpoint_socket(root)
        self._sock = connect_socket(path, timeout)
        self._requests = Requests(self._sock, str(path))
        self._lock = threading.Lock()  # one request at a time on the connection
        self._attachments: dict[int, ServiceAttachment] = {}
        self._ids_of: dict[int, int] = {}  # id(buffer) -> attachment id
        try:
            self._requests.call("attach", {"processor": processor, "link": link,
                                           "watch": False, "version": W.PROTOCOL_VERSION},
                                timeout, stash=lambda _frame: None)
        except BaseException:
            self._sock.close()
            raise

    def attach(self, target: SharedBuffer | BufferSlice,
               access: Access | int = Access.READ_WRITE) -> ServiceAttachment:
        """Attach a whole buffer to the processor (a slice is lent with its buffer
        attached whole); returns the attachment once the firmware mapped it."""
        buffer = target.buffer if isinstance(target, BufferSlice) else target
        access = checked_access(access)
        fields = {"channel": self.channel, "offset": buffer.offset, "size": buffer.size,
                  "access": int(access), "read_only": buffer.read_only,
                  "name": buffer.name[:64]}
        with self._lock:
            answer = self._requests.call("attach_buffer", fields, ATTACH_TIMEOUT,
                                         stash=lambda _frame: None, fd=buffer.fd)
        try:
            att_id = W.field(answer, "id", int)
            da = W.field(answer, "da", int)
        except W.FrameError as exc:
            raise RemoteProtocolError(f"the amplink service answered attach_buffer with "
                                      f"{exc}") from None
        attachment = ServiceAttachment(att_id, da, buffer, access)
        with self._lock:
            self._attachments[att_id] = attachment
            self._ids_of.setdefault(id(buffer), att_id)
        return attachment

    def detach(self, attachment: ServiceAttachment) -> None:
        """Unmap the buffer from the processor (returns once the firmware did)."""
        with self._lock:
            if self._attachments.pop(attachment.id, None) is None:
                raise KeyError(f"attachment {attachment.id} is not this port's")
            if self._ids_of.get(id(attachment.buffer)) == attachment.id:
                del self._ids_of[id(attachment.buffer)]
            self._requests.call("detach_buffer", {"id": attachment.id}, ATTACH_TIMEOUT,
                                stash=lambda _frame: None)

    def id_of(self, buffer: SharedBuffer) -> int | None:
        """The attachment id of ``buffer`` (None if it is not attached)."""
        with self._lock:
            return self._ids_of.get(id(buffer))

    def attachment(self, att_id: int) -> Any:
        """The attachment with id ``att_id`` (None if there is none)."""
        with self._lock:
            return self._attachments.get(att_id)

    def close(self) -> None:
        """Let go of every buffer attached through this port (the service detaches them)."""
        self._sock.close()

    def __enter__(self) -> ServicePort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
