"""One end of an rpmsg link with OpenAMP's Linux-userspace profile, in either role.

The *role* (host = virtio driver, remote = virtio device) and the *socket end* (server
or client) are independent, as in OpenAMP:

* the server writes the resource table at offset 0 of the shared memory, deletes a
  stale socket file, binds, listens and accepts one connection;
* the client retries its connect until the timeout (OpenAMP: about 50 s), then reads
  and checks the table.

Then the host writes the accepted features (name service) and kicks, zeroes both
vrings, sets vring 1 avail.flags = NO_INTERRUPT, posts the RX buffers and writes the
status 0x04 (DRIVER_OK, only that bit) and kicks; the remote waits for that bit before
it touches the rings, then sets vring 0 used.flags = NO_NOTIFY. A kick is one byte on
the socket; the socket closing means the peer is gone (:class:`LinkDown`). Neither
OpenAMP side kicks for returned buffers, so transmit buffers are reclaimed by polling.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from contextlib import ExitStack
from typing import Any, Literal, Self

from ..._unix import listen_unix
from ...errors import EndpointClosed, LinkDown, RemoteProtocolError
from ...link.endpoint import Callback, Endpoint
from ...link.runtime import Link
from ...link.stats import LinkStatistics
from ...memory.region import SharedRegion
from ...notify.doorbell import SocketDoorbell
from ...notify.waiter import Waiter, wait_readable
from ...rpmsg.wire import RPMSG_ADDR_ANY
from ...transports.virtio import OPENAMP, wait_for_driver_ok
from ...transports.virtio_link import device_link, driver_link
from ...virtio.vdev import VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_RPMSG_F_NS, VdevControl
from ..openamp_abi import DEFAULT_PEER_TIMEOUT
from .errors import PeerTimeout, StaleSharedMemory
from .profile import RSC_TABLE_OFFSET, OpenAmpConfig, peek_vdev_status, read_resource_table

log = logging.getLogger(__name__)

Role = Literal["host", "remote"]

#: the features an OpenAMP host accepts: the name service only
OPENAMP_FEATURES = 1 << VIRTIO_RPMSG_F_NS
_CONNECT_RETRY_MAX = 0.1  # seconds between connection attempts, at most
_CONNECT_ATTEMPT_MIN = 0.1  # seconds one connect() may block, at least


class OpenAmpLink:
    """An rpmsg link to a process of OpenAMP's Linux profile (or to amplink playing one).

    Open one with :meth:`open`; :attr:`bus` is the usual :class:`Link`. Create the
    services right after opening (see :meth:`create_service`), as OpenAMP programs do.
    """

    def __init__(self, bus: Link, config: OpenAmpConfig, role: Role, server: bool) -> None:
        self.bus = bus
        self.config = config
        self.role = role
        self.server = server

    @classmethod
    def open(
        cls,
        role: Role,
        *,
        server: bool,
        config: OpenAmpConfig | None = None,
        timeout: float = DEFAULT_PEER_TIMEOUT,
        poll_mode: bool = False,
        name: str | None = None,
    ) -> Self:
        """Connect as ``role`` ("host" or "remote"), as the socket server or the client.

        ``timeout`` bounds each wait for the other side: the connection (accept or
        connect) and, for the remote, the host's DRIVER_OK. Raises :class:`PeerTimeout`
        (:class:`StaleSharedMemory` when a client finds only a dead run's table),
        :class:`RemoteProtocolError` for a bad table, :class:`LinkDown` if the other side
        hangs up during the handshake.
        """
        if role not in ("host", "remote"):
            raise ValueError(f"role must be 'host' or 'remote', got {role!r}")
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        config = config or OpenAmpConfig()
        host = role == "host"
        with ExitStack() as undo:
            if server:
                region = _open_shm(config)
                undo.callback(region.close)
                # The server writes the table before it listens: a client that connected
                # never reads a stale one.
                region.write(RSC_TABLE_OFFSET, config.table_bytes())
                sock = _accept_one(config, timeout)
                undo.callback(sock.close)
            else:
                sock = _connect(config, timeout)
                undo.callback(sock.close)
                region = _open_shm(config)  # after the connect: the object the server wrote
                undo.callback(region.close)
            entry, body = read_resource_table(region, config, host=host)
            vdev = VdevControl(region, body)
            if host and vdev.status:
                raise RemoteProtocolError(
                    f"the vdev status in {config.shm_path} is 0x{vdev.status:02x}, not 0, "
                    "right after the connection: another host drives this shared memory, "
                    "or the server did not write a fresh table; use a shared memory "
                    "name of your own (--shm)")
            doorbell = SocketDoorbell(sock)
            common: dict[str, Any] = dict(
                entry=entry, name=name or f"openamp-{role}", poll_mode=poll_mode,
                buf_size=config.buf_size, owned=[region], profile=OPENAMP)
            if host:
                bus = driver_link(region, vdev, config.rx_buffers, doorbell,
                                  features=OPENAMP_FEATURES, tx_offset=config.tx_buffers,
                                  **common)
            else:
                bus = device_link(
                    region, vdev, doorbell,
                    wait_driver_ok=lambda control, waiter: _wait_driver_ok(
                        control, waiter, config, timeout),
                    **common)
            undo.pop_all()
        log.info("%s: %s up as the socket %s on %s, shared memory %s", bus.name, role,
                 "server" if server else "client", config.socket_path, config.shm_path)
        return cls(bus, config, role, server)

    # -- services ----------------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        """The largest payload (496 B with OpenAMP's 512 B buffers)."""
        return self.bus.mtu

    def create_service(self, name: str, *, callback: Callback | None = None) -> Endpoint:
        """Create and announce endpoint ``name`` at a dynamic address (1024 first).

        Its destination is the address the other side announces for the same name, or
        the source of the first message it receives (:meth:`wait_peer` waits for it).
        """
        return self.bus.create_endpoint(name, announce=True, callback=callback)

    def wait_peer(self, ep: Endpoint, timeout: float) -> int:
        """Wait until ``ep`` knows its destination; return it (PeerTimeout if it does not)."""
        if not self.bus.wait_until(lambda: ep.dst != RPMSG_ADDR_ANY or ep.closed, timeout,
                                   tx=False):
            announced = ", ".join(f"{c.name!r} at 0x{c.dst:x}" for c in self.bus.channels())
            raise PeerTimeout(
                f"the {'remote' if self.role == 'host' else 'host'} did not announce "
                f"{ep.name!r} (nor send to 0x{ep.addr:x}) within {timeout} s; announced: "
                f"{announced or 'nothing'}")
        if ep.closed:
            raise EndpointClosed(f"endpoint {ep.name!r} 0x{ep.addr:x} was closed before its "
                                 "peer was known")
        return ep.dst

    def statistics(self) -> LinkStatistics:
        """The bus's counters (the transport's include protocol faults and kicks sent)."""
        return self.bus.statistics()

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the endpoints (announced while the link is up), close socket and memory.

        The shared memory object stays, as with OpenAMP.
        """
        self.bus.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        end = "server" if self.server else "client"
        return (f"OpenAmpLink({self.role}, {end}, shm={self.config.shm_name!r}, "
                f"socket={self.config.socket_path!r})")


# -- the pieces ----------------------------------------------------------------------------------
def _open_shm(config: OpenAmpConfig) -> SharedRegion:
    # Created (mode 0600) and extended by whichever side opens it first; never deleted.
    return SharedRegion.posix(config.shm_name, config.shm_size, create=True)


def _accept_one(config: OpenAmpConfig, timeout: float) -> socket.socket:
    """Listen on the socket path (replacing a stale socket) and accept one client."""
    path = config.socket_path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket: remove it or choose "
                                  "another socket path (--socket)")
        os.unlink(path)  # left by an earlier server (OpenAMP removes it too)
    listener = listen_unix(path, 1)
    identity: tuple[int, int] | None = None
    try:
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino)
        if not wait_readable(listener, timeout):
            raise PeerTimeout(
                f"no client connected to {path} within {timeout} s: start the other side as "
                "the client (amplink: --client; OpenAMP's demos: instance 1)")
        sock, _ = listener.accept()
    finally:
        listener.close()
        if identity is not None:
            _unlink_if_same(path, identity)
    return sock


def _unlink_if_same(path: str, identity: tuple[int, int]) -> None:
    """Remove our socket file (not one a newer server put at the same path)."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass


def _connect(config: OpenAmpConfig, timeout: float) -> socket.socket:
    """Connect to the server, retrying until ``timeout``; explain a failure."""
    path = config.socket_path
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A server that stopped accepting but still listens makes connect() block.
        sock.settimeout(max(deadline - time.monotonic(), _CONNECT_ATTEMPT_MIN))
        try:
            sock.connect(path)
            sock.settimeout(None)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as exc:
            sock.close()
            why = ("no socket file" if isinstance(exc, FileNotFoundError) else
                   "nobody listens" if isinstance(exc, ConnectionRefusedError) else
                   "the server accepts no connection")
        except BaseException:
            sock.close()
            raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(delay, remaining))
        delay = min(2 * delay, _CONNECT_RETRY_MAX)
    status = peek_vdev_status(config)
    if status is not None and status & VIRTIO_CONFIG_S_DRIVER_OK:
        raise StaleSharedMemory(
            f"no server accepted on {path} within {timeout} s ({why}), and "
            f"{config.shm_path} holds the resource table of an earlier run whose host had "
            f"set DRIVER_OK (status 0x{status:02x}): that run's server is gone. Start the "
            "server side (it rewrites the table, the host zeroes the rings), or remove "
            f"{config.shm_path} if no run uses it")
    raise PeerTimeout(
        f"no server accepted on {path} within {timeout} s ({why}): start the other side as "
        "the server first (amplink: --server; OpenAMP's demos: instance 0), or wait longer")


def _wait_driver_ok(vdev: VdevControl, waiter: Waiter, config: OpenAmpConfig,
                    timeout: float) -> None:
    try:
        wait_for_driver_ok(vdev, waiter, timeout)
    except LinkDown as exc:
        raise LinkDown(f"the host hung up before setting DRIVER_OK: {exc}") from None
    except TimeoutError:
        raise PeerTimeout(
            f"the host is connected but did not set DRIVER_OK (status bit 0x04) in "
            f"{config.shm_path} within {timeout} s (status 0x{vdev.status:02x}): does it "
            f"use the same shared memory ({config.shm_name}, 0x{config.shm_size:x} bytes)?"
        ) from None
