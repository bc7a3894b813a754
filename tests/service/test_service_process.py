"""The endpoint service with real processes: a detached supervisor with simulated
processors, clients in other processes. A restart of the service is LinkDown for its
clients and a clean stop of its processors; a client killed without a word releases
everything; ``on_exit = "keep"`` leaves processors that outlive the service running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from common_kit import Outcome
from loop_kit import loop_service
from rig_kit import ECHO, children_of, process_alive, wait_for

from amplink.errors import LinkDown
from amplink.platforms.linux import LinuxRemoteProc
from amplink.remoteproc.states import RprocState
from amplink.service.policy import Policy
from amplink.service.supervisor import ensure_supervisor
from amplink.transports.service import connect_link, service_status

TIMEOUT = 10.0

#: a client that opens rpmsg-echo (watching), says so, and waits to be killed
HOLDER = r"""
import sys, time
from amplink.transports.service import connect_link
link = connect_link(sys.argv[2], root=sys.argv[1], watch=True)
eps = [link.open_channel("rpmsg-echo", timeout=10) for _ in range(3)]
print(" ".join(hex(ep.addr) for ep in eps), flush=True)
time.sleep(60)
"""


def booted(root: Path) -> tuple[int, str]:
    """The supervisor's pid and the name of a booted echo processor."""
    client = ensure_supervisor(root)
    dev, name = client.add(ECHO)
    LinuxRemoteProc(dev, client.tree).boot()
    return client.hello(), name


def test_a_service_restart_is_link_down_and_a_clean_stop(runtime: Path) -> None:
    pid, name = booted(runtime)
    firmware = children_of(pid)
    link = connect_link(name, root=runtime)
    try:
        ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
        ep.send(b"before")
        assert ep.recv(timeout=TIMEOUT) == b"before"
        waiting = Outcome(lambda: ep.recv(timeout=TIMEOUT))
        time.sleep(0.1)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        assert waiting.join(TIMEOUT)
        assert isinstance(waiting.error, LinkDown), waiting.error
        assert waiting.ended is not None and waiting.ended - t0 < 5.0
        with pytest.raises(LinkDown, match="service"):
            ep.send(b"after")
    finally:
        link.close()
    assert wait_for(lambda: not process_alive(pid), TIMEOUT)
    assert not any(process_alive(p) for p in firmware)
    # a new service: clients reconnect as to a recovered processor
    _, name = booted(runtime)
    link = connect_link(name, root=runtime)
    try:
        ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
        ep.send(b"again")
        assert ep.recv(timeout=TIMEOUT) == b"again"
    finally:
        link.close()


def test_a_killed_client_releases_everything(runtime: Path) -> None:
    _, name = booted(runtime)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(runtime), name],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        addrs = holder.stdout.readline().split()
        assert len(addrs) == 3
        (processor,) = service_status(runtime)
        (channel,) = processor.links[0].channels
        assert sorted(hex(e.addr) for e in channel.endpoints) == sorted(addrs)
        assert len(channel.watchers) == 1 and len(processor.clients) == 1
        holder.kill()
        holder.wait(TIMEOUT)

        def released() -> bool:
            (p,) = service_status(runtime)
            return not p.clients and not p.links[0].channels[0].endpoints
        assert wait_for(released, TIMEOUT)
        assert not service_status(runtime)[0].links[0].channels[0].watchers
        # the addresses are free again
        link = connect_link(name, root=runtime)
        try:
            channel = link.wait_channel("rpmsg-echo", TIMEOUT)
            ep = link.create_endpoint("rpmsg-echo", addr=int(addrs[0], 16), dst=channel.dst)
            ep.send(b"mine now")
            assert ep.recv(timeout=TIMEOUT) == b"mine now"
        finally:
            link.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_on_exit_keep_leaves_processors_that_outlive_the_service(tmp_path: Path) -> None:
    keep = Policy(os.getuid(), on_exit="keep", source="test")
    with loop_service(tmp_path, policy=keep) as service:
        kept = service.boot("hardware")
    assert kept.state is RprocState.RUNNING  # not shut down: it lives on its own
    kept.shutdown()  # (the test's own cleanup)
    with loop_service(tmp_path, root=tmp_path / "rt2") as service:
        stopped = service.boot("hardware")
    assert stopped.state is RprocState.OFFLINE  # the default: a clean stop


def test_simulated_processors_are_stopped_even_when_kept(runtime: Path) -> None:
    policy_file = runtime.parent / "keep.toml"
    policy_file.write_text('[service]\non_exit = "keep"\n')
    env = {**os.environ, "AMPLINK_POLICY": str(policy_file)}
    supervisor = subprocess.Popen([sys.executable, "-m", "amplink.service", "--root",
                                   str(runtime)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (runtime / ".control").exists(), TIMEOUT)
        pid, _ = booted(runtime)
        assert pid == supervisor.pid
        firmware = children_of(pid)
        assert firmware
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=TIMEOUT)
        assert supervisor.returncode == 0, err
        assert "policy: " + str(policy_file) in err
        assert not any(process_alive(p) for p in firmware)
        assert "remoteproc0: removed" in err  # stopped in order, not orphaned
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
