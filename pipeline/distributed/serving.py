"""A worker group as the worker serves with it: where the experts go (the planner's placement,
or spread over the ranks when no device memory is given on CPUs), rank 0's memory plan, and the
engine's runner."""

import logging
from dataclasses import dataclass, field, replace

import torch

from ..manifest import expert_key, read_manifest
from ..planner.footprint import measure_footprint
from ..planner.placement import place, spread, table
from ..planner.plan import Plan
from ..planner.serving import budget_target
from .group import GroupInfo
from .runner import GroupResidency, GroupRunner

log = logging.getLogger("paris.worker")


@dataclass
class WorkerGroup:
    info: GroupInfo
    experts: dict[str, tuple[int, ...]]  # expert key -> ranks
    plan: Plan | None  # rank 0's memory plan (None: no limit, a CPU given no budget)
    streams: dict[int, dict[str, int]] = field(default_factory=dict)  # rank 1.. -> experts it streams (window blocks)

    def runner_for(self, model) -> GroupRunner:
        """The engine's runner; rank 0's residency from then on sees the other ranks' experts
        as resident (they are, there)."""
        remote = frozenset(e for e, ranks in self.experts.items() if 0 not in ranks)
        model.residency = GroupResidency(model.residency, remote)
        return GroupRunner.for_model(self.info, model, self.experts)


def plan_group(info: GroupInfo, model_folder, devices: list[str], device_memory: str | None,
               host_memory: str | None, reserve: str | None, max_batch: int, stream_copies: bool = False) -> WorkerGroup:
    """`devices`: each rank's device (under torchrun a rank knows only its own: the others are
    taken to be the same). Deterministic: under torchrun every rank plans, and reads its share."""
    targets = [budget_target(torch.device(d), device_memory, host_memory, reserve, max_batch) for d in devices]
    if any(t is None for t in targets):
        names = tuple(expert_key(i) for i in range(len(read_manifest(model_folder).components.experts)))
        return WorkerGroup(info, spread(names, info.world_size), None)
    placement = place(measure_footprint(model_folder, max_batch=max_batch), targets, stream_copies)
    if info.rank == 0:
        log.info("worker group placement (estimate):\n%s", table(placement))
    plan = replace(placement.devices[0].plan, rows_per_forward=placement.rows_per_forward)
    return WorkerGroup(info, placement.experts, plan, placement.streams)
