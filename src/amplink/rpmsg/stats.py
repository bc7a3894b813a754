"""Statistics snapshots: the debugging hook of links and endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """One endpoint at one moment."""

    name: str | None
    addr: int
    dst: int
    messages_sent: int
    messages_received: int
    queued: int
    callback_errors: int
    dropped_overflow: int
    closed: bool


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """One rpmsg link at one moment."""

    name: str
    state: str
    mtu: int
    messages_sent: int
    messages_received: int
    dropped_unknown_dst: int
    ns_errors: int
    safety_net_wakeups: int
    sleeps: int
    endpoints: tuple[EndpointStatistics, ...]
    transport: Mapping[str, Any] = field(default_factory=dict)
