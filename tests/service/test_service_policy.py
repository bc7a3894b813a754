"""The service's policy: the file, and who may do what (the permission matrix).

The matrix runs in one process: the service's owner is made another uid, so that this
process (whatever its uid) is a client like any other, and the rules name this
process's uid or gid. The same matrix with real users of their own is in
test_service_users.py.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

import pytest
from common_kit import wait_for
from loop_kit import TIMEOUT, LoopService, loop_service
from raw_kit import RawClient

from amplink import Endpoint
from amplink.errors import AccessDenied, ReceiveTimeout
from amplink.platforms.linux import ControlPermissionError, LinuxRemoteProc
from amplink.remoteproc.states import RprocState
from amplink.service import endpoints, supervisor
from amplink.service.policy import (
    Policy,
    PolicyError,
    Rule,
    default_policy,
    load_policy,
    peer_of,
)
from amplink.transports.service import service_status

ME = os.getuid()
MY_GROUP = os.getgid()
SOMEONE_ELSE = ME + 4242  # the service's owner in the matrix: not this process


# -- the file -------------------------------------------------------------------------------
GOOD = """
[service]
on_exit = "keep"

[[allow]]
users = [{uid}]
processors = ["sim*"]
channels = ["rpmsg-echo", "rpmsg-up*"]
rights = ["send", "receive"]

[[allow]]
groups = [{gid}]
actions = ["boot", "stop"]
firmware = ["amplink.firmware.examples.*"]
"""


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_policy_file_is_read_as_written(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "p.toml", GOOD.format(uid=1001, gid=1002)), owner=ME)
    assert policy.on_exit == "keep" and policy.grants_others
    assert policy.rules == (
        Rule(users=frozenset({1001}), processors=("sim*",),
             channels=("rpmsg-echo", "rpmsg-up*"), rights=frozenset({"send", "receive"})),
        Rule(groups=frozenset({1002}), actions=frozenset({"boot", "stop"}),
             firmware=("amplink.firmware.examples.*",)),
    )


@pytest.mark.parametrize(("text", "complaint"), [
    ("[[allow]]\nusers=[1]\nchannels=['x']\nrights=['send']\nwho='me'", "unknown key 'who'"),
    ("[[allow]]\nusers=['no-such-user-xyz']\nactions=['boot']", "no user 'no-such-user-xyz'"),
    ("[[allow]]\ngroups=['no-such-group-xyz']\nactions=['boot']", "no group"),
    ("[[allow]]\nusers=[1]\nchannels=['x']\nrights=['write']", "unknown right 'write'"),
    ("[[allow]]\nusers=[1]\nactions=['reboot']", "unknown action 'reboot'"),
    ("[[allow]]\nusers=[1]\nchannels=['x']", "channels and rights go together"),
    ("[[allow]]\nactions=['boot']", "say whom it allows"),
    ("[[allow]]\nusers=[1]", "allows nothing"),
    ("[[allow]]\nusers=[1]\nactions=['stop']\nfirmware=['x']", "add the boot action"),
    ("[[allow]]\nusers=[true]\nactions=['stop']", "neither a name nor an id"),
    ("[service]\non_exit='later'", "on_exit must be"),
    ("[services]\n", "unknown key 'services'"),
    ("allow = 3", "array of tables"),
    ("[[allow]\n", "not valid TOML"),
])
def test_a_policy_that_cannot_be_read_as_meant_is_refused(tmp_path: Path, text: str,
                                                         complaint: str) -> None:
    with pytest.raises(PolicyError, match=complaint):
        load_policy(write(tmp_path / "p.toml", text), owner=ME)


def test_a_policy_others_could_change_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", GOOD.format(uid=1, gid=1), mode=0o666)
    with pytest.raises(PolicyError, match="others can write"):
        load_policy(path, owner=ME)
    path.chmod(0o644)
    load_policy(path, owner=ME)
    if ME == 0:
        os.chown(path, 65534, -1)  # a file of another user (not root, not the owner)
        with pytest.raises(PolicyError, match="belongs to uid 65534"):
            load_policy(path, owner=ME)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml", owner=ME)


def test_the_default_policy_lets_only_the_owner_in() -> None:
    policy = default_policy()
    a, b = socket.socketpair()
    with a, b:
        me = peer_of(a)
    assert (me.pid, me.uid, me.gid) == (os.getpid(), ME, MY_GROUP)
    assert set(os.getgroups()) <= me.groups | {me.gid}
    assert policy.is_owner(me) and policy.channel_rights(me, "any", "any")
    stranger = me.__class__(1, SOMEONE_ELSE, SOMEONE_ELSE)
    assert not policy.may_see(stranger, "any") and not policy.channel_rights(stranger, "a", "b")
    assert not any(policy.may(stranger, action, "any") for action in ("boot", "stop", "crash"))


# -- the matrix -----------------------------------------------------------------------------
def policy_of(**rule: object) -> Policy:
    """The service belongs to someone else; one rule (if any) names this process."""
    rules = (Rule(**rule),) if rule else ()  # type: ignore[arg-type]
    return Policy(SOMEONE_ELSE, rules, source="test")


def booted(service: LoopService, name: str = "loop0", *, visible: bool = True) -> Endpoint:
    """Add and boot ``name`` as its owner would (not through the sockets); returns the
    firmware's rpmsg-echo endpoint (once served, if the client may see it)."""
    dev = service.supervisor.add_processor(name, "fw")
    service.supervisor.live_model.store(dev, "state", "start")
    rproc = service.made[name]
    rproc.serve_echo("rpmsg-other")
    echo = rproc.serve_echo()
    if visible:
        assert wait_for(lambda: service.serves(name, "rpmsg-echo"), TIMEOUT)
    return echo


