"""Failures of the OpenAMP profile: clear, typed and quick (every timeout is a parameter)."""

from __future__ import annotations

import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from openamp_kit import EXPECTED_TABLE, STATUS, FakeOpenAmpHost, accept, listen, shm

from amplink import LinkDown, RemoteProtocolError
from amplink.platforms.openamp import (
    OpenAmpConfig,
    OpenAmpLink,
    PeerTimeout,
    StaleSharedMemory,
)

QUICK = 0.3  # the timeout the tests give; each failure must come within QUICK + SLACK
SLACK = 2.0


def stale_table(config: OpenAmpConfig) -> None:
    """What a dead run leaves: its table with DRIVER_OK, and a socket file nobody serves."""
    with shm(config) as region:
        table = bytearray(EXPECTED_TABLE)
        table[STATUS] = 0x04
        region.write(0, table)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(config.socket_path)


@pytest.mark.parametrize("role", ["host", "remote"])
def test_client_refuses_a_dead_runs_table(config: OpenAmpConfig, role: str) -> None:
    stale_table(config)
    t0 = time.monotonic()
    with pytest.raises(StaleSharedMemory, match="earlier run.*DRIVER_OK.*Start the server"):
        OpenAmpLink.open(role, server=False, config=config, timeout=QUICK)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < QUICK + SLACK


@pytest.mark.parametrize("role", ["host", "remote"])
def test_client_without_server(config: OpenAmpConfig, role: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(PeerTimeout, match="no server accepted.*no socket file") as info:
        OpenAmpLink.open(role, server=False, config=config, timeout=QUICK)  # type: ignore[arg-type]
    assert not isinstance(info.value, StaleSharedMemory)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - t0 < QUICK + SLACK


@pytest.mark.parametrize("role", ["host", "remote"])
def test_server_without_client(config: OpenAmpConfig, role: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(PeerTimeout, match="no client connected"):
        OpenAmpLink.open(role, server=True, config=config, timeout=QUICK)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < QUICK + SLACK
    assert not os.path.exists(config.socket_path)  # the server removed its socket file
    with shm(config) as region:
        assert region.read(0, 88) == EXPECTED_TABLE  # written before listening


def test_host_that_never_sets_driver_ok(config: OpenAmpConfig) -> None:
    """The remote waits for DRIVER_OK only as long as it is told."""
    with shm(config) as region:
        region.write(0, EXPECTED_TABLE)
    with listen(config.socket_path) as listener:
        t0 = time.monotonic()
        with pytest.raises(PeerTimeout, match="did not set DRIVER_OK.*status 0x00"):
            OpenAmpLink.open("remote", server=False, config=config, timeout=QUICK)
        assert time.monotonic() - t0 < QUICK + SLACK
        accept(listener).close()


def test_host_hangs_up_before_driver_ok(config: OpenAmpConfig) -> None:
    with shm(config) as region:
        region.write(0, EXPECTED_TABLE)
    with listen(config.socket_path) as listener, ThreadPoolExecutor(1) as pool:
        future = pool.submit(OpenAmpLink.open, "remote", server=False, config=config, timeout=5)
        accept(listener).close()
        with pytest.raises(LinkDown, match="before setting DRIVER_OK"):
            future.result(timeout=5)


def test_host_refuses_a_vdev_someone_else_drives(config: OpenAmpConfig) -> None:
    region = shm(config)
    table = bytearray(EXPECTED_TABLE)
    table[STATUS] = 0x04
    region.write(0, table)
    with listen(config.socket_path) as listener:
        with pytest.raises(RemoteProtocolError, match="status.*0x04, not 0.*--shm"):
            OpenAmpLink.open("host", server=False, config=config, timeout=5)
        FakeOpenAmpHost(region, accept(listener)).close()


def _table_with(offset: int, fmt: str, value: int) -> bytes:
    table = bytearray(EXPECTED_TABLE)
    struct.pack_into(fmt, table, offset, value)
    return bytes(table)


BAD_TABLES = [  # (id, table, message, roles that must refuse it)
    ("version", _table_with(0x00, "<I", 2), "only version 1", ("host", "remote")),
    ("zeros", bytes(88), "only version 1", ("host", "remote")),
    ("not-rpmsg", _table_with(0x18, "<I", 5), "no rpmsg vdev", ("host", "remote")),
    ("outside", _table_with(0x30, "<I", 0x7F000),
     "vring 0 at 0x7f000.*outside the shared memory", ("host", "remote")),
    ("misaligned", _table_with(0x30, "<I", 0x4004), "not 16-byte aligned", ("host", "remote")),
    ("rings-overlap", _table_with(0x38, "<I", 512), "vring 0 at 0x4000.*overlaps vring 1",
     ("host", "remote")),
    ("bad-num", _table_with(0x4C, "<I", 3), "power of two", ("host", "remote")),
    # the buffers are the host's: only the host checks a ring against them
    ("over-buffers", _table_with(0x44, "<I", 0x10000),
     "vring 1 at 0x10000.*overlaps the RX buffers", ("host",)),
]


@pytest.mark.parametrize("role, table, message", [
    pytest.param(role, table, message, id=f"{role}-{name}")
    for name, table, message, roles in BAD_TABLES for role in roles
])
def test_client_checks_the_table(config: OpenAmpConfig, role: str, table: bytes,
                                 message: str) -> None:
    with shm(config) as region:
        region.write(0, table)
    with listen(config.socket_path) as listener:
        with pytest.raises(RemoteProtocolError, match=message):
            OpenAmpLink.open(role, server=False, config=config, timeout=5)  # type: ignore[arg-type]
        accept(listener).close()


def test_server_replaces_a_stale_socket_but_not_other_files(config: OpenAmpConfig) -> None:
    with open(config.socket_path, "w") as f:
        f.write("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        OpenAmpLink.open("host", server=True, config=config, timeout=QUICK)
    os.unlink(config.socket_path)
    stale_table(config)
    with pytest.raises(PeerTimeout, match="no client connected"):  # bound despite the stale file
        OpenAmpLink.open("host", server=True, config=config, timeout=QUICK)


@pytest.mark.parametrize("change, message", [
    ({"vring1_da": 0x5000}, "overlaps"),
    ({"rx_buffers": 0x7F000}, "outside the shared memory"),
    ({"socket_path": "/tmp/" + "x" * 120}, "sun_path"),
    ({"shm_name": "a/b"}, "one path component"),
    ({"vring_num": 100}, "power of two"),
    ({"vring0_da": 0x4008}, "multiple of 16"),
    ({"buf_size": 16}, "buf_size"),
])
def test_config_is_checked(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpenAmpConfig(**change)  # type: ignore[arg-type]
