"""The residency plan: where every component lives under a device and a host budget, as data.

Budget arithmetic. An engine tick runs its phases one after another: encode new texts (T5,
CLIP), encode new first frames (VAE, DINOv2), denoise (router, then one forward per expert),
decode finished videos. Only one phase's temporary tensors are alive at a time, so the device
budget (its memory less a reserve) must hold

    resident weights + streaming window + embeddings + step cache + the largest phase's need

- a phase's bytes are its peak activations plus the weights it brings for the duration (an
  encoder kept on the host is copied in for its phase and leaves after it: T5 and CLIP both
  stay until the text phase ends);
- the streaming window is `window_blocks` of the largest block, the stem (on the device for
  the whole pass) and block 0's image modulation (the step cache's signal reads it);
- the step cache (pipeline/step_cache.py) holds two (N, D) tensors per cached row between
  steps; a cached forward keeps at most one more per row of the forward beside the plain
  forward's tensors, which the denoise phase adds when any row may be cached. The engine
  gives a request step caching only while its rows fit `step_cache_rows` (else it computes
  every block: the quality preset's output);
- a phase's need is its bytes plus headroom for the allocator (below).

Allocator model. Workers and `paris generate` run PyTorch's CUDA caching allocator with
`expandable_segments:True` (pipeline/cuda_env.py; a user's own PYTORCH_CUDA_ALLOC_CONF is left
as it is, with a warning when it turns them off). With expandable segments the pool is one
virtual segment per stream that grows by mapping pages; when memory is short, pages no live
block uses are unmapped and mapped again where the next allocation needs them, so no
contiguous free range of physical memory is ever needed and a phase needs its allocated peak
plus the page rounding of its live blocks (2 MiB each). The plan books
PHASE_HEADROOM_SHARE of each phase's bytes, at least PHASE_HEADROOM_MIN, on top of it, and
the reserve (5% of the device, at least 2 GiB) holds cuBLAS/cuDNN workspaces. Without
expandable segments the default allocator's best-fit segments can need up to 1.4x a phase's
allocated peak (gpu-review-2, N2): no plan here holds under that.

The plan starts from the least that can serve one request of the given size (every expert
streamed, encoders on demand, one request's rows per forward, one video decoded at a time, no
step cache) and refuses, naming the parts, when even that does not fit. It then spends what
is left in order of what saves the most time: rows per forward up to a full text-to-video
batch (2 rows a request), experts resident (each saves streaming 22 GiB per use), CLIP and
DINOv2 resident, step-cache rows for a full image-to-video batch at one expert a step (what
makes the `balanced` and `fast` presets fast), the embedding cache, rows up to a full
image-to-video batch (3 rows a request), T5 resident (else it is copied in for each batch of
new prompts, into the room the largest phase leaves while encoding: never over a resident
expert), step-cache rows for requests that mix several experts a step, and more videos
decoded at once only where they fit in the room another phase already needs.
"""

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from ..engine import CACHE_ENTRIES
from .footprint import Footprint

GiB = 2**30
MIN_RESERVE = 2 * GiB  # cuBLAS and cuDNN workspaces, and allocator fragmentation on small devices
RESERVE_SHARE = 0.05  # allocator fragmentation grows with the pool
ON_DEMAND_ENCODERS = ("t5", "clip", "dinov2")  # the engine needs them only while encoding
WINDOW_BLOCKS = 3  # one block computing, two in flight: hides the copy wherever compute can
# The device the plan sizes `stream_batch` for: an H100 SXM (989 TFLOP/s dense bf16) at the
# expert's model-FLOP utilisation in Open-Sora 2.0's own run (~45%), copying pinned host memory
# at 50 GB/s (PCIe 5 x16). An estimate: tests/benchmarks/gpu_expert_11b.py measures both.
PLAN_FLOPS_PER_S = 989e12 * 0.45
PLAN_COPY_BYTES_PER_S = 50e9
PHASE_HEADROOM_SHARE = 0.03  # of a phase's bytes: 2 MiB page rounding of its live blocks (allocator model above)
PHASE_HEADROOM_MIN = 256 * 2**20


def phase_headroom(phase_bytes: int) -> int:
    return max(PHASE_HEADROOM_MIN, int(phase_bytes * PHASE_HEADROOM_SHARE))


class Placement(StrEnum):
    RESIDENT = "resident"  # on the device all the time
    STREAMED = "streamed"  # pinned on the host; its blocks pass through the window while it runs
    ON_DEMAND = "on demand"  # pinned on the host; copied in whole for its phase, then leaves


class PlanRefused(ValueError):
    """A budget that cannot serve one request of the largest allowed size."""


def default_reserve(device_memory: int) -> int:
    return max(MIN_RESERVE, int(device_memory * RESERVE_SHARE))


