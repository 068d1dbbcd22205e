"""Continuous batching: a request gives the same frames alone or batched with others."""

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine, Finished, Progress
from pipeline.request import GenerationRequest, resolve

OTHERS = [
    GenerationRequest("a blue square growing", seed=21, routing="fixed", expert=1),
    GenerationRequest("a green triangle fading in", seed=22, routing="fixed", expert=2),
    GenerationRequest("a red square moving up", seed=23, top_k=2),
    GenerationRequest("a blue circle shrinking", seed=24, image=Image.new("RGB", (32, 32), (0, 0, 255))),
    GenerationRequest("a red circle moving down", seed=25, routing="ensemble"),
    GenerationRequest("a green square fading out", seed=26, num_inference_steps=6),
    GenerationRequest("a blue triangle moving right", seed=27, size="64x32"),
]


def run_all(engine: Engine, arrivals: dict[int, list[tuple[str, GenerationRequest]]]):
    """Admit requests at given ticks; returns results and the tick at which each finished."""
    results, tick = {}, 0
    while engine.has_work or any(t >= tick for t in arrivals):
        for job_id, request in arrivals.get(tick, []):
            engine.admit(job_id, resolve(engine.model.manifest, request))
        for event in engine.tick():
            if isinstance(event, Finished):
                results[event.job_id] = event.result
        tick += 1
    return results


def test_frames_match_alone_and_batched_with_seven_others_at_other_steps(tiny_model):
    target = GenerationRequest("a red circle moving left", seed=5)
    alone = run_all(Engine(tiny_model), {0: [("target", target)]})["target"]
    # others join before and after the target, so it shares forwards with requests at other steps
    arrivals = {0: [(f"o{i}", r) for i, r in enumerate(OTHERS[:4])], 2: [("target", target)] + [(f"o{i}", r) for i, r in enumerate(OTHERS[4:], 4)]}
    batched = run_all(Engine(tiny_model, max_batch=8), arrivals)
    assert set(batched) == {"target"} | {f"o{i}" for i in range(7)}
    assert np.abs(alone.frames.astype(int) - batched["target"].frames.astype(int)).max() <= 1
    assert alone.trace.steps == batched["target"].trace.steps


def test_every_active_request_advances_one_step_per_tick(tiny_model):
    engine = Engine(tiny_model, max_batch=3)
    for i in range(3):
        engine.admit(f"j{i}", resolve(engine.model.manifest, GenerationRequest("a red circle", seed=i)))
    steps = {}
    for tick in range(4):
        for e in engine.tick():
            if isinstance(e, Progress):
                steps.setdefault(e.job_id, []).append((tick, e.step))
    assert all(v == [(0, 1), (1, 2), (2, 3), (3, 4)] for v in steps.values())


def test_branch_counts_two_for_t2v_one_at_guidance_one_three_for_i2v(tiny_model):
    def rows(request):
        engine = Engine(tiny_model)
        engine.admit("j", resolve(engine.model.manifest, request))
        engine.tick()
        return engine.stats.expert_rows

    assert rows(GenerationRequest("a red circle", seed=1)) == 2
    assert rows(GenerationRequest("a red circle", seed=1, guidance_scale=1.0)) == 1
    assert rows(GenerationRequest("a red circle", seed=1, image=Image.new("RGB", (32, 32)))) == 3


def test_admit_refuses_when_full_and_cancel_frees_a_slot(tiny_model):
    engine = Engine(tiny_model, max_batch=1)
    engine.admit("a", resolve(engine.model.manifest, GenerationRequest("a red circle", seed=1)))
    with pytest.raises(RuntimeError):
        engine.admit("b", resolve(engine.model.manifest, GenerationRequest("a red circle", seed=1)))
    engine.tick()
    assert engine.cancel("a") and engine.free_slots == 1 and not engine.has_work
