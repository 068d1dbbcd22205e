"""The engine under a memory plan's limits (rows per forward, videos decoded at once, the
embedding cache's bytes, encoders on demand), and out-of-memory failures at every stage: each
fails exactly the requests involved with code out_of_memory, and the engine keeps serving."""

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.engine
from pipeline.engine import EmbeddingCache, Engine, MemoryLimits
from pipeline.request import GenerationRequest, resolve
from pipeline.request_state import TextEmbedding
from pipeline.results import Failed, Finished
from tests.pipeline.test_engine import frames, run_all

# Three requests on one expert (6 rows a step), one image-to-video (3 rows), all finishing together.
SAME_EXPERT = [GenerationRequest(f"a red circle moving {d}", seed=i, routing="fixed", expert=0)
               for i, d in enumerate(("left", "right", "up"))]
SAME_EXPERT.append(GenerationRequest("a blue square", seed=9, routing="fixed", expert=0,
                                     image=Image.new("RGB", (32, 32), (0, 0, 255))))


def rows_per_forward(model, engine: Engine, arrivals) -> tuple[dict, list[int]]:
    """Run the jobs; also the row count of every expert forward."""
    seen = []
    hooks = [model.get(f"expert_{i}").register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
             for i in range(model.num_experts)]
    try:
        return run_all(engine, arrivals), seen
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module")
def whole(tiny_model):
    """The four requests with no limits: one forward of all their rows, one decode."""
    return rows_per_forward(tiny_model, Engine(tiny_model), {0: [(f"j{i}", r) for i, r in enumerate(SAME_EXPERT)]})


@pytest.mark.parametrize("limit", [1, 4])
def test_a_group_larger_than_rows_per_forward_runs_in_chunks_with_the_same_output(tiny_model, whole, limit):
    unlimited, unlimited_rows = whole
    assert max(unlimited_rows) == 2 * 3 + 3  # every row in one forward without a limit
    engine = Engine(tiny_model, limits=MemoryLimits(rows_per_forward=limit))
    chunked, rows = rows_per_forward(tiny_model, engine, {0: [(f"j{i}", r) for i, r in enumerate(SAME_EXPERT)]})
    assert max(rows) == limit and sum(rows) == sum(unlimited_rows)
    for job_id in unlimited:  # row-wise the same forward: equal up to float rounding in the batched matmuls
        assert np.abs(frames(chunked, job_id) - frames(unlimited, job_id)).max() <= 1
        assert chunked[job_id].result.trace.steps == unlimited[job_id].result.trace.steps


def test_videos_decode_at_most_the_plans_count_at_once_with_the_same_frames(tiny_model, whole, monkeypatch):
    unlimited, _ = whole
    decode, batches = pipeline.engine.vae_decode, []

    def counted(vae, latents):
        batches.append(latents.shape[0])
        return decode(vae, latents)

    monkeypatch.setattr(pipeline.engine, "vae_decode", counted)
    events = run_all(Engine(tiny_model, limits=MemoryLimits(decodes_at_once=3)),
                     {0: [(f"j{i}", r) for i, r in enumerate(SAME_EXPERT)]})
    assert batches == [3, 1]  # four same-shape videos finished on the same tick
    for job_id in unlimited:  # the VAE decodes a batch one video at a time (slicing): bit-identical
        assert np.array_equal(frames(events, job_id), frames(unlimited, job_id))


def test_the_vae_decodes_a_batch_one_video_at_a_time(tiny_model):
    assert tiny_model.get("vae").use_slicing


def embedding(tokens: int, width: int = 4) -> TextEmbedding:
    return TextEmbedding(torch.zeros(1, tokens, width), torch.zeros(1, width))


def test_the_embedding_cache_is_bounded_by_bytes_and_by_count():
    entry = (8 * 4 + 4) * 4  # an 8-token embedding and its pooled vector, fp32
    cache = EmbeddingCache(size=10, max_bytes=3 * entry)
    for text in "abcd":
        cache.put(text, embedding(8))
    assert len(cache) == 3 and cache.nbytes == 3 * entry and cache.get("a") is None
    cache.put("big", embedding(16))  # twice an entry's tokens: two old ones leave
    assert cache.nbytes <= 3 * entry and cache.get("big") is not None and cache.get("b") is None
    by_count = EmbeddingCache(size=2)
    for text in "abc":
        by_count.put(text, embedding(8))
    assert len(by_count) == 2 and by_count.get("a") is None