def device_budget(device_memory: int, reserve: int | None = None) -> int:
    """What a plan may fill: the device memory given minus the reserve. On CUDA the memory
    given defaults to the free memory at start (`torch.cuda.mem_get_info`), so what other
    processes hold is never counted on."""
    return device_memory - (default_reserve(device_memory) if reserve is None else reserve)


@dataclass(frozen=True)
class Target:
    device_memory: int
    host_memory: int
    max_batch: int = 8
    reserve: int | None = None  # None: default_reserve(device_memory)
    window_blocks: int = WINDOW_BLOCKS
    cache_entries: int = CACHE_ENTRIES

    @property
    def held_back(self) -> int:
        return self.device_memory - device_budget(self.device_memory, self.reserve)


@dataclass(frozen=True)
class Plan:
    footprint: Footprint
    target: Target
    placement: dict[str, Placement]
    rows_per_forward: int  # the engine splits a larger group of rows into forwards of this many
    decodes_at_once: int
    cache_entries: int
    step_cache_rows: int = 0  # rows (request x expert x guidance branch) that may hold step-cache entries at once

    @property
    def resident(self) -> list[str]:
        return [n for n, p in self.placement.items() if p is Placement.RESIDENT]

    @property
    def streamed(self) -> list[str]:
        return [n for n, p in self.placement.items() if p is Placement.STREAMED]

    @property
    def window_bytes(self) -> int:
        e = self.footprint.expert
        return self.target.window_blocks * max(e.block_bytes) + e.stem_bytes + e.modulation_bytes if self.streamed else 0

    @property
    def resident_bytes(self) -> int:
        return sum(self.footprint.weights[n] for n, p in self.placement.items() if p is Placement.RESIDENT)

    @property
    def embedding_bytes(self) -> int:
        """The cache, plus the texts of active requests that it may have evicted."""
        return (self.cache_entries + 2 * self.target.max_batch) * self.footprint.embedding_bytes

    @property
    def step_cache_bytes(self) -> int:
        """The step cache's entries between steps: a signal and a residual per cached row."""
        return self.step_cache_rows * 2 * self.footprint.expert.image_row_bytes

    @property
    def largest_phase(self) -> str:
        needs = self.phase_needs
        return max(needs, key=needs.get)

    @property
    def phase_needs(self) -> dict[str, int]:
        """Each phase's bytes plus its allocator headroom."""
        return {k: v + phase_headroom(v) for k, v in self.phases.items()}

    @property
    def phase_headroom(self) -> dict[str, int]:
        """What the budget leaves each phase beyond its bytes: its booked headroom, plus the
        room the largest phase sets aside and this one does not use, plus what the plan leaves
        unused."""
        spare = self.budget - self.device_bytes
        largest = self.phase_needs[self.largest_phase]
        return {k: largest - v + spare for k, v in self.phases.items()}

    @property
    def device_bytes(self) -> int:
        """What the plan fills on the device (the reserve comes on top)."""
        return (self.resident_bytes + self.window_bytes + self.embedding_bytes + self.step_cache_bytes
                + self.phase_needs[self.largest_phase])

    @property
    def encoder_room(self) -> int:
        """What on-demand encoders may take on the device beyond the residency's weight budget
        while they encode: the largest phase's room less the encode phases' own activations and
        headroom (the weights they bring are inside that room, never over a resident expert)."""
        f, needs, phases = self.footprint, self.phase_needs, self.phases
        brought = {"encode text": self._brought("t5") + self._brought("clip"), "encode image": self._brought("dinov2")}
        largest = needs[self.largest_phase]
        return min(largest - (needs[k] - b) for k, b in brought.items())

    @property
    def host_bytes(self) -> int:
        """Pinned copies of everything not resident, plus one component read from disk at a
        time (pageable) before it is pinned or moved."""
        kept = [self.footprint.weights[n] for n, p in self.placement.items() if p is not Placement.RESIDENT]
        return sum(kept) + max(self.footprint.weights.values())

    @property
    def weight_budget(self) -> int:
        """What the residency may fill with weights (resident, window, and an encoder brought in):
        the budget less the embeddings, the step cache and the largest phase's need, which are never
        counted on for weights."""
        return self.budget - self.embedding_bytes - self.step_cache_bytes - self.phase_needs[self.largest_phase]

    @property
    def pinned_budget(self) -> int:
        """Host memory for pinned copies: the host budget less one component being read."""
        return self.target.host_memory - max(self.footprint.weights.values())

    @property
    def budget(self) -> int:
        return device_budget(self.target.device_memory, self.target.reserve)

    @property
    def fits_device(self) -> bool:
        return self.device_bytes <= self.budget

    @property
    def phases(self) -> dict[str, int]:
        """Peak bytes of each phase of a tick: activations plus the weights brought for it."""
        f, on_demand = self.footprint, self._brought
        texts = 2 * self.target.max_batch
        rows = self.rows_per_forward
        cached = rows * f.expert.image_row_bytes if self.step_cache_rows else 0  # a cached forward's input kept for residuals
        return {
            "encode text": on_demand("t5") + on_demand("clip") + max(f.t5_peak, f.clip_peak + texts * f.embedding_bytes),
            "encode image": on_demand("dinov2") + f.image_encode_peak,
            "denoise": max(f.router_peak, f.expert.activation.at(rows) + cached),
            "decode": self.decodes_at_once * f.decode_peak,
        }

    @property
    def activation_peaks(self) -> dict[int, int]:
        """One expert forward's peak at one request and at max_batch requests (text-to-video and
        image-to-video rows) and at the plan's rows per forward."""
        f, batch = self.footprint, self.target.max_batch
        rows = sorted({2, f.rows_per_request, 2 * batch, f.rows_per_request * batch, self.rows_per_forward})
        return {r: f.expert.activation.at(r) for r in rows}

    @property
    def stream_batch(self) -> int:
        """Requests a streamed expert's pass waits to gather (the scheduler's stream_batch, never
        past --max-wait): as many text-to-video requests as it takes for the pass's compute at
        the plan's clip to cover copying the expert (1 when nothing streams)."""
        return stream_batch_for(self.footprint) if self.streamed else 1

    def full_batch(self, cached: bool, rows_per_request: int) -> dict:
        """What `max_batch` requests of one kind (2 rows each for text-to-video, 3 for
        image-to-video, one expert a step) need under this plan: the rows the engine grants a
        step cache (whole requests, only when the preset caches), and per phase the device bytes
        in use at its peak (everything standing plus the phase and its headroom) and the headroom
        the budget leaves it beyond its bytes."""
        f, batch = self.footprint, self.target.max_batch
        per_request = rows_per_request if cached else 0
        granted = min(batch, self.step_cache_rows // per_request) * per_request if per_request else 0
        rows = min(self.rows_per_forward, batch * rows_per_request)
        phases = dict(self.phases)
        phases["denoise"] = max(f.router_peak, f.expert.activation.at(rows) + (rows * f.expert.image_row_bytes if granted else 0))
        standing = self.resident_bytes + self.window_bytes + self.embedding_bytes + granted * 2 * f.expert.image_row_bytes
        return {"step_cache_rows": granted, "rows_per_forward": rows,
                "used": {k: standing + v + phase_headroom(v) for k, v in phases.items()},
                "headroom": {k: self.budget - standing - v for k, v in phases.items()}}

    def _brought(self, name: str) -> int:
        return self.footprint.weights.get(name, 0) if self.placement.get(name) is Placement.ON_DEMAND else 0

    def to_json(self) -> dict:
        f = self.footprint
        return {
            "model": f.model, "clip": f.shape.label, "max_batch": self.target.max_batch,
            "device_memory": self.target.device_memory, "host_memory": self.target.host_memory,
            "reserve": self.target.held_back, "device_budget": self.budget,
            "components": {n: {"bytes": f.weights[n], "from": f.weight_sources[n], "placement": str(p)}
                           for n, p in self.placement.items()},
            "streamed": self.streamed, "window_blocks": self.target.window_blocks if self.streamed else 0,
            "window_bytes": self.window_bytes, "stream_batch": self.stream_batch, "rows_per_forward": self.rows_per_forward,
            "decodes_at_once": self.decodes_at_once, "cache_entries": self.cache_entries,
            "embedding_bytes": self.embedding_bytes, "step_cache_rows": self.step_cache_rows,
            "step_cache_bytes": self.step_cache_bytes,
            "activation_peak_by_rows": self.activation_peaks,
            "decode_peak_per_video": f.decode_peak, "phases": self.phases, "phase_needs": self.phase_needs,
            "phase_headroom": self.phase_headroom, "largest_phase": self.largest_phase,
            "device_bytes": self.device_bytes, "weight_budget": self.weight_budget, "encoder_room": self.encoder_room,
            "host_bytes": self.host_bytes, "device_headroom": self.budget - self.device_bytes,
            "full_batches": {f"{'cached' if cached else 'plain'} {kind}": self.full_batch(cached, rows)
                             for cached in (False, True) for kind, rows in (("t2v", 2), ("i2v", 3))
                             if rows <= f.rows_per_request},
        }


def stream_batch_for(footprint: Footprint, flops_per_s: float = PLAN_FLOPS_PER_S,
                     copy_bytes_per_s: float = PLAN_COPY_BYTES_PER_S) -> int:
    """Text-to-video requests (2 rows each) whose forward computes at least as long as copying
    one expert takes."""
    copy_s = footprint.weights[footprint.expert_names[0]] / copy_bytes_per_s
    row_s = footprint.expert.flops_per_row.total / flops_per_s
    return max(1, math.ceil(math.ceil(copy_s / row_s) / 2))


def least_plan(footprint: Footprint, target: Target) -> Plan:
    """What any plan needs: experts streamed, encoders on demand, one request's rows per
    forward, one video decoded at a time, a cache as large as one batch of texts."""
    placement = {n: Placement.RESIDENT for n in ("vae", "router") if n in footprint.weights}
    placement |= {n: Placement.ON_DEMAND for n in ON_DEMAND_ENCODERS if n in footprint.weights}
    placement |= {n: Placement.STREAMED for n in footprint.expert_names}
    return Plan(footprint, target, placement, rows_per_forward=footprint.rows_per_request, decodes_at_once=1,
                cache_entries=min(target.cache_entries, 2 * target.max_batch))


def gib(n: int) -> str:
    """Bytes in GiB; below a tenth of one (a test model's sizes) in the unit that shows them."""
    if abs(n) >= GiB // 10:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 2**20:.2f} MiB" if abs(n) >= 2**20 // 10 else f"{n} bytes"


def device_refusal(plan: Plan) -> str:
    f, t = plan.footprint, plan.target
    if plan.budget <= 0:
        return (f"{gib(t.device_memory)} of device memory is no more than the {gib(t.held_back)} held in reserve"
                f" (--reserve; by default 5% of the device memory, at least {gib(MIN_RESERVE)})")
    phase = plan.largest_phase
    need = gib(plan.phase_needs[phase])
    what = {"denoise": f"one expert forward ({plan.rows_per_forward} rows) needs {need} of activations",
            "decode": f"decoding one video needs {need}",
            "encode text": f"encoding text (T5 brought to the device) needs {need}",
            "encode image": f"encoding first frames needs {need}"}[phase]
    return (f"{gib(t.device_memory)} of device memory cannot serve one {f.shape.label} request: {what}"
            f" + {gib(plan.window_bytes)} streaming window ({t.window_blocks} blocks)"
            f" + {gib(plan.resident_bytes)} resident weights ({', '.join(plan.resident)}) + {gib(plan.embedding_bytes)} text embeddings"
            f" = {gib(plan.device_bytes)}, and {gib(t.held_back)} is held in reserve; the budget leaves"
            f" {gib(plan.budget - plan.device_bytes + plan.phase_needs[phase])} for the {phase} phase"
            f" (its bytes plus {gib(plan.phase_needs[phase] - plan.phases[phase])} allocator headroom)")


def host_refusal(plan: Plan) -> str:
    return (f"{gib(plan.target.host_memory)} of host memory cannot hold the pinned copies of "
            f"{', '.join(n for n, p in plan.placement.items() if p is not Placement.RESIDENT)} plus one component"
            f" being read from disk: {gib(plan.host_bytes)} needed")


def make_plan(footprint: Footprint, target: Target) -> Plan:
    """The plan for `target`, or PlanRefused naming what does not fit (see the module docstring).
    Every step up from the least plan keeps more on the device, so it needs less host memory:
    the host budget is checked once, on the final plan."""
    plan = least_plan(footprint, target)
    if not plan.fits_device:
        raise PlanRefused(device_refusal(plan))

    def better(candidate: Plan) -> bool:
        nonlocal plan
        if candidate.fits_device:
            plan = candidate
        return candidate.fits_device

    def more_rows(most: int) -> None:
        for rows in range(most, plan.rows_per_forward, -1):
            if better(replace(plan, rows_per_forward=rows)):
                return

    def keep_resident(names) -> None:
        for name in names:
            if name in plan.placement:
                better(replace(plan, placement=plan.placement | {name: Placement.RESIDENT}))

    def more_cached_rows(most: int) -> None:
        for rows in range(most, plan.step_cache_rows, -1):
            if better(replace(plan, step_cache_rows=rows)):
                return

    full_batch = footprint.rows_per_request * target.max_batch
    more_rows(2 * target.max_batch)
    keep_resident(footprint.expert_names)
    keep_resident(("clip", "dinov2"))
    more_cached_rows(full_batch)
    for entries in range(target.cache_entries, plan.cache_entries, -1):
        if better(replace(plan, cache_entries=entries)):
            break
    more_rows(full_batch)
    keep_resident(("t5",))
    more_cached_rows(full_batch * len(footprint.expert_names))
    room = max(v for k, v in plan.phases.items() if k != "decode")  # decoding more videos must not grow the largest phase
    plan = replace(plan, decodes_at_once=max(1, min(target.max_batch, room // footprint.decode_peak)))
    if plan.host_bytes > target.host_memory:
        raise PlanRefused(host_refusal(plan))
    return plan
