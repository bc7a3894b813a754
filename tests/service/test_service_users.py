"""The permission matrix with real users: clients run as users of their own, and the
service knows them only from the kernel (SO_PEERCRED, SO_PEERGROUPS).

Needs root (to create the users and run processes as them); the users, their group and
every file are removed afterwards.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import elftools
import pytest
from common_kit import wait_for
from loop_kit import TIMEOUT, loop_service

import amplink
from amplink.service.policy import Policy, Rule

if os.geteuid() != 0:
    pytestmark = pytest.mark.skip(reason=f"creating test users needs root; this runs as uid "
                                         f"{os.geteuid()}")
elif shutil.which("useradd") is None or shutil.which("groupadd") is None:
    pytestmark = pytest.mark.skip(reason="useradd/groupadd are not installed")

#: runs as a test user: attach, open rpmsg-echo, send, and try to boot and stop
CLIENT = r"""
import json, sys
from amplink.errors import AccessDenied, ReceiveTimeout
from amplink.platforms.linux import ControlPermissionError, LinuxRemoteProc
from amplink.service.supervisor import SupervisorClient
from amplink.transports.service import connect_link
root = sys.argv[1]
result = {}
try:
    link = connect_link("loop0", root=root, timeout=5)
    result["attach"] = "ok"
    ep = link.open_channel("rpmsg-echo", timeout=5)
    result["rights"] = sorted(link.backend.rights(ep.addr))
    try:
        ep.send(b"hi from " + sys.argv[2].encode())
        result["send"] = "ok"
        result["reply"] = ep.recv(timeout=2).decode()
    except AccessDenied:
        result["send"] = "EACCES"
    link.close()
except AccessDenied:
    result["attach"] = "EACCES"
client = SupervisorClient(root, timeout=5)
result["visible"] = client.tree.devices()
for action, do in (("boot", lambda: LinuxRemoteProc("remoteproc1", client.tree).boot()),
                   ("stop", lambda: client.remove("remoteproc1"))):
    try:
        do()
        result[action] = "ok"
    except ControlPermissionError:
        result[action] = "EACCES"
print(json.dumps(result))
"""


@dataclass
class Users:
    """Three test users (alice, bob in the group, carol) and a group."""

    alice: str
    bob: str
    carol: str
    group: str

    def uid(self, name: str) -> int:
        return pwd.getpwnam(name).pw_uid

    def gid(self) -> int:
        return grp.getgrnam(self.group).gr_gid


def _run(*argv: str) -> None:
    """A user-database command; another agent on the machine may hold its lock: retry."""
    for _ in range(50):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0:
            return
        if "lock" not in done.stderr:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        time.sleep(0.1)
    raise RuntimeError(f"{' '.join(argv)}: the user database stayed locked")


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    tag = secrets.token_hex(3)
    made = Users(f"amplt{tag}a", f"amplt{tag}b", f"amplt{tag}c", f"amplt{tag}g")
    created: list[tuple[str, str]] = []
    try:
        _run("groupadd", made.group)
        created.append(("groupdel", made.group))
        for name, extra in ((made.alice, []), (made.bob, ["-G", made.group]), (made.carol, [])):
            _run("useradd", "-M", "-N", "-g", "nogroup", "-s", "/usr/sbin/nologin", *extra, name)
            created.insert(0, ("userdel", name))
        yield made
    finally:
        for command, name in created:
            _run(command, name)


#: where amplink and its dependency come from, for the users' interpreter
IMPORT_PATH = os.pathsep.join(str(Path(m.__file__).resolve().parent.parent)
                              for m in (amplink, elftools) if m.__file__)


def _interpreter(user: str) -> str:
    """A Python the test users can run and import amplink with, or a skip saying why."""
    reasons = []
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3",
                                    shutil.which("python3") or ""]):
        if not candidate:
            continue
        try:
            done = subprocess.run([candidate, "-c", "import amplink.transports.service"],
                                  user=user, group="nogroup", extra_groups=[],
                                  capture_output=True, text=True, timeout=60, cwd="/",
                                  env={"PYTHONPATH": IMPORT_PATH}, check=False)
        except OSError as exc:  # e.g. an interpreter under a directory only root may enter
            reasons.append(f"{candidate}: {exc.strerror}")
            continue
        if done.returncode == 0:
            return candidate
        reasons.append(f"{candidate}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    pytest.skip("no Python interpreter that an unprivileged test user can run with amplink: "
                + "; ".join(reasons))


def as_user(users: Users, name: str, root: Path, python: str) -> dict:
    """Run CLIENT as ``name`` (its own groups only: setgroups, not root's)."""
    extra = [users.group] if name == users.bob else []
    done = subprocess.run([python, "-c", CLIENT, str(root), name], user=name,
                          group="nogroup", extra_groups=extra, capture_output=True, text=True,
                          timeout=60, cwd="/", env={"PYTHONPATH": IMPORT_PATH})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the test users can reach (the service's own one stays 0711)."""
    base = Path(tempfile.mkdtemp(prefix="amplink-users-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def test_each_user_gets_exactly_what_the_policy_says(users: Users, shared_dir: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy(os.getuid(), (
        Rule(users=frozenset({users.uid(users.alice)}), processors=("loop*",),
             channels=("rpmsg-echo",), rights=frozenset({"send", "receive"}),
             actions=frozenset({"boot"})),
        Rule(groups=frozenset({users.gid()}), channels=("rpmsg-echo",),
             rights=frozenset({"receive"})),
    ), source="test")
    python = _interpreter(users.carol)
    caplog.set_level(logging.WARNING)
    with loop_service(shared_dir, policy=policy, root=shared_dir / "rt") as service:
        service.boot("loop0")
        service.control.add("fw", "loop1")  # offline: the users try to boot and stop it
        alice = as_user(users, users.alice, service.root, python)
        bob = as_user(users, users.bob, service.root, python)  # by his group
        carol = as_user(users, users.carol, service.root, python)
        assert wait_for(lambda: service.made["loop1"].state.value == "running", TIMEOUT)
    assert alice == {"attach": "ok", "rights": ["receive", "send"], "send": "ok",
                     "reply": f"hi from {users.alice}",
                     "visible": ["remoteproc0", "remoteproc1"], "boot": "ok", "stop": "EACCES"}
    assert bob == {"attach": "ok", "rights": ["receive"], "send": "EACCES",
                   "visible": ["remoteproc0", "remoteproc1"], "boot": "EACCES",
                   "stop": "EACCES"}
    assert carol == {"attach": "EACCES", "visible": [], "boot": "EACCES", "stop": "EACCES"}
    denied = " ".join(r.getMessage() for r in caplog.records if "denied" in r.getMessage())
    for name in (users.alice, users.bob, users.carol):
        assert f"uid {users.uid(name)} ({name})" in denied
