"""The peer agent: firmware that runs the conformance suite's peer commands.

Started by the simulator as ``python -m amplink.firmware peer_agent.py CONTROL_PATH``.
It connects to the Unix socket CONTROL_PATH (the control channel, outside the link
under test) and executes the commands of :class:`peer_ops.PeerOps` it receives there,
each in a thread of its own, answering ``(id, True, result)`` or ``(id, False,
(exception type name, message))``. Two commands are its own:

* ``exit``: answer, then leave at once with ``os._exit(code)`` (an abrupt death: no
  link close, no end-of-service announcements);
* the host hanging up the control socket ends the firmware normally (link closed).

Not a test module: the suite starts it by path.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from amplink.link import Link

#: how long the agent waits to connect to the control socket
CONNECT_TIMEOUT = 10.0


def main(link: Link, args: list[str]) -> None:
    # The helpers next to this file: firmware is loaded by path, not as a package.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peer_ops import PeerOps

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    sock.connect(args[0])
    sock.settimeout(None)
    conn = Connection(sock.detach())
    ops = PeerOps(link, dispatch="caller")  # the firmware's link dispatches in run()
    send_lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(message)
            except OSError:
                pass  # the host hung up: the main loop ends

    def execute(req: int, op: str, kwargs: dict[str, Any]) -> None:
        try:
            if op.startswith("_") or not hasattr(PeerOps, op):
                raise ValueError(f"no peer command {op!r}")
            result = getattr(ops, op)(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - every error goes back to the host
            reply((req, False, (type(exc).__name__, str(exc))))
        else:
            reply((req, True, result))

    try:
        while True:
            try:
                req, op, kwargs = conn.recv()
            except (EOFError, OSError):
                return  # the host hung up: the end of this peer
            if op == "exit":
                reply((req, True, None))
                os._exit(kwargs.get("code", 3))
            threading.Thread(target=execute, args=(req, op, kwargs), daemon=True,
                             name=f"agent-{op}").start()
    finally:
        ops.shutdown()
        conn.close()
