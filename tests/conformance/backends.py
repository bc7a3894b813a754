"""The conformance suite's registry: every backend, with a factory and what it can do.

Every case of the suite runs against every registered :class:`BackendCase` and skips
only what the case's declared capabilities (or extras) exclude; the skip reason names
the capability. A case talks to the link under test through its public API
(:attr:`Harness.local`) and to the far side through a :class:`peers.Peer`, which
works the same whether the far side is a link in this process or firmware in a child.

Adding a backend: one file, one entry
-------------------------------------
Write ``tests/conformance/backend_<name>.py`` with a list ``CASES`` of
:class:`BackendCase`, then add ``"backend_<name>"`` to :data:`BACKEND_MODULES` below.
A case's factory is called as ``factory(side, dispatch)`` and returns a context manager
that yields a connected :class:`Harness` and tears everything down on exit (processes,
fds, shared memory)::

    @contextmanager
    def _fifo_pair(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
        a, b = FifoLink.pair(dispatch=dispatch)           # the two ends, in this process
        local, far = (a, b) if side == "host" else (b, a)
        peer = LocalPeer(far, role=other_side(side), dispatch=dispatch)
        try:
            yield Harness(local=local, peer=peer, side=side, dispatch=dispatch)
        finally:
            local.close(); far.close(); peer.close()

    CASES = [BackendCase(
        id="fifo", factory=_fifo_pair,
        capabilities=Capabilities(max_payload=..., addressing="channel", ...),
        can_kill_peer=False, kill_note="no hang-up signal between two FIFO ends",
    )]

``capabilities`` must equal what the backend's links report (a case checks it): the
skips are only as honest as this declaration. Extras say what the *harness* can do:
drive either side from the test process (``sides``), kill the peer
(``can_kill_peer``), make the peer write garbage into its side of the transport
(``hostile``), and whether the peer is another process (``cross_process``). Each
missing extra comes with a note that the skip reason quotes.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from amplink.link import Capabilities, Link
from amplink.link.dispatch import DispatchMode

if TYPE_CHECKING:
    from peers import Peer

#: every shared memory object, socket and directory this run makes starts with this
RUN_PREFIX = f"amplink-conf-{os.getpid()}-"

#: which end of the link the test process drives through :attr:`Harness.local`
Side = Literal["host", "device"]
SIDES: tuple[Side, ...] = ("host", "device")
DISPATCH_MODES: tuple[DispatchMode, ...] = ("thread", "caller")

#: the modules that register backends (each has a list ``CASES``): one entry each
BACKEND_MODULES: tuple[str, ...] = (
    "backend_virtio",   # rpmsg over virtio, both ends in this process
    "backend_openamp",  # OpenAMP's Linux-userspace profile, both roles in this process
    "backend_sim",      # a simulated processor: the far side is the peer agent firmware
    "backend_loopback",  # two links joined by queues (no shared memory, no zero copy)
    "backend_rpmsg_char",  # /dev/rpmsg* over the fake kernel ("pair" addressing)
    "backend_keembay",  # Keem Bay IPC: header pools and FIFOs ("channel" addressing)
    "backend_rtkit",    # RTKit application endpoints: 8-byte messages ("endpoint" addressing)
    "backend_service",  # a client of the amplink service ("pair" addressing)
)


def other_side(side: Side) -> Side:
    return "device" if side == "host" else "host"


@dataclass
class Harness:
    """A connected link for one case: the side under test and its peer."""

    #: the link whose API the case exercises (in this process)
    local: Link
    #: the far side (see :class:`peers.Peer`)
    peer: Peer
    side: Side
    dispatch: DispatchMode
    #: the case that built it (set by the fixture)
    case: BackendCase | None = None
    #: set when the case damaged the link (killed the peer, wrote garbage, closed the
    #: link): a factory that reuses links must not reuse this one
    tainted: bool = False


Factory = Callable[[Side, DispatchMode], AbstractContextManager[Harness]]


@dataclass(frozen=True)
class BackendCase:
    """One registered backend configuration (see the module docstring)."""

    #: short name used in test ids ("virtio-eventfd", "openamp", "sim")
    id: str
    #: ``factory(side, dispatch)`` -> a context manager yielding a :class:`Harness`
    factory: Factory
    #: what the backend's links declare (checked against them by a case)
    capabilities: Capabilities
    #: the sides the test process can drive, and why the others are missing
    sides: tuple[Side, ...] = SIDES
    sides_note: str = ""
    #: the dispatch modes the factory can build, and why others are missing
    dispatch_modes: tuple[DispatchMode, ...] = DISPATCH_MODES
    dispatch_note: str = ""
    #: the peer can be killed (Peer.die), and why not
    can_kill_peer: bool = False
    kill_note: str = ""
    #: the peer can write garbage into its side of the transport (Peer.garbage), and why not
    hostile: bool = False
    hostile_note: str = ""
    #: the peer lives in another process
    cross_process: bool = False
    #: None if the backend can run here, else why not (checked before each case)
    unavailable: Callable[[], str | None] | None = None
    #: called after the folder's last case (stops pooled processes, ...); a case with a
    #: cleanup is taken to pool its harnesses: its leaks are counted over the whole run
    cleanup: Callable[[], None] | None = None
    #: a line for the run's summary (e.g. how many processes were booted), or None
    summary: Callable[[], str | None] | None = None
    #: what makes this configuration what its id says, checked by a case:
    #: ``{"backend": {stat: value}}`` for ``statistics().backend``, ``{"link": {attr:
    #: value}}`` for attributes of the link
    expect: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: bugs a case found in this backend that are not fixed yet: test function name ->
    #: the reason; the case runs as ``xfail(strict=True)`` (it fails loudly once fixed)
    known_failures: dict[str, str] = field(default_factory=dict)
    #: anything else a backend wants its cases to see
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sides or not set(self.sides) <= set(SIDES):
            raise ValueError(f"{self.id}: sides must be a non-empty subset of {SIDES}")
        if not self.dispatch_modes or not set(self.dispatch_modes) <= set(DISPATCH_MODES):
            raise ValueError(f"{self.id}: dispatch_modes must be a subset of {DISPATCH_MODES}")
        for flag, note in (("can_kill_peer", "kill_note"), ("hostile", "hostile_note")):
            if not getattr(self, flag) and not getattr(self, note):
                raise ValueError(f"{self.id}: {flag}=False needs a {note} saying why")
        if set(self.sides) != set(SIDES) and not self.sides_note:
            raise ValueError(f"{self.id}: a missing side needs a sides_note saying why")
        if set(self.dispatch_modes) != set(DISPATCH_MODES) and not self.dispatch_note:
            raise ValueError(f"{self.id}: a missing dispatch mode needs a dispatch_note")


#: the extras a case may require, with the note that explains their absence
EXTRAS = {"can_kill_peer": "kill_note", "hostile": "hostile_note", "cross_process": None}
CAPABILITY_FLAGS = tuple(f.name for f in fields(Capabilities)
                         if f.type in ("bool", bool))


def unmet(case: BackendCase, needs: tuple[str, ...] = (), lacks: tuple[str, ...] = (),
          addressing: tuple[str, ...] | None = None) -> str | None:
    """Why ``case`` cannot run a test that needs the capabilities / extras ``needs``,
    the absence of the capabilities ``lacks``, and one of the ``addressing`` models; None
    if it can."""
    caps = case.capabilities
    for name in needs:
        if name in EXTRAS:
            if not getattr(case, name):
                note = EXTRAS[name]
                why = getattr(case, note) if note else "not declared"
                return f"{case.id}: {name}=False ({why})"
        elif name in CAPABILITY_FLAGS:
            if not getattr(caps, name):
                return f"{case.id} does not declare the capability {name}"
        else:
            raise ValueError(f"unknown capability or extra {name!r}")
    for name in lacks:
        if name not in CAPABILITY_FLAGS:
            raise ValueError(f"unknown capability {name!r}")
        if getattr(caps, name):
            return (f"{case.id} declares the capability {name} (this case checks the "
                    f"error of a backend without it)")
    if addressing is not None and caps.addressing not in addressing:
        return (f"{case.id}: capability addressing={caps.addressing!r}, the case needs "
                f"{' or '.join(map(repr, addressing))}")
    return None


#: comma-separated fnmatch patterns of the backend case ids to run (unset: all)
SELECT_ENV = "AMPLINK_CONFORMANCE_BACKENDS"


def registered() -> list[BackendCase]:
    """The registered backend cases that ``$AMPLINK_CONFORMANCE_BACKENDS`` selects (all
    by default), in registration order (ids are unique)."""
    cases: list[BackendCase] = []
    for name in BACKEND_MODULES:
        cases.extend(importlib.import_module(name).CASES)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"backend case ids must be unique: {ids}")
    patterns = [p.strip() for p in os.environ.get(SELECT_ENV, "").split(",") if p.strip()]
    if not patterns:
        return cases
    chosen = [c for c in cases if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
    if not chosen:  # a typo must not pass as a green run of nothing
        raise ValueError(f"{SELECT_ENV}={patterns} selects none of {ids}")
    return chosen
