"""Fixtures of the real-kernel tests: the kernel, and amplink's device serving firmware."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from uml_kit import kernel_or_skip

from amplink.platforms.vhost_user import VhostUserServer

FIRMWARE = "amplink.firmware.examples.raw_echo"


@pytest.fixture(scope="session")
def uml_kernel() -> Path:
    return kernel_or_skip()


@pytest.fixture
def vhost_server(tmp_path: Path) -> Iterator[VhostUserServer]:
    """amplink's vhost-user device serving the raw echo firmware, in a thread."""
    server = VhostUserServer(tmp_path / "rpmsg.sock", FIRMWARE, name="uml-peer")
    thread = threading.Thread(target=server.serve_forever, name="vhost-user server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.close()
        assert not thread.is_alive(), "the vhost-user server did not stop"
