"""Where every component's weights live, under a device byte budget and a host byte budget.

Three tiers: disk (safetensors, read on first use), host memory (one slab per component,
slab.py; pinned on CUDA), device. The residency plan (pipeline/planner/plan.py) places each
component one of two ways, and `streamed` (name -> window blocks) carries its choice here:
- placed whole: `get` copies the component to the device and keeps it there until it is
  evicted to make room under `budget_bytes` (what the current tick still needs goes last, then
  the least recently used); `prefetch` issues that copy ahead, on CUDA while another expert
  computes. Eviction is free while the host copy is kept: the tensors point at the slab again.
- streamed: never placed whole; `get` returns the module with its blocks streamed from the
  slab through a window of device buffers as it runs (streaming.py). `budget_bytes` does not
  count the window: the plan holds it apart.
- on demand (`on_demand`: encoders the plan keeps on the host): placed whole for their phase,
  they may also fill `encoder_room`, the room the largest phase leaves while encoding, so that
  bringing T5 for new prompts never evicts a resident expert (the engine evicts them after).
Loads are all or nothing: the device buffer is taken and every copy issued before any tensor
points at it, so a failure (out of memory, a failed copy) frees the buffer and leaves the
component where it was, and the counters count only what happened.
Host copies are kept within `host_budget_bytes` (default: a share of the machine's RAM). When a
new one does not fit, the least recently used go first: the host copies of components that
are on the device (evicting them later sends them back to disk), then components only on the
host (back to disk).
On a CPU (and on the meta device) the same code runs with transfers.Transfers: the device copy
is a second buffer in RAM and copies are done at once, so the CPU tests cover loads,
eviction, host trimming and streaming as CUDA runs them.
"""

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..manifest import is_expert_key
from .budget import default_host_memory
from .slab import HostSlab
from .streaming import BlockStream, streamed_blocks
from .transfers import Transfers, transfers_for


log = logging.getLogger("paris.residency")


class HostBudgetExceeded(MemoryError):
    """A component's host copy does not fit the host budget beside what must stay."""


@dataclass
class ResidencyStats:
    disk_loads: dict[str, int] = field(default_factory=dict)
    device_loads: dict[str, int] = field(default_factory=dict)  # every arrival on the device, from disk or host
    evictions: dict[str, int] = field(default_factory=dict)
    host_drops: dict[str, int] = field(default_factory=dict)  # host copies dropped for the host budget
    prefetches: int = 0
    bytes_from_disk: int = 0
    bytes_to_device: int = 0  # every byte copied to the device: whole loads and streamed blocks
    bytes_streamed: int = 0  # the streamed part (stems included)
    blocks_streamed: int = 0
    load_seconds: float = 0.0  # reading from disk into host memory: synchronous work (device copies are
    # asynchronous on CUDA: a host clock around them times their launch only, so they count in bytes)

    def expert_loads(self) -> int:
        return sum(v for k, v in self.device_loads.items() if is_expert_key(k))


@dataclass
class _Entry:
    load: Callable[[], nn.Module]  # reads the weights from disk into host memory
    nbytes: int  # device bytes when placed whole
    window: int | None = None  # streamed: blocks on the device at once; None: placed whole
    module: nn.Module | None = None  # None: on disk only
    slab: HostSlab | None = None  # the host copy; None while on disk, or on the device with none kept
    buffer: torch.Tensor | None = None  # the whole component on the device; its tensors are views into it
    pending: object = None  # a copy issued ahead into `buffer` and not yet waited for
    stream: BlockStream | None = None

    @property
    def on_device(self) -> bool:
        return self.buffer is not None


