"""The amplink command on simulated RTKit co-processors: boot --rtkit, ls, state, trace
(the syslog), crash, crashlog, recovery, stop; against a real detached supervisor in an
isolated runtime directory."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platforms"))

from rig_kit import children_of, process_alive, wait_for  # noqa: E402

from amplink.cli import main as amplink_main  # noqa: E402
from amplink.platforms.linux import RprocControlError, SupervisorUnavailable  # noqa: E402
from amplink.service.supervisor import (  # noqa: E402
    ENV_RUNTIME_DIR,
    connect_supervisor,
    ensure_supervisor,
    read_pid_file,
)

ECHO = "amplink.firmware.examples.rtkit_echo"
SIM_ECHO = "amplink.firmware.examples.echo"
TIMEOUT = 10.0


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated $AMPLINK_RUNTIME_DIR; nothing started in it may outlive the test."""
    root = tmp_path / "rt"
    monkeypatch.setenv(ENV_RUNTIME_DIR, str(root))
    yield root
    pid = read_pid_file(root)
    if pid is None or not process_alive(pid):
        return
    children = children_of(pid)
    client = connect_supervisor(root)
    if client is not None:
        with contextlib.suppress(SupervisorUnavailable):
            for dev in client.tree.devices():
                client.remove(dev)
    if not wait_for(lambda: not process_alive(pid), TIMEOUT):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the supervisor {pid} did not exit with its last processor")
    assert wait_for(lambda: not any(process_alive(c) for c in children), 5.0)


class Cli:
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


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def test_an_rtkit_coprocessor_from_the_command_line(runtime: Path, cli: Cli) -> None:
    out = cli.ok("boot", "--rtkit", ECHO)
    assert out.startswith(f"rtkit0 (remoteproc0): running {ECHO}")
    listing = cli.ok("ls").splitlines()
    assert listing[1].split() == ["rtkit0", "remoteproc0", "running", "enabled", "disabled",
                                  ECHO]
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
