"""What the endpoint service reports about itself: processors, links, channels, endpoints
and clients with their counters (``amplink ls``, ``amplink top``).

The service builds these snapshots and sends them as JSON (:func:`to_json`); a client
rebuilds them with :func:`from_json`, which checks every field's type and bounds the
lists, since nothing a peer sends is trusted.
"""

from __future__ import annotations

import dataclasses
import errno
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ServiceError

#: the most items of one list a client accepts in a status answer
MAX_ITEMS = 4096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """A client's endpoint on a channel."""

    addr: int
    client: int
    rights: tuple[str, ...]
    #: messages the client sent from it / the processor sent to it
    sent: int
    received: int
    #: messages to it withheld because the client may not receive
    denied: int


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One channel of a served link, with its clients' endpoints and counters."""

    name: str
    #: the processor's address of the channel
    dst: int
    endpoints: tuple[EndpointStatus, ...]
    #: clients that watch the channel (copies of every message the processor sends on it)
    watchers: tuple[int, ...]
    #: messages (and payload bytes) passed to the processor and from it
    to_processor: int
    from_processor: int
    bytes_to: int
    bytes_from: int
    #: messages dropped for clients that did not keep up, and sends refused (policy,
    #: link down, too large)
    dropped: int
    refused: int


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """One rpmsg link of a processor, as the service serves it."""

    index: int
    name: str
    state: str
    mtu: int
    messages_sent: int
    messages_received: int
    #: received buffers held (zero copy) on the processor's link, and the most allowed
    rx_held: int
    max_held: int
    channels: tuple[ChannelStatus, ...]


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """One connected client program."""

    id: int
    pid: int
    uid: int
    user: str
    #: the processor link it attached to ("" if none), and whether it watches channels
    processor: str
    link: int
    watch: bool
    endpoints: int
    #: frames waiting in the service for the client to read them, messages dropped
    #: because it did not read, messages waiting for a transmit buffer of the processor,
    #: sends refused
    queued: int
    dropped: int
    pending: int
    refused: int


@dataclass(frozen=True, slots=True)
class ProcessorStatus:
    """One processor of the service, with what it serves."""

    name: str
    dev: str
    state: str
    links: tuple[LinkStatus, ...]
    clients: tuple[ClientStatus, ...]


def to_json(status: Any) -> Any:
    """A snapshot as JSON values (tuples become lists)."""
    return dataclasses.asdict(status)


def from_json(cls: type[T], value: object, where: str = "status") -> T:
    """Rebuild a ``cls`` snapshot from a peer's JSON, checking every field;
    :class:`~amplink.errors.ServiceError` (EPROTO) if anything does not hold up."""
    if not isinstance(value, dict):
        raise _malformed(where, f"expected an object, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    args: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in value:
            raise _malformed(where, f"field {f.name!r} is missing")
        args[f.name] = _value(hints[f.name], value[f.name], f"{where}.{f.name}")
    return cls(**args)


def _value(hint: Any, value: object, where: str) -> Any:
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise _malformed(where, f"expected {hint.__name__}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
            raise _malformed(where, "expected an integer 0 .. 2**64-1")
        return value
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise _malformed(where, f"expected a list of at most {MAX_ITEMS} items")
        return tuple(_value(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)  # type: ignore[arg-type]
    raise TypeError(f"{where}: no rule for {hint!r}")  # a bug of this module


def _malformed(where: str, what: str) -> ServiceError:
    return ServiceError(errno.EPROTO, f"malformed answer from the amplink service: {where}: "
                                      f"{what}")
