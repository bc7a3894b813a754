"""The supervisor's control protocol, both ends: a supervisor served in a thread over fake
hardware (fast), raw sockets for malformed requests, and fake servers for malformed answers."""

from __future__ import annotations

import errno
import json
import socket
import threading
from pathlib import Path

import pytest
from rig_kit import wait_for
from served_kit import TIMEOUT, Served, serve

from amplink.platforms.linux import (
    ControlSocketTree,
    LinuxRemoteProc,
    ProcessorExists,
    RprocControlError,
    SupervisorError,
    SupervisorUnavailable,
)
from amplink.platforms.linux.protocol import CONTROL_SOCKET, MAX_MESSAGE
from amplink.remoteproc.states import RprocState
from amplink.service.supervisor import (
    PID_FILE,
)


class Raw:
    """A raw protocol connection."""

    def __init__(self, root: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(root / CONTROL_SOCKET))
        self.buffer = b""

    def send(self, data: bytes) -> dict:
        self.sock.sendall(data)
        return self.receive()

    def request(self, **message: object) -> dict:
        return self.send(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the supervisor closed the connection"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


def test_malformed_requests_get_an_errno_and_the_connection_lives_on(served: Served) -> None:
    raw = Raw(served.root)
    try:
        for request in (b"not json\n", b"[1, 2]\n", b'{"op": 5}\n', b'{"op": "nope"}\n',
                        b'{"op": "read", "dev": "remoteproc0"}\n',
                        b'{"op": "write", "dev": "remoteproc0", "attr": "state", "value": 1}\n',
                        b"\xff\xfe\n"):
            response = raw.send(request)
            assert response["ok"] is False and response["errno"] == errno.EINVAL, request
        response = raw.request(op="read", dev="../etc", attr="state")
        assert response["errno"] == errno.ENOENT
        assert raw.request(op="hello")["ok"] is True
    finally:
        raw.close()


def test_an_endless_line_is_refused_and_dropped(served: Served) -> None:
    raw = Raw(served.root)
    try:
        raw.sock.sendall(b"x" * (MAX_MESSAGE + 1))
        assert raw.receive()["errno"] == errno.EMSGSIZE
        assert raw.sock.recv(1) == b""
    finally:
        raw.close()


def test_add_names_processors_and_refuses_duplicates(served: Served) -> None:
    client = served.client
    assert client.add("fw.elf") == ("remoteproc0", "sim0")
    assert client.add("fw.elf", "dsp") == ("remoteproc1", "dsp")
    assert client.add("fw.elf") == ("remoteproc2", "sim1")
    with pytest.raises(ProcessorExists) as info:
        client.add("fw.elf", "dsp")
    assert isinstance(info.value, FileExistsError)
    for bad_name, bad_firmware in (("two words", "fw.elf"), ("x" * 40, "fw.elf"),
                                   ("ok", ""), ("ok", "a\nb")):
        with pytest.raises(RprocControlError) as info:
            client.add(bad_firmware, bad_name)
        assert info.value.errno == errno.EINVAL
    assert (served.root / "remoteproc1" / "name").read_text() == "dsp\n"
    client.remove("remoteproc0")
    assert not (served.root / "remoteproc0").exists()
    assert client.add("fw.elf") == ("remoteproc0", "sim0")  # the lowest free number again


def test_a_closed_device_connection_is_a_release(served: Served) -> None:
    dev, _ = served.client.add("fw.elf")
    raw = Raw(served.root)
    assert raw.request(op="dev_write", value="start")["errno"] == errno.EBADF
    assert raw.request(op="dev_open", dev=dev)["ok"]
    assert raw.request(op="dev_write", value="start")["ok"]
    assert raw.request(op="dev_set_release", value=1)["ok"]
    assert served.made[0].state is RprocState.RUNNING
    raw.close()  # as when the client is killed
    assert wait_for(lambda: served.made[0].state is RprocState.OFFLINE, TIMEOUT)


def test_files_follow_changes_the_processor_makes_on_its_own(served: Served) -> None:
    dev, _ = served.client.add("fw.elf")
    rproc = LinuxRemoteProc(dev, served.client.tree)
    rproc.recovery = False
    rproc.boot()
    served.made[0].crash()  # e.g. a watchdog, not through the supervisor
    state_file = served.root / dev / "state"
    assert wait_for(lambda: state_file.read_text() == "crashed\n", TIMEOUT)


def test_the_supervisor_exits_with_its_last_processor(tmp_path: Path) -> None:
    s = serve(tmp_path)
    client = s.client
    dev, _ = client.add("fw.elf")
    LinuxRemoteProc(dev, client.tree).boot()
    client.remove(dev)  # shut down whatever the state, then removed
    s.thread.join(TIMEOUT)
    assert not s.thread.is_alive()
    assert s.made[0].state is RprocState.OFFLINE
    assert not (s.root / PID_FILE).exists() and not (s.root / CONTROL_SOCKET).exists()
    with pytest.raises(SupervisorUnavailable):
        client.hello()


def test_without_any_processor_it_exits_after_the_grace(tmp_path: Path) -> None:
    s = serve(tmp_path, idle_grace=0.1)
    s.thread.join(TIMEOUT)
    assert not s.thread.is_alive()


def test_stop_shuts_every_processor_down(tmp_path: Path) -> None:
    s = serve(tmp_path)
    for _ in range(2):
        dev, _ = s.client.add("fw.elf")
        LinuxRemoteProc(dev, s.client.tree).boot()
    s.stop()
    assert [hw.state for hw in s.made] == [RprocState.OFFLINE, RprocState.OFFLINE]
    assert not list(s.root.glob("remoteproc*")) and not (s.root / "debug").exists()


# -- the client side against servers that misbehave ---------------------------------------
def answer(tmp_path: Path, reply: bytes) -> ControlSocketTree:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / CONTROL_SOCKET
    path.unlink(missing_ok=True)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            if reply:
                conn.sendall(reply)
        server.close()

    threading.Thread(target=run, daemon=True).start()
    return ControlSocketTree(tmp_path, timeout=TIMEOUT)


@pytest.mark.parametrize("reply, error", [
    (b"garbage\n", SupervisorError),
    (b'{"ok": true, "value": 5}\n', SupervisorError),
    (b'{"ok": "yes"}\n', SupervisorError),
    (b'{"ok": false, "errno": "EBUSY", "error": "x"}\n', SupervisorError),
    (b'{"ok": true, "value": "a"}\n{"ok": true}\n', SupervisorError),
    (b"", SupervisorUnavailable),
])
def test_malformed_answers_are_supervisor_errors(tmp_path: Path, reply: bytes,
                                                 error: type[Exception]) -> None:
    with pytest.raises(error):
        answer(tmp_path, reply).read("remoteproc0", "state")


def test_an_unknown_errno_becomes_eio(tmp_path: Path) -> None:
    tree = answer(tmp_path, b'{"ok": false, "errno": 99999, "error": "odd"}\n')
    with pytest.raises(RprocControlError) as info:
        tree.write("remoteproc0", "state", "start")
    assert info.value.errno == errno.EIO and "odd" in str(info.value)


def test_a_device_list_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SupervisorError, match="device names"):
        answer(tmp_path, b'{"ok": true, "devices": ["remoteproc0", "../x"]}\n').devices()
