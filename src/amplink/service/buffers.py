"""Shared buffers a client lends to a processor through the service: by reference.

A client passes a buffer's file descriptor (``SCM_RIGHTS``) with an ``attach_buffer``
request. The service checks it as any peer's buffer
(:func:`~amplink.memory.fdpass.import_buffer`: a memory object that holds the range,
sealed against shrinking), checks that the client may send on the channel it names,
and attaches it to the processor through the run's
:class:`~amplink.handover.port.BufferPort`: the firmware maps the same memory. The
answer is the attachment's id and device address; the hand-over records that name the
id (:class:`~amplink.handover.BufferChannel`'s SEND and DONE, 24 bytes each) then travel
on the client's channel as ordinary messages. Nothing of the buffer is copied, by the
service or by anyone: the client's pages are the ones the firmware reads and writes.

Attaching and detaching wait for the firmware's answer (up to the port's timeout), so
they run in a thread of their own, one at a time per client, never in the service's
I/O thread. A client that goes, and a processor run that ends, release everything: the
buffers are detached (the end of a run detaches them anyway) and the service's copies
of the descriptors closed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AmplinkError
from ..memory.access import Access
from ..memory.buffers import SharedBuffer
from ..memory.errors import PeerBufferError
from ..memory.fdpass import FLAG_READ_ONLY, BufferHeader, import_buffer
from ..remoteproc.api import RemoteProcessor

log = logging.getLogger(__name__)

#: buffers one client may have attached at once, and all clients together (each holds
#: a file descriptor in the service)
MAX_BUFFERS = 64
MAX_TOTAL_BUFFERS = 256
#: the largest buffer a client may attach (memfds are sparse; the IOMMU window is bounded)
MAX_BUFFER_SIZE = 1 << 34


class BufferRefusal(Exception):
    """An attach or detach is refused with ``errno`` (the message goes to the client)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class _Budget:
    """How many buffers all clients hold; :meth:`take` refuses past the limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def take(self) -> bool:
        with self._lock:
            if self.count >= MAX_TOTAL_BUFFERS:
                return False
            self.count += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.count -= 1


_budget = _Budget()


@dataclass
class _Lent:
    buffer: SharedBuffer
    attachment: Any
    rproc: RemoteProcessor


@dataclass
class ClientBuffers:
    """The buffers one client attached (guarded by ``lock``; one request at a time)."""

    items: dict[int, _Lent] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: bool = False

    def attach(self, rproc: RemoteProcessor, fd: int, header: BufferHeader,
               access: int) -> tuple[int, int]:
        """Check ``fd`` and attach it to ``rproc``; its id and device address. Takes the
        fd (closed here if refused)."""
        attach: Callable[..., Any] | None = getattr(rproc, "attach", None)
        if attach is None or not hasattr(rproc, "buffers"):
            os.close(fd)
            raise BufferRefusal(errno.EOPNOTSUPP, f"{rproc.name} cannot map buffers of its "
                                                  "host (no IOMMU): send data in messages")
        if len(self.items) >= MAX_BUFFERS:
            os.close(fd)
            raise BufferRefusal(errno.EMFILE, f"a client may attach {MAX_BUFFERS} buffers")
        if not _budget.take():
            os.close(fd)
            raise BufferRefusal(errno.ENFILE, f"the service holds {MAX_TOTAL_BUFFERS} lent "
                                              "buffers already: retry when some are detached")
        try:
            buffer = import_buffer(fd, header)
        except PeerBufferError as exc:
            _budget.give()
            os.close(fd)
            raise BufferRefusal(errno.EINVAL, f"the buffer is refused: {exc}") from None
        try:
            if buffer.read_only and access & Access.WRITE:
                raise BufferRefusal(errno.EACCES, "a read-only buffer cannot be attached for "
                                                  "the processor to write")
            attachment = attach(buffer, access)
            att_id = rproc.buffers.id_of(buffer)  # type: ignore[attr-defined]
        except BaseException:
            _budget.give()
            buffer.close()
            raise
        with self.lock:
            self.items[att_id] = _Lent(buffer, attachment, rproc)
        return att_id, attachment.da

    def detach(self, att_id: int) -> None:
        """Detach buffer ``att_id`` and close the service's copy."""
        with self.lock:
            lent = self.items.pop(att_id, None)
        if lent is None:
            raise BufferRefusal(errno.ENOENT, f"no buffer {att_id} attached by this client")
        _let_go(lent)

    def release_all(self) -> None:
        """The client went, or the processor's run ended: everything goes back."""
        with self.lock:
            items, self.items = list(self.items.values()), {}
        for lent in items:
            _let_go(lent)


def _let_go(lent: _Lent) -> None:
    try:
        lent.rproc.detach(lent.attachment)  # type: ignore[attr-defined]
    except (AmplinkError, KeyError, OSError) as exc:  # the run ended: detached with it
        log.debug("detaching %s: %s", lent.buffer.name, exc)
    with contextlib.suppress(AmplinkError, OSError):
        lent.buffer.close()
    _budget.give()


def header_of(message: dict[str, Any]) -> tuple[BufferHeader, int]:
    """The buffer's range and name from an ``attach_buffer`` request, and the access
    asked (ValueError if a field does not hold up)."""
    offset, size, access = message.get("offset"), message.get("size"), message.get("access")
    read_only, name = message.get("read_only"), message.get("name")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, size, access)):
        raise ValueError("offset, size and access must be integers")
    assert isinstance(offset, int) and isinstance(size, int) and isinstance(access, int)
    if not (0 <= offset < 1 << 64 and 0 < size <= MAX_BUFFER_SIZE and access in (1, 2, 3)):
        raise ValueError(f"offset {offset}, size {size} (1..{MAX_BUFFER_SIZE}), access "
                         f"{access} (1..3)")
    if not isinstance(read_only, bool) or not isinstance(name, str) or len(name) > 64:
        raise ValueError("read_only must be a bool and name a string of 64 characters or less")
    return BufferHeader(0, offset, size, FLAG_READ_ONLY if read_only else 0,
                        "".join(c for c in name if c.isprintable())), access
