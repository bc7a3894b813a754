"""A client of the endpoint service that speaks the wire protocol by hand (for checks
behind the client's back, and for hostile clients)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from amplink.transports import service_wire as W

TIMEOUT = 5.0


class RawClient:
    """One SOCK_SEQPACKET connection to ``root``/.endpoints; frames as (Frame, body)."""

    def __init__(self, root: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(root / W.ENDPOINT_SOCKET))
        self.other: list[W.Frame] = []  # frames that came before an awaited one
        self._id = 0

    def send_json(self, message: dict[str, Any], kind: int = W.KIND_REQUEST) -> int:
        self._id += 1
        self.sock.send(W.header(kind, self._id) + json.dumps(message).encode())
        return self._id

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request; its answer (ok or not) as a dict."""
        rid = self.send_json({"op": op, **fields})
        while True:
            frame = self.frame()
            if frame.kind == W.KIND_RESPONSE and frame.a == rid:
                return W.decode_json(frame.body)
            self.other.append(frame)

    def send_data(self, src: int, dst: int, payload: bytes) -> None:
        self.sock.send(W.header(W.KIND_DATA, src, dst) + payload)

    def frame(self, timeout: float = TIMEOUT) -> W.Frame:
        self.sock.settimeout(timeout)
        packet = self.sock.recv(W.MAX_FRAME + 1)
        if not packet:
            raise EOFError("the service closed the connection")
        return W.decode(packet)

    def event(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next EVENT (other frames are kept in ``other``)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frame(max(0.01, deadline - time.monotonic()))
            if frame.kind == W.KIND_EVENT:
                return W.decode_json(frame.body)
            self.other.append(frame)

    def closed_by_service(self, timeout: float = TIMEOUT) -> bool:
        """True once the service closed the connection (frames before are kept)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.other.append(self.frame(max(0.01, deadline - time.monotonic())))
            except EOFError:
                return True
            except (TimeoutError, ConnectionResetError):
                return False
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
