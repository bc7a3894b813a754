"""Shared fixtures: real ELF firmware built with gcc, shared memory and carveout maps.

The firmware (see rproc_firmware.py) is built once per session, as ELF64 and as ELF32.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rproc_firmware import CARVEOUT_LEN, DATA_DA, GCC, TEXT_PA, Firmware, build_firmware

from amplink.memory.region import SharedRegion
from amplink.remoteproc.addrmap import DeviceAddressMap


@pytest.fixture(scope="session")
def _firmware_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("gcc is not installed: the real-ELF firmware fixtures need it")
    return tmp_path_factory.mktemp("firmware")


@pytest.fixture(scope="session")
def firmware64(_firmware_dir: Path) -> Firmware:
    """The test firmware as ELF64 (x86-64)."""
    return build_firmware(_firmware_dir, 64)


@pytest.fixture(scope="session")
def firmware32(_firmware_dir: Path) -> Firmware:
    """The test firmware as ELF32 (i386, gcc -m32)."""
    return build_firmware(_firmware_dir, 32)


@pytest.fixture(params=[32, 64], ids=["elf32", "elf64"])
def firmware(request: pytest.FixtureRequest) -> Firmware:
    """The test firmware, once per ELF class."""
    return request.getfixturevalue(f"firmware{request.param}")


@pytest.fixture
def region() -> Iterator[SharedRegion]:
    """Two carveouts' worth of shared memory, filled with 0xAA to expose unwritten bytes."""
    with SharedRegion.memfd(2 * CARVEOUT_LEN, "rproc-test") as r:
        r.fill(0, r.size, 0xAA)
        yield r


@pytest.fixture
def addr_map(region: SharedRegion) -> DeviceAddressMap:
    """The firmware's text carveout at region offset 0 and its data carveout after it."""
    m = DeviceAddressMap()
    m.add(TEXT_PA, CARVEOUT_LEN, region, 0, name="text")
    m.add(DATA_DA, CARVEOUT_LEN, region, CARVEOUT_LEN, name="data")
    return m
