"""Continuous batching: a request gives the same frames alone or batched with others; a failure
fails the requests it touched and no others."""

import numpy as np
import pytest
from PIL import Image

import pipeline.engine
from pipeline.engine import Engine
from pipeline.request import GenerationRequest, resolve
from pipeline.results import Failed, Finished, Progress

OTHERS = [
    GenerationRequest("a blue square growing", seed=21, routing="fixed", expert=1),
    GenerationRequest("a green triangle fading in", seed=22, routing="fixed", expert=2),
    GenerationRequest("a red square moving up", seed=23, top_k=2),
    GenerationRequest("a blue circle shrinking", seed=24, image=Image.new("RGB", (32, 32), (0, 0, 255))),
    GenerationRequest("a red circle moving down", seed=25, routing="ensemble"),
    GenerationRequest("a green square fading out", seed=26, num_inference_steps=6),
    GenerationRequest("a blue triangle moving right", seed=27, size="64x32"),
]


def run_all(engine: Engine, arrivals: dict[int, list[tuple[str, GenerationRequest]]]) -> dict[str, Finished | Failed]:
    """Admit requests at given ticks and tick until the engine is idle; returns each job's one
    terminal event (a job with none, or with two, fails the test)."""
    outcome, tick, admitted = {}, 0, set()
    while engine.has_work or any(t >= tick for t in arrivals):
        for job_id, request in arrivals.get(tick, []):
            engine.admit(job_id, resolve(engine.model.manifest, request))
            admitted.add(job_id)
        for event in engine.tick():
            if isinstance(event, Finished | Failed):
                assert event.job_id not in outcome, f"{event.job_id} left the engine twice"
                outcome[event.job_id] = event
        tick += 1
    assert admitted <= set(outcome)
    return outcome


def frames(events: dict, job_id: str) -> np.ndarray:
    event = events[job_id]
    assert isinstance(event, Finished), event
    return event.result.frames.astype(int)


def test_frames_match_alone_and_batched_with_seven_others_at_other_steps(tiny_model):
    target = GenerationRequest("a red circle moving left", seed=5)
    alone = run_all(Engine(tiny_model), {0: [("target", target)]})["target"].result
    # others join before and after the target, so it shares forwards with requests at other steps
    arrivals = {0: [(f"o{i}", r) for i, r in enumerate(OTHERS[:4])], 2: [("target", target)] + [(f"o{i}", r) for i, r in enumerate(OTHERS[4:], 4)]}
    batched = run_all(Engine(tiny_model, max_batch=8), arrivals)
    assert all(isinstance(e, Finished) for e in batched.values())
    assert np.abs(alone.frames.astype(int) - frames(batched, "target")).max() <= 1
    assert alone.trace.steps == batched["target"].result.trace.steps
    assert not np.array_equal(frames(batched, "target"), frames(batched, "o0"))  # the rows were not mixed up


def test_every_active_request_advances_one_step_per_tick(tiny_model):
    engine = Engine(tiny_model, max_batch=3)
    for i in range(3):
        engine.admit(f"j{i}", resolve(engine.model.manifest, GenerationRequest("a red circle", seed=i)))
    steps = {}
    for tick in range(4):
        for e in engine.tick():
            if isinstance(e, Progress):
                steps.setdefault(e.job_id, []).append((tick, e.step))
    assert set(steps) == {"j0", "j1", "j2"}
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


# -- failures: each fails exactly the requests it touched ---------------------------------------

def broken(*args, **kwargs):
    raise RuntimeError("injected")


def alone(tiny_model, request) -> np.ndarray:
    return frames(run_all(Engine(tiny_model), {0: [("j", request)]}), "j")


def assert_failed(events, job_id, code):
    assert isinstance(events[job_id], Failed) and events[job_id].code == code
    assert "injected" in events[job_id].message


def test_a_text_encoder_failure_fails_only_the_requests_with_new_texts(tiny_model, monkeypatch):
    cached = GenerationRequest("a red circle", seed=7)
    reference = alone(tiny_model, cached)  # also puts its prompt in this engine's cache below
    engine = Engine(tiny_model, max_batch=3)
    engine.admit("warm", resolve(tiny_model.manifest, GenerationRequest("a red circle", seed=1)))
    engine.tick()
    monkeypatch.setattr(pipeline.engine, "encode_t5", broken)
    events = run_all(engine, {0: [("cached", cached), ("new", GenerationRequest("a prompt never seen", seed=2))]})
    assert_failed(events, "new", "encode_failed")
    assert np.abs(frames(events, "cached") - reference).max() <= 1  # its texts were cached: unaffected
    assert isinstance(events["warm"], Finished)


