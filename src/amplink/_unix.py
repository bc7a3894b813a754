"""Unix-domain listening sockets that a client never finds before they listen."""

from __future__ import annotations

import os
import socket

#: the longest path an AF_UNIX address holds (sun_path less its terminating NUL)
_MAX_SOCKET_PATH = 107


def listen_unix(path: str | os.PathLike[str], backlog: int, *,
                kind: int = socket.SOCK_STREAM, mode: int | None = None) -> socket.socket:
    """A socket of ``kind`` listening at ``path`` (with permissions ``mode`` if given).

    It is bound under a temporary name beside ``path`` and renamed onto it once it
    listens: a client that finds ``path`` is served, never refused (with a plain bind,
    the file exists from bind() on, and a connect() before listen() gets ECONNREFUSED).
    Should the temporary name not fit an AF_UNIX address, it binds ``path`` directly.
    """
    final = os.fspath(path)
    pending = f"{final}.{os.getpid()}~"
    if len(os.fsencode(pending)) > _MAX_SOCKET_PATH:
        pending = final
    listener = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        listener.bind(pending)
        try:
            if mode is not None:
                os.chmod(pending, mode)
            listener.listen(backlog)
            if pending != final:
                os.rename(pending, final)
        except BaseException:
            os.unlink(pending)
            raise
    except BaseException:
        listener.close()
        raise
    return listener
