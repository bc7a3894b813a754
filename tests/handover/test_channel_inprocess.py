"""BufferChannel, LargeMessages, BufferPort and DeviceBuffers, both ends in one process."""

from __future__ import annotations

import asyncio
import threading

import pytest
from handover_kit import WINDOW, pair

from amplink.errors import InvalidArgument, ReceiveTimeout
from amplink.handover import BufferChannel
from amplink.handover.large import LargeMessages
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
