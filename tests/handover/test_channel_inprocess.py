"""BufferChannel, LargeMessages, BufferPort and DeviceBuffers, both ends in one process."""

from __future__ import annotations

import asyncio
import threading

import pytest
from handover_kit import CARVEOUT_DA, CARVEOUT_SIZE, WINDOW, pair

from amplink.errors import EndpointClosed, InvalidArgument, ReceiveTimeout
from amplink.handover import BufferChannel, wire
from amplink.handover.large import LargeMessages
from amplink.handover.wire import RecordType as T
from amplink.memory import Access, IommuFault, OwnershipError, allocate_buffer


def test_attach_maps_at_the_device_address_and_detach_unmaps():
    with pair() as p, allocate_buffer(3 * 4096 + 5, name="a") as buf:
        buf.write(b"hello")
        att = p.port.attach(buf, Access.READ)
        assert att.da == WINDOW
        assert bytes(p.device.dma(att.da, 5, Access.READ)) == b"hello"
        with pytest.raises(IommuFault):  # one byte past the buffer, in the same page
            p.device.dma(att.da + buf.size - 1, 2, Access.READ)
        with pytest.raises(IommuFault):  # read-only attachment
            p.device.dma(att.da, 1, Access.WRITE)
        p.port.detach(att)
        with pytest.raises(IommuFault):
            p.device.dma(att.da, 1, Access.READ)
        assert not buf.attachments
    assert p.device.statistics()["faults"] == 3


def test_device_faults_reach_the_host_iommu():
    with pair() as p:
        with pytest.raises(IommuFault):
            p.device.dma(WINDOW + 0x1000, 8, Access.READ)
        for _ in range(100):
            if p.faults:
                break
            threading.Event().wait(0.01)
        [fault] = p.faults
        assert fault.da == WINDOW + 0x1000 and fault.reason.name == "UNMAPPED"
        assert p.port.iommu.statistics().faults == 1


def test_send_recv_done_transfers_ownership():
    with pair() as p, allocate_buffer(1 << 20, name="frame") as buf:
        host = BufferChannel(p.host_ep, port=p.port)
        dev = BufferChannel(p.device_ep, buffers=p.device)
        buf.write(b"\x01\x02\x03")
        id = host.send(buf.slice(1, 2), Access.READ_WRITE)
        assert buf.owner == "dev0" and p.port.table.holder(id) == "dev0"
        with pytest.raises(OwnershipError):
            buf.read(0, 1)
        got = dev.recv(timeout=5)
        assert bytes(got.view) == b"\x02\x03" and got.access == Access.READ_WRITE
        got.view[0] = 0xFF
        got.done(length=1)
        with pytest.raises(ValueError):
            got.view[0]  # noqa: B018 - released with done()
        back = host.wait_done(timeout=5)
        assert back.buffer is buf and (back.offset, back.length) == (1, 1)
        assert buf.owner == "cpu" and buf.read(0, 3) == b"\x01\xff\x03"
        with pytest.raises(InvalidArgument):
            got.done()
        assert host.statistics().in_flight == 0
        assert host.faults() == {} and dev.faults() == {}
        host.forget(buf)
        assert not buf.attachments and not p.device.attachments()


def test_read_access_gives_a_read_only_view():
    with allocate_buffer(4096) as buf, pair() as p:
        host = BufferChannel(p.host_ep, port=p.port)
        dev = BufferChannel(p.device_ep, buffers=p.device)
        host.send(buf, Access.READ)
        with dev.recv(timeout=5) as view:
            assert view.readonly
        host.wait_done(timeout=5)


def test_timeouts_and_missing_roles():
    with pair() as p:
        host = BufferChannel(p.host_ep, port=p.port)
        with pytest.raises(ReceiveTimeout):
            host.wait_done(timeout=0.05)
        with pytest.raises(InvalidArgument):
            BufferChannel(p.device_ep, buffers=p.device).send(allocate_buffer(1))


