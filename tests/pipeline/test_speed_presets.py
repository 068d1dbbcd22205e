"""Speed presets in the engine: the guidance interval leaves branches out, step caching skips
blocks per row, and every generation counts what it ran and skipped."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine, MemoryLimits
from pipeline.generate import generate
from pipeline.loader import load_model
from pipeline.manifest import expert_key
from pipeline.request import GenerationRequest
from pipeline.speed import PRESETS, CachePolicy, Speed, SpeedPreset
from tests.pipeline.test_engine import OTHERS, run_all
from tests.support.jobs import run_jobs
from weights import DEFAULT_MODEL

BLOCKS = 2  # the tiny expert: one double-stream and one single-stream block
ALWAYS = CachePolicy(threshold=1e9, warmup=0.0, max_reuse=100)  # reuses wherever the rules allow


def test_quality_runs_every_branch_through_every_block(tiny_model):
    result = generate(tiny_model, GenerationRequest("a red circle", seed=1, num_inference_steps=4, top_k=2))
    rows = 4 * 2 * 2  # steps x experts x branches
    assert result.compute.to_dict() == {"row_forwards": rows, "row_forwards_skipped": 0,
                                        "block_forwards": rows * BLOCKS, "block_forwards_skipped": 0}


def test_the_interval_runs_the_conditional_branch_alone_outside_it(tiny_model):
    steps = 14
    result = generate(tiny_model, GenerationRequest("a red circle", seed=1, num_inference_steps=steps,
                                                    guidance_interval=[0.0, 0.6], guidance_oscillation=True))
    # unconditional rows run inside the interval and not on oscillation's odd steps from step 10
    ts = [s.t for s in result.trace.steps]
    with_uncond = [0.0 <= t <= 0.6 and not (i >= 10 and i % 2) for i, t in enumerate(ts)]
    assert 0 < sum(with_uncond) < steps
    c = result.compute
    assert (c.row_forwards, c.row_forwards_skipped) == (steps + sum(with_uncond), steps - sum(with_uncond))
    assert c.block_forwards_skipped == BLOCKS * c.row_forwards_skipped


def test_outside_the_interval_image_to_video_runs_one_branch_as_guidance_one_does(tiny_model):
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    never = generate(tiny_model, GenerationRequest("a red circle", seed=2, image=image, guidance_interval=[0.0, 0.0]))
    unguided = generate(tiny_model, GenerationRequest("a red circle", seed=2, image=image, guidance_scale=1.0,
                                                      image_guidance_scale=1.0))
    guided = generate(tiny_model, GenerationRequest("a red circle", seed=2, image=image))
    assert np.array_equal(never.frames, unguided.frames)
    assert never.compute.row_forwards == 4 and unguided.compute.row_forwards_skipped == 0
    # what the interval left out is what full guidance ran beyond one branch per step
    assert never.compute.row_forwards_skipped == guided.compute.row_forwards - 4 > 4


def test_a_row_computes_when_the_router_moves_it_to_another_expert(tiny_model, monkeypatch):
    monkeypatch.setitem(PRESETS, Speed.FAST, SpeedPreset(ALWAYS, None))

    def compute(schedule):
        request = GenerationRequest("a red circle", seed=3, num_inference_steps=8, routing="schedule",
                                    expert_schedule=schedule, speed="fast")
        return generate(tiny_model, request).compute

    # per branch: step 0 (warm-up) and step 7 (last) compute, the rest reuse
    same = compute([0] * 8)
    assert (same.row_forwards, same.block_forwards) == (16, 2 * 2 * BLOCKS)
    # the switch to expert 1 at step 4 finds no fresh entry: that step computes too
    moved = compute([0, 0, 0, 0, 1, 1, 1, 1])
    assert (moved.row_forwards, moved.block_forwards) == (16, 2 * 3 * BLOCKS)
    assert moved.block_forwards + moved.block_forwards_skipped == 16 * BLOCKS


def test_with_caching_a_request_gives_the_same_video_alone_and_batched(tiny_model, monkeypatch):
    """Decisions are per row: the others (other steps, experts, sizes, presets) change nothing.
    (The threshold suits the random-weight model: some rows reuse, some compute.)"""
    monkeypatch.setitem(PRESETS, Speed.FAST, SpeedPreset(CachePolicy(threshold=0.1, warmup=0.0, max_reuse=2), None))
    target = GenerationRequest("a red circle moving left", seed=5, num_inference_steps=12, speed="fast")
    alone = run_all(Engine(tiny_model), {0: [("target", target)]})["target"].result
    others = [(f"o{i}", replace(r, speed="fast" if i % 2 else None)) for i, r in enumerate(OTHERS)]
    batched = run_all(Engine(tiny_model, max_batch=8), {0: others[:4], 3: [("target", target)] + others[4:]})
    result = batched["target"].result
    assert 0 < alone.compute.block_forwards_skipped < alone.compute.block_forwards  # rows reused and computed
    assert result.compute == alone.compute and result.trace.steps == alone.trace.steps
    assert np.abs(alone.frames.astype(int) - result.frames.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def paris_mini():
    if not (DEFAULT_MODEL / "model.json").is_file():
        pytest.skip("weights/paris-mini not built (run `make paris-mini`)")
    return load_model(DEFAULT_MODEL)


def test_on_paris_mini_each_preset_skips_more_and_quality_none(paris_mini):
    """The presets' thresholds are calibrated on paris-mini (tests/benchmarks/bench_speed_presets.py)."""
    jobs = [(s.value, GenerationRequest("a blue square growing", seed=4, num_inference_steps=30, speed=s))
            for s in Speed]
    results = {k: r.compute for k, r in run_jobs(Engine(paris_mini, max_batch=3), jobs).items()}
    quality, balanced, fast = results["quality"], results["balanced"], results["fast"]
    assert quality.block_forwards_skipped == 0 and quality.row_forwards_skipped == 0
    assert quality.block_forwards > balanced.block_forwards > fast.block_forwards
    assert all(c.block_forwards + c.block_forwards_skipped == quality.block_forwards for c in results.values())