def test_a_text_the_encoders_cannot_take_fails_only_its_own_request(tiny_model):
    # a lone surrogate: the tokenizer refuses it; the other new texts in the same batch still encode
    plain = GenerationRequest("a green square moving up", seed=8)
    reference = alone(tiny_model, plain)
    events = run_all(Engine(tiny_model), {0: [("poison", GenerationRequest("a red circle", seed=1, negative_prompt="\udfff")),
                                              ("plain", plain), ("other", GenerationRequest("a blue circle", seed=2))]})
    assert isinstance(events["poison"], Failed) and events["poison"].code == "encode_failed"
    assert np.abs(frames(events, "plain") - reference).max() <= 1
    assert isinstance(events["other"], Finished)


def test_an_image_encoder_failure_fails_the_image_requests_only(tiny_model, monkeypatch):
    text_only = GenerationRequest("a red circle", seed=3)
    reference = alone(tiny_model, text_only)
    monkeypatch.setattr(pipeline.engine, "vae_encode_frame", broken)
    events = run_all(Engine(tiny_model), {0: [("i2v", GenerationRequest("a red circle", seed=3, image=Image.new("RGB", (32, 32)))),
                                              ("t2v", text_only)]})
    assert_failed(events, "i2v", "encode_failed")
    assert np.abs(frames(events, "t2v") - reference).max() <= 1


def test_an_expert_failure_fails_the_requests_routed_to_it_only(tiny_model):
    requests = {f"on{e}": GenerationRequest("a red circle", seed=e, routing="fixed", expert=e) for e in range(3)}
    references = {job_id: alone(tiny_model, r) for job_id, r in requests.items()}
    hook = tiny_model.get("expert_1").register_forward_pre_hook(broken)
    try:
        events = run_all(Engine(tiny_model), {0: list(requests.items())})
    finally:
        hook.remove()
    assert_failed(events, "on1", "denoise_failed")
    for job_id in ("on0", "on2"):
        assert np.abs(frames(events, job_id) - references[job_id]).max() <= 1


def test_a_router_failure_fails_the_routed_requests_only(tiny_model):
    fixed = GenerationRequest("a red circle", seed=4, routing="fixed", expert=0)
    reference = alone(tiny_model, fixed)
    hook = tiny_model.get("router").register_forward_pre_hook(broken)
    try:
        events = run_all(Engine(tiny_model), {0: [("top_k", GenerationRequest("a red circle", seed=4)), ("fixed", fixed)]})
    finally:
        hook.remove()
    assert_failed(events, "top_k", "denoise_failed")
    assert np.abs(frames(events, "fixed") - reference).max() <= 1


def test_a_decode_failure_fails_the_batch_that_failed_only(tiny_model, monkeypatch):
    small = GenerationRequest("a red circle", seed=6)
    reference = alone(tiny_model, small)
    decode = pipeline.engine.vae_decode

    def fails_when_wide(vae, latents):
        if latents.shape[-1] != latents.shape[-2]:
            raise RuntimeError("injected")
        return decode(vae, latents)

    monkeypatch.setattr(pipeline.engine, "vae_decode", fails_when_wide)
    events = run_all(Engine(tiny_model), {0: [("wide", GenerationRequest("a red circle", seed=6, size="64x32")), ("small", small)]})
    assert_failed(events, "wide", "decode_failed")
    assert np.abs(frames(events, "small") - reference).max() <= 1


def test_weight_traffic_is_the_engines_running_totals_handed_back_as_a_copy(tiny_model_dir):
    """The worker counts weight traffic from Engine.weight_traffic (not the residency's internals):
    on a fresh model it starts empty, and after one generation its expert loads are the ones the
    result's own ResidencyDelta counted (experts load only once the request started), beside the
    encoders' loads before it."""
    from pipeline.loader import load_model

    engine = Engine(load_model(tiny_model_dir), max_batch=1)
    before = engine.weight_traffic
    assert (before.device_loads, before.bytes_to_device, before.bytes_from_disk) == ({}, 0, 0)
    outcome = run_all(engine, {0: [("one", GenerationRequest("a red circle", seed=3, num_inference_steps=2))]})
    result = outcome["one"].result
    after = engine.weight_traffic
    assert before.device_loads == {}  # a copy: the totals it reported did not move on
    assert sum(n for name, n in after.device_loads.items() if name.startswith("expert_")) \
        == result.residency.expert_loads > 0
    assert {"t5", "clip", "vae"} <= after.device_loads.keys()
    assert after.bytes_to_device > result.residency.bytes_to_device > 0
    assert after.bytes_from_disk > 0
