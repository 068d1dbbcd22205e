"""Encoders brought on demand use the room the largest phase leaves while encoding, never a
resident expert's (gpu-review-2 N5): the real Residency, configured as the worker configures it
from paris-2's plans, with components of the plan's sizes on the meta device, driven through
what the engine asks of it for each batch of new prompts."""

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.planner.footprint import measure_footprint
from pipeline.planner.plan import GiB, Placement, Target, make_plan
from pipeline.planner.serving import residency_settings
from pipeline.residency import Residency

PARIS_2 = Path(__file__).resolve().parents[2] / "weights" / "paris-2"


@pytest.fixture(scope="module")
def footprint():
    return measure_footprint(PARIS_2, max_batch=8)


def component(nbytes: int):
    """A module holding `nbytes` of bf16 weights on the meta device (shapes only)."""
    def load():
        module = nn.Module()
        module.weight = nn.Parameter(torch.empty(nbytes // 2, dtype=torch.bfloat16, device="meta"), requires_grad=False)
        return module
    return load


def new_prompt_batches(plan, batches: int) -> Residency:
    """Each batch: T5 and CLIP encode, first frames (VAE, DINOv2), the on-demand encoders
    leave, then a step of requests routed to every expert (the router first)."""
    r = Residency("meta", **residency_settings(plan))
    for name, nbytes in plan.footprint.weights.items():
        r.register(name, component(nbytes), nbytes)
    experts = set(plan.footprint.expert_names)
    for _ in range(batches):
        for name in ("t5", "clip", "vae", "dinov2"):
            r.get(name)
        for name, p in plan.placement.items():
            if p is Placement.ON_DEMAND:
                r.evict(name)
        r.get("router", demand={"router", *experts})
        for i, key in enumerate(plan.footprint.expert_names):
            r.get(key, demand=set(plan.footprint.expert_names[i:]))
    return r


@pytest.mark.parametrize("gib", [80, 48])
def test_bringing_t5_for_new_prompts_evicts_no_expert(footprint, gib):
    plan = make_plan(footprint, Target(gib * GiB, 256 * GiB, max_batch=8))
    assert plan.placement["t5"] is Placement.ON_DEMAND  # the case: T5 comes in for each batch of new prompts
    r = new_prompt_batches(plan, batches=3)
    resident_experts = [n for n in plan.resident if n.startswith("expert_")]
    assert resident_experts and {n: r.stats.device_loads[n] for n in resident_experts} == {n: 1 for n in resident_experts}
    assert r.stats.device_loads["t5"] == 3  # once per batch of new prompts, and nothing else moves
    assert not set(r.stats.evictions) - {n for n, p in plan.placement.items() if p is Placement.ON_DEMAND}
