"""The plan a worker serves under, made at start: budgets from its settings, the footprint of
the largest request the model allows (measured on the meta device: seconds, nothing cached),
and what the plan gives the residency (its weight budget) and the engine (its limits)."""

from pathlib import Path

import torch

from ..engine import MemoryLimits
from ..residency import default_host_memory, free_memory, parse_budget
from .footprint import measure_footprint
from .plan import Placement, Plan, PlanRefused, Target, gib, make_plan


def budget_target(device: torch.device, device_memory: str | None, host_memory: str | None = None,
                  reserve: str | None = None, max_batch: int = 8) -> Target | None:
    """The budgets as given (sizes such as "80GiB", or a fraction of the free memory). On CUDA
    the device memory defaults to what is free now; on a CPU given none there is no plan (None):
    no limit, as before plans existed."""
    if device_memory is None and device.type == "cpu":
        return None
    total = free_memory(device) if device_memory is None else parse_budget(device_memory, device)
    host = default_host_memory() if host_memory is None else parse_budget(host_memory, "cpu")
    return Target(total, host, max_batch=max_batch, reserve=None if reserve is None else parse_budget(reserve, "cpu"))


def check_free(target: Target, device: torch.device) -> None:
    """A process about to serve refuses a device budget above the memory free on its device now
    (an 80 GB H100 has ~79.1 GiB free once the CUDA context exists: `--device-memory 80GiB`
    plans for memory the card does not have). `paris plan` may plan for another machine."""
    free = free_memory(device)
    if target.device_memory > free:
        raise PlanRefused(f"a device budget of {gib(target.device_memory)} is more than the {gib(free)} free on "
                          f"{device} now: give at most that (or leave --device-memory unset for the free memory)")


def serving_plan(folder: str | Path, target: Target) -> Plan:
    """The plan for the largest size and frame count the model allows; PlanRefused names what
    does not fit when the budget cannot serve one such request."""
    return make_plan(measure_footprint(folder, max_batch=target.max_batch), target)


def generation_plan(folder: str | Path, target: Target, size: str, frames: int) -> Plan:
    """`paris generate`'s plan: the worker's planner for one request of the size it asks."""
    return make_plan(measure_footprint(folder, size, frames, max_batch=target.max_batch), target)


def residency_settings(plan: Plan | None) -> dict:
    """The residency's arguments under `plan` (load_model's keywords; none without a plan).
    Components placed whole get the weight budget less the streaming window (the window sits
    beside them); encoders on demand also the room the largest phase leaves while encoding."""
    if plan is None:
        return {}
    return {"budget_bytes": plan.weight_budget - plan.window_bytes, "host_budget_bytes": plan.pinned_budget,
            "streamed": {n: plan.target.window_blocks for n in plan.streamed},
            "on_demand": frozenset(n for n, p in plan.placement.items() if p is Placement.ON_DEMAND),
            "encoder_room": plan.encoder_room}


def memory_limits(plan: Plan) -> MemoryLimits:
    return MemoryLimits(
        rows_per_forward=plan.rows_per_forward, decodes_at_once=plan.decodes_at_once,
        cache_entries=plan.cache_entries, cache_bytes=plan.cache_entries * plan.footprint.embedding_bytes,
        step_cache_rows=plan.step_cache_rows,
        on_demand=frozenset(n for n, p in plan.placement.items() if p is Placement.ON_DEMAND))
