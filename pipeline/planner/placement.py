"""Placement for a worker group: which device holds which expert (one or more copies), and the
single-device plan of rank 0, which also runs the router, the encoders and the VAE.

Rank 0 runs the engine: its plan is the one-device plan (plan.py) of the router, encoders, VAE
and the experts placed on it, so everything that plan budgets (encoder phases, decode, the
embedding cache, streaming) holds for it. Another rank only runs expert forwards; it holds

    its experts' weights + one forward's activations (rows_per_forward rows)
    + the conditioning of the requests it serves (2 texts a request, max_batch requests)

under its budget (its memory less the reserve, as on one device).

Algorithm: each expert first gets one home, on the device with the most room left once it is
there, rank 0 last among equals (it also encodes and decodes); an expert that fits whole
nowhere streams block by block on rank 0 (as on one device). Then, while memory allows, the
expert with the fewest copies gets another on the device with the most room that keeps a full
text-to-video batch of rows (2 x max_batch) per forward: copies let a request's guidance rows
run on two devices at once, and several requests' rows in parallel. Every forward of the group
runs at most the smallest rows_per_forward of the devices holding experts.
"""

from dataclasses import dataclass, replace

from .footprint import Footprint
from .plan import Plan, PlanRefused, Target, device_budget, gib, make_plan


@dataclass(frozen=True)
class DeviceShare:
    rank: int
    target: Target
    experts: tuple[str, ...]
    plan: Plan | None  # rank 0's one-device plan; None on the other ranks
    bytes: int  # what it fills (rank 0: its plan's device bytes)
    rows_per_forward: int
    streamed_copies: tuple[str, ...] = ()  # ranks 1..: experts streamed here (rank 0: in its plan)

    @property
    def streamed(self) -> tuple[str, ...]:
        return tuple(self.plan.streamed) if self.plan is not None else self.streamed_copies

    @property
    def budget(self) -> int:
        return device_budget(self.target.device_memory, self.target.reserve)

    @property
    def components(self) -> list[str]:
        """What it holds besides the experts (rank 0: router, encoders, VAE)."""
        return [] if self.plan is None else [n for n in self.plan.placement if n not in self.plan.footprint.expert_names]


@dataclass(frozen=True)
class GroupPlacement:
    footprint: Footprint
    devices: tuple[DeviceShare, ...]

    @property
    def experts(self) -> dict[str, tuple[int, ...]]:
        """Expert key -> the ranks holding it, whole or streamed: what the worker group's runner reads."""
        return {e: tuple(d.rank for d in self.devices if e in d.experts or e in d.streamed_copies)
                for e in self.footprint.expert_names}

    @property
    def streams(self) -> dict[int, dict[str, int]]:
        """Rank (1..) -> the experts it streams, name -> window blocks: what the rank loads with."""
        return {d.rank: {e: d.target.window_blocks for e in d.streamed_copies} for d in self.devices[1:] if d.streamed_copies}

    @property
    def rows_per_forward(self) -> int:
        return min(d.rows_per_forward for d in self.devices if d.experts or d.rank == 0)

    @property
    def streamed(self) -> dict[int, list[str]]:
        """Rank -> the experts streamed there."""
        return {d.rank: list(d.streamed) for d in self.devices if d.streamed}

    def to_json(self) -> dict:
        f = self.footprint
        return {
            "model": f.model, "clip": f.shape.label, "max_batch": f.max_batch, "estimate": True,
            "experts": {e: list(r) for e, r in self.experts.items()}, "streamed": self.streamed,
            "rows_per_forward": self.rows_per_forward,
            "devices": [{"rank": d.rank, "device_memory": d.target.device_memory, "device_budget": d.budget,
                         "experts": [e for e in d.experts if e not in d.streamed], "streamed": list(d.streamed),
                         "components": d.components, "device_bytes": d.bytes,
                         "headroom": d.budget - d.bytes, "rows_per_forward": d.rows_per_forward}
                        for d in self.devices],
            "rank_0_plan": self.devices[0].plan.to_json(),
        }


