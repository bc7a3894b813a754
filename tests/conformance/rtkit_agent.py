"""The RTKit peer agent: co-processor firmware that runs the conformance suite's peer
commands.

Started by ``RtkitRemoteProc`` as ``python -m amplink.firmware.rtkit rtkit_agent.py
CONTROL_PATH``. It announces the endpoints of :class:`rtkit_peer_ops.RtkitPeerOps`,
connects to the Unix socket CONTROL_PATH (the control channel, outside the mailbox
under test) and executes the commands it receives there, each in a thread of its own,
answering as ``peer_agent.py`` does: ``(id, True, result)`` or ``(id, False, (exception
type name, message))``. ``exit`` answers, then leaves at once with ``os._exit(code)``.
The firmware's own loop runs in the main thread, reading the mailbox only when a command
wants a message; once the host hangs up the control socket it serves the host as any
firmware until the processor is stopped.

Not a test module: the suite starts it by path.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from amplink.errors import NotSupported
from amplink.firmware.rtkit import RtkitFirmware

#: how long the agent waits to connect to the control socket
CONNECT_TIMEOUT = 10.0


def main(fw: RtkitFirmware, args: list[str]) -> None:
    # The helpers next to this file: firmware is loaded by path, not as a package.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rtkit_peer_ops import COMMANDS, RtkitPeerOps

    ops = RtkitPeerOps(fw)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    sock.connect(args[0])
    sock.settimeout(None)
    conn = Connection(sock.detach())
    send_lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(message)
            except OSError:
                pass  # the host hung up: the control loop ends

    def execute(req: int, op: str, kwargs: dict[str, Any]) -> None:
        try:
            if op not in COMMANDS:
                raise NotSupported(f"an RTKit co-processor has no counterpart of {op!r}")
            result = getattr(ops, op)(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - every error goes back to the host
            reply((req, False, (type(exc).__name__, str(exc))))
        else:
            reply((req, True, result))

    def control() -> None:
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
            ops.stop()
            conn.close()

    threading.Thread(target=control, daemon=True, name="agent-control").start()
    ops.serve()  # the firmware's loop, until the control socket closes
