"""The RSC_TRACE log: text the remote writes into a buffer in shared memory.

There is no head/tail protocol: the text runs up to the first NUL within the buffer.
The remote may rewrite the buffer at any time, so the follower compares contents.
"""

from __future__ import annotations

import codecs

from ..memory.region import SharedRegion


def _raw_text(region: SharedRegion, offset: int, length: int) -> bytes:
    raw = region.read(offset, length)  # bounds-checked: AddressError outside the region
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def read_trace(region: SharedRegion, offset: int, length: int) -> str:
    """The trace text at ``[offset, offset + length)``: up to the first NUL, UTF-8 decoded.

    Undecodable bytes become U+FFFD.
    """
    return _raw_text(region, offset, length).decode("utf-8", errors="replace")


class TraceFollower:
    """Returns, on each call, the text added to a trace buffer since the previous call.

    If the buffer no longer starts with what was seen before (the remote rewrote or
    cleared it), the whole current content is returned. A UTF-8 sequence cut by the
    remote mid-write is held back until it is complete.
    """

    def __init__(self, region: SharedRegion, offset: int, length: int) -> None:
        region.check(offset, length)
        self.region = region
        self.offset = offset
        self.length = length
        self._seen = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def poll(self) -> str:
        """New text since the last call ("" if nothing changed)."""
        raw = _raw_text(self.region, self.offset, self.length)
        if raw.startswith(self._seen):
            new = raw[len(self._seen):]
        else:
            self._decoder.reset()
            new = raw
        self._seen = raw
        return self._decoder.decode(new)

    __call__ = poll
