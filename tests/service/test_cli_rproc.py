"""The remote-processor commands end to end, against an isolated AMPLINK_RUNTIME_DIR (a real
detached supervisor, real firmware processes) and, with --sysfs, against a fake kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fake_sysfs import FakeRemoteprocKernel
from rig_kit import ECHO, MISSING_MODULE, TRACE_FIRMWARE, children_of, process_alive, wait_for
from served_kit import Cli
from trace_firmware import TRACE_LINE

from amplink.cli import main as amplink_main
from amplink.cli import rproc as cli_rproc
from amplink.service.supervisor import PID_FILE, read_pid_file

TIMEOUT = 10.0


def test_boot_ls_state_crash_recover_stop(runtime: Path, cli: Cli) -> None:
    assert "no simulated processors" in cli.ok("ls")
    out = cli.ok("boot", ECHO)
    assert out.startswith("sim0 (remoteproc0): running amplink.firmware.examples.echo")
    supervisor = read_pid_file(runtime)
    assert supervisor is not None and process_alive(supervisor)
    assert (runtime / "remoteproc0" / "state").read_text() == "running\n"  # for cat
    assert wait_for(lambda: "channel rpmsg-echo" in cli.ok("ls"), TIMEOUT)
    listing = cli.ok("ls").splitlines()
    assert listing[0].split() == ["NAME", "DEVICE", "KIND", "STATE", "RECOVERY", "COREDUMP",
                                  "FIRMWARE"]
    assert listing[1].split() == ["sim0", "remoteproc0", "sim", "running", "enabled",
                                  "disabled", ECHO]
    assert "no local endpoint open" in listing[2]  # nobody opened rpmsg-echo on this side
    assert cli.ok("state", "sim0") == "running\n"

    firmware = children_of(supervisor)
    assert cli.ok("crash", "sim0").startswith("sim0 (remoteproc0): crash reported")
    # recovery is enabled: restarted, in the background (like the kernel's crash handler)
    assert wait_for(lambda: cli.ok("state", "sim0") == "running\n", TIMEOUT)
    assert wait_for(lambda: children_of(supervisor) - firmware, TIMEOUT)

    assert cli.ok("recovery", "sim0", "disabled") == "disabled\n"
    assert "now crashed" in cli.ok("crash", "sim0", "--reason", "watchdog")
    assert cli.ok("state", "sim0") == "crashed\n"
    status, _, err = cli("coredump", "sim0", "inline")
    assert status == 1 and "recover it first" in err
    listing = cli.ok("ls")
    assert "crashes: 2, last: watchdog: reported by the host" in listing, listing
    assert cli.ok("recovery", "sim0", "recover") == "sim0 (remoteproc0): running\n"
    assert cli.ok("coredump", "sim0", "inline") == "inline\n"
    assert cli.ok("recovery", "sim0") == "disabled\n"

    firmware = children_of(supervisor)
    assert cli.ok("stop", "sim0") == "sim0 (remoteproc0): stopped and removed\n"
    assert wait_for(lambda: not process_alive(supervisor), TIMEOUT), "the supervisor stayed"
    assert not (runtime / PID_FILE).exists()
    assert not any(process_alive(p) for p in firmware)
    assert "no simulated processors" in cli.ok("ls")
    status, _, err = cli("state", "sim0")
    assert status == 1 and "no simulated processor is running" in err


def test_boot_errors_leave_nothing_behind(runtime: Path, cli: Cli, tmp_path: Path) -> None:
    cli.ok("boot", ECHO, "--name", "two")
    status, _, err = cli("boot", ECHO, "--name", "two")
    assert status == 1 and "exists already" in err
    status, _, err = cli("boot", MISSING_MODULE)
    assert status == 1 and "no such module" in err
    status, _, err = cli("boot", str(tmp_path / "missing.py"))
    assert status == 1 and f"{tmp_path / 'missing.py'}: No such file" in err
    status, _, err = cli("boot", ECHO, "--name", "bad name")
    assert status == 1 and "letters, digits" in err
    assert [line.split()[0] for line in cli.ok("ls").splitlines()[1:]
            if not line.startswith(" ")] == ["two"]
    status, _, err = cli("stop", "nobody")
    assert status == 1 and "no remote processor called 'nobody'" in err
    supervisor = read_pid_file(runtime)
    cli.ok("stop", "two")
    assert supervisor is not None and wait_for(lambda: not process_alive(supervisor), TIMEOUT)


def test_trace_and_follow(runtime: Path, cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    cli.ok("boot", TRACE_FIRMWARE, "--name", "tracer")
    # the firmware's RSC_TRACE buffer (its output goes to the supervisor's log)
    assert wait_for(lambda: TRACE_LINE in cli.ok("trace", "tracer"), TIMEOUT)
    trace0 = runtime / "debug" / "remoteproc0" / "trace0"  # for cat
    assert wait_for(lambda: trace0.exists() and TRACE_LINE in trace0.read_text(), TIMEOUT)
    statuses: list[int] = []
    follower = threading.Thread(target=lambda: statuses.append(amplink_main(
        ["trace", "tracer", "-f", "--interval", "0.05"])))
    follower.start()
    try:
        assert wait_for(lambda: TRACE_LINE in capsys.readouterr().out, TIMEOUT)
    finally:
        amplink_main(["stop", "tracer"])  # the follower then sees it gone
        follower.join(TIMEOUT)
    assert statuses == [0]


def test_coredumps_go_to_the_runtime_directory(runtime: Path, cli: Cli) -> None:
    cli.ok("boot", ECHO, "--name", "dumper")
    assert cli.ok("coredump", "dumper", "enabled") == "enabled\n"
    cli.ok("crash", "dumper")
    dumps = runtime / "coredumps"
    # written by the recovery (recovery is enabled), kept after the processor is gone
    assert wait_for(lambda: dumps.is_dir() and any(dumps.glob("dumper-crash1-*.core")), TIMEOUT)
    assert wait_for(lambda: cli.ok("state", "dumper") == "running\n", TIMEOUT)
    cli.ok("stop", "dumper")
    assert [p.read_bytes()[:4] for p in dumps.glob("dumper-crash1-*.core")] == [b"\x7fELF"]


def test_every_command_has_help(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("ls", "boot", "stop", "state", "recovery", "coredump", "trace", "crash"):
        with pytest.raises(SystemExit) as info:
            amplink_main([command, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: amplink {command}" in out and "--sysfs ROOT" in out


def test_sysfs_option_drives_a_kernel_tree(tmp_path: Path, cli: Cli,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeRemoteprocKernel(tmp_path)
    kernel.add("dsp0", "old.elf")
    kernel.add("m4", "m4.elf")
    kernel.install("new.elf")
    # the CLI opens the tree itself; hand it the fake kernel's (same files, kernel semantics)
    monkeypatch.setattr(cli_rproc, "open_tree", lambda root, **_: kernel.tree())
    root = str(kernel.class_root)
    status, _, err = cli("boot", "new.elf", "--sysfs", root)
    assert status == 1 and "say which with --name" in err
    assert cli.ok("boot", "new.elf", "--name", "dsp0", "--sysfs", root) == \
        "dsp0 (remoteproc0): running, firmware new.elf\n"
    status, _, err = cli("boot", "m4.elf", "--name", "dsp0", "--sysfs", root)
    assert status == 1 and "stop it first" in err
    assert "dsp0  remoteproc0  running" in cli.ok("ls", "--sysfs", root)
    assert cli.ok("stop", "dsp0", "--sysfs", root) == "dsp0 (remoteproc0): offline\n"
    assert (kernel.class_root / "remoteproc0").exists()  # hardware is not removed
    monkeypatch.setenv(cli_rproc.ENV_SYSFS, root)
    assert cli.ok("state", "m4") == "offline\n"


def test_a_killed_cli_leaves_a_working_supervisor(runtime: Path, cli: Cli) -> None:
    command = subprocess.Popen(
        [sys.executable, "-c", "import sys; from amplink.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "boot", ECHO],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        # kill it (and its process group, as Ctrl-C would) while the firmware boots
        assert wait_for(lambda: read_pid_file(runtime) is not None, TIMEOUT)
        supervisor = read_pid_file(runtime)
        assert supervisor is not None
        assert wait_for(lambda: children_of(supervisor), TIMEOUT)
        os.killpg(command.pid, signal.SIGKILL)
    finally:
        command.kill()
        command.wait(TIMEOUT)
    assert process_alive(supervisor)
    # the boot finishes in the supervisor; the processor stays controllable
    assert wait_for(lambda: cli.ok("state", "sim0") == "running\n", TIMEOUT)
    cli.ok("stop", "sim0")
    assert wait_for(lambda: not process_alive(supervisor), TIMEOUT)
