"""Where every component's weights live, under a byte budget.

One manager for all components: each is registered with a loader and its size; `get` loads it
lazily onto the compute device, evicting others when the budget would be exceeded. Eviction
spares what the current tick needs (its known demand) before falling back to least recently
used. On a CPU-only machine "device" is RAM and eviction drops the weights, to be re-read from
the safetensors files; the policy and the counters are the same.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass
class ResidencyStats:
    loads: dict[str, int] = field(default_factory=dict)
    evictions: dict[str, int] = field(default_factory=dict)
    bytes_loaded: int = 0
    load_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"loads": dict(self.loads), "evictions": dict(self.evictions), "bytes_loaded": self.bytes_loaded,
                "load_seconds": round(self.load_seconds, 4)}


@dataclass
class _Entry:
    load: Callable[[], nn.Module]
    nbytes: int


class Residency:
    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._entries: dict[str, _Entry] = {}
        self._resident: OrderedDict[str, nn.Module] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self.stats = ResidencyStats()

    def register(self, name: str, load: Callable[[], nn.Module], nbytes: int) -> None:
        self._entries[name] = _Entry(load, nbytes)

    def nbytes(self, name: str) -> int:
        return self._entries[name].nbytes

    def is_resident(self, name: str) -> bool:
        return name in self._resident

    @property
    def resident_bytes(self) -> int:
        return sum(self._entries[n].nbytes for n in self._resident)

    def get(self, name: str, demand: frozenset[str] | set[str] = frozenset()) -> nn.Module:
        """The component, loaded if needed. `demand` names what the current tick still needs,
        so eviction takes those last."""
        with self._lock:
            if name in self._resident:
                self._resident.move_to_end(name)
                return self._resident[name]
            self._make_room(self._entries[name].nbytes, keep={name}, demand=set(demand))
            start = time.perf_counter()
            module = self._entries[name].load()
            self.stats.load_seconds += time.perf_counter() - start
            self.stats.loads[name] = self.stats.loads.get(name, 0) + 1
            self.stats.bytes_loaded += self._entries[name].nbytes
            self._resident[name] = module
            return module

    def evict(self, name: str) -> None:
        with self._lock:
            if self._resident.pop(name, None) is not None:
                self.stats.evictions[name] = self.stats.evictions.get(name, 0) + 1

    def _make_room(self, needed: int, keep: set[str], demand: set[str]) -> None:
        if self.budget_bytes is None:
            return
        while self.resident_bytes + needed > self.budget_bytes:
            candidates = [n for n in self._resident if n not in keep]
            if not candidates:
                return  # a single component larger than the budget still runs
            idle = [n for n in candidates if n not in demand]
            self.evict((idle or candidates)[0])
