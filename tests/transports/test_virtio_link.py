"""The link builders: they own the doorbell and clean up when a step fails."""

from __future__ import annotations

import socket

import pytest

from amplink import FirmwareError, LinkDown
from amplink.notify.doorbell import EventfdDoorbell
from amplink.platforms.sim.layout import LinkConfig, place_link
from amplink.transports.virtio_link import device_link, driver_link, watch_lifeline
from amplink.virtio.vdev import VDEV_NUM_VRINGS_OFFSET


@pytest.fixture
def placed():
    memory, resources = place_link(LinkConfig(num_buffers=4), "test-virtio-link")
    try:
        yield memory.pool, resources
    finally:
        memory.close()


def _closed(bell: EventfdDoorbell) -> bool:
    return bell.rx_fd == bell.tx_fd == -1


def test_driver_link_closes_the_doorbell_when_building_fails(placed):
    region, resources = placed
    vdev = resources.vdevs[0]
    bell, peer = EventfdDoorbell.pair()
    with pytest.raises(ValueError, match="buffer size"):
        driver_link(region, resources.vdev_control(vdev), vdev.buffers.offset, bell,
                    name="host", buf_size=8)
    assert _closed(bell)
    peer.close()


def test_device_link_closes_the_doorbell_when_the_driver_never_comes(placed):
    region, resources = placed
    bell, peer = EventfdDoorbell.pair()

    def never_ready(control, waiter):
        raise TimeoutError("no DRIVER_OK")

    with pytest.raises(TimeoutError):
        device_link(region, resources.vdev_control(resources.vdevs[0]), bell, name="device",
                    wait_driver_ok=never_ready)
    assert _closed(bell)
    peer.close()


def test_links_pair_up_own_their_extras_and_see_a_lifeline_hang_up(placed):
    region, resources = placed
    vdev = resources.vdevs[0]
    host_bell, device_bell = EventfdDoorbell.pair()
    ours, theirs = socket.socketpair()
    host = driver_link(region, resources.vdev_control(vdev), vdev.buffers.offset, host_bell,
                       entry=vdev.entry, name="host")
    device = device_link(region, resources.vdev_control(vdev), device_bell, name="device",
                         owned=[ours])
    try:
        ep = device.create_endpoint("svc", announce=True)
        host_ep = host.open_channel("svc", timeout=2.0)
        host_ep.send(b"ping", timeout=1.0)
        assert ep.recv(timeout=1.0) == b"ping"
        watch_lifeline(device, ours, lambda: "peer went away")
        theirs.sendall(b"H")  # bytes are not a hang-up
        device.poll()
        theirs.close()
        with pytest.raises(LinkDown, match="peer went away"):
            ep.recv(timeout=2.0)
    finally:
        host.close()
        device.close()
    assert ours.fileno() == -1  # closed with the device's link


@pytest.mark.parametrize("nvrings", [0, 1])
@pytest.mark.parametrize("role", ["driver", "device"])
def test_a_peer_written_vdev_without_two_vrings_is_a_firmware_error(placed, role, nvrings):
    """The table in shared memory is the peer's: its num_of_vrings is checked, and the error
    names the field and its offset (not a bare ValueError from deep inside)."""
    region, resources = placed
    vdev = resources.vdevs[0]
    control = resources.vdev_control(vdev)
    region.write_u8(control.entry_offset + VDEV_NUM_VRINGS_OFFSET, nvrings)
    bell, peer = EventfdDoorbell.pair()
    at = f"0x{control.entry_offset + VDEV_NUM_VRINGS_OFFSET:x}"
    with pytest.raises(FirmwareError, match=f"num_of_vrings = {nvrings}.*{at}"):
        if role == "driver":
            driver_link(region, control, vdev.buffers.offset, bell, name="host")
        else:
            device_link(region, control, bell, name="device")
    assert _closed(bell)
    peer.close()
