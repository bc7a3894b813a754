"""The rpmsg half of the Linux platform against a fake kernel: LinuxRemoteProc.link, and
`amplink ls / send / listen --sysfs` (the CLI in this process, the fake's device calls
injected where the real ones would be made)."""

from __future__ import annotations

import _thread
import errno
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transports"))
from fake_rpmsg_char import FakeOps, FakeRpmsgKernel  # noqa: E402

from amplink.cli import main  # noqa: E402
from amplink.errors import LinkDown  # noqa: E402
from amplink.platforms.linux import LinuxRemoteProc, NotSupported, SysfsAttributes  # noqa: E402
from amplink.transports.rpmsg_char import link as rpmsg_char_link_module  # noqa: E402


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRpmsgKernel:
    kernel = FakeRpmsgKernel(tmp_path)
    monkeypatch.setattr(rpmsg_char_link_module, "OsDeviceOps", lambda: FakeOps(kernel))
    return kernel


@pytest.fixture
def rproc(kernel: FakeRpmsgKernel) -> Iterator[LinuxRemoteProc]:
    tree = SysfsAttributes(kernel.sys / "class" / "remoteproc", debug_root=None,
                           dev_root=kernel.dev)
    proc = LinuxRemoteProc.find("m4", tree)
    try:
        yield proc
    finally:
        proc.close()


def test_the_processors_link_is_found_through_sysfs(kernel, rproc):
    kernel.announce("rpmsg-raw", 0x400)
    assert [(c.name, c.dst) for c in rproc.channels()] == [("rpmsg-raw", 0x400)]
    link = rproc.link
    assert rproc.link is link and link.name == "m4"
    ep = link.open_channel("rpmsg-raw", timeout=1)
    ep.send(b"board")
    assert ep.recv(timeout=2) == b"board"


def test_the_link_goes_with_the_device(kernel, rproc):
    kernel.announce("rpmsg-raw", 0x400)
    first = rproc.link
    first.open_channel("rpmsg-raw", timeout=1)
    kernel.remove_device()
    with pytest.raises(LinkDown) as info:
        rproc.link  # noqa: B018 - the property is what is tested
    assert info.value.errno == errno.ENODEV and "no rpmsg device" in str(info.value)
    assert first.closed


def test_a_processor_removed_while_its_link_is_resolved_is_not_found(kernel, rproc,
                                                                     monkeypatch):
    """realpath raises when a link on its way is removed while it is resolved (the kernel
    removing the device): that is ProcessorNotFound, not a raw FileNotFoundError."""
    import os

    from amplink.platforms.linux import ProcessorNotFound

    def removed(path, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(os.path, "realpath", removed)
    with pytest.raises(ProcessorNotFound, match=r"m4 \(remoteproc0\) went away"):
        rproc.channels()


def test_a_tree_without_sysfs_has_no_rpmsg(tmp_path):
    root = tmp_path / "elsewhere"
    (root / "remoteproc0").mkdir(parents=True)
    (root / "remoteproc0" / "name").write_text("m4\n")
    proc = LinuxRemoteProc("remoteproc0", SysfsAttributes(root, debug_root=None))
    with pytest.raises(NotSupported):
        proc.link  # noqa: B018


def _sysfs(kernel: FakeRpmsgKernel) -> list[str]:
    return ["--sysfs", str(kernel.sys / "class" / "remoteproc"), "--dev", str(kernel.dev)]


def test_ls_shows_the_rpmsg_channels(kernel, capsys):
    kernel.announce("rpmsg-raw", 0x400)
    kernel.announce("rpmsg-echo", 0x401)
    assert main(["ls", *_sysfs(kernel)]) == 0
    out = capsys.readouterr().out
    assert "m4" in out and "remoteproc0" in out and "running" in out
    assert ("channel rpmsg-raw: remote endpoint 0x400, local endpoint 0x400 (/dev/rpmsg0) "
            "[rpmsg_ctrl0]") in out
    assert "channel rpmsg-echo: remote endpoint 0x401, no local endpoint [rpmsg_ctrl0]" in out


def test_send_text_hex_and_file(kernel, capsys, tmp_path):
    kernel.announce("rpmsg-raw", 0x400, handler=None)
    (tmp_path / "blob").write_bytes(bytes(range(10)))
    assert main(["send", "m4", "rpmsg-raw", "hello", *_sysfs(kernel)]) == 0
    assert main(["send", "m4", "rpmsg-raw", "de ad", "--hex", *_sysfs(kernel)]) == 0
    assert main(["send", "m4", "rpmsg-raw", f"@{tmp_path / 'blob'}", "--json",
                 *_sysfs(kernel)]) == 0
    assert [p for _, _, p in kernel.sent] == [b"hello", b"\xde\xad", bytes(range(10))]
    lines = capsys.readouterr().out.splitlines()
    assert "sent 5 B on rpmsg-raw (0x400 -> 0x400)" in lines[0]
    assert json.loads(lines[-1]) == {"processor": "m4", "channel": "rpmsg-raw", "src": 1024,
                                     "dst": 1024, "bytes": 10}


def test_send_errors_are_one_line(kernel, capsys):
    kernel.announce("rpmsg-raw", 0x400, handler=None)
    assert main(["send", "m4", "rpmsg-raw", "zz", "--hex", *_sysfs(kernel)]) == 1
    assert main(["send", "m4", "rpmsg-raw", "x" * 497, *_sysfs(kernel)]) == 1
    assert main(["send", "m4", "nobody", "x", "--timeout", "0.1", *_sysfs(kernel)]) == 1
    assert main(["send", "m4", "rpmsg-raw", "x"]) == 1  # no --sysfs: not the simulator's
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("amplink send: error: ") for line in err)
    assert "not hex" in err[0] and "MTU" in err[1] and "nobody" in err[2] and "--sysfs" in err[3]
    assert kernel.sent == []


def test_listen_prints_text_and_hexdumps_until_ctrl_c(kernel, capsys):
    kernel.announce("rpmsg-raw", 0x400, handler=None)

    def remote() -> None:
        for _ in range(200):  # until the listener opened the channel
            if kernel.send_to(0x400, b"temperature 21.5"):
                break
            threading.Event().wait(0.01)
        kernel.send_to(0x400, bytes(range(20)))
        threading.Event().wait(0.2)
        _thread.interrupt_main()  # Ctrl-C

    t = threading.Thread(target=remote)
    t.start()
    status = main(["listen", "m4", "rpmsg-raw", *_sysfs(kernel)])
    t.join(5)
    assert status == 130
    out = capsys.readouterr().out
    assert "[1] 16 B: temperature 21.5" in out
    assert "[2] 20 B:" in out and "0000  00 01 02 03" in out and "0010  10 11 12 13" in out
    assert kernel.open_endpoints() == []  # the link was closed


def test_listen_json_and_count(kernel, capsys):
    kernel.announce("rpmsg-raw", 0x400, handler=None)
    threading.Timer(0.2, lambda: (kernel.send_to(0x400, b"a"),
                                  kernel.send_to(0x400, b"\xff"))).start()
    assert main(["listen", "m4", "rpmsg-raw", "--json", "--count", "2", *_sysfs(kernel)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [{"n": 1, "bytes": 1, "text": "a"}, {"n": 2, "bytes": 1, "hex": "ff"}]