def test_cached_text_embeddings_hold_their_own_rows_only(tiny_model):
    engine = Engine(tiny_model, max_batch=4)
    run_all(engine, {0: [(f"j{i}", r) for i, r in enumerate(SAME_EXPERT[:3])]})  # 4 texts encoded in one batch
    assert len(engine.cache) == 4
    for text in ["", *(tiny_model.manifest.sampling.prompt_template.format(prompt=r.prompt) for r in SAME_EXPERT[:3])]:
        e = engine.cache.get(text)
        assert e.tokens.untyped_storage().nbytes() == e.tokens.numel() * 4  # not a view of the T5 batch
        assert e.pooled.untyped_storage().nbytes() == e.pooled.numel() * 4
    assert engine.cache.nbytes == 4 * (engine.cache.get("").tokens.numel() + engine.cache.get("").pooled.numel()) * 4


def test_encoders_on_demand_leave_the_device_after_encoding(tiny_model, whole):
    unlimited, _ = whole
    engine = Engine(tiny_model, limits=MemoryLimits(on_demand=frozenset({"t5", "dinov2"})))
    engine.admit("j0", resolve(tiny_model.manifest, SAME_EXPERT[0]))
    engine.tick()
    assert not tiny_model.residency.is_resident("t5") and not tiny_model.residency.is_resident("dinov2")
    assert tiny_model.residency.is_resident("clip")
    events = run_all(engine, {})
    assert np.abs(frames(events, "j0") - frames(unlimited, "j0")).max() <= 1


# -- out of memory at every stage -----------------------------------------------------------------
def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory (injected)")


def hooked(model, name: str):
    return model.get(name).register_forward_pre_hook(out_of_memory)


def patched(name: str):
    return lambda model, monkeypatch: monkeypatch.setattr(pipeline.engine, name, out_of_memory)


STAGES = {  # stage -> (how to break it, the request that runs into it, the one that does not)
    "text encoder": (patched("encode_t5"), GenerationRequest("a prompt never seen", seed=1), None),
    "image encoder": (patched("vae_encode_frame"), GenerationRequest("a red circle", seed=2, image=Image.new("RGB", (32, 32))),
                      GenerationRequest("a red circle", seed=2)),
    "router": (lambda model, mp: hooked(model, "router"), GenerationRequest("a red circle", seed=3),
               GenerationRequest("a red circle", seed=3, routing="fixed", expert=0)),
    "expert": (lambda model, mp: hooked(model, "expert_1"), GenerationRequest("a red circle", seed=4, routing="fixed", expert=1),
               GenerationRequest("a red circle", seed=4, routing="fixed", expert=2)),
    "decoder": (patched("vae_decode"), GenerationRequest("a red circle", seed=5), None),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_out_of_memory_fails_exactly_the_requests_involved_and_the_engine_keeps_serving(tiny_model, monkeypatch, stage):
    brk, victim, bystander = STAGES[stage]
    releases = []
    collect = pipeline.engine.gc.collect
    monkeypatch.setattr(pipeline.engine.gc, "collect", lambda *a: releases.append(1) or collect(*a))
    engine = Engine(tiny_model)
    with monkeypatch.context() as broken:
        hook = brk(tiny_model, broken)
        try:
            arrivals = [("victim", victim)] + ([("bystander", bystander)] if bystander else [])
            events = run_all(engine, {0: arrivals})
        finally:
            if hook is not None:
                hook.remove()
    assert isinstance(events["victim"], Failed) and events["victim"].code == "out_of_memory"
    assert "injected" in events["victim"].message
    if bystander:
        assert isinstance(events["bystander"], Finished)
    assert releases and not engine.has_work
    after = run_all(engine, {0: [("after", GenerationRequest("a green triangle", seed=6))]})
    assert isinstance(after["after"], Finished)


def test_a_failure_outside_the_stages_fails_every_request_not_started_and_loses_none(tiny_model, monkeypatch):
    engine = Engine(tiny_model, max_batch=3)
    engine.admit("running", resolve(tiny_model.manifest, GenerationRequest("a red circle", seed=1, num_inference_steps=6)))
    engine.tick()  # started: its texts are cached now
    monkeypatch.setattr(engine.cache, "get", out_of_memory)
    engine.admit("a", resolve(tiny_model.manifest, GenerationRequest("a red circle", seed=2)))
    engine.admit("b", resolve(tiny_model.manifest, GenerationRequest("a blue square", seed=3)))
    events = run_all(engine, {})
    assert {j: e.code for j, e in events.items() if isinstance(e, Failed)} == {"a": "out_of_memory", "b": "out_of_memory"}
    assert isinstance(events["running"], Finished)
