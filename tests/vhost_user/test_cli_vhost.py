"""``amplink vhost-user``: serves until interrupted, a fresh run per front end."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from frontend_kit import FakeFrontEnd, wait_until


def test_cli_serves_front_ends_until_interrupted(tmp_path: Path) -> None:
    sock = tmp_path / "rpmsg.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "amplink.cli", "vhost-user", "amplink.firmware.examples.echo",
         "--socket", str(sock)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(sock.exists, 20), "the socket never appeared"
        for _ in range(2):
            fe = FakeFrontEnd(sock)
            try:
                ep = fe.boot().open_channel("rpmsg-echo", timeout=5)
                ep.send(b"over the command line")
                assert ep.recv(timeout=2) == b"over the command line"
                fe.shut_down()
            finally:
                fe.close()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out  # Ctrl-C, as every command
    assert "2 connections, 2 firmware runs, 0 protocol errors, 0 firmware errors" in out, out
    assert not sock.exists()