def engine_footprint(f: Footprint, experts: tuple[str, ...]) -> Footprint:
    """Rank 0's share: every component but the experts it does not hold."""
    others = set(f.expert_names) - set(experts)
    return replace(f, weights={n: b for n, b in f.weights.items() if n not in others},
                   weight_sources={n: s for n, s in f.weight_sources.items() if n not in others},
                   expert_names=tuple(e for e in f.expert_names if e in experts))


def expert_rank_bytes(f: Footprint, experts: tuple[str, ...], rows: int, streamed: tuple[str, ...] = (),
                      window_blocks: int = 0) -> int:
    window = window_blocks * max(f.expert.block_bytes) if streamed else 0
    return (sum(f.weights[e] for e in experts) + window + f.expert.activation.at(rows)
            + 2 * f.max_batch * f.embedding_bytes)


def expert_rank_rows(f: Footprint, target: Target, experts: tuple[str, ...], streamed: tuple[str, ...] = ()) -> int | None:
    """The most rows per forward (up to a full image-to-video batch) that fit beside the
    experts (and a streaming window); None when not even one request's rows do, or the host
    cannot hold the streamed experts' pinned copies."""
    if streamed and sum(f.weights[e] for e in streamed) + max(f.weights.values()) > target.host_memory:
        return None
    budget = device_budget(target.device_memory, target.reserve)
    for rows in range(f.rows_per_request * f.max_batch, f.rows_per_request - 1, -1):
        if expert_rank_bytes(f, experts, rows, streamed, target.window_blocks) <= budget:
            return rows
    return None


class _Layout:
    """Trial placements: what a device would fill holding a given set of experts."""

    def __init__(self, f: Footprint, targets: list[Target]):
        self.f, self.targets = f, targets
        self.holds: dict[int, tuple[str, ...]] = {r: () for r in range(len(targets))}
        self.streams: dict[int, tuple[str, ...]] = {r: () for r in range(1, len(targets))}  # rank 0: its plan decides

    def rank0_plan(self, experts: tuple[str, ...]) -> Plan | None:
        try:
            return make_plan(engine_footprint(self.f, experts), self.targets[0])
        except PlanRefused:
            return None

    def share(self, rank: int, experts: tuple[str, ...], whole: bool = True) -> DeviceShare | None:
        """The device holding `experts` (whole, unless `whole` is False on rank 0), or None."""
        target = self.targets[rank]
        if rank == 0:
            plan = self.rank0_plan(experts)
            if plan is None or (whole and set(plan.streamed) & set(experts)):
                return None
            return DeviceShare(0, target, experts, plan, plan.device_bytes, plan.rows_per_forward)
        streamed = self.streams[rank]
        rows = expert_rank_rows(self.f, target, experts, streamed)
        if rows is None:
            return None
        return DeviceShare(rank, target, experts, None,
                           expert_rank_bytes(self.f, experts, rows, streamed, target.window_blocks), rows, streamed)

    def add_streamed_copy(self, rank: int, expert: str, min_rows: int) -> bool:
        """Streams `expert` on `rank` too, if its window (and on rank 0 its plan) allows without
        demoting an expert held whole there."""
        if rank == 0:
            before = self.share(0, self.holds[0], whole=False)
            after = self.share(0, self.holds[0] + (expert,), whole=False)
            whole = lambda s: set(s.experts) - set(s.plan.streamed)
            if after is None or after.rows_per_forward < min_rows or whole(after) != whole(before):
                return False
            self.holds[0] += (expert,)
            return True
        self.streams[rank] += (expert,)
        s = self.share(rank, self.holds[rank])
        if s is None or s.rows_per_forward < min_rows:
            self.streams[rank] = self.streams[rank][:-1]
            return False
        return True

    def best(self, expert: str, ranks, min_rows: int) -> int | None:
        """The rank with the most room left once it holds `expert` too (rank 0 last among equals)."""
        options = []
        for r in ranks:
            if expert in self.holds[r]:
                continue
            s = self.share(r, self.holds[r] + (expert,))
            if s is not None and s.rows_per_forward >= min_rows:
                options.append((s.budget - s.bytes, r != 0, -r, r))
        return max(options)[-1] if options else None


