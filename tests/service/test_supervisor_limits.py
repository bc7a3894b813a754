"""The supervisor under a connection flood: out of fds, too many clients, hostile answers.

A supervisor served in a thread of this process (fast); it holds every processor of the
user, so running out of a resource may cost a client its connection, never the supervisor.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rig_kit import wait_for
from served_kit import TIMEOUT, Served

from amplink.platforms.linux import SupervisorError
from amplink.platforms.linux.protocol import CONTROL_SOCKET, check_response, decode
from amplink.service.supervisor import (
    MAX_CLIENTS,
)

pytestmark = pytest.mark.timeout(60)

def hello(sock: socket.socket) -> dict:
    sock.sendall(b'{"op": "hello"}\n')
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "the supervisor closed the connection"
        data += chunk
    return json.loads(data)


@contextlib.contextmanager
def fds_exhausted() -> Iterator[Callable[[], None]]:
    """Every fd of this process in use (a low RLIMIT_NOFILE, filled up) until the end.

    Yields a function that fills the table again: a thread left by an earlier test may
    close an fd meanwhile.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []

    def fill() -> None:
        with pytest.raises(OSError) as info:  # noqa: PT012 - fill until it fails
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        assert info.value.errno == errno.EMFILE

    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, hard))
        fill()
        yield fill
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_running_out_of_fds_costs_no_processor(served: Served,
                                               caplog: pytest.LogCaptureFixture) -> None:
    client = served.client
    dev, _ = client.add("fw.elf")
    client.tree.write(dev, "state", "start")
    # Quiet first: each request's connection is closed by the supervisor once it reads the
    # EOF, and a close after the table is filled would hand the next accept a free fd.
    assert client.tree.read(dev, "state") == "running\n"
    assert wait_for(lambda: served.supervisor.connected_clients == 0, TIMEOUT)
    gc.collect()  # no finaliser of an earlier test's socket may free an fd meanwhile
    caplog.set_level(logging.WARNING, logger="amplink.service.supervisor")
    # Spares: a leftover thread may still free an fd between filling and the accept, and
    # then that client is served at once; the next one meets the full table.
    waiting = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    for sock in waiting:
        sock.settimeout(TIMEOUT)
    try:
        with fds_exhausted() as fill:
            for tried, sock in enumerate(waiting, 1):
                sock.connect(str(served.root / CONTROL_SOCKET))  # needs no new fd here
                assert wait_for(lambda n=tried: fill() or "cannot accept a client" in caplog.text
                                or served.supervisor.connected_clients >= n, TIMEOUT)
                if "cannot accept a client" in caplog.text:
                    break
            else:
                pytest.fail("every client was accepted although no fd was free")
            # it keeps trying (rate-limited log), without spinning or giving up
            time.sleep(0.3)
            assert served.thread.is_alive()
        for sock in waiting[:tried]:
            assert hello(sock)["ok"] is True  # the waiting client is served after all
        assert served.thread.is_alive()
        assert client.tree.read(dev, "state") == "running\n"
        assert caplog.text.count("cannot accept a client") == 1  # rate-limited
    finally:
        for sock in waiting:
            sock.close()


def test_clients_beyond_the_limit_are_refused_and_the_rest_served(served: Served) -> None:
    clients: list[socket.socket] = []
    try:
        for _ in range(MAX_CLIENTS):  # one by one: the listen backlog is short
            clients.append(served.connect())
            assert hello(clients[-1])["ok"] is True  # every one of them is accepted
        extra = served.connect()
        try:
            # refused: told why, then closed; the others are unaffected
            data = b""
            while chunk := extra.recv(65536):
                data += chunk
            refusal = decode(data.rstrip(b"\n"))
            assert refusal["ok"] is False and refusal["errno"] == errno.EAGAIN
        finally:
            extra.close()
        assert hello(clients[0])["ok"] is True
        clients.pop().close()
        # once one has gone, a new client is served again
        assert wait_for(lambda: _served_once(served), TIMEOUT)
        assert served.thread.is_alive()
    finally:
        for sock in clients:
            sock.close()


def _served_once(served: Served) -> bool:
    sock = served.connect()
    try:
        return hello(sock)["ok"] is True
    except (AssertionError, OSError):
        return False
    finally:
        sock.close()


def test_a_deeply_nested_answer_is_a_malformed_answer() -> None:
    for line in (b"[" * 100_000, b'{"ok": ' + b"[" * 100_000, b"{" * 100_000):
        with pytest.raises(ValueError, match="nested too deeply|not a JSON line"):
            decode(line)
        with pytest.raises(SupervisorError, match="malformed answer"):
            check_response(line, "remoteproc0", Path("/nowhere"))


def test_a_deeply_nested_request_gets_einval(served: Served) -> None:
    sock = served.connect()
    try:
        sock.sendall(b"[" * 100_000 + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        response = json.loads(data)
        assert response["ok"] is False and response["errno"] == errno.EINVAL
        assert hello(sock)["ok"] is True  # the connection lives on
    finally:
        sock.close()
