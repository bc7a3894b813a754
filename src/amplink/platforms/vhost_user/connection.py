"""One front end's socket: whole requests with their fds in, replies out.

The header is read with ``recvmsg`` (a front end sends a request's fds with its first
bytes, so they arrive with the header and never mix with another message's); the
payload with plain reads, which drop (close) any fds a front end attaches there. Once a
message has begun, the rest must follow within ``message_timeout``: a front end that
stalls mid-message cannot hold the back end.
"""

from __future__ import annotations

import array
import os
import socket
import time

from .protocol import HEADER_SIZE, MAX_FDS, Header, VhostUserError

_FD_SIZE = array.array("i").itemsize
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)

#: how long the rest of a message may take once its first byte arrived
MESSAGE_TIMEOUT = 5.0


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_SIZE
            fds.extend(array.array("i", data[:usable]))
    return fds


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()


class Connection:
    """Reads requests from and writes replies to one connected front end."""

    def __init__(self, sock: socket.socket, *, message_timeout: float = MESSAGE_TIMEOUT) -> None:
        self.sock = sock
        self.message_timeout = message_timeout
        sock.settimeout(None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _deadline_left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise VhostUserError(f"the front end stalled mid-message for {self.message_timeout} s")
        return left

    def read_message(self) -> tuple[Header, bytes, list[int]] | None:
        """The next request, its payload and fds; None if the front end hung up cleanly.

        The caller owns the returned fds. Raises VhostUserError (fds closed) on a
        malformed or truncated message.
        """
        header = bytearray()
        fds: list[int] = []
        deadline = 0.0
        try:
            while len(header) < HEADER_SIZE:
                if header:
                    self.sock.settimeout(self._deadline_left(deadline))
                data, ancdata, flags, _ = self.sock.recvmsg(HEADER_SIZE - len(header), _ANC_SIZE)
                fds.extend(_fds_from(ancdata))
                if flags & socket.MSG_CTRUNC:
                    raise VhostUserError(f"a message carried more than {MAX_FDS} fds")
                if not data:
                    if header or fds:
                        raise VhostUserError("the front end hung up mid-message")
                    return None
                if not header:
                    deadline = time.monotonic() + self.message_timeout
                header += data
            head = Header.unpack(header)
            payload = bytearray()
            while len(payload) < head.size:
                self.sock.settimeout(self._deadline_left(deadline))
                chunk = self.sock.recv(head.size - len(payload))
                if not chunk:
                    raise VhostUserError(f"request {head.request}: the front end hung up after "
                                         f"{len(payload)} of {head.size} payload bytes")
                payload += chunk
            return head, bytes(payload), fds
        except TimeoutError:
            close_fds(fds)
            raise VhostUserError(
                f"the front end stalled mid-message for {self.message_timeout} s") from None
        except BaseException:
            close_fds(fds)
            raise
        finally:
            self.sock.settimeout(None)

    def send(self, data: bytes) -> None:
        """Send a reply (bounded: a front end that never reads cannot block us for long)."""
        self.sock.settimeout(self.message_timeout)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(None)

    def close(self) -> None:
        self.sock.close()
