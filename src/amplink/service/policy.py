"""Who may do what with the service's processors: the policy file and a peer's credentials.

Linux guards ``/dev/rpmsgN`` with file permissions and nothing finer. The service knows
each client's user and groups (``SO_PEERCRED``, ``SO_PEERGROUPS``, as the kernel saw
them at ``connect()``) and checks every request against a policy: which users and
groups may open which channels of which processors in which direction, and who may
boot, stop or crash processors. The service's owner may do everything; anyone else
only what a rule allows. Without a policy file only the owner may do anything.

The file is TOML (read with the standard library's :mod:`tomllib`)::

    [service]
    on_exit = "stop"            # or "keep": leave processors that outlive the service
                                # (hardware) running when it exits
    [[allow]]
    users = ["alice", 1001]     # names or uids; and/or
    groups = ["sensors"]        # names or gids (primary or supplementary)
    processors = ["sim*"]       # shell patterns of processor names (default: all)
    channels = ["rpmsg-echo"]   # shell patterns of channel names
    rights = ["send", "receive"]  # on those channels: send, receive, watch
    actions = ["boot", "stop"]  # on those processors: boot, stop, crash, configure
    firmware = ["amplink.firmware.examples.*"]  # what `boot` may load into a new one

Rights: ``send`` (messages to the processor), ``receive`` (what the processor sends to
the client's own endpoints), ``watch`` (copies of every message on the channel, both
ways: what the processor sends to any client, what any client sends to the processor).
Actions: ``boot`` (start, recover, set the
firmware of an existing processor; create one only with firmware matching
``firmware``: a simulated processor's firmware runs as the service's user), ``stop``
(stop, remove, shutdown-on-release), ``crash`` (inject a crash), ``configure``
(recovery and coredump settings). A client that may do anything with a processor may
also see it (list it, read its state and trace).

The file is refused (:class:`PolicyError`) if anything in it is unknown or misspelt,
names a user or group this machine does not have, or could be changed by someone other
than the service's owner or root: a policy that cannot be read as meant is not used.
"""

from __future__ import annotations

import array
import errno
import fnmatch
import grp
import os
import pwd
import socket
import stat
import struct
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import AmplinkError
from ..transports.service_wire import RIGHTS

ACTIONS = ("boot", "stop", "crash", "configure")
ENV_POLICY = "AMPLINK_POLICY"
#: the policy a service uses without --policy or $AMPLINK_POLICY, if it exists
POLICY_FILE = "policy.toml"
OnExit = Literal["stop", "keep"]
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_RULE_KEYS = {"users", "groups", "processors", "channels", "rights", "actions", "firmware"}


class PolicyError(AmplinkError, ValueError):
    """The policy file cannot be used as written (the message says where and why)."""


@dataclass(frozen=True, slots=True)
class Peer:
    """A client as the kernel saw it at ``connect()``."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @property
    def user(self) -> str:
        """The user's name, or the uid if it has none."""
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def describe(self) -> str:
        return f"uid {self.uid} ({self.user}) pid {self.pid}"


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the process at the other end of a connected Unix socket."""
    pid, uid, gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _CREDS.size))
    return Peer(pid, uid, gid, frozenset(_peer_groups(sock, uid, gid)))


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> Iterable[int]:
    for size in (256, 65536):  # NGROUPS_MAX is 65536
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            break  # an older kernel: fall back to the group database
        groups = array.array("I")
        groups.frombytes(raw[:len(raw) - len(raw) % 4])
        return groups
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[allow]]`` table: who (users, groups) may do what, where."""

    users: frozenset[int] = frozenset()
    groups: frozenset[int] = frozenset()
    processors: tuple[str, ...] = ("*",)
    channels: tuple[str, ...] = ()
    rights: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    firmware: tuple[str, ...] = ()

    def applies(self, peer: Peer) -> bool:
        return peer.uid in self.users or bool(self.groups & (peer.groups | {peer.gid}))

    def covers(self, processor: str) -> bool:
        return _matches(processor, self.processors)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Policy:
    """The rules of one service (see the module docstring); ``owner`` may do everything."""

    owner: int
    rules: tuple[Rule, ...] = ()
    on_exit: OnExit = "stop"
    source: str = "built-in default: only the owner"
    _all_rights: frozenset[str] = field(default=frozenset(RIGHTS), repr=False)

    def is_owner(self, peer: Peer) -> bool:
        return peer.uid == self.owner

    def _rules(self, peer: Peer, processor: str) -> Iterable[Rule]:
        return (r for r in self.rules if r.applies(peer) and r.covers(processor))

    def channel_rights(self, peer: Peer, processor: str, channel: str) -> frozenset[str]:
        """What ``peer`` may do on ``channel`` of ``processor`` (empty: nothing)."""
        if self.is_owner(peer):
            return self._all_rights
        rights: frozenset[str] = frozenset()
        for rule in self._rules(peer, processor):
            if _matches(channel, rule.channels):
                rights |= rule.rights
        return rights

    def may(self, peer: Peer, action: str, processor: str) -> bool:
        """Whether ``peer`` may ``action`` (boot, stop, crash, configure) ``processor``."""
        assert action in ACTIONS, action
        return self.is_owner(peer) or any(action in r.actions
                                           for r in self._rules(peer, processor))

    def may_see(self, peer: Peer, processor: str) -> bool:
        """Whether ``peer`` may know of ``processor`` (it may do something with it)."""
        return self.is_owner(peer) or any(r.channels or r.actions
                                          for r in self._rules(peer, processor))

    def may_load(self, peer: Peer, processor: str, firmware: str) -> bool:
        """Whether ``peer`` may create ``processor`` running ``firmware``."""
        return self.is_owner(peer) or any("boot" in r.actions and _matches(firmware, r.firmware)
                                          for r in self._rules(peer, processor))

    @property
    def grants_others(self) -> bool:
        """Whether anyone but the owner may do anything (the sockets must be reachable)."""
        return bool(self.rules)