BY_UID = {"users": frozenset({ME})}
BY_GID = {"groups": frozenset({MY_GROUP})}


@pytest.mark.parametrize("who", [BY_UID, BY_GID], ids=["uid", "gid"])
def test_nobody_named_may_do_nothing(tmp_path: Path, who: dict, caplog) -> None:
    rules = {**who, "processors": ("elsewhere*",), "actions": frozenset({"boot"})}
    with loop_service(tmp_path, policy=policy_of(**rules)) as service:
        booted(service, visible=False)
        caplog.set_level(logging.WARNING)
        with pytest.raises(AccessDenied) as info:
            service.link("loop0")
        assert info.value.errno == errno.EACCES
        with pytest.raises(AccessDenied):  # the same answer for a processor that is not
            service.link("nonesuch")
        assert service_status(service.root) == []
        client = service.control
        assert client.tree.devices() == []
        with pytest.raises(ControlPermissionError) as control:
            client.tree.read("remoteproc0", "state")
        assert control.value.errno == errno.EACCES
        with pytest.raises(ControlPermissionError):
            client.add("fw", "loop1")
        denials = [r for r in caplog.records if "denied" in r.getMessage()]
        assert len(denials) >= 4 and all(f"uid {ME}" in r.getMessage() for r in denials)


@pytest.mark.parametrize("who", [BY_UID, BY_GID], ids=["uid", "gid"])
@pytest.mark.parametrize(("rights", "may_send", "may_receive"), [
    ({"receive"}, False, True),
    ({"send"}, True, False),
    ({"send", "receive"}, True, True),
])
def test_channel_rights(tmp_path: Path, who: dict, rights: set[str], may_send: bool,
                        may_receive: bool) -> None:
    rules = {**who, "channels": ("rpmsg-echo",), "rights": frozenset(rights)}
    with loop_service(tmp_path, policy=policy_of(**rules)) as service:
        booted(service)
        link = service.link("loop0")
        link.wait_channel("rpmsg-echo", TIMEOUT)  # announced after rpmsg-other
        assert [c.name for c in link.channels()] == ["rpmsg-echo"]  # not rpmsg-other
        with pytest.raises(AccessDenied):
            link.create_endpoint("rpmsg-other")
        ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
        assert link.backend.rights(ep.addr) == frozenset(rights)  # type: ignore[attr-defined]
        if not may_send:
            with pytest.raises(AccessDenied):
                ep.send(b"no")
            return
        ep.send(b"ping")
        if may_receive:
            assert ep.recv(timeout=TIMEOUT) == b"ping"
        else:
            with pytest.raises(ReceiveTimeout):  # the echo came, and was withheld
                ep.recv(timeout=0.3)
            endpoint = service_status(service.root)[0].links[0].channels[0].endpoints[0]
            assert endpoint.denied == 1 and endpoint.sent == 1


def test_the_service_checks_what_the_client_did_not(tmp_path: Path) -> None:
    """A client that bypasses its own checks gets refused by the service (EACCES)."""
    rules = {**BY_UID, "channels": ("rpmsg-echo",), "rights": frozenset({"receive"})}
    with loop_service(tmp_path, policy=policy_of(**rules)) as service:
        booted(service)
        with RawClient(service.root) as raw:
            assert raw.request("attach", processor="loop0", link=0, watch=False,
                               version=1)["ok"]
            opened = raw.request("open", name="rpmsg-echo", addr=None, dst=None)
            assert opened["rights"] == ["receive"]
            raw.send_data(opened["addr"], opened["dst"], b"sneaky")
            event = raw.event()
            assert event == {"event": "refused", "errno": errno.EACCES, "src": opened["addr"],
                             "error": "channel 'rpmsg-echo': no 'send' right"}
            other_dst = next(c.dst for c in service.made["loop0"].links[0].channels()
                             if c.name == "rpmsg-other")
            refused = raw.request("open", name=None, addr=None, dst=other_dst)
            assert not refused["ok"] and refused["errno"] == errno.EACCES
        channel = service_status(service.root)[0].links[0].channels[0]
        assert channel.to_processor == 0 and channel.refused == 1


