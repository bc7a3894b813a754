"""Services around remote processors: the supervisor (processors that outlive one
command, see :mod:`.supervisor`), which also serves their channels to client programs
with per-client permissions (:mod:`.endpoints`, :mod:`.policy`)."""

from .control import ReportsChannels
from .policy import Policy, PolicyError, load_policy
from .supervisor import (
    Channel,
    Supervisor,
    SupervisorClient,
    connect_supervisor,
    ensure_supervisor,
    make_sim_processor,
    runtime_dir,
)

__all__ = [
    "Channel", "Policy", "PolicyError", "ReportsChannels", "Supervisor", "SupervisorClient",
    "connect_supervisor", "ensure_supervisor", "load_policy", "make_sim_processor",
    "runtime_dir",
]
