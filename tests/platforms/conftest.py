"""The rigs of the linux platform tests: one fake kernel tree, one live supervisor tree.

The same tests run against both: the fake kernel checks the platform code against the
kernel's documented semantics through files; the supervisor is a second, independent
path (a separate process, a socket, real firmware processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_sysfs import FakeRemoteprocKernel
from rig_kit import (
    ECHO,
    MISSING_MODULE,
    TRACE_FIRMWARE,
    Rig,
    children_of,
    process_alive,
    wait_for,
)
from trace_firmware import TRACE_LINE

from amplink.service.supervisor import PID_FILE, SupervisorClient, ensure_supervisor


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, SupervisorClient]]:
    """A live supervisor for this module; a processor "keeper" keeps it alive between tests."""
    root = tmp_path_factory.mktemp("rt")
    client = ensure_supervisor(root)
    pid = client.hello()
    keeper, _ = client.add(ECHO, "keeper")
    yield root, client
    children = children_of(pid)
    client.remove(keeper)  # the last processor: the supervisor exits
    assert wait_for(lambda: not process_alive(pid), 10.0), "the supervisor did not exit"
    assert not (root / PID_FILE).exists()
    assert wait_for(lambda: not any(process_alive(c) for c in children), 5.0), "leaked firmware"


@pytest.fixture(params=["fake", "supervisor"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    if request.param == "fake":
        kernel = FakeRemoteprocKernel(tmp_path)
        kernel.install("other.elf")
        dev, _ = kernel.add("dsp0", "fw.elf")
        yield Rig("fake", kernel.tree(), dev, "dsp0", "fw.elf", "other.elf", "missing.elf",
                  "fake firmware: up", kernel)
        assert kernel.open_devices == 0, "a /dev/remoteprocN was left open"
        return
    root, client = request.getfixturevalue("supervisor")
    dev, name = client.add(TRACE_FIRMWARE, "dut")
    try:
        yield Rig("supervisor", client.tree, dev, name, TRACE_FIRMWARE, ECHO, MISSING_MODULE,
                  TRACE_LINE)
    finally:
        client.remove(dev)