def test_watching_needs_the_watch_right(tmp_path: Path) -> None:
    rules = {**BY_UID, "channels": ("rpmsg-echo",), "rights": frozenset({"send", "receive"})}
    with loop_service(tmp_path, policy=policy_of(**rules)) as service:
        booted(service)
        with pytest.raises(AccessDenied, match="watch"):
            service.link("loop0", watch=True).open_channel("rpmsg-echo", timeout=TIMEOUT)
    rules["rights"] = frozenset({"receive", "watch"})
    with loop_service(tmp_path, policy=policy_of(**rules), root=tmp_path / "rt2") as service:
        firmware = booted(service)
        other = service.link("loop0").open_channel("rpmsg-echo", timeout=TIMEOUT)
        watcher = service.link("loop0", watch=True).open_channel("rpmsg-echo", timeout=TIMEOUT)
        firmware.sendto(b"to the other client", other.addr)
        assert other.recv(timeout=TIMEOUT) == b"to the other client"
        assert watcher.recvfrom(timeout=TIMEOUT) == (b"to the other client", firmware.addr)


@pytest.mark.parametrize("who", [BY_UID, BY_GID], ids=["uid", "gid"])
@pytest.mark.parametrize("action", ["boot", "stop", "crash", "configure"])
def test_processor_actions(tmp_path: Path, who: dict, action: str) -> None:
    rules = {**who, "actions": frozenset({action}), "processors": ("loop*",)}
    if action == "boot":
        rules["firmware"] = ("fw-*",)
    with loop_service(tmp_path, policy=policy_of(**rules)) as service:
        dev = service.supervisor.add_processor("loop0", "fw")
        service.supervisor.add_processor("keeps-the-service-up", "fw")
        tree = service.control.tree
        rproc = LinuxRemoteProc(dev, tree)
        attempts = {
            "boot": lambda: rproc.boot(),
            "stop": lambda: service.control.remove(dev),
            "crash": lambda: rproc.crash(),
            "configure": lambda: setattr(rproc, "recovery", False),
        }
        if action in ("stop", "crash"):
            service.supervisor.live_model.store(dev, "state", "start")
        for other, attempt in attempts.items():
            if other == action:
                continue
            with pytest.raises(ControlPermissionError):
                attempt()
        attempts[action]()  # allowed
        expected = {"boot": RprocState.RUNNING, "stop": RprocState.OFFLINE,
                    "crash": RprocState.CRASHED, "configure": RprocState.OFFLINE}
        assert service.made["loop0"].state is expected[action]
        if action == "boot":
            with pytest.raises(ControlPermissionError, match="load firmware"):
                service.control.add("evil.py", "loop1")
            assert service.control.add("fw-2", "loop2")[1] == "loop2"


def test_a_policy_that_grants_others_opens_the_sockets(tmp_path: Path) -> None:
    with loop_service(tmp_path, policy=policy_of(**BY_UID, actions=frozenset({"boot"}))) as s:
        assert (s.root.stat().st_mode & 0o777) == 0o711
        for name in (".control", ".endpoints"):
            assert ((s.root / name).stat().st_mode & 0o777) == 0o666
    with loop_service(tmp_path, root=tmp_path / "private") as s:
        assert (s.root.stat().st_mode & 0o777) == 0o700
        for name in (".control", ".endpoints"):
            assert ((s.root / name).stat().st_mode & 0o777) == 0o600


def test_a_user_other_than_the_owner_has_few_connections(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(endpoints, "MAX_SESSIONS_PER_USER", 3)
    monkeypatch.setattr(supervisor, "MAX_CLIENTS_PER_USER", 2)
    with loop_service(tmp_path, policy=policy_of(**BY_UID, actions=frozenset({"boot"}))) as s:
        raws = [RawClient(s.root) for _ in range(3)]
        controls = []
        try:
            for raw in raws:
                assert raw.request("status")["ok"]
            with RawClient(s.root) as extra:
                event = extra.event()
                assert event["errno"] == errno.EUSERS and f"uid {ME}" in event["error"]
                assert extra.closed_by_service()
            for _ in range(2):
                controls.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                controls[-1].settimeout(TIMEOUT)
                controls[-1].connect(str(s.root / ".control"))
                controls[-1].sendall(b'{"op": "hello"}\n')
                assert b'"ok":true' in controls[-1].recv(4096)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as third:
                third.settimeout(TIMEOUT)
                third.connect(str(s.root / ".control"))
                answer = third.recv(4096)
                assert b'"errno":11' in answer and b"connections already" in answer
        finally:
            for raw in raws:
                raw.close()
            for sock in controls:
                sock.close()
