"""The supervisor as a detached process: one per runtime directory, clean exits on SIGTERM,
nothing left running after SIGKILL, stale files cleaned by the next start."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from common_kit import Outcome
from rig_kit import ECHO, children_of, process_alive, wait_for
from served_kit import serve

from amplink.paths import ENV_RUNTIME_DIR, runtime_dir
from amplink.platforms.linux import LinuxRemoteProc, SupervisorError
from amplink.platforms.linux.protocol import CONTROL_SOCKET
from amplink.remoteproc.states import RprocState
from amplink.service.supervisor import (
    PID_FILE,
    ensure_supervisor,
    prepare_runtime_dir,
    read_pid_file,
)

TIMEOUT = 10.0


def test_concurrent_starts_make_one_supervisor(runtime: Path) -> None:
    starts = [Outcome(lambda: ensure_supervisor(runtime).hello()) for _ in range(3)]
    assert all(s.join(TIMEOUT) for s in starts)
    errors = [s.error for s in starts if s.error is not None]
    pids = [s.result for s in starts if s.error is None]
    assert not errors and len(pids) == 3 and len(set(pids)) == 1
    # detached: not our child, and in a session of its own (no signal from our terminal)
    assert pids[0] not in children_of(os.getpid()) and os.getsid(pids[0]) == pids[0]
    client = ensure_supervisor(runtime)
    dev, _ = client.add(ECHO)
    client.remove(dev)  # the last processor: it exits
    assert wait_for(lambda: not process_alive(pids[0]), TIMEOUT)


def test_the_control_socket_appears_once_it_is_listened_on(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A client that finds the control socket is served: one refused there (bound, not yet
    listened on) would start a second supervisor, which waited for the first one's lock
    and took over when it stopped."""
    seen: list[bool] = []
    control = tmp_path / "rt" / CONTROL_SOCKET

    class Watched(socket.socket):
        def listen(self, *args: int) -> None:
            if self.family == socket.AF_UNIX and self.type == socket.SOCK_STREAM:
                seen.append(control.exists())
            super().listen(*args)

    monkeypatch.setattr(socket, "socket", Watched)
    served = serve(tmp_path)
    try:
        assert seen == [False]
        assert control.exists() and served.client.hello() == os.getpid()
    finally:
        served.stop()


def test_sigterm_stops_every_processor(runtime: Path) -> None:
    client = ensure_supervisor(runtime)
    pid = client.hello()
    dev, _ = client.add(ECHO)
    LinuxRemoteProc(dev, client.tree).boot()
    firmware = children_of(pid)
    assert len(firmware) == 1
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not process_alive(pid), TIMEOUT)
    assert not any(process_alive(p) for p in firmware)
    assert not (runtime / PID_FILE).exists() and not (runtime / CONTROL_SOCKET).exists()
    assert not (runtime / dev).exists()


def test_after_sigkill_nothing_runs_on_and_the_next_start_cleans_up(runtime: Path) -> None:
    client = ensure_supervisor(runtime)
    pid = client.hello()
    dev, _ = client.add(ECHO)
    rproc = LinuxRemoteProc(dev, client.tree)
    rproc.boot()
    firmware = children_of(pid)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not process_alive(pid), TIMEOUT)
    # the firmware sees its lifeline close and exits on its own
    assert wait_for(lambda: not any(process_alive(p) for p in firmware), TIMEOUT)
    assert (runtime / CONTROL_SOCKET).exists() and (runtime / dev).exists()  # stale
    client = ensure_supervisor(runtime)
    assert client.hello() != pid
    assert client.tree.devices() == [] and not (runtime / dev).exists()
    dev, _ = client.add(ECHO)
    assert LinuxRemoteProc(dev, client.tree).state is RprocState.OFFLINE
    client.remove(dev)
    assert wait_for(lambda: read_pid_file(runtime) is None, TIMEOUT)


def test_runtime_dir_defaults_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_RUNTIME_DIR, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime_dir() == tmp_path / "amplink"
    # a session without its XDG_RUNTIME_DIR: not created here (the login manager's job)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "gone"))
    assert runtime_dir() == Path(f"/tmp/amplink-{os.getuid()}")
    assert not (tmp_path / "gone").exists()
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime_dir() == Path(f"/tmp/amplink-{os.getuid()}")
    monkeypatch.setenv(ENV_RUNTIME_DIR, str(tmp_path / "mine"))
    assert runtime_dir() == tmp_path / "mine"

    made = prepare_runtime_dir(tmp_path / "new")
    assert (made.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(SupervisorError, match="others can write"):
        prepare_runtime_dir(shared)
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(SupervisorError, match="not a directory"):
        prepare_runtime_dir(tmp_path / "link")
    with pytest.raises(SupervisorError, match="too long"):
        prepare_runtime_dir(tmp_path / ("x" * 120))
