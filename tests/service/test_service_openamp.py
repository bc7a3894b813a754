"""An OpenAMP-profile peer held by the service: its link is served to clients like a
simulated processor's (the peer here is amplink's remote role, in this process)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from common_kit import Outcome, wait_for

from amplink import Link
from amplink.errors import EndpointClosed, InvalidArgument, LinkDown
from amplink.platforms.linux import LinuxRemoteProc
from amplink.platforms.openamp import DEMO_SERVICE, OpenAmpConfig, OpenAmpLink, serve_echo
from amplink.platforms.openamp.rproc import OpenAmpRemoteProc, config_from_spec
from amplink.remoteproc.states import RprocState
from amplink.service.supervisor import PID_FILE, Supervisor, SupervisorClient, prepare_runtime_dir
from amplink.transports.service import connect_link

TIMEOUT = 10.0


@pytest.fixture
def config() -> Iterator[OpenAmpConfig]:
    key = f"amplink-svc-{uuid.uuid4().hex[:12]}"
    config = OpenAmpConfig(shm_name=f"{key}.shm", socket_path=f"/tmp/{key}.sock")
    try:
        yield config
    finally:
        Path(config.shm_path).unlink(missing_ok=True)
        Path(config.socket_path).unlink(missing_ok=True)


def _down(link: Link) -> bool:
    try:
        link.poll()
    except LinkDown:
        return True
    return False


def test_peer_specs() -> None:
    assert config_from_spec("openamp:") == OpenAmpConfig()
    spec = config_from_spec("openamp:mine.shm:/tmp/mine.sock")
    assert (spec.shm_name, spec.socket_path) == ("mine.shm", "/tmp/mine.sock")
    for bad in ("echo.py", "openamp:a/b", "openamp:x:" + "s" * 200):
        with pytest.raises(InvalidArgument):
            config_from_spec(bad)
    peer = OpenAmpRemoteProc("openamp:", name="p")
    assert peer.state is RprocState.OFFLINE and peer.links == []
    peer.firmware = "openamp:other.shm"
    assert peer.firmware == "openamp:other.shm"


def test_an_openamp_peer_is_served_like_any_processor(tmp_path: Path,
                                                      config: OpenAmpConfig) -> None:
    root = prepare_runtime_dir(tmp_path / "rt")
    supervisor = Supervisor(root, idle_grace=60, tick=0.05)  # the default factory
    thread = threading.Thread(target=supervisor.serve, daemon=True)
    thread.start()
    remote: OpenAmpLink | None = None
    try:
        assert wait_for(lambda: (root / PID_FILE).exists(), TIMEOUT)
        control = SupervisorClient(root, timeout=TIMEOUT)
        dev, name = control.add(f"openamp:{config.shm_name}:{config.socket_path}", "peer")
        assert control.kind(dev) == "openamp"  # added as "sim", served as the peer it is
        rproc = LinuxRemoteProc(dev, control.tree)
        booting = Outcome(rproc.boot)  # waits for the peer to connect
        remote = OpenAmpLink.open("remote", server=False, config=config, timeout=TIMEOUT)
        echo = remote.create_service(DEMO_SERVICE)
        echoing = Outcome(lambda: serve_echo(echo))
        assert booting.join(TIMEOUT) and booting.error is None, booting.error
        assert rproc.state is RprocState.RUNNING
        links = [connect_link(name, root=root, timeout=TIMEOUT) for _ in range(2)]
        try:
            eps = [link.open_channel(DEMO_SERVICE, timeout=TIMEOUT) for link in links]
            for i, ep in enumerate(eps):
                ep.send(f"client {i}".encode())
            for i, ep in enumerate(eps):
                assert ep.recv(timeout=TIMEOUT) == f"client {i}".encode()
            waiting = Outcome(lambda: eps[0].recv(timeout=TIMEOUT))
            remote.close()  # the peer program ends (in order): every client hears of it
            remote = None
            assert waiting.join(TIMEOUT) and isinstance(waiting.error, EndpointClosed)
            assert "removed by the peer" in str(waiting.error)  # its end was announced
            for link in links:  # the link is down: the next call that looks says so
                assert wait_for(lambda lk=link: _down(lk), TIMEOUT)
            assert wait_for(lambda: rproc.state is RprocState.CRASHED, TIMEOUT)
            assert echoing.join(TIMEOUT)
        finally:
            for link in links:
                link.close()
    finally:
        if remote is not None:
            remote.close()
        supervisor.stop()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
