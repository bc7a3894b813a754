"""Test firmware: writes one line to its RSC_TRACE buffer (debugfs trace0 on the host),
then serves rpmsg-echo."""

from amplink.firmware import trace
from amplink.firmware.examples.echo import main as echo
from amplink.link import Link
from amplink.remoteproc import FW_RSC_ADDR_ANY as ANY
from amplink.remoteproc import ResourceTable, Trace, VdevEntry
from amplink.virtio.vdev import VIRTIO_ID_RPMSG, VIRTIO_RPMSG_F_NS, VringEntry

TRACE_LINE = "trace firmware: up"

RESOURCE_TABLE = ResourceTable([
    Trace(ANY, 512, name="trace0"),
    VdevEntry(VIRTIO_ID_RPMSG, dfeatures=1 << VIRTIO_RPMSG_F_NS,
              vrings=[VringEntry(ANY, 0x1000, 32, ANY), VringEntry(ANY, 0x1000, 32, ANY)]),
])


def main(link: Link) -> None:
    trace(f"{TRACE_LINE}\n")
    echo(link)
