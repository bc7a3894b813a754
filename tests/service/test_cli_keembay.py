"""Simulated Keem Bay VPUs in the service: boot --keembay, their open channels served as
``kmb-N`` (found in the VPU's open-channel bitmap, as they come and go), one client at a
time per channel, send/listen and a Python client's link; against a real detached
supervisor in an isolated runtime directory."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from rig_kit import wait_for
from served_kit import Cli

from amplink.errors import EndpointClosed, LinkDown, MessageTooLarge
from amplink.transports.service import connect_link

ECHO = "amplink.firmware.examples.kmb_echo"
CHANNELS = str(Path(__file__).resolve().parents[1] / "firmware_fixtures" / "kmb_channels.py")
TIMEOUT = 10.0


def _channels(cli: Cli, name: str) -> list[str]:
    (processor,) = [p for p in json.loads(cli.ok("ls", "--json")) if p["name"] == name]
    return [c["name"] for link in processor["links"] for c in link["channels"]]


def test_send_and_listen_on_a_keembay_vpu(runtime: Path, cli: Cli) -> None:
    out = cli.ok("boot", "--keembay", ECHO)
    assert out.startswith(f"vpu0 (remoteproc0): running {ECHO}")
    assert cli.ok("ls").splitlines()[1].split()[:4] == ["vpu0", "remoteproc0", "keembay",
                                                        "running"]
    (item,) = json.loads(cli.ok("ls", "--json"))
    assert item["kind"] == "keembay"
    assert wait_for(lambda: {"kmb-0", "kmb-1", "kmb-10", "kmb-20", "kmb-30"}
                    <= set(_channels(cli, "vpu0")), TIMEOUT)
    assert cli.ok("send", "--reply", "vpu0", "kmb-0", "hello").endswith("[reply] 5 B: hello\n")
    assert cli.ok("send", "--reply", "vpu0", "kmb-10", "gp").endswith("[reply] 2 B: gp\n")
    status, _, err = cli("send", "vpu0", "kmb-0", "x" * 513)
    assert status == 1 and "exceeds the MTU of 512" in err

    link = connect_link("vpu0", root=runtime, timeout=TIMEOUT)
    try:
        control = link.open_channel("kmb-1", timeout=TIMEOUT)
        flood = link.open_channel("kmb-30", timeout=TIMEOUT)
        assert (control.addr, control.dst, flood.addr, flood.dst) == (1, 1, 30, 30)
        # a channel is both ends of its messages: one client at a time holds it
        status, _, err = cli("send", "vpu0", "kmb-1", "flood on")
        assert status == 1 and "kmb-1 is held by another client" in err
        # the VPU sends unasked (its flood), on a channel this client holds
        control.send(b"flood on", timeout=TIMEOUT)
        assert control.recv(timeout=TIMEOUT) == b"ok"
        assert flood.recv(timeout=TIMEOUT) == bytes(64)
        control.send(b"flood off", timeout=TIMEOUT)
        assert int.from_bytes(control.recv(timeout=TIMEOUT), "little") > 0  # the count
    finally:
        link.close()
    # the channels are free again once the client is gone
    assert cli.ok("send", "--reply", "vpu0", "kmb-1", "ping").endswith("[reply] 2 B: ok\n")
    assert cli.ok("stop", "vpu0") == "vpu0 (remoteproc0): stopped and removed\n"


def test_channels_come_and_go_with_the_vpu(runtime: Path, cli: Cli) -> None:
    """Channels the VPU opens later are announced to clients (found in its bitmap), one it
    closes is removed (a client's endpoint on it closes), and its crash is the link's end."""
    cli.ok("boot", "--keembay", CHANNELS)
    link = connect_link("vpu0", root=runtime, timeout=TIMEOUT)
    try:
        control = link.open_channel("kmb-0", timeout=TIMEOUT)
        control.send(b"open 12", timeout=TIMEOUT)
        assert control.recv(timeout=TIMEOUT) == b"ok"
        ep = link.open_channel("kmb-12", timeout=TIMEOUT)  # announced by the service
        ep.send(b"twelve", timeout=TIMEOUT)
        assert ep.recv(timeout=TIMEOUT) == b"twelve"
        with pytest.raises(MessageTooLarge, match="exceeds the MTU of 512"):
            ep.send(bytes(513), timeout=TIMEOUT)

        control.send(b"close 12", timeout=TIMEOUT)
        assert control.recv(timeout=TIMEOUT) == b"ok"
        with pytest.raises(EndpointClosed, match="kmb-12"):
            ep.recv(timeout=TIMEOUT)
        assert "kmb-12" not in _channels(cli, "vpu0")

        outcome: list[BaseException] = []

        def blocked() -> None:
            try:
                control.recv(timeout=TIMEOUT)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                outcome.append(exc)

        waiter = threading.Thread(target=blocked)
        waiter.start()
        cli.ok("recovery", "vpu0", "disabled")
        assert cli.ok("crash", "vpu0").startswith("vpu0 (remoteproc0): crash reported")
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], LinkDown), outcome
    finally:
        link.close()
    assert wait_for(lambda: cli.ok("state", "vpu0") == "crashed\n", TIMEOUT)
    cli.ok("stop", "vpu0")


def test_a_vpu_writing_its_whole_bitmap_costs_the_service_nothing(runtime: Path,
                                                                  cli: Cli) -> None:
    """The open-channel bitmap is the VPU's memory: a VPU that says every channel is open
    (then closes them) makes the service announce them and take them back, bounded by the
    1024 channels there are, and it serves on: the clients keep their channel, see the
    channels converge, and new clients are served."""
    cli.ok("boot", "--keembay", CHANNELS)
    link = connect_link("vpu0", root=runtime, timeout=TIMEOUT)
    try:
        control = link.open_channel("kmb-0", timeout=TIMEOUT)
        control.send(b"storm", timeout=TIMEOUT)
        link.wait_channel("kmb-1023", TIMEOUT)  # announced while the storm lasts
        assert control.recv(timeout=TIMEOUT) == b"ok"
        assert wait_for(lambda: [c.name for c in link.channels()] == ["kmb-0"], TIMEOUT)
        assert wait_for(lambda: _channels(cli, "vpu0") == ["kmb-0"], TIMEOUT)
        control.send(b"open 7", timeout=TIMEOUT)  # and channels come as they should
        assert control.recv(timeout=TIMEOUT) == b"ok"
        seven = link.open_channel("kmb-7", timeout=TIMEOUT)
        seven.send(b"still served", timeout=TIMEOUT)
        assert seven.recv(timeout=TIMEOUT) == b"still served"
    finally:
        link.close()
    assert cli.ok("send", "--reply", "vpu0", "kmb-0", "open 5").endswith("[reply] 2 B: ok\n")


def test_keembay_needs_the_simulator(tmp_path: Path, cli: Cli) -> None:
    tree = tmp_path / "sysfs"
    tree.mkdir()
    status, _, err = cli("boot", "--keembay", ECHO, "--sysfs", str(tree))
    assert status == 1 and "--keembay boots a simulated co-processor" in err
    with pytest.raises(SystemExit):  # argparse: one kind of co-processor at a time
        cli("boot", "--keembay", "--rtkit", ECHO)
