"""The amplink command on simulated RTKit co-processors: boot --rtkit, ls, state, trace
(the syslog), crash, crashlog, recovery, stop; against a real detached supervisor in an
isolated runtime directory."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from rig_kit import children_of, process_alive, wait_for
from served_kit import Cli

from amplink.platforms.linux import RprocControlError
from amplink.service.supervisor import ensure_supervisor, read_pid_file
from amplink.transports.service import connect_link

ECHO = "amplink.firmware.examples.rtkit_echo"
SIM_ECHO = "amplink.firmware.examples.echo"
TIMEOUT = 10.0


def test_an_rtkit_coprocessor_from_the_command_line(runtime: Path, cli: Cli) -> None:
    out = cli.ok("boot", "--rtkit", ECHO)
    assert out.startswith(f"rtkit0 (remoteproc0): running {ECHO}")
    listing = cli.ok("ls").splitlines()
    assert listing[1].split() == ["rtkit0", "remoteproc0", "rtkit", "running", "enabled",
                                  "disabled", ECHO]
    assert cli.ok("state", "rtkit0") == "running\n"
    assert wait_for(lambda: "echo ready on endpoint 0x20" in cli.ok("trace", "rtkit0"),
                    TIMEOUT)
    assert cli.ok("crashlog", "rtkit0") == "rtkit0 (remoteproc0) has not crashed\n"

    supervisor = read_pid_file(runtime)
    assert supervisor is not None
    firmware = children_of(supervisor)
    assert cli.ok("crash", "rtkit0").startswith("rtkit0 (remoteproc0): crash reported")
    assert wait_for(lambda: cli.ok("state", "rtkit0") == "running\n"
                    and children_of(supervisor) - firmware, TIMEOUT)
    report = cli.ok("crashlog", "rtkit0")
    assert report.startswith("RTKit crashlog: version 1")
    assert "Message (id=0x0): crash requested by the host" in report
    assert "Mailbox history" in report and "Exception taken from EL1h" in report
    assert "crashes: 1, last: fatal error: RTKit crashlog: crash requested by the host" in (
        cli.ok("ls"))
    # the syslog goes on across the restart
    assert wait_for(lambda: cli.ok("trace", "rtkit0").count("echo ready") == 2, TIMEOUT)

    assert cli.ok("recovery", "rtkit0", "disabled") == "disabled\n"
    cli.ok("crash", "rtkit0")
    assert wait_for(lambda: cli.ok("state", "rtkit0") == "crashed\n", TIMEOUT)
    assert cli.ok("recovery", "rtkit0", "recover") == "rtkit0 (remoteproc0): running\n"

    firmware = children_of(supervisor)
    assert cli.ok("stop", "rtkit0") == "rtkit0 (remoteproc0): stopped and removed\n"
    assert wait_for(lambda: not process_alive(supervisor), TIMEOUT)
    assert not any(process_alive(p) for p in firmware)


def test_rtkit_and_rpmsg_processors_side_by_side(runtime: Path, cli: Cli) -> None:
    cli.ok("boot", SIM_ECHO, "--name", "s0")
    cli.ok("boot", "--rtkit", ECHO, "--name", "fw0")
    assert cli.ok("state", "fw0") == "running\n"
    status, _, err = cli("crashlog", "s0")
    assert status == 1 and "keeps no crashlog (only RTKit co-processors do)" in err
    status, _, err = cli("boot", "--rtkit", "amplink.firmware.examples.no_such_firmware")
    assert status == 1 and "ModuleNotFoundError" in err
    assert "no_such_firmware" not in cli.ok("ls")  # a processor that never ran is not kept
    client = ensure_supervisor(runtime)
    with pytest.raises(RprocControlError) as info:
        client.add(ECHO, "x", kind="bogus")
    assert info.value.errno == errno.EINVAL and "kind 'bogus'" in str(info.value)


def test_rtkit_needs_the_simulator(tmp_path: Path, cli: Cli) -> None:
    tree = tmp_path / "sysfs"
    tree.mkdir()
    status, _, err = cli("boot", "--rtkit", ECHO, "--sysfs", str(tree))
    assert status == 1 and "--rtkit boots a simulated co-processor" in err


def test_send_and_listen_on_an_rtkit_channel_through_the_service(runtime: Path,
                                                                 cli: Cli) -> None:
    """An RTKit endpoint through the service: 8-byte messages, one client at a time holds
    an endpoint number, a message of another length is refused without costing the
    service (it serves on)."""
    cli.ok("boot", "--rtkit", ECHO)
    reply = cli.ok("send", "--hex", "--reply", "rtkit0", "rtkit-0x20", "0102030405060708")
    assert "[reply] 8 B:\n  0000  01 02 03 04 05 06 07 08 " in reply
    status, _, err = cli("send", "rtkit0", "rtkit-0x20", "abc")
    assert status == 1 and "shorter than the 8 bytes" in err
    status, _, err = cli("send", "rtkit0", "rtkit-0x20", "abcdefghi")
    assert status == 1 and "exceeds the MTU of 8" in err

    link = connect_link("rtkit0", root=runtime)
    try:
        ep = link.open_channel("rtkit-0x20", timeout=TIMEOUT)
        status, _, err = cli("send", "rtkit0", "rtkit-0x20", "abcdefgh")
        assert status == 1 and "rtkit-0x20 is held by another client" in err
        assert err.count("[Errno") <= 1  # the service's answer does not repeat its errno
        ep.send(b"12345678", timeout=TIMEOUT)
        assert ep.recv(timeout=TIMEOUT) == b"12345678"
        # a client that skips its own check: the service refuses the message, and serves on
        link.min_payload = 0
        ep.send(b"abc", timeout=TIMEOUT)
        assert wait_for(lambda: link.poll() >= 0 and link.backend.refused == 1, TIMEOUT)
        assert "shorter than the 8 bytes" in link.backend.last_refusal
        ep.send(b"ABCDEFGH", timeout=TIMEOUT)
        assert ep.recv(timeout=TIMEOUT) == b"ABCDEFGH"
    finally:
        link.close()
    assert cli.ok("send", "--reply", "rtkit0", "rtkit-0x20", "abcdefgh").endswith(
        "abcdefgh\n")
