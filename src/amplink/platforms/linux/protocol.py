"""The supervisor's control protocol: what plain files cannot say (EBUSY, EINVAL, ...).

A simulator tree (see :mod:`amplink.service.supervisor`) holds the same files as
``/sys/class/remoteproc``, kept up to date for ``cat``, and a Unix stream socket named
:data:`CONTROL_SOCKET` at its root. Every request and every response is one line of
UTF-8 JSON (an object) ending in ``\\n``, at most :data:`MAX_MESSAGE` bytes::

    -> {"op": "write", "dev": "remoteproc0", "attr": "firmware", "value": "fw.elf"}
    <- {"ok": false, "errno": 16, "error": "cannot change the firmware while running"}
    -> {"op": "read", "dev": "remoteproc0", "attr": "state"}
    <- {"ok": true, "value": "running\\n"}

The operations are listed in :data:`OPS`. A connection that sent ``dev_open`` stands
for an open ``/dev/remoteprocN``: closing it (or the client dying) is the release.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import SupervisorError, SupervisorUnavailable, error_from_errno

CONTROL_SOCKET = ".control"
PROTOCOL_VERSION = 3  # 2: "add" takes a kind (sim, rtkit); "crashlog"; 3: "keembay", "kind"
MAX_MESSAGE = 1 << 20  # a trace buffer fits; anything longer is a broken peer
MAX_ERROR_TEXT = 1000
_DEVICE = re.compile(r"remoteproc[0-9]+")

#: operation -> the fields its request carries (besides "op")
OPS: Mapping[str, tuple[str, ...]] = {
    "hello": (),                               # -> protocol, pid
    "list": (),                                # -> devices
    "read": ("dev", "attr"),                   # -> value
    "write": ("dev", "attr", "value"),
    "debug_read": ("dev", "attr"),             # debugfs: trace0, ... -> value
    "debug_write": ("dev", "attr", "value"),   # debugfs: crash, ...
    "add": ("firmware",),                      # name, kind ("sim", "rtkit", "keembay"): optional
                                               # -> dev, name
    "remove": ("dev",),
    "channels": ("dev",),                      # -> channels [{name, src, dst}]
    "crashes": ("dev",),                       # -> count, last, recovery_stopped
    "buffers": ("dev",),                       # -> buffers [{id, name, da, length, access, holder}]
    "attach": ("dev", "size", "access"),       # a new buffer attached to it -> id, da
    "detach": ("dev", "id"),                   # detach (and free) buffer id
    "crashlog": ("dev",),                      # an RTKit co-processor's last crash -> report
    "kind": ("dev",),                          # -> kind (sim, rtkit, keembay, openamp)
    "dev_open": ("dev",),                      # this connection is now /dev/remoteprocN
    "dev_write": ("value",),
    "dev_set_release": ("value",),             # RPROC_SET_SHUTDOWN_ON_RELEASE
    "dev_get_release": (),                     # RPROC_GET_SHUTDOWN_ON_RELEASE -> value
}

T = TypeVar("T")


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line."""
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} B exceeds the protocol limit of {MAX_MESSAGE} B")
    return data


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; ValueError unless it is a JSON object."""
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON line: {exc}") from None
    except RecursionError:  # b"[" * 100000: nested deeper than the parser can go
        raise ValueError("not a JSON line: nested too deeply") from None
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


def field(message: Mapping[str, Any], key: str, kind: type[T], *, optional: bool = False) -> T:
    """``message[key]`` checked to be a ``kind`` (bool is not an int here); ValueError otherwise."""
    value = message.get(key)
    if value is None and optional:
        return value  # type: ignore[return-value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


class LineReader:
    """Splits a byte stream into protocol lines; ValueError if a line grows past the limit."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take ``data``; return the lines it completes (without their newline)."""
        self._buffer += data
        lines = []
        while (end := self._buffer.find(b"\n")) >= 0:
            lines.append(bytes(self._buffer[:end]))
            del self._buffer[:end + 1]
        if len(self._buffer) > MAX_MESSAGE:
            raise ValueError(f"a line longer than {MAX_MESSAGE} B")
        return lines


class Connection:
    """A client connection to a supervisor's control socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._reader = LineReader()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError as exc:
            self._sock.close()
            raise SupervisorUnavailable(
                f"no supervisor answers at {path} ({exc.strerror or exc}): start a simulated "
                "processor with `amplink boot FIRMWARE`"
            ) from None

    def request(self, message: Mapping[str, Any], what: str) -> dict[str, Any]:
        """Send one request and return the validated response (``ok`` true).

        A refusal becomes the typed error of its errno, its message prefixed with ``what``.
        """
        deadline = time.monotonic() + self.timeout
        try:
            self._sock.sendall(encode(message))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
                data = self._sock.recv(65536)
                if not data:
                    raise SupervisorUnavailable(f"the supervisor at {self.path} closed the "
                                                f"connection without answering "
                                                f"{message.get('op')!r}")
                lines = self._reader.feed(data)
                if lines:
                    break
        except TimeoutError:
            raise SupervisorError(f"the supervisor at {self.path} did not answer "
                                  f"{message.get('op')!r} within {self.timeout} s") from None
        except ValueError as exc:
            raise SupervisorError(f"the supervisor at {self.path} sent a malformed answer: "
                                  f"{exc}") from None
        except OSError as exc:
            if isinstance(exc, SupervisorError):
                raise
            raise SupervisorUnavailable(f"lost the supervisor at {self.path}: {exc}") from None
        if len(lines) != 1:
            raise SupervisorError(f"the supervisor at {self.path} answered one request twice")
        return check_response(lines[0], what, self.path)

    def close(self) -> None:
        """Close the connection (for a ``dev_open`` connection: the release)."""
        self._sock.close()

    def release(self) -> None:
        """Close a ``dev_open`` connection and wait (up to the timeout) until the
        supervisor has released the device, as close(2) of ``/dev/remoteprocN`` returns
        after the kernel's release: the supervisor closes its end when it is done."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + self.timeout
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(4096):
                    break
        except OSError:
            pass  # the supervisor is gone: nothing is held any more
        finally:
            self._sock.close()


def check_response(line: bytes, what: str, path: Path) -> dict[str, Any]:
    """Validate a response line: its content if ``ok``, else the typed error of its errno."""
    try:
        response = decode(line)
        ok = field(response, "ok", bool)
        if not ok:
            err = field(response, "errno", int)
            text = field(response, "error", str)[:MAX_ERROR_TEXT]
    except ValueError as exc:
        raise SupervisorError(f"the supervisor at {path} sent a malformed answer: {exc}") from None
    if ok:
        return response
    if err not in errno.errorcode:
        err = errno.EIO
    device = _DEVICE.search(what)
    if device is None or not text.startswith(device.group()):
        text = f"{what}: {text}"  # the answer does not say what it is about
    raise error_from_errno(err, text)


def request(root: Path, message: Mapping[str, Any], what: str,
            timeout: float) -> dict[str, Any]:
    """One request on a fresh connection to the supervisor of ``root``."""
    conn = Connection(root / CONTROL_SOCKET, timeout)
    try:
        return conn.request(message, what)
    finally:
        conn.close()
