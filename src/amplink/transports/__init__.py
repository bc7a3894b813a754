"""Transports that carry rpmsg messages: virtio vrings (driver and device roles)."""
