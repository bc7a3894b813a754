"""Ctrl-C in a terminal: the firmware does not get the terminal's signal, the host stops it
in order, and every command exits with 130 without a traceback.

The terminal sends SIGINT to its whole foreground process group; the tests start the
command in a new session and signal that group the same way.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ECHO = "amplink.firmware.examples.echo"
TIMEOUT = 30.0


def _run_until(argv: list[str], ready: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # raw reads: a buffered readline would hide lines from select
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while ready.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, f"never printed {ready!r}: {seen!r}"
            if select.select([fd], [], [], left)[0]:
                seen += os.read(fd, 65536)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # the command: its firmware follows the lifeline
        proc.wait()
        raise
    return proc, seen.decode()


def _interrupt(argv: list[str], ready: str) -> tuple[int, str, str]:
    proc, seen = _run_until(argv, ready)
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: the whole foreground group
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, seen + out.decode(), err.decode()


def amplink(*args: str) -> list[str]:
    return [sys.executable, "-m", "amplink.cli", *args]


def _clean(err: str) -> None:
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


@pytest.mark.timeout(60)
def test_run_stops_the_firmware_in_order_and_exits_130() -> None:
    status, out, err = _interrupt(amplink("run", ECHO), "Ctrl-C stops it")
    _clean(err)
    assert status == 130, out + err
    assert "stopped (firmware exit status 0)" in out  # it left by itself, not by SIGINT


@pytest.mark.timeout(60)
def test_run_keembay_lists_the_vpus_channels_and_exits_130() -> None:
    status, out, err = _interrupt(
        amplink("run", "--keembay", "amplink.firmware.examples.vpu_service"), "channel 12 (GP)")
    _clean(err)
    assert status == 130, out + err
    assert "channel 0 (HS)" in out and "stopped (firmware exit status 0)" in out


@pytest.mark.timeout(60)
def test_ping_until_ctrl_c_prints_its_statistics_and_exits_130() -> None:
    status, out, err = _interrupt(
        amplink("ping", ECHO, "-s", "rpmsg-echo", "-c", "0", "-i", "0.05"), "seq=3 ")
    _clean(err)
    assert status == 130, out + err
    assert "0% loss" in out and "rtt min/avg/max/mdev" in out


@pytest.mark.timeout(60)
def test_demo_exits_130() -> None:
    status, out, err = _interrupt(amplink("demo", "--count", "200000"), "echo:")
    _clean(err)
    assert status == 130, out + err
    assert "stopped, firmware exit status 0" in out


HOST = """
import os
from amplink import SimProcessor
with SimProcessor("amplink.firmware.examples.echo") as proc:
    ep = proc.link.open_channel("rpmsg-echo", timeout=10)
    try:
        os.write(1, b"ready\\n")  # one write, inside the try: Ctrl-C may come at once
        proc.link.run()
    except KeyboardInterrupt:
        ep.send(b"goodbye")
        print(ep.recv(timeout=5).decode(), flush=True)
"""


@pytest.mark.timeout(60)
def test_a_host_that_catches_ctrl_c_can_still_say_goodbye(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    status, out, err = _interrupt([sys.executable, str(script)], "ready")
    assert status == 0, out + err
    assert "goodbye" in out.splitlines(), out + err
    _clean(err)
