"""OpenAMP's echo demo (both sides) over the profile, host and remote in one process."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from amplink import Endpoint
from amplink.platforms.openamp import (
    DEMO_SERVICE,
    EchoRun,
    EchoServed,
    OpenAmpConfig,
    OpenAmpLink,
    serve_echo,
)
from amplink.platforms.openamp.echo import SHUTDOWN_MSG, check_echo, demo_payload, is_shutdown


@contextmanager
def link_pair(config: OpenAmpConfig, *, host_server: bool
              ) -> Iterator[tuple[OpenAmpLink, OpenAmpLink]]:
    """A host and a remote link over the profile in this process (one opens in a thread)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(OpenAmpLink.open, "remote", server=not host_server, config=config,
                             timeout=5)
        host = OpenAmpLink.open("host", server=host_server, config=config, timeout=5)
        try:
            remote = future.result(timeout=5)
        except BaseException:
            host.close()
            raise
    try:
        yield host, remote
    finally:
        host.close()
        remote.close()


@contextmanager
def served(remote: OpenAmpLink, serve: Callable[[Endpoint], EchoServed]
           ) -> Iterator[list[EchoServed]]:
    """Run ``serve`` on the remote's demo endpoint in a thread; its result lands in the list."""
    ep = remote.create_service(DEMO_SERVICE)
    result: list[EchoServed] = []
    thread = threading.Thread(target=lambda: result.append(serve(ep)), daemon=True)
    thread.start()
    try:
        yield result
    finally:
        thread.join(10)
        assert not thread.is_alive()


def test_payload_checks() -> None:
    assert demo_payload(3, 2) == struct.pack("<QQ", 3, 2) + b"\xa5\xa5"
    assert check_echo(demo_payload(7, 480), 7, 480) is None
    assert "echo of 17 B" in str(check_echo(demo_payload(7, 1), 7, 2))
    assert "num 8" in str(check_echo(demo_payload(8, 2), 7, 2))
    bad = bytearray(demo_payload(7, 5))
    bad[-1] = 0
    assert "1 of 5 data bytes" in str(check_echo(bytes(bad), 7, 5))
    assert is_shutdown(struct.pack("<I", SHUTDOWN_MSG)) and not is_shutdown(b"\x5a\xa5")


@pytest.mark.parametrize("host_server", [True, False], ids=["host-server", "remote-server"])
def test_echo_sweep_wraps_and_remote_counts(config: OpenAmpConfig, host_server: bool) -> None:
    with link_pair(config, host_server=host_server) as (host, remote):
        with served(remote, lambda ep: serve_echo(ep, count=500)) as result:
            ep = host.create_service(DEMO_SERVICE)
            assert host.wait_peer(ep, 5) == 0x400
            run = EchoRun(ep, 5)
            run.run(500)  # sizes 1..480, then 1..20 again
        assert (run.sent, run.errors, len(run.rtts)) == (500, 0, 500)
        assert result == [EchoServed(500, "count")]


def test_wrong_echoes_are_counted(config: OpenAmpConfig) -> None:
    def corrupting(ep: Endpoint) -> EchoServed:  # every second echo loses its last byte
        for n in range(10):
            payload, src = ep.recvfrom(5)
            ep.sendto(payload[:-1] + b"\0" if n % 2 else payload, src)
        return EchoServed(10, "count")

    with link_pair(config, host_server=True) as (host, remote):
        with served(remote, corrupting):
            ep = host.create_service(DEMO_SERVICE)
            host.wait_peer(ep, 5)
            run = EchoRun(ep, 5)
            run.run(10)
        assert (run.sent, run.errors) == (10, 5)
        assert run.problems[0] == "message 1: 1 of 2 data bytes are not 0xA5"
