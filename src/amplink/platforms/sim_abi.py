"""The firmware ABI of simulated processors: the shared memory, fds and lifeline a
firmware child gets, and how it reports back.

A simulated processor is a child process. It inherits, by fd number given in the
environment variables below, one shared-memory fd (a memfd), eventfd doorbells and a
lifeline socket. Firmware in any language can follow this convention; Python firmware
gets it for free from :mod:`amplink.firmware`; C firmware from
``amplink/firmware/examples/amplink_rpmsg.h`` (``native_echo.c`` is the example).

The memory (``AMPLINK_SHM_FD``, ``AMPLINK_SHM_SIZE`` bytes) is the processor's physical
memory: its byte at offset ``o`` has device address ``AMPLINK_DA_BASE + o``, and every
address in the resource table, vring descriptor and rpmsg buffer is such a device
address (there is no IOMMU). The processed resource table is at offset
``AMPLINK_RSC_TABLE`` and is ``AMPLINK_RSC_SIZE`` bytes long; the firmware parses it
(untrusted, bounds-checked) to find its vdevs, trace buffers and carveouts.

The host (:class:`~amplink.platforms.sim.SimRemoteProc`, which every way of starting
firmware uses) takes the firmware's own resource table (Python firmware: its module's
``RESOURCE_TABLE``; a native executable: its ``.resource_table`` ELF section; neither:
the default table of :mod:`amplink.platforms.sim.layout`), allocates carveouts, trace
buffers, vrings and buffers in the memory, and writes the processed table there before
it starts the child.

This module is the ABI alone: it imports nothing of amplink, so that firmware loads
no host code to learn it.

:class:`SimEnv` writes and reads the environment variables below; Python firmware also
takes its log level from ``AMPLINK_LOG`` (:data:`ENV_LOG`), which it inherits.

Doorbells: ``AMPLINK_KICK_RX_FD`` is an eventfd the host writes to kick the firmware
(the firmware reads it), ``AMPLINK_KICK_TX_FD`` one the firmware writes to kick the
host; they serve the first rpmsg vdev. ``AMPLINK_VDEV<i>_KICK_RX_FD`` and
``AMPLINK_VDEV<i>_KICK_TX_FD`` give the pair of rpmsg vdev ``i`` (0, 1, ... in table
order; i = 0 repeats the unnumbered pair). The firmware must not touch a vdev's vrings
before the host set DRIVER_OK (bit 0x04) in its status byte.

Keem Bay IPC (:mod:`amplink.transports.keembay`): a processor whose table has a carveout
named ``keembay-ipc`` (:data:`KEEMBAY_CARVEOUT`) talks Keem Bay IPC in it, the firmware
being the VPU node. Its FIFOs' "not empty" interrupts are one more doorbell pair, after
those of the rpmsg vdevs (pair ``i`` = the number of rpmsg vdevs). The host initialises
the area after it started the child; the firmware waits until the host's state word in
the area's descriptor says UP, then checks the descriptor before it uses the area.

The lifeline is an AF_UNIX stream socket. Host -> firmware: end of file means the host
is gone (or stops the processor): the firmware must exit. Firmware -> host, bytes:

* ``R`` once, when the firmware is up (after DRIVER_OK): the host's start completes;
* ``H``, a watchdog heartbeat; with ``AMPLINK_WATCHDOG_MS`` set (and not 0) the host
  declares a watchdog crash when no ``H`` came for that many milliseconds after ``R``;
* ``F``, a reason, a newline: a fatal error (the reason: at most
  :data:`FATAL_REASON_MAX` bytes of UTF-8); the host declares a crash and stops the
  firmware (it need not exit itself).

Other bytes are ignored. The process exiting (or the lifeline closing) while the
processor is running is a crash too.

Shared buffers (``AMPLINK_BUFFERS_FD``, optional): an AF_UNIX ``SOCK_SEQPACKET`` socket
through which the host attaches buffers to the processor, as its IOMMU maps them. The
firmware sees only what is attached, at the device address given, and nothing else of
the host's memory. Every message is one :data:`ATTACH_MSG` struct, little-endian,
packed (40 bytes)::

    struct amplink_attach_msg {
        char     magic[4];  /* "AMAT" */
        uint8_t  version;   /* 1 */
        uint8_t  op;        /* ATTACH_OP_* */
        uint8_t  access;    /* the device may: 1 read, 2 write, 3 both */
        uint8_t  status;    /* ACK: 0 or an errno; else 0 */
        uint32_t id;        /* the attachment's id (hand-over references name it) */
        uint32_t seq;       /* the host's request number, echoed by the ACK */
        uint64_t da;        /* device address of the first attached byte */
        uint64_t offset;    /* ATTACH: where the bytes start in the fd */
        uint64_t length;    /* bytes attached (da .. da + length - 1) */
    };

Host -> firmware: ``ATTACH`` (1) carries exactly one fd by ``SCM_RIGHTS``: map
``[offset, offset + length)`` of it (shared, read-only unless ``access`` has write) and
make it reachable at ``da``; ``DETACH`` (2, no fd): forget attachment ``id`` and unmap
it. The firmware answers each with ``ACK`` (3), the same ``id`` and ``seq`` and a
``status`` (0, or an errno such as EINVAL for an fd it cannot map); the host's attach
and detach return once the ACK came. Firmware -> host, unasked: ``FAULT`` (4) with the
``da``, ``length`` and ``access`` of an access the firmware made outside what is
attached (it is not performed); the host's IOMMU records it as a fault (counted, an
``mmufault`` event, a crash if the processor's policy says so). The socket closing
means the host is gone (the lifeline says it too). Python firmware gets all of this
from :func:`amplink.firmware.dma`; C firmware from ``amplink_buffers.h``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ENV_SHM_FD = "AMPLINK_SHM_FD"          # inherited fd of the shared memory (memfd)
ENV_SHM_SIZE = "AMPLINK_SHM_SIZE"      # its size in bytes
ENV_DA_BASE = "AMPLINK_DA_BASE"        # device address of its first byte
ENV_RSC_TABLE = "AMPLINK_RSC_TABLE"    # offset of the resource table in it
ENV_RSC_SIZE = "AMPLINK_RSC_SIZE"      # bytes reserved for the table
ENV_KICK_RX_FD = "AMPLINK_KICK_RX_FD"  # eventfd the host writes to kick the firmware
ENV_KICK_TX_FD = "AMPLINK_KICK_TX_FD"  # eventfd the firmware writes to kick the host
ENV_LIFELINE_FD = "AMPLINK_LIFELINE_FD"  # socket: write one byte when up; EOF = host gone
ENV_BUF_SIZE = "AMPLINK_BUF_SIZE"      # rpmsg buffer size (512)
ENV_POLL = "AMPLINK_POLL"              # "1": the firmware should poll instead of sleeping
ENV_SPIN_US = "AMPLINK_SPIN_US"        # spin this many microseconds before each sleep
ENV_NAME = "AMPLINK_NAME"              # the processor's name
ENV_WATCHDOG_MS = "AMPLINK_WATCHDOG_MS"  # heartbeat period the host expects (absent/0: none)
ENV_VDEV_KICK_RX_FD = "AMPLINK_VDEV{index}_KICK_RX_FD"  # per rpmsg vdev (format with index)
ENV_VDEV_KICK_TX_FD = "AMPLINK_VDEV{index}_KICK_TX_FD"
ENV_LOG = "AMPLINK_LOG"                # log level of Python firmware (e.g. "DEBUG")
ENV_BUFFERS_FD = "AMPLINK_BUFFERS_FD"  # socket: buffers attached and detached (optional)

# The buffer socket (see the module docstring).
ATTACH_MAGIC = b"AMAT"
ATTACH_VERSION = 1
ATTACH_MSG = "<4sBBBBIIQQQ"  # magic, version, op, access, status, id, seq, da, offset, length
ATTACH_MSG_SIZE = 40
ATTACH_OP_ATTACH = 1
ATTACH_OP_DETACH = 2
ATTACH_OP_ACK = 3
ATTACH_OP_FAULT = 4

#: the carveout of a processor that talks Keem Bay IPC (see the module docstring)
KEEMBAY_CARVEOUT = "keembay-ipc"

# The lifeline protocol, firmware -> host.
LIFELINE_READY = b"R"
LIFELINE_HEARTBEAT = b"H"
LIFELINE_FATAL = b"F"
LIFELINE_FATAL_END = b"\n"
FATAL_REASON_MAX = 200
#: how long the host waits by default for a started firmware's ``R`` (the processor's
#: ``boot_timeout``; ``amplink run --boot-timeout``)
DEFAULT_BOOT_TIMEOUT = 20.0

#: exit status of ``python -m amplink.firmware --resource-table SPEC`` (how the host reads
#: a Python firmware's table) when the module does not exist
TABLE_READER_NO_MODULE = 66  # EX_NOINPUT
#: ... and when its RESOURCE_TABLE is neither a ResourceTable nor bytes
TABLE_READER_BAD_TABLE = 65  # EX_DATAERR


def _unset(key: str) -> RuntimeError:
    return RuntimeError(f"{key} is not set: firmware must be started by an amplink host "
                        "(e.g. `amplink run FIRMWARE`)")


@dataclass(frozen=True)
class SimEnv:
    """What the host tells a firmware child in its environment (see the module docstring).

    The host passes :meth:`to_env`; the firmware reads it back with :meth:`from_env`,
    which checks every value. ``kicks`` holds one ``(rx_fd, tx_fd)`` pair per rpmsg
    vdev, in table order, as the firmware sees them: it reads ``rx_fd`` (the host kicks
    it) and writes ``tx_fd``. ``spin`` and ``watchdog`` are in seconds.
    """

    shm_fd: int
    shm_size: int
    da_base: int
    table_offset: int
    table_size: int
    lifeline_fd: int
    buf_size: int
    kicks: tuple[tuple[int, int], ...] = ()
    name: str = "firmware"
    poll_mode: bool = False
    spin: float = 0.0
    watchdog: float | None = None
    buffers_fd: int | None = None

    def to_env(self) -> dict[str, str]:
        """The variables to add to the child's environment."""
        env = {
            ENV_SHM_FD: str(self.shm_fd), ENV_SHM_SIZE: str(self.shm_size),
            ENV_DA_BASE: str(self.da_base), ENV_RSC_TABLE: str(self.table_offset),
            ENV_RSC_SIZE: str(self.table_size), ENV_LIFELINE_FD: str(self.lifeline_fd),
            ENV_BUF_SIZE: str(self.buf_size), ENV_POLL: "1" if self.poll_mode else "0",
            ENV_NAME: self.name, ENV_SPIN_US: str(round(self.spin * 1e6)),
            ENV_WATCHDOG_MS: str(round(self.watchdog * 1000) if self.watchdog else 0),
        }
        if self.buffers_fd is not None:
            env[ENV_BUFFERS_FD] = str(self.buffers_fd)
        for i, (rx_fd, tx_fd) in enumerate(self.kicks):
            env[ENV_VDEV_KICK_RX_FD.format(index=i)] = str(rx_fd)
            env[ENV_VDEV_KICK_TX_FD.format(index=i)] = str(tx_fd)
            if i == 0:
                env[ENV_KICK_RX_FD], env[ENV_KICK_TX_FD] = str(rx_fd), str(tx_fd)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SimEnv:
        """Parse the variables a host set (RuntimeError if one is missing, ValueError if
        one is malformed; both name the variable)."""
        def number(key: str, minimum: int = 0, default: int | None = None) -> int:
            text = env.get(key)
            if not text and default is not None:
                return default
            if text is None:
                raise _unset(key)
            try:
                value = int(text, 0)
            except ValueError:
                value = None
            if value is None or value < minimum:
                raise ValueError(f"{key}={text!r} is not an integer >= {minimum}: firmware "
                                 "must be started by an amplink host") from None
            return value

        kicks: list[tuple[int, int]] = []
        while (rx_key := ENV_VDEV_KICK_RX_FD.format(index=len(kicks))) in env:
            kicks.append((number(rx_key), number(ENV_VDEV_KICK_TX_FD.format(index=len(kicks)))))
        if not kicks and ENV_KICK_RX_FD in env:  # a host that only sets the first pair
            kicks.append((number(ENV_KICK_RX_FD), number(ENV_KICK_TX_FD)))
        poll = env.get(ENV_POLL) or "0"
        if poll not in ("0", "1"):
            raise ValueError(f"{ENV_POLL}={poll!r} is not 0 or 1")
        watchdog_ms = number(ENV_WATCHDOG_MS, default=0)
        return cls(
            shm_fd=number(ENV_SHM_FD), shm_size=number(ENV_SHM_SIZE, 1),
            da_base=number(ENV_DA_BASE), table_offset=number(ENV_RSC_TABLE),
            table_size=number(ENV_RSC_SIZE), lifeline_fd=number(ENV_LIFELINE_FD),
            buf_size=number(ENV_BUF_SIZE, 1), kicks=tuple(kicks),
            name=env.get(ENV_NAME, "firmware"), poll_mode=poll == "1",
            spin=number(ENV_SPIN_US, default=0) / 1e6,
            watchdog=watchdog_ms / 1000 if watchdog_ms else None,
            buffers_fd=number(ENV_BUFFERS_FD) if env.get(ENV_BUFFERS_FD) else None,
        )

    def kick_fds(self, vdev: int) -> tuple[int, int]:
        """The ``(rx_fd, tx_fd)`` of rpmsg vdev ``vdev`` (RuntimeError if the host set none)."""
        if not 0 <= vdev < len(self.kicks):
            raise _unset(ENV_VDEV_KICK_RX_FD.format(index=vdev))
        return self.kicks[vdev]
