"""Fixtures of the service tests: an isolated runtime directory, a supervisor served in a
thread; the platform test helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# the fake kernel and process helpers live with the platform tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platforms"))

from rig_kit import children_of, process_alive, wait_for  # noqa: E402
from served_kit import Cli, Served, serve  # noqa: E402

from amplink.platforms.linux import SupervisorUnavailable  # noqa: E402
from amplink.service.supervisor import (  # noqa: E402
    ENV_RUNTIME_DIR,
    connect_supervisor,
    read_pid_file,
)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated $AMPLINK_RUNTIME_DIR; a supervisor left in it is stopped, and no process
    it started may outlive the test."""
    root = tmp_path / "rt"
    monkeypatch.setenv(ENV_RUNTIME_DIR, str(root))
    yield root
    pid = read_pid_file(root)
    if pid is None or not process_alive(pid):
        return
    children = children_of(pid)
    client = connect_supervisor(root)
    if client is not None:
        with contextlib.suppress(SupervisorUnavailable):  # it may be on its way out
            for dev in client.tree.devices():
                client.remove(dev)
    if not wait_for(lambda: not process_alive(pid), 10.0):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the supervisor {pid} did not exit with its last processor")
    assert wait_for(lambda: not any(process_alive(c) for c in children), 5.0)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs ``amplink`` commands in this process: ``cli(...)``, ``cli.ok(...)``."""
    return Cli(capsys)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = serve(tmp_path)
    try:
        yield s
    finally:
        s.stop()