def test_with_caching_streamed_experts_and_rows_per_forward_change_no_video(tiny_model, tiny_model_dir, monkeypatch):
    """Each row decides alone, so neither block streaming (the cached forward is one call of the
    expert: its hooks fire) nor a memory plan's rows_per_forward changes what a request gets."""
    monkeypatch.setitem(PRESETS, Speed.FAST, SpeedPreset(CachePolicy(threshold=0.1, warmup=0.0, max_reuse=2), None))
    jobs = [(f"j{i}", replace(r, speed="fast", num_inference_steps=8)) for i, r in enumerate(OTHERS[:4])]
    resident = run_jobs(Engine(tiny_model, max_batch=4), jobs)
    streamed_model = load_model(tiny_model_dir, streamed={expert_key(i): 1 + i for i in range(3)})
    streamed = run_jobs(Engine(streamed_model, max_batch=4), jobs)
    chunked = run_jobs(Engine(tiny_model, max_batch=4, limits=MemoryLimits(rows_per_forward=1)), jobs)
    skipped = sum(r.compute.block_forwards_skipped for r in resident.values())
    assert 0 < skipped < sum(r.compute.block_forwards for r in resident.values())  # rows reused and computed
    for job_id, _ in jobs:
        assert np.array_equal(streamed[job_id].frames, resident[job_id].frames)
        assert streamed[job_id].compute == resident[job_id].compute
        assert np.abs(chunked[job_id].frames.astype(int) - resident[job_id].frames.astype(int)).max() <= 1
        assert chunked[job_id].compute == resident[job_id].compute
    assert streamed_model.residency.stats.blocks_streamed > 0 and streamed_model.residency.stats.expert_loads() == 0
