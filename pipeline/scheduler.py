"""Each tick's plan: which requests advance, in which order the experts run, what to prefetch.

The scheduler sees plain data (per request: its id, the expert keys its routing choice for this
step needs, how many ticks in a row it has waited) and a view of the device residency; it
returns a `TickPlan`. The engine executes the plan and keeps the wait counters. No tensors and
no model here, so the algorithm is tested on its own (tests/pipeline/test_scheduler.py).

Algorithm, per tick:
  1. If every expert the requests need fits in the device budget beside the always-needed
     components (router, VAE), every request advances.
  2. Otherwise the tick serves a set of experts that fits: the always-needed components, then
     the experts of the request that has waited longest, if it has waited `max_wait` ticks or
     more; then every other needed expert that still fits, resident ones first (no load), then
     the most demanded (most requests served per load), then by name.
  3. A request advances when every expert its choice needs is in the served set; the others
     keep their choice and wait. If none would advance, no request's experts fit in the budget
     together (say top-2 routing and a budget of one expert): the request that has waited
     longest runs with whichever others need no more than it, its experts loaded one by one.
  4. Streamed experts (the residency streams them block by block from host memory: each pass
     copies the whole expert, however few rows it serves) gather rows: one that would run for
     fewer than `stream_batch` requests waits, its requests keeping their choice while the
     others advance and route again, so its next pass serves more. Not when one of its requests
     has waited `max_wait` ticks, nor when nothing else would run.
  5. The served experts run resident ones first, so one that must be loaded never evicts one
     still needed this tick, and streamed ones last. While an expert placed whole computes, the
     next expert to place is prefetched; while the last computes, a waiting request's expert is
     (CUDA only: see residency.prefetch), unless streamed experts run this tick: their blocks
     share the copy stream and would queue behind it. Nothing is prefetched while a streamed
     expert runs, and a streamed expert has nothing to prefetch.

Fairness bound: a request that has waited `max_wait` ticks in a row is served first at the next
tick (most-waited first) and never held back to gather a streamed pass, and at most `max_batch`
requests are active, so no request waits more than `max_wait + max_batch - 1` consecutive ticks.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True)
class RequestNeeds:
    """What the scheduler knows of one active request."""

    request_id: str
    experts: frozenset[str]  # the expert keys its routing choice for this step needs
    waited: int = 0  # ticks in a row it has not advanced


class ResidencyView(Protocol):
    """What the scheduler reads of the device residency (`pipeline.residency.Residency`)."""

    def is_resident(self, name: str) -> bool: ...

    def is_streamed(self, name: str) -> bool: ...

    def fits(self, names: set[str]) -> bool: ...


@dataclass(frozen=True)
class TickPlan:
    """One tick, decided."""

    advance: tuple[str, ...]  # ids of the requests that take a step, in the order given
    expert_order: tuple[str, ...]  # expert keys to run: resident ones, ones to place, streamed ones
    prefetch: dict[str, str] = field(default_factory=dict)  # expert key -> the key to bring in while it computes
    demand: frozenset[str] = frozenset()  # every component this tick uses: evicted last
    streamed: frozenset[str] = frozenset()  # the experts of expert_order that run streamed


class ExpertScheduler:
    def __init__(self, max_wait: int, always_needed: frozenset[str] = frozenset(), stream_batch: int = 1):
        self.max_wait = max_wait
        self.always_needed = always_needed  # components used beside the experts, planned in first
        self.stream_batch = stream_batch  # requests a streamed pass gathers before it runs (1: no gathering)

    def schedule(self, requests: Sequence[RequestNeeds], residency: ResidencyView) -> TickPlan:
        advancing = self._gather_streamed(self._select(requests, residency), residency)
        advance = tuple(r.request_id for r in advancing)
        wanted = sorted(set().union(*(r.experts for r in advancing)))
        order = sorted(wanted, key=lambda e: (residency.is_streamed(e), not residency.is_resident(e)))
        waiting = sorted(set().union(*(r.experts for r in requests if r.request_id not in advance)) - set(wanted))
        streamed = frozenset(e for e in wanted if residency.is_streamed(e))
        placed = [e for e in order if e not in streamed]
        # with streamed experts to run, a waiting expert's copy would hold up their blocks behind it
        later = placed[1:] + ([] if streamed else [e for e in waiting if not residency.is_streamed(e)])
        return TickPlan(advance=advance, expert_order=tuple(order), prefetch=dict(zip(placed, later)),
                        demand=frozenset(wanted) | self.always_needed, streamed=streamed)

    def _gather_streamed(self, advancing: list[RequestNeeds], residency: ResidencyView) -> list[RequestNeeds]:
        """Step 4 of the algorithm: hold back the requests of streamed experts with fewer than
        `stream_batch` requests, unless one has waited `max_wait` or none would advance then."""
        if self.stream_batch <= 1:
            return advancing
        count = Counter(e for r in advancing for e in r.experts if residency.is_streamed(e))
        urgent = {e for r in advancing if r.waited >= self.max_wait for e in r.experts}
        thin = {e for e, n in count.items() if n < self.stream_batch} - urgent
        return [r for r in advancing if not r.experts & thin] or advancing

    def _select(self, requests: Sequence[RequestNeeds], residency: ResidencyView) -> list[RequestNeeds]:
        """The requests that advance this tick (steps 1 to 3 of the algorithm)."""
        if not requests or residency.fits(set().union(*(r.experts for r in requests)) | self.always_needed):
            return list(requests)
        served = set(self.always_needed)
        starving = sorted((r for r in requests if r.waited >= self.max_wait), key=lambda r: -r.waited)
        if starving:
            served |= starving[0].experts
        demand = Counter(e for r in requests for e in r.experts)
        for e in sorted(demand, key=lambda e: (not residency.is_resident(e), -demand[e], e)):
            if e not in served and residency.fits(served | {e}):
                served.add(e)
        advancing = [r for r in requests if r.experts <= served]
        if not advancing:  # no request's experts fit together in the budget: the longest waiting runs
            served = set(max(requests, key=lambda r: r.waited).experts)
            advancing = [r for r in requests if r.experts <= served]
        return advancing
