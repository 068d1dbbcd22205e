"""The plan holds at real size: paris-2's expert, run on the meta device through the engine's own
forward path (`engine.forward_rows`: its input cats and casts, step caching, the fp32 output),
with the step cache's entries of every row of a full batch alive, never needs more than the
plan books for a tick's tensors, for every preset, text-to-video and image-to-video, at every
device size.

A tick's tensors outside the weights and embeddings are the step cache's standing entries and the
largest phase; PeakMemory counts what the two steps below allocate (the first step stores an
entry for every cached row, the second runs with those entries alive)."""

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.engine import forward_rows, step_cache_for
from pipeline.planner.serving import memory_limits
from pipeline.models.expert import image_positions, pack
from pipeline.planner.footprint import measure_footprint
from pipeline.planner.meta import meta_module
from pipeline.planner.peak_memory import PeakMemory
from pipeline.planner.plan import GiB, Target, make_plan
from pipeline.manifest import read_manifest
from pipeline.request import GenerationRequest, resolve
from pipeline.request_state import RequestState, TextEmbedding
from pipeline.routing import FixedExpert
from pipeline.sampling import Branch
from pipeline.speed import Speed
from pipeline.step_cache import StepCache

ROOT = Path(__file__).resolve().parents[2]
PARIS_2 = ROOT / "weights" / "paris-2"
BUDGETS = (141, 80, 48, 24)


@pytest.fixture(scope="module")
def footprint():
    return measure_footprint(PARIS_2, max_batch=8)  # 256x256, 129 frames


@pytest.fixture(scope="module")
def expert():
    manifest = read_manifest(PARIS_2)
    return meta_module(manifest.components.experts[0], PARIS_2 / manifest.components.experts[0].path)


def states(footprint, plan, speed: Speed, image: bool) -> list[RequestState]:
    """Max-batch requests on expert 0 as the engine holds them (meta tensors of its shapes)."""
    s, manifest = footprint.shape, read_manifest(PARIS_2)
    req = resolve(manifest, GenerationRequest("plan", num_frames=s.frames, size=f"{s.width}x{s.height}", speed=speed,
                                              routing="fixed", expert=0))
    if image:
        req = dataclasses.replace(req, image=Image.new("RGB", (s.width, s.height)))
    out = []
    for cache in step_caches(plan, req, FixedExpert(0)):
        text = TextEmbedding(torch.empty(1, s.text_tokens, 4096, device="meta"), torch.empty(1, 768, device="meta"))
        state = RequestState(job_id="j", request=req, policy=FixedExpert(0),
                             latents=torch.empty(1, 16, s.latent_frames, s.latent_height, s.latent_width, device="meta"),
                             timesteps=[1.0] * 51, prompt=text, negative=text,
                             img_ids=image_positions(s.latent_frames, s.latent_height, s.latent_width)[None].to("meta"),
                             step_cache=cache)
        if image:
            cond = torch.empty(1, 17, s.latent_frames, s.latent_height, s.latent_width, device="meta")
            state.first_frame_cond = pack(cond)
        out.append(state)
    return out


def step_caches(plan, request, routing) -> list[StepCache]:
    """Each request's step cache as the engine grants them, admitted one after another."""
    caches, limit = [], memory_limits(plan).step_cache_rows
    for _ in range(plan.target.max_batch):
        caches.append(step_cache_for(request, routing, 3, limit, sum(c.rows for c in caches)))
    return caches


def branches(image: bool) -> list[Branch]:
    return [Branch.COND, Branch.UNCOND_TEXT, Branch.UNCOND_ALL] if image else [Branch.COND, Branch.UNCOND_TEXT]


DECISIONS = {  # row index -> whether the row reuses its entry at the second step (where it has one)
    "every row computes": lambda i: False,
    "half reuse": lambda i: i % 2 == 0,
    "one row computes": lambda i: i != 0,
}
STEPS = (10, 11)  # past the presets' warm-up: entries made at the first serve the second
_measured: dict = {}  # balanced and fast grant the same caches: each case is measured once


def two_steps_peak(expert, plan, held: list[RequestState], rows: list, reuses) -> int:
    """The most bytes alive at once over two denoising steps of every row on one expert, in the
    plan's chunks; at the second step each row whose entry exists reuses it where `reuses` says."""
    def decide(signal, cache_rows):
        entries = [r.cache.candidate(r.key, r.branch, r.step) for r in cache_rows]
        return [e if e is not None and reuses(i) else None for i, e in enumerate(entries)]

    ran = []
    with torch.inference_mode(), PeakMemory() as memory:
        for step in STEPS:
            for s in held:
                s.step = step
            for start in range(0, len(rows), plan.rows_per_forward):
                ran += forward_rows(expert, "expert_0", rows[start : start + plan.rows_per_forward], decide)[1]
            for s in held:
                s.step_cache.end_step(step)
    cached = any(s.step_cache.rows for s in held)
    assert (0 in ran) == (cached and any(reuses(i) for i in range(len(rows)))), "rows reuse where the decision says"
    return memory.peak


@pytest.mark.parametrize("gib", BUDGETS)
@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
@pytest.mark.parametrize("speed", list(Speed))
def test_a_full_batch_at_every_preset_fits_what_the_plan_books(footprint, expert, gib, image, speed):
    plan = make_plan(footprint, Target(gib * GiB, 256 * GiB, max_batch=8))
    booked = plan.device_bytes - plan.resident_bytes - plan.window_bytes - plan.embedding_bytes
    held = states(footprint, plan, speed, image)
    rows = [(s, b) for s in held for b in branches(image)]
    cached = tuple(s.step_cache.rows for s in held)
    if speed is not Speed.QUALITY:
        assert sum(cached) > 0 or gib == 24, "the plan leaves the step cache no room"
    for name, reuses in DECISIONS.items():
        key = (plan.rows_per_forward, cached, image, name)
        if key not in _measured:
            _measured[key] = two_steps_peak(expert, plan, held, rows, reuses)
        peak = _measured[key]
        assert peak <= booked, f"{name}: {peak / GiB:.2f} GiB needed, {booked / GiB:.2f} GiB booked"
        assert plan.resident_bytes + plan.window_bytes + plan.embedding_bytes + peak <= plan.budget
