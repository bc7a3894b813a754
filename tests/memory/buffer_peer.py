"""A peer process for the cross-process buffer tests (run as a program, not a test).

``buffer_peer.py FD COUNT MODE``: receive COUNT buffers on the SOCK_SEQPACKET socket FD;
for each, answer ``u32 id, u8 status`` + the buffer's first 16 bytes, after writing
``bytes([id]) * 16`` (fewer in a smaller buffer) at its start and end (status 0), or,
for a read-only buffer, after checking that writing is refused (status 1). Then MODE
``exit``: close everything, say b"bye" and exit 0; MODE ``hold``: say b"holding" and
wait, buffers mapped, to be killed.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

from amplink.memory import Access, ReadOnlyBuffer, recv_buffer

ANSWER = struct.Struct("<IB")


def main() -> None:
    fd, count, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sock = socket.socket(fileno=fd)
    held = []
    for _ in range(count):
        header, buf = recv_buffer(sock, timeout=10)
        held.append(buf)
        n = min(16, buf.size)
        first = buf.read(0, n).ljust(16, b"\0")
        status = 0
        if buf.read_only:
            try:
                buf.write(b"!")
            except ReadOnlyBuffer:
                status = 1
        else:
            mark = bytes([header.id & 0xFF]) * n
            with buf.cpu_access(Access.WRITE) as view:  # touches two pages of any size
                view[:n] = mark
                view[-n:] = mark
        sock.send(ANSWER.pack(header.id, status) + first)
    if mode == "hold":
        sock.send(b"holding")
        time.sleep(60)  # the test kills us long before
    for buf in held:
        buf.close()
    sock.send(b"bye")


if __name__ == "__main__":
    main()
