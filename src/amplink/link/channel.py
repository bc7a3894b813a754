"""Channels (named rpmsg devices) and the drivers that bind to them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._args import callable_arg
from ..errors import InvalidArgumentType
from ..rpmsg.wire import RPMSG_ADDR_ANY

if TYPE_CHECKING:
    from .endpoint import Callback, Endpoint


@dataclass(eq=False)
class RpmsgChannel:
    """A named service at a remote address, announced by the peer or declared static.

    ``endpoint`` is the local endpoint a driver (or :meth:`Link.open_channel`)
    bound to it; ``priv`` is the driver's private data.
    """

    name: str
    dst: int
    src: int = RPMSG_ADDR_ANY
    static: bool = False
    endpoint: Endpoint | None = None
    driver: RpmsgDriver | None = None
    priv: Any = None
    removed: bool = False


@dataclass(eq=False)
class RpmsgDriver:
    """Binds to channels whose name is in ``id_table``.

    ``probe(channel)`` runs once the driver's endpoint exists (``channel.endpoint``);
    ``remove(channel)`` runs before the endpoint is destroyed; ``callback`` receives
    the endpoint's messages as ``callback(endpoint, payload, src)``.
    """

    id_table: Sequence[str]
    probe: Callable[[RpmsgChannel], None] | None = None
    remove: Callable[[RpmsgChannel], None] | None = None
    callback: Callback | None = None
    name: str = ""
    channels: list[RpmsgChannel] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.id_table, str) or not all(isinstance(n, str) for n in self.id_table):
            raise InvalidArgumentType(f"id_table must be a sequence of channel names, got "
                                      f"{self.id_table!r}")
        for name, fn in (("probe", self.probe), ("remove", self.remove),
                         ("callback", self.callback)):
            callable_arg(fn, name)

    def matches(self, channel_name: str) -> bool:
        return channel_name in self.id_table
