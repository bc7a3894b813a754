"""amplink host <-> amplink remote over the OpenAMP profile, in two processes (the CLI).

Each test has its own shared memory name and socket path (the ``config`` fixture
removes both); every process is waited for with a timeout and killed at teardown.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from openamp_kit import EXPECTED_TABLE, GFEATURES, STATUS, shm, wait_until

from amplink import EndpointClosed
from amplink.platforms.openamp import DEMO_SERVICE, EchoRun, OpenAmpConfig, OpenAmpLink
from amplink.platforms.openamp.echo import SHUTDOWN_MSG

PEER_TIMEOUT = "15"  # each process's --timeout: generous, only a failure waits for it
PROCESS_TIMEOUT = 30.0
VRING1_USED_IDX = 0xA002

Start = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def start(config: OpenAmpConfig) -> Iterator[Start]:
    """``start(role, server=..., args=())`` runs ``amplink openamp ROLE`` on this profile."""
    procs: list[subprocess.Popen[str]] = []

    def run(role: str, *, server: bool, args: Sequence[str] = ()) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "amplink.cli", "openamp", role,
                "--server" if server else "--client", "--shm", config.shm_name,
                "--socket", config.socket_path, "--timeout", PEER_TIMEOUT, *args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        return proc

    try:
        yield run
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=PROCESS_TIMEOUT)


def finish(proc: subprocess.Popen[str], timeout: float = PROCESS_TIMEOUT
           ) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} did not finish within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def check_echo_run(host: subprocess.Popen[str], remote: subprocess.Popen[str],
                   count: int = 480) -> None:
    code, out, err = finish(host)
    assert code == 0, f"host failed:\n{out}\n{err}"
    assert f"echo: {count} messages" in out and "errors: 0" in out, out
    assert "openamp host: OK" in out
    code, rout, rerr = finish(remote)
    assert code == 0, f"remote failed:\n{rout}\n{rerr}"
    assert f"echoed {count} messages; the host destroyed its endpoint" in rout


@pytest.mark.parametrize("host_server", [True, False], ids=["host-server", "remote-server"])
def test_echo_demo_two_processes(config: OpenAmpConfig, start: Start, host_server: bool) -> None:
    remote = start("remote", server=not host_server)
    host = start("host", server=host_server)
    check_echo_run(host, remote)
    assert not os.path.exists(config.socket_path)  # the server removed its socket file


def test_echo_demo_polling(start: Start) -> None:
    remote = start("remote", server=True, args=["--poll"])
    host = start("host", server=False, args=["--poll", "--count", "300"])
    check_echo_run(host, remote, 300)


def _wait_for_traffic(config: OpenAmpConfig, messages: int = 200) -> None:
    """Until the remote has returned ``messages`` of the host's buffers on vring 1."""
    with shm(config) as region:
        wait_until(lambda: region.read_u16(VRING1_USED_IDX) > messages, 15, "echo traffic")


def test_remote_dies_mid_run(config: OpenAmpConfig, start: Start) -> None:
    remote = start("remote", server=True)
    host = start("host", server=False, args=["--count", "10000000"])
    _wait_for_traffic(config)
    remote.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    code, out, err = finish(host, timeout=10)
    assert code == 1, out
    assert time.monotonic() - t0 < 5
    assert re.search(r"link down after \d+ of 10000000 messages: the peer (closed|reset) the "
                     "notification socket", err), err


def test_host_dies_mid_run(config: OpenAmpConfig, start: Start) -> None:
    remote = start("remote", server=False)
    host = start("host", server=True, args=["--count", "10000000"])
    _wait_for_traffic(config)
    host.send_signal(signal.SIGKILL)
    code, out, err = finish(remote, timeout=10)
    assert code == 1, out
    assert "link down" in err, err


def _leave_a_dead_run(config: OpenAmpConfig) -> None:
    """Shared memory and socket file as a crashed run leaves them, rings full of garbage."""
    with shm(config) as region:
        region.write(0, EXPECTED_TABLE)
        region.write_u32(GFEATURES, 1)
        region.write_u8(STATUS, 0x04)
        region.write(0x4000, os.urandom(0xC000 - 0x4000))  # both vrings: any indices
        region.write(0x10000, os.urandom(0x40000))  # the buffers too
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(config.socket_path)


@pytest.mark.parametrize("host_server", [True, False], ids=["host-server", "remote-server"])
def test_stale_shared_memory_is_cleaned(config: OpenAmpConfig, start: Start,
                                        host_server: bool) -> None:
    _leave_a_dead_run(config)
    remote = start("remote", server=not host_server)
    host = start("host", server=host_server)
    check_echo_run(host, remote)


def test_client_refuses_a_dead_run(config: OpenAmpConfig, start: Start) -> None:
    _leave_a_dead_run(config)
    t0 = time.monotonic()
    code, out, err = finish(start("host", server=False, args=["--timeout", "0.5"]))
    assert code == 1
    assert time.monotonic() - t0 < 10
    assert "earlier run" in err and "Start the server side" in err, err


def test_shutdown_message_stops_the_remote(config: OpenAmpConfig, start: Start) -> None:
    remote = start("remote", server=True)
    with OpenAmpLink.open("host", server=False, config=config, timeout=15) as link:
        ep = link.create_service(DEMO_SERVICE)
        link.wait_peer(ep, 15)
        run = EchoRun(ep, 10)
        run.run(20)
        assert (run.sent, run.errors) == (20, 0)
        ep.send(struct.pack("<II", SHUTDOWN_MSG, 0))
        code, out, err = finish(remote)
        assert code == 0, err
        assert "echoed 20 messages; the host sent the shutdown message" in out
        with pytest.raises(EndpointClosed, match="removed by the peer"):
            ep.recv(5)  # the remote destroyed its endpoint (at 0x400) as it closed
