"""Services around remote processors: the simulator's supervisor (processors that
outlive one command), see :mod:`.supervisor`."""

from .supervisor import (
    Channel,
    ReportsChannels,
    Supervisor,
    SupervisorClient,
    connect_supervisor,
    ensure_supervisor,
    make_sim_processor,
    runtime_dir,
)

__all__ = [
    "Channel", "ReportsChannels", "Supervisor", "SupervisorClient", "connect_supervisor",
    "ensure_supervisor", "make_sim_processor", "runtime_dir",
]