def test_asyncio_variants():
    async def run(p, buf):
        host = BufferChannel(p.host_ep, port=p.port)
        dev = BufferChannel(p.device_ep, buffers=p.device)
        await host.asend(buf)
        got = await dev.arecv(timeout=5)
        got.done()
        return await host.await_done(timeout=5)

    with allocate_buffer(4096) as buf, pair() as p:
        assert asyncio.run(run(p, buf)).buffer is buf


@pytest.mark.parametrize("size", [0, 1, 400, 488, 489, 100_000, 3_000_000])
def test_large_messages_any_size(size):
    data = bytes(i % 251 for i in range(size))
    with pair("large") as p:
        host = LargeMessages(p.host_ep, port=p.port, pool_size=1 << 20, block_size=4096)
        dev = LargeMessages(p.device_ep, buffers=p.device)
        done = threading.Event()
        results: list = []

        def device_side():
            msg = dev.recv(timeout=10)
            dev.send(msg, timeout=10)
            results.append(len(msg))
            done.set()

        t = threading.Thread(target=device_side)
        t.start()
        host.send(data, timeout=10)
        assert host.recv(timeout=10) == data
        t.join(10)
        assert results == [size]
        assert host.faults() == {} and dev.faults() == {}
        host.close()


def test_recv_into():
    with pair("large") as p:
        host = LargeMessages(p.host_ep, port=p.port, pool_size=1 << 20, block_size=4096)
        dev = LargeMessages(p.device_ep, buffers=p.device)
        data = b"z" * 300_000
        t = threading.Thread(target=host.send, args=(data,), kwargs={"timeout": 10})
        t.start()
        into = bytearray(400_000)
        assert dev.recv_into(into, timeout=10) == len(data)
        assert into[:len(data)] == data
        t.join(10)
        host.close()


# -- batches ---------------------------------------------------------------------------------
def test_batches_travel_several_records_to_a_message():
    bufs = [allocate_buffer(4096, name=f"b{i}") for i in range(25)]
    try:
        with pair() as p:
            host = BufferChannel(p.host_ep, port=p.port)
            dev = BufferChannel(p.device_ep, buffers=p.device)
            assert host.send_many(bufs, Access.READ) == 25
            assert p.host_ep.statistics().messages_sent == 1 + 2  # hello; 20 records a message
            got: list = []
            while len(got) < 25:
                got += dev.recv_many(timeout=5)
            assert sorted(g.id for g in got) == sorted(p.port.id_of(b) for b in bufs)
            for g in got:
                g.done(flush=False)
            assert p.device_ep.statistics().messages_sent == 1  # the first 20 filled one
            dev.flush()
            assert p.device_ep.statistics().messages_sent == 2
            back: list = []
            while len(back) < 25:
                back += host.wait_done_many(timeout=5)
            assert {r.buffer.name for r in back} == {b.name for b in bufs}
            assert all(b.owner == "cpu" for b in bufs)
            stats = host.statistics()
            assert (stats.sent, stats.returned, stats.in_flight) == (25, 25, 0)
            assert dev.statistics().done == 25 and host.faults() == {} == dev.faults()
            for b in bufs:
                host.forget(b)
    finally:
        for b in bufs:
            b.close()


def test_a_send_that_cannot_go_leaves_the_buffer_with_the_cpu():
    with allocate_buffer(4096) as buf, allocate_buffer(4096) as other:
        with pair() as p:
            host = BufferChannel(p.host_ep, port=p.port)
            host.send(buf, flush=False)
            assert buf.owner == "dev0"  # lent, its SEND waits
            p.links.host.close()
            with pytest.raises(EndpointClosed):
                host.send(other)  # flushes both: neither goes
            assert buf.owner == other.owner == "cpu"
            assert host.statistics().in_flight == 0
            with pytest.raises(EndpointClosed):
                host.send_many([buf, other])
            assert buf.owner == other.owner == "cpu"


