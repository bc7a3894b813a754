"""Serving buffer requests the three ways, and the co-processor's memory bus through the
host's IOMMU: refusals, faults and malformed requests are counted, never escape."""

from __future__ import annotations

import os
import socket
import time

import pytest
from common_kit import Outcome

from amplink.errors import AddressError, LinkDown, PeerTimeout
from amplink.memory.access import Access
from amplink.memory.iommu import Iommu, IommuFaultReason
from amplink.memory.providers import allocate_buffer
from amplink.memory.region import SharedRegion
from amplink.notify.waiter import wait_readable
from amplink.platforms.rtkit import BufferService, DmaClient, DmaFault, DmaServer
from amplink.platforms.rtkit.dma import ANSWER, MAX_TRANSFER, REQUEST, STATUS_MALFORMED
from amplink.rtkit.errors import BufferRefusal, BufferRequestError

IOVA = 0x1_0000_0000
SRAM = 0x2_0000_0000


@pytest.fixture
def service():
    iommu = Iommu("dart", IOVA, 1 << 20)
    sram = SharedRegion.memfd(0x4000, "sram", da_base=SRAM)
    service = BufferService(iommu, mmio=sram, budget=0x20000, name="t")
    yield service
    service.release_all()
    sram.close()
    assert iommu.statistics().attachments == 0


def refused(service, ep, pages, iova) -> BufferRefusal:
    with pytest.raises(BufferRequestError) as info:
        service.serve(ep, pages, iova)
    return info.value.reason


def test_iova_zero_allocates_attaches_and_answers(service):
    buffer, answer = service.serve(1, 2, 0)
    assert answer and buffer.way == "host" and buffer.size == 0x2000
    assert buffer.attachment is not None and buffer.attachment.da == buffer.iova == IOVA
    owner, offset = service.iommu.translate(IOVA + 0x1FFF, 1, 1)
    assert owner is buffer.attachment.buffer and offset == 0x1FFF
    owner.write(b"abc", 0x10)
    assert buffer.read(0x10, 3) == b"abc"
    with pytest.raises(AddressError):
        buffer.read(0x1FFF, 2)


def test_a_chosen_iova_is_mapped_there(service):
    buffer, answer = service.serve(4, 1, IOVA + 0x5000)
    assert answer and buffer.way == "iova" and buffer.iova == IOVA + 0x5000
    assert service.iommu.translate(IOVA + 0x5000, 0x1000, 3)[0] is buffer.attachment.buffer


def test_device_memory_is_read_in_place_and_not_answered(service):
    service.mmio.write(0x1000, b"in sram")
    buffer, answer = service.serve(2, 1, SRAM + 0x1000)
    assert not answer and buffer.way == "mmio" and buffer.attachment is None
    assert buffer.read(0, 7) == b"in sram"
    assert service.iommu.statistics().attachments == 0
    with pytest.raises(AddressError):
        buffer.read(0xFFF, 2)


@pytest.mark.parametrize("pages,iova,reason", [
    (0, 0, BufferRefusal.EMPTY),
    (0x21, 0, BufferRefusal.OVER_BUDGET),           # 132 KiB > the budget of 128 KiB
    (0xFF, 0, BufferRefusal.OVER_BUDGET),           # the largest a request can ask
    (1, IOVA - 0x1000, BufferRefusal.UNMAPPABLE),   # below the IOMMU window
    (1, IOVA + (1 << 20), BufferRefusal.UNMAPPABLE),  # past it
    (1, IOVA + 0x123, BufferRefusal.UNMAPPABLE),    # not page-aligned
    (1, (1 << 44) - 0x1000, BufferRefusal.UNMAPPABLE),
    (4, SRAM + 0x1000, BufferRefusal.MMIO_RANGE),   # runs out of the 16 KiB SRAM
])
def test_requests_that_cannot_be_served_are_refused_and_counted(service, pages, iova, reason):
    assert refused(service, 2, pages, iova) is reason
    assert service.refusals == {reason.name: 1}
    assert service.buffers == () and service.iommu.statistics().attachments == 0


def test_a_second_request_for_an_endpoint_and_a_taken_iova_are_refused(service):
    service.serve(2, 1, IOVA)
    assert refused(service, 2, 1, 0) is BufferRefusal.DUPLICATE
    assert refused(service, 4, 1, IOVA) is BufferRefusal.UNMAPPABLE  # taken


def test_the_budget_counts_host_memory_only(service):
    service.serve(1, 0x20, 0)  # the whole budget
    service.serve(2, 4, SRAM)  # device memory costs the host nothing
    assert refused(service, 4, 1, 0) is BufferRefusal.OVER_BUDGET