def default_policy(owner: int | None = None) -> Policy:
    """Only the owner (default: this process's user) may do anything."""
    return Policy(os.getuid() if owner is None else owner)


def find_policy(root: Path, explicit: Path | str | None = None) -> Path | None:
    """The policy file to use: ``explicit``, else $AMPLINK_POLICY, else ``root``/policy.toml
    if it exists, else None (the built-in default)."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(ENV_POLICY)
    if env:
        return Path(env)
    candidate = root / POLICY_FILE
    return candidate if candidate.exists() else None


def load_policy(path: Path | str, *, owner: int | None = None) -> Policy:
    """Read and check the policy file at ``path`` (see the module docstring)."""
    path = Path(path)
    owner = os.getuid() if owner is None else owner
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid not in (owner, 0) or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
                raise PolicyError(
                    f"{path}: belongs to uid {st.st_uid} or others can write to it (mode "
                    f"{stat.S_IMODE(st.st_mode):o}): anyone able to change it could grant "
                    "themselves rights; make it the service owner's (or root's), mode 0644")
            data = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    return parse_policy(data, owner=owner, source=str(path))


def parse_policy(data: dict[str, Any], *, owner: int, source: str) -> Policy:
    """Check a decoded policy document; :class:`PolicyError` names what is wrong."""
    _known(data, {"service", "allow"}, source)
    service = data.get("service", {})
    if not isinstance(service, dict):
        raise PolicyError(f"{source}: [service] must be a table")
    _known(service, {"on_exit"}, f"{source}: [service]")
    on_exit = service.get("on_exit", "stop")
    if on_exit not in ("stop", "keep"):
        raise PolicyError(f"{source}: [service] on_exit must be \"stop\" or \"keep\", got "
                          f"{on_exit!r}")
    tables = data.get("allow", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise PolicyError(f"{source}: allow must be an array of tables ([[allow]])")
    rules = tuple(_rule(t, f"{source}: [[allow]] #{i + 1}") for i, t in enumerate(tables))
    return Policy(owner, rules, on_exit, source)


def _known(table: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def _ids(table: dict[str, Any], key: str, where: str) -> frozenset[int]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise PolicyError(f"{where}: {key} must be a list of names or numeric ids")
    ids: set[int] = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 1 << 32:
            ids.add(item)
        elif isinstance(item, str) and item:
            try:
                ids.add(pwd.getpwnam(item).pw_uid if key == "users" else grp.getgrnam(item).gr_gid)
            except KeyError:
                what = "user" if key == "users" else "group"
                raise PolicyError(f"{where}: no {what} {item!r} on this machine") from None
        else:
            raise PolicyError(f"{where}: {key}: {item!r} is neither a name nor an id")
    return frozenset(ids)


def _rule(table: dict[str, Any], where: str) -> Rule:
    _known(table, _RULE_KEYS, where)
    users, groups = _ids(table, "users", where), _ids(table, "groups", where)
    if not users and not groups:
        raise PolicyError(f"{where}: say whom it allows (users and/or groups)")
    processors = _strings(table, "processors", where) if "processors" in table else ("*",)
    channels = _strings(table, "channels", where)
    rights = _strings(table, "rights", where)
    actions = _strings(table, "actions", where)
    for value, known, key in ((rights, RIGHTS, "rights"), (actions, ACTIONS, "actions")):
        bad = [v for v in value if v not in known]
        if bad:
            raise PolicyError(f"{where}: unknown {key[:-1]} {bad[0]!r} (known: "
                              f"{', '.join(known)})")
    if bool(channels) != bool(rights):
        raise PolicyError(f"{where}: channels and rights go together (which channels, and "
                          "what may be done on them)")
    if not processors or not (channels or actions):
        raise PolicyError(f"{where}: allows nothing (give channels and rights, or actions)")
    firmware = _strings(table, "firmware", where)
    if firmware and "boot" not in actions:
        raise PolicyError(f"{where}: firmware is what 'boot' may load: add the boot action")
    return Rule(users, groups, processors, channels, frozenset(rights), frozenset(actions),
                firmware)
