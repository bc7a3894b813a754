"""A real Linux kernel (User-Mode Linux 6.1) talks rpmsg to amplink firmware over vhost-user.

The guest's unmodified virtio_rpmsg_bus, rpmsg_ns, rpmsg_char and rpmsg_ctrl drive
amplink's vhost-user device, which runs amplink.firmware.examples.raw_echo. The guest
script (guest/boot.py) reports each check as a JSON line on the console.
"""

from __future__ import annotations

import time
from pathlib import Path

from uml_kit import Guest

from amplink.platforms.vhost_user import VhostUserServer

BOOT_TIMEOUT = 60.0


def _boot(kernel: Path, server: VhostUserServer, tmp_path: Path, checks: list[str]) -> Guest:
    return Guest(kernel, server.path, checks, tmp_path)


def test_guest_kernel_rpmsg_stack_against_amplink_firmware(
        uml_kernel: Path, vhost_server: VhostUserServer, tmp_path: Path) -> None:
    t0 = time.monotonic()
    guest = _boot(uml_kernel, vhost_server, tmp_path,
                  ["channel", "echo_sizes", "emsgsize", "ctrl_endpoints", "rtt"])
    try:
        results = guest.results(BOOT_TIMEOUT)
        assert guest.wait(10) == 0
    finally:
        guest.kill()
    elapsed = time.monotonic() - t0
    console = guest.console()
    for name in ("channel", "echo_sizes", "emsgsize", "ctrl_endpoints", "rtt"):
        assert name in results, f"no result for {name}; console:\n{console}"
        assert results[name]["ok"], f"{name}: {results[name]}; console:\n{console}"
    assert results["channel"]["path"].startswith("/dev/rpmsg")
    assert results["echo_sizes"]["sizes"] == 497  # 0..496 bytes, each echoed intact
    assert results["emsgsize"]["errno"] == 90  # EMSGSIZE from the kernel, 497 bytes
    rtt = results["rtt"]
    print(f"\nUML guest -> kernel rpmsg -> amplink firmware -> back: {rtt['round_trips']} "
          f"round trips of {rtt['payload']} B, p50 {rtt['p50_us']} us, p99 {rtt['p99_us']} us; "
          f"boot + checks + power-off {elapsed:.1f} s")
    # No scheduling-while-atomic splat (the workqueue patch) and no FPU failure (XSAVE size).
    assert "BUG:" not in console and "ptrace set fp regs failed" not in console, console
    stats = vhost_server.statistics()
    assert stats.protocol_errors == 0, stats.last_error
    assert stats.runs_started == 1 and stats.firmware_errors == 0


def test_device_removal_is_seen_by_the_guest(
        uml_kernel: Path, vhost_server: VhostUserServer, tmp_path: Path) -> None:
    guest = _boot(uml_kernel, vhost_server, tmp_path, ["channel", "removal"])
    try:
        first = guest.next_event(BOOT_TIMEOUT)
        assert first.get("check") == "channel" and first["ok"], (first, guest.console())
        assert guest.next_event(10) == {"event": "await_removal"}
        vhost_server.shutdown()  # closes the connection: the guest's device goes away
        results = guest.results(30)
        assert guest.wait(10) == 0
    finally:
        guest.kill()
    removal = results["removal"]
    assert removal["ok"], (removal, guest.console())
    assert removal["ctrl_gone"] and removal["write_errno"] is not None
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
