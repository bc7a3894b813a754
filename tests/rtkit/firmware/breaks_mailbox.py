"""Runs normally until a message on endpoint 0x20 asks it to publish a nonsense index in
the mailbox (what firmware with a stray pointer might do)."""

I2A_TAIL = 0xC0


def main(fw):
    @fw.endpoint(0x20)
    def corrupt(msg):
        fw.mailbox.region.write_u32(I2A_TAIL, 0x8000_0000)
        fw.mailbox._data.kick()  # ring the host's doorbell directly, no message