def place(f: Footprint, targets: list[Target], stream_copies: bool = False) -> GroupPlacement:
    """See the module docstring; PlanRefused when rank 0 cannot serve one request even with
    every expert streamed."""
    if not targets:
        raise ValueError("a placement needs at least one device")
    layout = _Layout(f, targets)
    ranks = range(len(targets))
    streamed = []
    for e in f.expert_names:
        r = layout.best(e, ranks, f.rows_per_request)
        if r is None:
            streamed.append(e)
        else:
            layout.holds[r] += (e,)
    if streamed:  # fits whole nowhere: rank 0 streams it, as one device would
        layout.holds[0] += tuple(streamed)
    if layout.share(0, layout.holds[0], whole=False) is None:
        plan = make_plan(engine_footprint(f, layout.holds[0]), targets[0])  # raises PlanRefused, naming what
        raise PlanRefused(f"rank 0 cannot hold its share: {plan.placement}")
    while True:
        copies = {e: sum(e in h for h in layout.holds.values()) for e in f.expert_names}
        for e in sorted(f.expert_names, key=lambda e: (copies[e], e)):
            if e in streamed:
                continue
            r = layout.best(e, ranks, 2 * f.max_batch)
            if r is not None:
                layout.holds[r] += (e,)
                break
        else:
            break
    if stream_copies and len(targets) > 1:  # a second holder for each expert that has one
        for e in f.expert_names:
            holders = [r for r in ranks if e in layout.holds[r]]
            others = sorted((r for r in ranks if r not in holders), key=lambda r: (r == 0, r))
            for r in others[: max(0, 2 - len(holders))]:
                if layout.add_streamed_copy(r, e, 2 * f.max_batch):
                    break
    layout.holds = {r: tuple(sorted(h)) for r, h in layout.holds.items()}
    devices = [layout.share(0, layout.holds[0], whole=False)]
    devices += [layout.share(r, layout.holds[r]) or DeviceShare(r, targets[r], (), None, 0, 0) for r in ranks[1:]]
    return GroupPlacement(f, tuple(devices))


def table(p: GroupPlacement) -> str:
    f = p.footprint
    rows = [f"{f.model}: {f.shape.label}, up to {f.max_batch} requests at once, {len(p.devices)} devices (estimate)", "",
            f"{'rank':<5} {'memory':>10} {'budget':>10} {'fills':>10} {'headroom':>10} {'rows':>5}  holds"]
    for d in p.devices:
        held = [f"{e} (streamed)" if e in d.streamed else e for e in sorted(set(d.experts) | set(d.streamed))] + [f"{n} ({d.plan.placement[n]})" for n in d.components]
        rows.append(f"{d.rank:<5} {gib(d.target.device_memory):>10} {gib(d.budget):>10} {gib(d.bytes):>10} "
                    f"{gib(d.budget - d.bytes):>10} {d.rows_per_forward:>5}  {', '.join(held) or '-'}")
    rows += ["", "expert     ranks (s: streamed there)"]
    rows += [f"{e:<10} " + ", ".join(f"{r}s" if e in p.streamed.get(r, ()) else str(r) for r in ranks)
             for e, ranks in p.experts.items()]
    rows += ["", f"rows per forward (the group's): {p.rows_per_forward}"]
    return "\n".join(rows)


def spread(expert_names: tuple[str, ...], world_size: int) -> dict[str, tuple[int, ...]]:
    """Without memory sizes (a CPU group given no --device-memory): rank 0 keeps the engine,
    experts go round the other ranks, and ranks beyond one per expert hold copies. One rank
    alone holds everything."""
    if world_size == 1:
        return {e: (0,) for e in expert_names}
    others = range(1, world_size)
    return {e: tuple(sorted({1 + i % (world_size - 1)} | {r for r in others if (r - 1) % len(expert_names) == i}))
            for i, e in enumerate(expert_names)}
