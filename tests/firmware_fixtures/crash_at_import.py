"""Firmware that raises while being imported: it never comes up."""

raise RuntimeError("firmware fixture: crash at import")


def main(link):  # pragma: no cover - never reached
    pass
