"""Residency under a byte budget, expert-major scheduling, and its fairness bound (CPU)."""

import numpy as np
import torch
from torch import nn

from pipeline.engine import Engine
from pipeline.loader import load_model
from pipeline.request import GenerationRequest, resolve
from pipeline.residency import Residency
from pipeline.residency.slab import ALIGN
from pipeline.residency.transfers import Transfers
from tests.support.jobs import one_expert_budget, run_jobs as drive


def fake(n):
    return lambda: nn.Linear(n, 1)


def test_lazy_load_lru_eviction_and_demand_protection():
    r = Residency("cpu", budget_bytes=20)
    for name in "abc":
        r.register(name, fake(2), nbytes=10)
    assert r.stats.disk_loads == {}
    r.get("a")
    r.get("b")
    assert r.resident() == ["a", "b"] and r.stats.disk_loads == {"a": 1, "b": 1}
    r.get("c")  # a is least recently used
    assert r.resident() == ["b", "c"]
    r.get("a", demand={"b"})  # b is still needed this tick: c goes instead
    assert sorted(r.resident()) == ["a", "b"]
    assert r.stats.evictions == {"a": 1, "c": 1}
    r.get("c")
    assert r.stats.disk_loads["c"] == 1  # evicted to its host copy: no second read from disk
    assert r.stats.bytes_to_device == 5 * 2 * ALIGN  # five loads of a weight and a bias, each in its aligned place


class Overlapping(Transfers):
    """The CPU twin, claiming overlap as CUDA's copies have it, so that prefetching runs."""

    overlaps = True


def test_prefetch_is_a_no_op_where_copies_cannot_overlap_compute():
    r = Residency("cpu", budget_bytes=20)
    r.register("a", fake(2), nbytes=10)
    assert r.prefetch("a", protect=set()) is False and not r.is_resident("a")


def test_prefetch_places_what_fits_without_evicting_what_is_protected():
    r = Residency("cpu", budget_bytes=20, transfers=Overlapping(torch.device("cpu")))
    for name in "abc":
        r.register(name, fake(2), nbytes=10)
    r.get("a")
    r.get("b")
    assert r.prefetch("c", protect={"a", "b"}) is False and not r.is_resident("c")  # no room: nothing moved
    assert r.prefetch("c", protect={"b"}) is True  # on a CPU the copy is done at once
    assert r.resident() == ["b", "c"] and r.stats.prefetches == 1 and r.stats.device_loads["c"] == 1
    assert r.prefetch("c", protect=set()) is False  # already there
    r.get("c")
    assert r.stats.device_loads["c"] == 1


def one_expert_model(tiny_model_dir):
    return load_model(tiny_model_dir, budget_bytes=one_expert_budget(load_model(tiny_model_dir)))


def mixed(i, steps=4):
    return GenerationRequest(f"prompt {i}", seed=100 + i, routing="fixed", expert=i % 3, num_inference_steps=steps)


def test_budget_of_one_expert_batches_by_expert_with_fewer_loads(tiny_model_dir):
    jobs = [(f"j{i}", mixed(i)) for i in range(6)]
    seq_model = one_expert_model(tiny_model_dir)
    for job in jobs:
        drive(Engine(seq_model, max_batch=1), [job])
    batched_model = one_expert_model(tiny_model_dir)
    results = drive(Engine(batched_model, max_batch=6, max_wait=8), jobs)
    assert len(results) == 6
    seq_loads = seq_model.residency.stats.expert_loads()
    batched_loads = batched_model.residency.stats.expert_loads()
    assert seq_loads == 6  # experts 0,1,2,0,1,2 one after another
    assert batched_loads == 3  # each expert once: its requests run together
    assert all(r.residency.max_waited_ticks <= 8 + 6 - 1 for r in results.values())


def test_waiting_does_not_change_the_result(tiny_model_dir):
    alone = drive(Engine(load_model(tiny_model_dir)), [("t", mixed(1))])["t"]
    results = drive(Engine(one_expert_model(tiny_model_dir), max_batch=4, max_wait=2), [(f"j{i}", mixed(i)) for i in range(4)])
    assert results["j1"].residency.max_waited_ticks > 0  # it did wait
    assert np.array_equal(alone.frames, results["j1"].frames)


def test_no_request_waits_beyond_the_bound_under_a_steady_stream(tiny_model_dir):
    max_wait, max_batch = 3, 4
    jobs = [(f"j{i}", mixed(i, steps=6)) for i in range(30)]
    results = drive(Engine(one_expert_model(tiny_model_dir), max_batch=max_batch, max_wait=max_wait), jobs)
    waits = [r.residency.max_waited_ticks for r in results.values()]
    assert len(results) == 30
    assert max(waits) > 0  # contention happened
    assert max(waits) <= max_wait + max_batch - 1


def test_repeated_prompts_are_encoded_once(tiny_model):
    calls = []
    handle = tiny_model.get("t5").register_forward_hook(lambda *a: calls.append(1))
    try:
        engine = Engine(tiny_model, max_batch=4)
        for i in range(3):
            engine.admit(f"a{i}", resolve(engine.model.manifest, GenerationRequest("a very repeated prompt", seed=i, num_inference_steps=1)))
        engine.tick()
        engine.admit("b", resolve(engine.model.manifest, GenerationRequest("a very repeated prompt", seed=9, num_inference_steps=1)))
        engine.tick()
    finally:
        handle.remove()
    assert len(calls) == 1  # one batched T5 call for the three, the cache for the fourth


def test_device_memory_budget_parsing():
    import pytest

    from pipeline.residency import free_memory, parse_budget

    assert parse_budget(None, "cpu") is None
    assert parse_budget("40GiB", "cpu") == 40 * 2**30
    assert parse_budget("500MB", "cpu") == 500 * 10**6
    assert parse_budget("123456", "cpu") == 123456
    half = parse_budget("0.5", "cpu")
    assert 0 < half <= free_memory(torch.device("cpu"))
    with pytest.raises(ValueError, match="device memory"):
        parse_budget("lots", "cpu")
