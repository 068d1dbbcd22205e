"""Where every component's weights live, under a device byte budget.

Three tiers: disk (safetensors, read on first use), host memory (pinned on CUDA), device.
`get` makes a component resident on the compute device, evicting others when the budget would
be exceeded; eviction spares what the current tick still needs (its known demand) before
falling back to least recently used. On CUDA an evicted component keeps its pinned host copy
(within `host_budget_bytes`), so coming back is one host-to-device copy, and `prefetch` starts
that copy on a side stream while the current expert computes. On a CPU-only machine host and
device are the same memory: eviction drops the weights, to be re-read from disk; the policy and
the counters are the same, so both are tested here.
"""

import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .manifest import is_expert_key


UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_budget(spec: str | None, device: torch.device | str) -> int | None:
    """A device memory budget: None (no limit), a size ("40GiB", "500MB", "123456"), or a
    fraction of the memory free now ("0.8")."""
    if spec is None or str(spec).strip() == "":
        return None
    text = str(spec).strip().lower()
    if re.fullmatch(r"0?\.\d+|1(\.0*)?", text):
        return int(float(text) * free_memory(torch.device(device)))
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not match or match.group(2) not in UNITS:
        raise ValueError(f"device memory must be bytes with a unit (e.g. 40GiB) or a fraction of free memory (e.g. 0.8), got {spec!r}")
    return int(float(match.group(1)) * UNITS[match.group(2)])


@dataclass
class ResidencyStats:
    disk_loads: dict[str, int] = field(default_factory=dict)
    device_loads: dict[str, int] = field(default_factory=dict)  # every arrival on the device, from disk or host
    evictions: dict[str, int] = field(default_factory=dict)
    prefetches: int = 0
    bytes_from_disk: int = 0
    bytes_to_device: int = 0
    load_seconds: float = 0.0

    def expert_loads(self) -> int:
        return sum(v for k, v in self.device_loads.items() if is_expert_key(k))


@dataclass
class _Entry:
    load: Callable[[], nn.Module]  # reads the weights from disk into host memory
    nbytes: int
    module: nn.Module | None = None  # None: on disk only
    on_device: bool = False
    host_data: dict | None = None  # tensor -> its host copy, while the module's data is on the device
    ready: "torch.cuda.Event | None" = None  # set while a prefetch copy is in flight


class Residency:
    def __init__(self, device: torch.device | str = "cpu", budget_bytes: int | None = None,
                 host_budget_bytes: int | None = None):
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes
        self.host_budget_bytes = host_budget_bytes
        self._entries: dict[str, _Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # device-resident names, least recent first
        self._lock = threading.RLock()
        self._side_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.stats = ResidencyStats()

    @property
    def tiered(self) -> bool:
        """Whether host memory is a tier of its own (CUDA), or the device itself (CPU)."""
        return self.device.type != "cpu"

    def register(self, name: str, load: Callable[[], nn.Module], nbytes: int) -> None:
        self._entries[name] = _Entry(load, nbytes)

    def nbytes(self, name: str) -> int:
        return self._entries[name].nbytes

    def is_resident(self, name: str) -> bool:
        return self._entries[name].on_device

    def resident(self) -> list[str]:
        return list(self._lru)

    @property
    def resident_bytes(self) -> int:
        return sum(self._entries[n].nbytes for n in self._lru)

    def fits(self, names: set[str]) -> bool:
        return self.budget_bytes is None or sum(self._entries[n].nbytes for n in names) <= self.budget_bytes

    def get(self, name: str, demand: frozenset[str] | set[str] = frozenset()) -> nn.Module:
        """The component on the device, loaded if needed; `demand` (what the current tick still
        needs) is evicted last."""
        with self._lock:
            entry = self._entries[name]
            if not entry.on_device:
                self._bring(name, set(demand))
            if entry.ready is not None:  # a prefetch copy: the compute stream waits for it
                torch.cuda.current_stream(self.device).wait_event(entry.ready)
                for tensor in _tensors(entry.module):
                    tensor.data.record_stream(torch.cuda.current_stream(self.device))
                entry.ready = None
            self._lru.move_to_end(name)
            return entry.module

    def prefetch(self, name: str, protect: set[str]) -> bool:
        """Start bringing `name` to the device on the side stream, only if it fits without
        evicting anything in `protect` (never the expert computing now). CUDA only: on a CPU
        there is no transfer to overlap, so nothing happens."""
        with self._lock:
            entry = self._entries[name]
            if self._side_stream is None or entry.on_device:
                return False
            free = None if self.budget_bytes is None else self.budget_bytes - self.resident_bytes
            evictable = sum(self._entries[n].nbytes for n in self._lru if n not in protect)
            if free is not None and entry.nbytes > free + evictable:
                return False
            self._bring(name, protect, stream=self._side_stream)
            self.stats.prefetches += 1
            return True

    def evict(self, name: str) -> None:
        with self._lock:
            entry = self._entries[name]
            if not entry.on_device:
                return
            self._lru.pop(name, None)
            entry.on_device = False
            entry.ready = None
            self.stats.evictions[name] = self.stats.evictions.get(name, 0) + 1
            if self.tiered:
                for tensor in _tensors(entry.module):
                    tensor.data = entry.host_data[tensor]  # back to the pinned copy: no transfer
                entry.host_data = None
                self._trim_host()
            else:
                entry.module = None  # CPU: the device is host memory; back to disk

    def _bring(self, name: str, demand: set[str], stream=None) -> None:
        entry = self._entries[name]
        self._make_room(entry.nbytes, keep={name}, demand=demand)
        start = time.perf_counter()
        if entry.module is None:
            entry.module = entry.load()
            if self.tiered:
                for tensor in _tensors(entry.module):
                    tensor.data = tensor.data.pin_memory()
            self.stats.disk_loads[name] = self.stats.disk_loads.get(name, 0) + 1
            self.stats.bytes_from_disk += entry.nbytes
        if self.tiered:
            entry.host_data = {}
            with torch.cuda.stream(stream or torch.cuda.current_stream(self.device)):
                for tensor in _tensors(entry.module):
                    entry.host_data[tensor] = tensor.data
                    tensor.data = tensor.data.to(self.device, non_blocking=True)
                if stream is not None:
                    entry.ready = torch.cuda.Event()
                    entry.ready.record(stream)
        self.stats.load_seconds += time.perf_counter() - start
        self.stats.device_loads[name] = self.stats.device_loads.get(name, 0) + 1
        self.stats.bytes_to_device += entry.nbytes
        entry.on_device = True
        self._lru[name] = None

    def _make_room(self, needed: int, keep: set[str], demand: set[str]) -> None:
        if self.budget_bytes is None:
            return
        while self.resident_bytes + needed > self.budget_bytes:
            candidates = [n for n in self._lru if n not in keep]
            if not candidates:
                return  # one component larger than the whole budget still runs
            idle = [n for n in candidates if n not in demand]
            self.evict((idle or candidates)[0])

    def _trim_host(self) -> None:
        """Drop host copies of off-device components beyond the host budget (oldest first)."""
        if self.host_budget_bytes is None:
            return
        host = [n for n, e in self._entries.items() if e.module is not None and not e.on_device]
        while host and sum(self._entries[n].nbytes for n in host) > self.host_budget_bytes:
            self._entries[host.pop(0)].module = None


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer once (tied weights are one tensor)."""
    seen, out = set(), []
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append(tensor)
    return out
