"""Where every component's weights live: device, host slab or disk (manager.py), block streaming
(streaming.py), host slabs (slab.py), the copies (transfers.py; the CUDA-only part in cuda.py),
and the budgets (budget.py)."""

from .budget import default_host_memory, free_memory, parse_budget
from .manager import HostBudgetExceeded, Residency, ResidencyStats

__all__ = ["HostBudgetExceeded", "Residency", "ResidencyStats", "default_host_memory", "free_memory", "parse_budget"]
