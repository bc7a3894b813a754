"""A real kernel's processor held by the service: its link is /dev/rpmsg* (rpmsg_char,
channels discovered in sysfs), here against the fake kernel of the transport tests.
Several clients share one channel, each with an endpoint device of its own, which a
single /dev/rpmsgN cannot give them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from common_kit import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transports"))
from fake_rpmsg_char import FakeOps, FakeRpmsgKernel  # noqa: E402

from amplink.errors import LinkDown  # noqa: E402
from amplink.platforms.linux import LinuxRemoteProc, SysfsAttributes  # noqa: E402
from amplink.remoteproc.api import RemoteProcessor  # noqa: E402
from amplink.service.supervisor import (  # noqa: E402
    PID_FILE,
    Supervisor,
    prepare_runtime_dir,
)
from amplink.transports.rpmsg_char import link as rpmsg_char_link_module  # noqa: E402
from amplink.transports.service import connect_link, service_status  # noqa: E402

TIMEOUT = 5.0


def test_a_kernels_processor_is_served_to_several_clients(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeRpmsgKernel(tmp_path / "kernel")
    monkeypatch.setattr(rpmsg_char_link_module, "OsDeviceOps", lambda: FakeOps(kernel))
    tree = SysfsAttributes(kernel.sys / "class" / "remoteproc", debug_root=None,
                           dev_root=kernel.dev)
    made: list[LinuxRemoteProc] = []

    def hardware(name: str, firmware: str) -> RemoteProcessor:
        made.append(LinuxRemoteProc.find(name, tree))
        return made[-1]

    root = prepare_runtime_dir(tmp_path / "rt")
    supervisor = Supervisor(root, hardware, idle_grace=60, tick=0.05)
    thread = threading.Thread(target=supervisor.serve, daemon=True)
    thread.start()
    links = []
    try:
        assert wait_for(lambda: (root / PID_FILE).exists(), TIMEOUT)
        supervisor.add_processor("m4", "fw.elf")  # as its owner: it runs already
        kernel.announce("rpmsg-echo", 0x401)  # found in sysfs, not announced in band
        assert wait_for(lambda: any(c.name == "rpmsg-echo" for p in service_status(root)
                                    for lk in p.links for c in lk.channels), TIMEOUT)
        links = [connect_link("m4", root=root, timeout=TIMEOUT) for _ in range(2)]
        eps = [link.open_channel("rpmsg-echo", timeout=TIMEOUT) for link in links]
        assert eps[0].addr != eps[1].addr  # two endpoint devices, one per client
        for i, ep in enumerate(eps):
            ep.send(f"client {i}".encode())
        for i, ep in enumerate(eps):
            assert ep.recv(timeout=TIMEOUT) == f"client {i}".encode()
        kernel.remove_device()  # the processor stops: every client hears of it
        for ep in eps:
            with pytest.raises(LinkDown):
                ep.recv(timeout=TIMEOUT)
    finally:
        for link in links:
            link.close()
        supervisor.stop()
        thread.join(TIMEOUT * 2)
        for rproc in made:
            rproc.close()
    assert not thread.is_alive()
    assert kernel.open_endpoints() == []  # every endpoint device the service opened
