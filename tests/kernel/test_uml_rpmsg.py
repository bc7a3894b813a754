"""A real Linux kernel (User-Mode Linux 6.1) talks rpmsg to amplink firmware over vhost-user.

The guest's unmodified virtio_rpmsg_bus, rpmsg_ns, rpmsg_char and rpmsg_ctrl drive
amplink's vhost-user device, which runs amplink.firmware.examples.raw_echo; inside the
guest, amplink's own rpmsg_char backend (amplink.transports.rpmsg_char) talks to it
through /dev/rpmsg_ctrl0 and /dev/rpmsgN. The guest script (guest/boot.py) reports each
check as a JSON line on the console.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from uml_kit import Guest

from amplink.platforms.vhost_user import VhostUserServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
from pair_cases import CASES  # noqa: E402

BOOT_TIMEOUT = 60.0


def _boot(kernel: Path, server: VhostUserServer, tmp_path: Path, checks: list[str]) -> Guest:
    return Guest(kernel, server.path, checks, tmp_path)


CHECKS = ["channel", "emsgsize", "ctrl_endpoints", "flow_control", "rtt"]
CONFORMANCE = [f"conformance:{name}" for name in CASES]


def test_amplink_rpmsg_char_backend_against_the_real_kernel(
        uml_kernel: Path, vhost_server: VhostUserServer, tmp_path: Path) -> None:
    t0 = time.monotonic()
    guest = _boot(uml_kernel, vhost_server, tmp_path, CHECKS + CONFORMANCE)
    try:
        results = guest.results(BOOT_TIMEOUT)
        assert guest.wait(10) == 0
    finally:
        guest.kill()
    elapsed = time.monotonic() - t0
    console = guest.console()
    for name in CHECKS + CONFORMANCE:
        assert name in results, f"no result for {name}; console:\n{console}"
        assert results[name]["ok"], f"{name}: {results[name]}; console:\n{console}"
    channel = results["channel"]
    assert channel["path"].startswith("/dev/rpmsg") and channel["ctrl_ioctls"] == 0
    assert channel["channels"] == [{"name": "rpmsg-raw", "dst": channel["dst"],
                                    "src": channel["src"]}]
    assert results["emsgsize"]["kernel"] == results["emsgsize"]["link"] == 90  # EMSGSIZE
    assert results["flow_control"]["errnos"] == [95, 95]  # EOPNOTSUPP (6.1 says EINVAL)
    assert results["conformance:every_size"]["sizes"] == 497  # 0..496 bytes
    assert results["conformance:many_endpoints"]["endpoints"] == 64
    assert results["conformance:pair_addressing"]["tx_ready"] is False  # no EPOLLOUT in 6.1
    rtt = results["rtt"]
    print(f"\nUML guest -> kernel rpmsg_char -> amplink firmware -> back, through amplink's "
          f"rpmsg_char backend: {rtt['round_trips']} round trips of {rtt['payload']} B, "
          f"p50 {rtt['p50_us']} us, p99 {rtt['p99_us']} us; boot + {len(results)} checks + "
          f"power-off {elapsed:.1f} s")
    # No scheduling-while-atomic splat (the workqueue patch) and no FPU failure (XSAVE size).
    assert "BUG:" not in console and "ptrace set fp regs failed" not in console, console
    stats = vhost_server.statistics()
    assert stats.protocol_errors == 0, stats.last_error
    assert stats.runs_started == 1 and stats.firmware_errors == 0


def test_device_removal_is_link_down_in_the_guest(
        uml_kernel: Path, vhost_server: VhostUserServer, tmp_path: Path) -> None:
    guest = _boot(uml_kernel, vhost_server, tmp_path, ["channel", "removal"])
    try:
        first = guest.next_event(BOOT_TIMEOUT)
        assert first.get("check") == "channel" and first["ok"], (first, guest.console())
        assert guest.next_event(10) == {"event": "await_removal"}
        time.sleep(0.2)  # the guest is blocked in recv() by now
        vhost_server.shutdown()  # closes the connection: the guest's device goes away
        results = guest.results(30)
        assert guest.wait(10) == 0
    finally:
        guest.kill()
    removal = results["removal"]
    assert removal["ok"], (removal, guest.console())
    assert removal["errno"] == 32 and removal["send_errno"] == 32  # EPIPE, kept
    assert "went away" in removal["error"] and removal["ctrl_gone"]
    assert vhost_server.statistics().protocol_errors == 0


def test_each_boot_is_a_fresh_device_run(
        uml_kernel: Path, vhost_server: VhostUserServer, tmp_path: Path) -> None:
    for i in range(2):
        workdir = tmp_path / f"boot{i}"
        workdir.mkdir()
        guest = Guest(uml_kernel, vhost_server.path, ["channel", "emsgsize"], workdir)
        try:
            results = guest.results(BOOT_TIMEOUT)
            assert guest.wait(10) == 0
        finally:
            guest.kill()
        assert results["channel"]["ok"] and results["emsgsize"]["ok"], guest.console()
    deadline = time.monotonic() + 5
    while vhost_server.statistics().connections < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = vhost_server.statistics()
    assert (stats.connections, stats.runs_started, stats.protocol_errors) == (2, 2, 0)
