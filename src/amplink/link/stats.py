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
    #: messages that were queued when the endpoint closed (never read)
    dropped_at_close: int = 0


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """One link at one moment."""

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
    #: the backend's own counters (protocol faults, kicks, buffers, ...)
    backend: Mapping[str, Any] = field(default_factory=dict)
    #: received buffers held by zero-copy endpoints, the most they may hold, and how often
    #: receiving paused because of it
    rx_held: int = 0
    max_held: int = 0
    rx_backpressure: int = 0