def test_release_all_detaches_and_frees(service):
    before = len(os.listdir("/proc/self/fd"))
    service.serve(1, 1, 0)
    service.serve(4, 1, IOVA + 0x10000)
    service.serve(2, 1, SRAM)
    assert service.release_all() == 3
    assert service.buffers == () and service.iommu.statistics().attachments == 0
    assert len(os.listdir("/proc/self/fd")) == before


# -- the memory bus --------------------------------------------------------------------------
@pytest.fixture
def bus(service):
    host, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = DmaServer(host, service.iommu)
    yield server, peer, service
    server.close()
    peer.close()


def call(server, fn, *args):
    """Run a client call in a thread while this one serves its requests."""
    outcome = Outcome(lambda: fn(*args))
    deadline = time.monotonic() + 5
    while outcome.ended is None and time.monotonic() < deadline:
        if wait_readable(server.sock, 0.01):
            server.serve()
    assert outcome.join(1)
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def test_accesses_inside_an_attachment_work_in_chunks(bus):
    server, peer, service = bus
    buffer, _ = service.serve(1, 0x10, 0)  # 64 KiB: two transfers each way
    client = DmaClient(peer, timeout=2)
    data = bytes(range(256)) * 256
    call(server, client.write, buffer.iova, data)
    assert buffer.read(0, len(data)) == data
    assert call(server, client.read, buffer.iova + 3, 0x9000) == data[3:0x9003]
    stats = server.statistics()
    assert stats.requests == 4 and stats.bytes_written == len(data) and stats.faults == 0
    assert MAX_TRANSFER < 0x9000


@pytest.mark.parametrize("offset,length,reason", [
    (0x1000, 1, IommuFaultReason.UNMAPPED),
    (0xFFF, 2, IommuFaultReason.PARTIAL),
    (-0x1000, 4, IommuFaultReason.UNMAPPED),
])
def test_accesses_outside_are_faults_the_host_records(bus, offset, length, reason):
    server, peer, service = bus
    buffer, _ = service.serve(1, 1, 0)
    client = DmaClient(peer, timeout=2)
    with pytest.raises(DmaFault) as info:
        call(server, client.read, buffer.iova + offset, length)
    assert info.value.reason is reason
    stats = service.iommu.statistics()
    assert stats.faults == 1 and stats.last_fault.reason is reason
    assert server.statistics().faults == 1


def test_a_read_only_attachment_refuses_writes(bus):
    server, peer, service = bus
    buf = allocate_buffer(0x1000)
    attachment = service.iommu.attach(buf, Access.READ)
    client = DmaClient(peer, timeout=2)
    try:
        with pytest.raises(DmaFault) as info:
            call(server, client.write, attachment.da, b"x")
        assert info.value.reason is IommuFaultReason.DIRECTION
    finally:
        service.iommu.detach(attachment)
        buf.close()


@pytest.mark.parametrize("request_bytes", [
    b"\x01",                                         # too short
    REQUEST.pack(3, 4, IOVA),                        # unknown op
    REQUEST.pack(1, 0, IOVA),                        # empty access
    REQUEST.pack(1, MAX_TRANSFER + 1, IOVA),         # too long
    REQUEST.pack(1, 4, IOVA) + b"data",              # a read with data
    REQUEST.pack(2, 8, IOVA) + b"short",             # a write with less than it says
])
def test_malformed_requests_are_answered_and_counted(bus, request_bytes):
    server, peer, _ = bus
    peer.send(request_bytes)
    assert server.serve() == 1
    status, _, _ = ANSWER.unpack(peer.recv(64))
    assert status == STATUS_MALFORMED and server.statistics().malformed == 1


def test_a_peer_that_hangs_up_ends_the_bus(bus):
    server, peer, _ = bus
    peer.shutdown(socket.SHUT_RDWR)
    assert server.serve() == 0 and server.closed_by_peer


def test_a_flood_is_served_in_bounded_batches(bus):
    server, peer, service = bus
    buffer, _ = service.serve(1, 1, 0)
    peer.setblocking(False)
    sent = 0
    try:
        while sent < 100:
            peer.send(REQUEST.pack(1, 4, buffer.iova))
            sent += 1
    except BlockingIOError:
        pass
    assert server.serve(budget=16) == 16  # then the caller gets control back


def test_the_client_times_out_and_sees_the_host_go(bus):
    server, peer, _ = bus
    client = DmaClient(peer, timeout=0.05)
    with pytest.raises(PeerTimeout):
        client.read(IOVA, 4)
    server.close()
    with pytest.raises(LinkDown):
        client.read(IOVA, 4)
