"""A supervisor served in a thread of the test process, over fake hardware (fast)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fake_sysfs import FakeHardware
from rig_kit import wait_for

from amplink.cli import main as amplink_main
from amplink.platforms.linux.protocol import CONTROL_SOCKET
from amplink.service.supervisor import PID_FILE, Supervisor, SupervisorClient, prepare_runtime_dir

TIMEOUT = 5.0


class Cli:
    """Runs ``amplink`` commands in this process and returns (status, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        status = amplink_main(list(argv))
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *argv: str) -> str:
        status, out, err = self(*argv)
        assert status == 0, (argv, out, err)
        return out


@dataclass
class Served:
    root: Path
    supervisor: Supervisor
    thread: threading.Thread
    made: list[FakeHardware] = field(default_factory=list)

    @property
    def client(self) -> SupervisorClient:
        return SupervisorClient(self.root, timeout=TIMEOUT)

    def connect(self) -> socket.socket:
        """A raw connection to the control socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(self.root / CONTROL_SOCKET))
        return sock

    def stop(self) -> None:
        self.supervisor.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def serve(tmp_path: Path, *, idle_grace: float = 30.0) -> Served:
    """A supervisor whose processors are FakeHardware with firmware "fw.elf" available."""
    firmware_dir = tmp_path / "firmware"
    firmware_dir.mkdir(exist_ok=True)
    (firmware_dir / "fw.elf").write_bytes(b"\x7fELF")
    root = prepare_runtime_dir(tmp_path / "rt")
    made: list[FakeHardware] = []

    def factory(name: str, firmware: str) -> FakeHardware:
        made.append(FakeHardware(name, firmware, firmware_dir))
        return made[-1]

    supervisor = Supervisor(root, factory, idle_grace=idle_grace, tick=0.02)
    thread = threading.Thread(target=supervisor.serve, daemon=True)
    thread.start()
    assert wait_for(lambda: (root / PID_FILE).exists(), TIMEOUT)
    return Served(root, supervisor, thread, made)
