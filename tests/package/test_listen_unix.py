"""listen_unix: the path appears only once the socket listens (servers of vhost-user, the
endpoint service and the OpenAMP profile use it)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from amplink import _unix
from amplink._unix import listen_unix


def test_the_path_appears_only_once_the_socket_listens(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.sock"
    seen = []
    rename = os.rename

    def checked_rename(src: str, dst: str) -> None:
        # the moment before the path appears: nothing there yet, and the socket answers
        seen.append(os.path.exists(dst))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(src)
        finally:
            probe.close()
        rename(src, dst)

    monkeypatch.setattr(_unix.os, "rename", checked_rename)
    listener = listen_unix(path, 4)
    try:
        assert seen == [False]
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert sorted(os.listdir(tmp_path)) == ["s.sock"]  # no temporary name left
        probed, _ = listener.accept()  # the probe's connection, queued first
        probed.close()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        server, _ = listener.accept()
        client.sendall(b"x")
        assert server.recv(1) == b"x"
        server.close()
        client.close()
    finally:
        listener.close()


def test_kind_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "p.sock"
    listener = listen_unix(path, 4, kind=socket.SOCK_SEQPACKET, mode=0o600)
    try:
        assert listener.type == socket.SOCK_SEQPACKET
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        listener.close()


def test_a_failure_leaves_no_file_and_no_socket(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_chmod(path: str, mode: int) -> None:
        raise PermissionError(1, "refused", path)

    monkeypatch.setattr(_unix.os, "chmod", failing_chmod)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(PermissionError):
        listen_unix(tmp_path / "f.sock", 4, mode=0o600)
    assert os.listdir(tmp_path) == []
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_path_too_long_for_a_temporary_name_is_bound_directly(tmp_path: Path) -> None:
    room = _unix._MAX_SOCKET_PATH - len(os.fsencode(tmp_path)) - 1
    path = tmp_path / ("n" * room)  # exactly the longest address
    listener = listen_unix(path, 1)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert os.listdir(tmp_path) == [path.name]
    finally:
        listener.close()
