"""``amplink send``, ``listen``, ``top`` and ``ls`` on a processor held by the service, in
subprocesses against an isolated AMPLINK_RUNTIME_DIR (a real detached supervisor and
firmware): the README's two-terminal example, as commands."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rig_kit import ECHO, wait_for

from amplink.transports.service import connect_link, service_status

TIMEOUT = 20.0


def amplink(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amplink.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def ok(*args: str) -> str:
    done = amplink(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def start_listening(*args: str) -> subprocess.Popen[str]:
    """``amplink listen ARGS`` in a session of its own, once it listens (its first line)."""
    proc = subprocess.Popen([sys.executable, "-m", "amplink.cli", "listen", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + TIMEOUT
    while "Ctrl-C stops" not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"listen never listened: {seen}"
        if select.select([proc.stdout], [], [], left)[0]:
            seen += proc.stdout.readline()
    return proc


def watchers(runtime: Path) -> int:
    return sum(len(c.watchers) for p in service_status(runtime) for link in p.links
               for c in link.channels)


@pytest.fixture
def echo(runtime: Path) -> str:
    out = ok("boot", ECHO, "--name", "dsp")
    assert out.startswith("dsp (remoteproc0): running")
    return "dsp"


def test_two_terminals_listen_and_send(runtime: Path, echo: str) -> None:
    listener = start_listening(echo, "rpmsg-echo", "--count", "3")
    try:
        assert wait_for(lambda: watchers(runtime) == 1, TIMEOUT)
        sent = ok("send", echo, "rpmsg-echo", "hello", "--reply").splitlines()
        assert sent[0].startswith(f"{echo}: sent 5 B on rpmsg-echo (0x")
        assert sent[1] == "[reply] 5 B: hello"
        ok("send", echo, "rpmsg-echo", "--hex", "00 01 ff")  # its echo may come too late
        out, err = listener.communicate(timeout=TIMEOUT)
        assert listener.returncode == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("[1] 5 B from client 0x") and lines[0].endswith(": hello")
        assert lines[1] == "[2] 5 B from processor 0x400: hello"
        assert lines[2].startswith("[3] 3 B from client 0x") and lines[2].endswith(":")
        assert lines[3].split() == ["0000", "00", "01", "ff", "..."]
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()


def test_listen_stops_on_ctrl_c_with_130(runtime: Path, echo: str) -> None:
    listener = start_listening(echo, "rpmsg-echo")
    try:
        os.killpg(listener.pid, signal.SIGINT)
        _, err = listener.communicate(timeout=TIMEOUT)
        assert listener.returncode == 130, err
        assert "Traceback" not in err
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    assert wait_for(lambda: watchers(runtime) == 0, TIMEOUT)  # it let go


def test_send_with_a_reply_as_json(runtime: Path, echo: str, tmp_path: Path) -> None:
    result = json.loads(ok("send", echo, "rpmsg-echo", "hi", "--reply", "--json"))
    assert result["processor"] == echo and result["bytes"] == 2
    assert result["reply"] == {"src": result["dst"], "bytes": 2, "text": "hi"}
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(20)))
    result = json.loads(ok("send", echo, "rpmsg-echo", f"@{payload}", "--reply", "--json"))
    assert result["reply"] == {"src": result["dst"], "bytes": 20, "hex": bytes(range(20)).hex()}
    out = ok("send", echo, "rpmsg-echo", "@@at", "--reply")
    assert out.splitlines()[1] == "[reply] 3 B: @at"


def test_send_refusals_are_one_line_errors(runtime: Path, echo: str) -> None:
    done = amplink("send", echo, "rpmsg-echo", "x" * 497)
    assert done.returncode == 1 and "exceeds the MTU" in done.stderr
    done = amplink("send", echo, "rpmsg-echo", "--hex", "zz")
    assert done.returncode == 1 and "not hex bytes" in done.stderr
    done = amplink("send", "nonesuch", "rpmsg-echo", "x")
    assert done.returncode == 1 and "no processor called 'nonesuch'" in done.stderr
    done = amplink("send", echo, "rpmsg-none", "x", "--timeout", "0.3")
    assert done.returncode == 1 and "rpmsg-none" in done.stderr
    for done in (amplink("send", echo, "rpmsg-echo", "x"), amplink("ls")):
        assert "Traceback" not in done.stderr


def test_without_a_service(runtime: Path) -> None:
    done = amplink("send", "dsp", "rpmsg-echo", "x")
    assert done.returncode == 1 and "no amplink service answers" in done.stderr
    assert "--sysfs" in done.stderr  # the other kind of target
    done = amplink("top", "--count", "1", "--interval", "0.1")
    assert done.returncode == 1 and "no amplink service answers" in done.stderr


def test_ls_shows_channels_endpoints_and_clients(runtime: Path, echo: str) -> None:
    listener = start_listening(echo, "rpmsg-echo")
    try:
        assert wait_for(lambda: watchers(runtime) == 1, TIMEOUT)
        text = ok("ls")
        assert "channel rpmsg-echo: remote endpoint 0x400" in text
        assert "endpoint 0x" in text and "watched by client" in text
        assert f"(uid {os.getuid()}) pid {listener.pid}" in text
        (item,) = json.loads(ok("ls", "--json"))
        assert item["name"] == echo and item["state"] == "running"
        (channel,) = item["links"][0]["channels"]
        assert channel["name"] == "rpmsg-echo" and len(channel["endpoints"]) == 1
        (client,) = item["clients"]
        assert client["pid"] == listener.pid and client["watch"] is True
    finally:
        os.killpg(listener.pid, signal.SIGINT)
        listener.communicate(timeout=TIMEOUT)


def test_top_reports_rates_drops_and_held_buffers(runtime: Path, echo: str) -> None:
    top = subprocess.Popen([sys.executable, "-m", "amplink.cli", "top", echo, "--interval",
                            "0.5", "--count", "2", "--json"], stdout=subprocess.PIPE, text=True)
    link = connect_link(echo, root=runtime)
    try:
        ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
        while top.poll() is None:  # traffic while top samples
            ep.send(b"tick")
            ep.recv(timeout=TIMEOUT)
        out, _ = top.communicate(timeout=TIMEOUT)
    finally:
        link.close()
        if top.poll() is None:
            top.kill()
    assert top.returncode == 0
    samples = [json.loads(line) for line in out.splitlines()]
    assert len(samples) == 2
    rows = [row for sample in samples for row in sample["channels"]]
    assert all(row["channel"] == "rpmsg-echo" and row["processor"] == echo for row in rows)
    assert sum(row["to_per_s"] for row in rows) > 0
    assert {"dropped", "refused", "held", "max_held", "queued"} <= rows[0].keys()
    text = ok("top", "--count", "1", "--interval", "0.1")
    assert text.splitlines()[1].split()[:4] == ["PROCESSOR", "CHANNEL", "TO/S", "FROM/S"]
