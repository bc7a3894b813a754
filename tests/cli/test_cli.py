"""The ``amplink`` command, end to end in subprocesses, and the benchmark's quick mode."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from amplink.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
ECHO = "amplink.firmware.examples.echo"
BENCH = ROOT / "bench" / "rpmsg_bench.py"
SUBCOMMANDS = ["demo", "run", "ping", "frames", "openamp", "vhost-user", "send", "listen"]
#: the remote-processor commands, all added by one registration function (amplink.cli.rproc)
RPROC_SUBCOMMANDS = ["ls", "boot", "stop", "state", "attach", "detach", "recovery", "coredump",
                     "trace", "crash", "crashlog"]
#: the amplink service's statistics (amplink.cli.top)
SERVICE_SUBCOMMANDS = ["top"]


def amplink(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amplink.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help() -> None:
    r = amplink("--help")
    assert r.returncode == 0, r.stderr
    assert "usage: amplink" in r.stdout
    for name in SUBCOMMANDS + RPROC_SUBCOMMANDS + SERVICE_SUBCOMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command: str) -> None:
    r = amplink(command, "--help")
    assert r.returncode == 0, r.stderr
    assert f"usage: amplink {command}" in r.stdout
    assert "-v" in r.stdout


def test_every_registered_command_is_listed() -> None:
    parser = build_parser()
    # sim (demo, run, ping), frames, openamp, vhost_user, ls, rproc, rpmsg (send, listen), top
    assert len(COMMANDS) == 8
    for name in SUBCOMMANDS + RPROC_SUBCOMMANDS + SERVICE_SUBCOMMANDS:
        args = parser.parse_args(_minimal(name))
        assert args.command == name and callable(args.func)


def _minimal(name: str) -> list[str]:
    return {"demo": ["demo"], "run": ["run", "fw"], "ping": ["ping", "fw", "-s", "x"],
            "openamp": ["openamp", "host", "--client"], "ls": ["ls"], "boot": ["boot", "fw"],
            "stop": ["stop", "p"], "state": ["state", "p"],
            "recovery": ["recovery", "p", "enabled"], "coredump": ["coredump", "p", "inline"],
            "trace": ["trace", "p"], "crash": ["crash", "p"], "crashlog": ["crashlog", "p"],
            "frames": ["frames"], "attach": ["attach", "p", "4K"], "detach": ["detach", "p", "1"],
            "vhost-user": ["vhost-user", "fw", "--socket", "s"],
            "send": ["send", "p", "rpmsg-raw", "hi"], "listen": ["listen", "p", "rpmsg-raw"],
            "top": ["top"]}[name]


def test_no_command_is_an_error() -> None:
    r = amplink()
    assert r.returncode == 2
    assert "usage: amplink" in r.stderr


def test_verbose_before_and_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["-vv", "demo"]).verbose == 2
    assert parser.parse_args(["demo", "-v"]).verbose == 1
    assert parser.parse_args(["demo"]).verbose == 0


def test_demo_end_to_end() -> None:
    r = amplink("demo", "--count", "200", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for needle in ("rpmsg-echo", "rpmsg-upper", "rpmsg-sink", "remote address 0x",
                   "RTT  16 B: p50", "RTT 496 B: p50", "p99.9", "msg/s", "MB/s",
                   "HELLO FROM THE HOST", "safety-net wake-ups 0", "demo: OK"):
        assert needle in out, needle


def test_demo_keembay_end_to_end() -> None:
    r = amplink("demo", "--keembay", "--count", "200", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for needle in ("Keem Bay IPC", "channels open on the VPU: channel 0 (HS), channel 10 (GP), "
                   "channel 11 (GP), channel 12 (GP)", "200 checked pings", "p99.9",
                   "8 frames of 1 MiB by reference", "frames/s", "every CRC-32",
                   "stats -> frames=8 bytes=8388608 thumbnails=8 dropped=0",
                   "references done 8", "protocol faults 0,", "demo --keembay: OK"):
        assert needle in out, needle


def test_ping_echo() -> None:
    r = amplink("ping", "amplink.firmware.examples.echo", "--service", "rpmsg-echo",
                "--count", "3", "--size", "32", "--interval", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("32 bytes from rpmsg-echo") == 3
    assert "3 messages transmitted, 3 received, 0% loss" in r.stdout
    assert "rtt min/avg/max/mdev" in r.stdout


def test_ping_unknown_service_fails_clearly() -> None:
    r = amplink("ping", "amplink.firmware.examples.echo", "--service", "nope", "--wait", "0.3")
    assert r.returncode == 1
    assert "'nope' was not announced" in r.stderr
    assert "rpmsg-echo" in r.stderr


@pytest.mark.parametrize("argv, option", [
    (["ping", ECHO, "-s", "rpmsg-echo", "--timeout", "-1"], "--timeout"),
    (["ping", ECHO, "-s", "rpmsg-echo", "--wait", "-1"], "--wait"),
    (["ping", ECHO, "-s", "rpmsg-echo", "--count", "-3"], "--count"),
    (["ping", ECHO, "-s", "rpmsg-echo", "--interval", "nan"], "--interval"),
    (["run", ECHO, "--boot-timeout", "-1"], "--boot-timeout"),
    (["run", ECHO, "--boot-timeout", "0"], "--boot-timeout"),
    (["run", ECHO, "--settle", "inf"], "--settle"),
    (["demo", "--count", "0"], "--count"),
    (["trace", "sim0", "--interval", "0"], "--interval"),
    (["openamp", "host", "--client", "--timeout", "-5"], "--timeout"),
])
def test_a_bad_option_value_is_a_one_line_usage_error(argv: list[str], option: str) -> None:
    r = amplink(*argv)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    error_lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and option in error_lines[0], r.stderr


FAILING = [
    ("missing-file", lambda tmp: str(tmp / "nope.py"), "No such file"),
    ("missing-module", lambda tmp: "amplink_no_such_firmware_module", "no such module"),
    ("raises-at-import", lambda tmp: _write(tmp / "bad.py", "1/0\ndef main(link): pass\n"),
     "failed to load (exit status 1): ZeroDivisionError: division by zero"),
    ("raises-in-main", lambda tmp: _write(tmp / "bad.py", "def main(link):\n"
                                          "    raise ValueError('no config')\n"),
     "fatal error: ValueError: no config"),
]


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["run", "ping"])
@pytest.mark.parametrize("firmware, cause", [(f, c) for _, f, c in FAILING],
                         ids=[i for i, _, _ in FAILING])
def test_failing_firmware_is_one_line_with_the_cause(tmp_path: Path, command: str, firmware,
                                                     cause: str) -> None:
    argv = [command, firmware(tmp_path)] + (["-s", "x", "--wait", "3"] if command == "ping"
                                            else [])
    r = amplink(*argv)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and cause in lines[0], r.stderr


def test_verbose_shows_the_firmware_traceback(tmp_path: Path) -> None:
    fw = _write(tmp_path / "bad.py", "def main(link):\n    raise ValueError('no config')\n")
    r = amplink("-v", "run", fw)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ValueError: no config" in r.stderr


def test_run_passes_arguments_after_options_and_a_double_dash(tmp_path: Path) -> None:
    fw = _write(tmp_path / "args.py", "def main(link, args):\n"
                "    link.create_endpoint('-'.join(args), announce=True)\n"
                "    link.run(timeout=0.5)\n")
    r = amplink("run", fw, "--settle", "0.3", "--name", "p1", "--", "--rate", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--rate-10" in r.stdout


def test_run_until_the_firmware_exits(tmp_path: Path) -> None:
    fw = tmp_path / "late.py"
    fw.write_text(
        "def main(link):\n"
        "    link.run(timeout=0.3)\n"
        "    ep = link.create_endpoint('late-service', announce=True)\n"
        "    link.run(timeout=0.3)\n"
        "    ep.close()\n"
        "    link.run(timeout=0.2)\n"
    )
    r = amplink("run", str(fw), "--settle", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "+ late-service" in r.stdout
    assert "- late-service" in r.stdout
    assert "the firmware exited (status 0)" in r.stdout


def test_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--runs", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=55, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for needle in ("amplink blocking", "amplink no-spin", "amplink polling",
                   "zero-copy blocking", "zero-copy polling", "mp.Pipe", "os.pipe", "shm-ring",
                   "targets:", "RTT p50  16 B", "one-way 496 B", "send_many(64)  16 B",
                   "ratios amplink/baseline"):
        assert needle in r.stdout, needle
    data = json.loads(out.read_text())
    iceoryx2 = importlib.util.find_spec("iceoryx2") is not None
    amplink_peers = {"amplink-blocking", "amplink-nospin", "amplink-polling",
                     "amplink-zc-blocking", "amplink-zc-polling"}
    assert set(data["results"]) == amplink_peers | {"mp.Pipe", "os.pipe", "shm-ring"} | (
        {"iceoryx2-busy", "iceoryx2-event"} if iceoryx2 else set())
    for peer in data["results"].values():
        assert peer["rtt"]["16"]["p50"]["median"] > 0
        assert peer["one_way"]["496"]["msg_per_s"]["median"] > 0
    for peer in amplink_peers:
        assert data["results"][peer]["one_way_batched"]["16"]["msg_per_s"]["median"] > 0
        for stats in data["results"][peer]["statistics"].values():
            assert stats["protocol_faults"] == 0
    assert {t["name"] for t in data["targets"]} >= {"RTT p50 16 B, polling <= 3 us"}


def test_frames_demo_checks_every_frame() -> None:
    r = amplink("frames", "--count", "12", "--size", "64K", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "every frame checked" in r.stdout and "frames: OK" in r.stdout