class Residency:
    def __init__(self, device: torch.device | str = "cpu", budget_bytes: int | None = None,
                 host_budget_bytes: int | None = None, streamed: dict[str, int] | None = None,
                 transfers: Transfers | None = None, on_demand: frozenset[str] = frozenset(), encoder_room: int = 0):
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes
        self.host_budget_bytes = default_host_memory() if host_budget_bytes is None else host_budget_bytes
        self.streamed = dict(streamed or {})
        self.on_demand, self.encoder_room = frozenset(on_demand), encoder_room
        self.transfers = transfers or transfers_for(self.device)
        self._entries: dict[str, _Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # on the device, least recent first
        self._host_lru: OrderedDict[str, None] = OrderedDict()  # with a host copy, least recent first
        self._lock = threading.RLock()
        self.stats = ResidencyStats()

    def register(self, name: str, load: Callable[[], nn.Module], nbytes: int) -> None:
        self._entries[name] = _Entry(load, nbytes, self.streamed.get(name))

    def nbytes(self, name: str) -> int:
        return self._entries[name].nbytes

    def is_resident(self, name: str) -> bool:
        return self._entries[name].on_device

    def is_streamed(self, name: str) -> bool:
        return self._entries[name].window is not None

    def resident(self) -> list[str]:
        return list(self._lru)

    @property
    def resident_bytes(self) -> int:
        return sum(self._entries[n].nbytes for n in self._lru)

    def host_copy(self, name: str) -> HostSlab | None:
        """The component's host slab, while one is held."""
        return self._entries[name].slab

    @property
    def host_bytes(self) -> int:
        """Bytes of the host copies held now (exact: the slabs' sizes)."""
        return sum(e.slab.nbytes for e in self._entries.values() if e.slab is not None)

    def fits(self, names: set[str]) -> bool:
        """Whether `names` fit on the device together; streamed ones need only the window."""
        whole = sum(self._entries[n].nbytes for n in names if not self.is_streamed(n))
        return self.budget_bytes is None or whole <= self.budget_bytes

    def get(self, name: str, demand: frozenset[str] | set[str] = frozenset()) -> nn.Module:
        """The component ready to run: placed whole on the device (loaded if needed; `demand`,
        what the current tick still needs, is evicted last), or streaming from its host copy."""
        with self._lock:
            entry = self._entries[name]
            if entry.window is not None:
                if entry.module is None:
                    self._read(name, keep={name, *demand})
            elif not entry.on_device:
                self._bring(name, set(demand))
            self.transfers.wait(entry.pending)
            entry.pending = None
            if entry.on_device:
                self._lru.move_to_end(name)
            if entry.slab is not None:
                self._host_lru.move_to_end(name)
            return entry.module

    def prefetch(self, name: str, protect: set[str]) -> bool:
        """Issue the copy of `name` to the device ahead of its use, only if it fits without
        evicting anything in `protect` (never the expert computing now). Only where a copy runs
        while compute does (CUDA: on the side stream); a CPU would gain nothing and could evict
        what it brought before its use. A streamed component has nothing to place; a failed
        allocation leaves everything as it was. A failure is only logged (False): the prefetch is
        speculative, and the component's real use raises it for the requests that need it."""
        with self._lock:
            entry = self._entries[name]
            if not self.transfers.overlaps or entry.window is not None or entry.on_device:
                return False
            free = None if self.budget_bytes is None else self.budget_bytes - self.resident_bytes
            evictable = sum(self._entries[n].nbytes for n in self._lru if n not in protect)
            if free is not None and entry.nbytes > free + evictable:
                return False
            try:
                self._bring(name, set(protect), ahead=True)
            except Exception as exc:  # out of memory, a disk error, the host budget, a refused pin
                log.warning(f"prefetch of {name} failed, it is brought when used: {exc!r}")
                return False
            self.stats.prefetches += 1
            return True

    def evict(self, name: str) -> None:
        with self._lock:
            entry = self._entries[name]
            if not entry.on_device:
                return
            self.transfers.wait(entry.pending)  # the buffer is freed below: not under a copy
            entry.pending = None
            self._lru.pop(name)
            self.stats.evictions[name] = self.stats.evictions.get(name, 0) + 1
            if entry.slab is not None:
                entry.slab.point_at()  # back to the host copy: no transfer
            else:
                entry.module = None  # no host copy kept: back to disk
            entry.buffer = None

    # -- tiers ----------------------------------------------------------------------------
    def _read(self, name: str, keep: set[str]) -> None:
        """Disk -> a new host slab (and, streamed, the hooks). All or nothing."""
        entry = self._entries[name]
        self._trim_host(entry.nbytes, keep)
        start = time.perf_counter()
        module = entry.load()
        slab = HostSlab.adopt(module, streamed_blocks(module), self.transfers.host)
        self._trim_host(slab.nbytes, keep)  # the estimate above was the device size
        self.transfers.pin(slab.storage)
        entry.module, entry.slab = module, slab
        if entry.window is not None:
            entry.stream = BlockStream(module, slab, self.transfers, entry.window, self.stats)
        self._host_lru[name] = None
        self.stats.load_seconds += time.perf_counter() - start
        self.stats.disk_loads[name] = self.stats.disk_loads.get(name, 0) + 1
        self.stats.bytes_from_disk += entry.nbytes

    def _bring(self, name: str, demand: set[str], ahead: bool = False) -> None:
        """Host -> device, the whole component (read from disk first if needed). All or nothing."""
        entry = self._entries[name]
        room = self.encoder_room if name in self.on_demand else 0
        self._make_room(entry.nbytes, keep={name}, demand=demand, room=room)
        if entry.module is None:
            self._read(name, keep={name} | demand)
        slab = entry.slab
        buffer = self.transfers.alloc(slab.nbytes)
        pairs = [(buffer[u.start : u.end], slab.unit(u)) for u in slab.layout.units]
        if ahead:
            pending = self.transfers.ahead(pairs)
        else:
            for dst, src in pairs:
                self.transfers.copy(dst, src)
            pending = None
        for segment in slab.layout.segments:  # every copy issued: now the tensors move
            segment.tensor.data = segment.view(buffer)
        entry.buffer, entry.pending = buffer, pending
        self._lru[name] = None
        self.stats.device_loads[name] = self.stats.device_loads.get(name, 0) + 1
        self.stats.bytes_to_device += slab.nbytes

    def _make_room(self, needed: int, keep: set[str], demand: set[str], room: int = 0) -> None:
        """Evicts until `needed` more bytes fit the budget (plus `room`, an encoder's phase room)."""
        if self.budget_bytes is None:
            return
        while self.resident_bytes + needed > self.budget_bytes + room:
            candidates = [n for n in self._lru if n not in keep]
            if not candidates:
                return  # one component larger than the whole budget still runs
            idle = [n for n in candidates if n not in demand]
            self.evict((idle or candidates)[0])

    def _trim_host(self, needed: int, keep: set[str]) -> None:
        """Drop host copies, least recently used first, until `needed` more bytes fit: first
        those of components on the device, then components off it (back to disk)."""
        while self.host_bytes + needed > self.host_budget_bytes:
            held = [n for n in self._host_lru if n not in keep or self._entries[n].on_device]
            victims = [n for n in held if self._entries[n].on_device] + [n for n in held if not self._entries[n].on_device]
            if not victims:
                raise HostBudgetExceeded(
                    f"the host budget ({self.host_budget_bytes} bytes) cannot hold {needed} more bytes beside "
                    f"{', '.join(self._host_lru) or 'nothing'} ({self.host_bytes} bytes)")
            self._drop_host(victims[0])

    def _drop_host(self, name: str) -> None:
        entry = self._entries[name]
        self.transfers.unpin(entry.slab.storage)
        entry.slab = None
        self._host_lru.pop(name)
        self.stats.host_drops[name] = self.stats.host_drops.get(name, 0) + 1
        if not entry.on_device:
            entry.module, entry.stream = None, None