# -- the firmware hands buffers over -----------------------------------------------------------
def test_the_device_hands_back_a_buffer_it_filled():
    with allocate_buffer(8192, name="frame") as buf, pair() as p:
        host = BufferChannel(p.host_ep, port=p.port)
        dev = BufferChannel(p.device_ep, buffers=p.device)
        host.send(buf, Access.WRITE)  # an empty buffer to fill
        empty = dev.recv(timeout=5)
        empty.view[:5] = b"frame"
        empty.send(length=5)  # over to the host with the frame: read-only for it
        with pytest.raises(ValueError):
            empty.view[0]  # noqa: B018 - no longer the device's
        with pytest.raises(InvalidArgument):
            empty.done()
        frame = host.recv(timeout=5)
        assert frame.buffer is buf and (frame.offset, frame.length) == (0, 5)
        assert bytes(frame.view) == b"frame" and frame.view.readonly
        assert buf.owner == "cpu"  # the host's while it reads
        with pytest.raises(OwnershipError):
            host.send(buf)  # still the device's: only borrowed
        frame.done()
        assert buf.owner == "dev0"
        again = dev.recv(timeout=5)  # the device's again, as lent at first
        assert (again.id, again.offset, again.length) == (empty.id, 0, 8192)
        assert not again.view.readonly
        again.done(length=0)
        assert host.wait_done(timeout=5).buffer is buf and buf.owner == "cpu"
        assert host.faults() == {} == dev.faults()
        stats = dev.statistics()
        assert (stats.received, stats.sent, stats.returned, stats.done) == (1, 1, 1, 1)


def test_the_device_hands_over_its_own_memory():
    with pair() as p:
        host = BufferChannel(p.host_ep, port=p.port)
        dev = BufferChannel(p.device_ep, buffers=p.device, memory=p.carveout)
        own = p.carveout.allocate(4096, name="own0")
        own.write(b"made by the device", 100)
        assert dev.send(own.slice(100, 18), Access.READ) == 0
        assert own.owner == "host"
        got = host.recv(timeout=5)
        assert got.id == 0 and got.offset == CARVEOUT_DA + 100 and got.buffer is None
        assert bytes(got.view) == b"made by the device" and got.view.readonly
        got.done()
        back = dev.wait_done(timeout=5)
        assert back == (own, 0, 100, 18) and own.owner == "cpu"
        assert host.faults() == {} == dev.faults()
        own.close()


def test_lies_about_handed_over_buffers_are_counted():
    with allocate_buffer(4096) as buf, pair() as p:
        host = BufferChannel(p.host_ep, port=p.port)
        dev = BufferChannel(p.device_ep, buffers=p.device, memory=p.carveout)
        id = host.send(buf)
        dev.recv(timeout=5)
        lies = [
            wire.pack(T.SEND, id, 4096, 1, 1),                    # past the end
            wire.pack(T.SEND, 0, CARVEOUT_DA - 1, 2, 1),           # straddles the carveout
            wire.pack(T.SEND, 0, CARVEOUT_DA, CARVEOUT_SIZE + 1, 1),
            wire.pack(T.SEND, 0, 1 << 63, 1 << 63, 1),             # would wrap
        ]
        for lie in lies:
            p.device_ep.send(lie)
        with pytest.raises(ReceiveTimeout):
            host.recv(timeout=0.2)
        assert host.faults() == {"OUT_OF_RANGE": 4}
        assert buf.owner == "dev0"  # nothing changed hands
        for lie in (wire.pack(T.DONE, id, 0, 1), wire.pack(T.DONE, 0, CARVEOUT_DA, 4096)):
            p.host_ep.send(lie)  # DONE of what the device never handed over
        with pytest.raises(ReceiveTimeout):
            dev.wait_done(timeout=0.2)
        assert dev.faults() == {"NOT_HELD": 2}
