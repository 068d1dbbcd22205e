"""Block streaming on the CPU twin: a streamed forward equals the resident one bit for bit, keeps
at most its window on the device, issues its copies in window order, counts what it moves and
cleans up after a failure; the engine's outputs do not change when experts stream."""

import weakref

import numpy as np
import pytest
import torch

from pipeline.engine import Engine
from pipeline.loader import load_model
from pipeline.manifest import expert_key
from pipeline.models.expert import image_positions
from pipeline.request import GenerationRequest
from pipeline.residency import Residency
from pipeline.residency.slab import Layout
from pipeline.residency.streaming import streamed_blocks
from pipeline.residency.transfers import Transfers
from tests.pipeline.test_host_slab import assert_one_allocation, tiny_expert
from tests.support.jobs import run_jobs
from weights import DEFAULT_MODEL


def expert_inputs(config, rows: int = 2, frames: int = 3, size: int = 8, text: int = 8, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(rows)
    n = frames * (size // config.patch_size) ** 2
    return dict(
        img=torch.randn(rows, n, config.in_channels, generator=g).to(dtype),
        img_ids=image_positions(frames, size, size, config.patch_size)[None].expand(rows, -1, -1),
        txt=torch.randn(rows, text, config.context_in_dim, generator=g).to(dtype), txt_ids=torch.zeros(rows, text, 3),
        timesteps=torch.rand(rows, generator=g), y_vec=torch.randn(rows, config.vec_in_dim, generator=g).to(dtype),
        cond=torch.randn(rows, n, config.in_channels + config.patch_size**2, generator=g).to(dtype))


class Watching(Transfers):
    """The CPU twin, watching its device buffers: how many are alive, at most, and how many
    copies were issued."""

    def __init__(self):
        super().__init__(torch.device("cpu"))
        self.alive = self.most_alive = self.issued = 0

    def alloc(self, nbytes):
        buffer = super().alloc(nbytes)
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(buffer, self._freed)
        return buffer

    def _freed(self):
        self.alive -= 1

    def ahead(self, pairs):
        self.issued += 1
        return super().ahead(pairs)


def residency(streamed: dict[str, int], transfers: Transfers | None = None, budget: int | None = None) -> Residency:
    r = Residency("cpu", budget_bytes=budget, streamed=streamed, transfers=transfers)
    r.register("a", lambda: tiny_expert(0), 1)
    return r


@pytest.mark.parametrize("window", [1, 2, 3, 10])
def test_a_streamed_forward_equals_the_resident_one_and_holds_at_most_its_window(window):
    inputs = expert_inputs(tiny_expert().config)
    with torch.inference_mode():
        resident = residency({}).get("a")(**inputs)
        watching = Watching()
        streaming = residency({"a": window}, watching)
        expert = streaming.get("a")
        blocks = streamed_blocks(expert)
        issued_when_entered = []
        for block in blocks:  # registered after the streaming hooks: runs after them
            block.register_forward_pre_hook(lambda *_: issued_when_entered.append(watching.issued))
        streamed = expert(**inputs)
    assert torch.equal(streamed, resident)
    assert issued_when_entered == [1 + min(j + window, len(blocks)) for j in range(len(blocks))]  # the stem, then blocks up to j + window - 1
    assert watching.most_alive == 1 + min(window, len(blocks)) and watching.alive == 0
    assert_one_allocation(expert, streaming.host_bytes)  # every tensor back in the host slab
    assert streaming.stats.bytes_streamed == streaming.host_bytes == Layout(expert, blocks).nbytes
    assert streaming.stats.blocks_streamed == len(blocks) == 4
    assert streaming.stats.bytes_to_device == streaming.stats.bytes_streamed and streaming.stats.device_loads == {}


def test_a_streamed_expert_takes_no_room_in_the_device_budget():
    r = residency({"a": 2}, budget=1)
    assert r.fits({"a"}) and r.is_streamed("a")
    with torch.inference_mode():
        r.get("a")(**expert_inputs(tiny_expert().config))
    assert not r.is_resident("a") and r.resident() == [] and r.resident_bytes == 0


def test_a_forward_failing_midway_frees_its_window_and_the_next_one_runs():
    inputs = expert_inputs(tiny_expert().config)
    watching = Watching()
    r = residency({"a": 2}, watching)
    with torch.inference_mode():
        expert = r.get("a")

        def fail(*_):
            raise RuntimeError("injected block failure")

        handle = streamed_blocks(expert)[2].register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match="injected"):
            expert(**inputs)
        assert watching.alive == 0
        assert_one_allocation(expert, r.host_bytes)
        handle.remove()
        assert torch.equal(expert(**inputs), residency({}).get("a")(**inputs))


@pytest.mark.skipif(not (DEFAULT_MODEL / "model.json").is_file(), reason="weights/paris-mini not built")
def test_paris_mini_expert_streamed_equals_resident():
    resident, streamed = load_model(DEFAULT_MODEL), load_model(DEFAULT_MODEL, streamed={"expert_1": 2})
    with torch.inference_mode():
        expert = resident.get("expert_1")
        inputs = expert_inputs(expert.config, rows=3, dtype=expert.dtype)
        reference = expert(**inputs)
        out = streamed.get("expert_1")(**inputs)
    assert torch.equal(out, reference)
    assert streamed.residency.stats.blocks_streamed == expert.config.depth + expert.config.depth_single_blocks


def mixed(i: int) -> GenerationRequest:
    return GenerationRequest(f"prompt {i}", seed=10 + i, routing="fixed", expert=i % 3, num_inference_steps=3)


def test_the_engine_with_streamed_experts_makes_the_same_videos_and_counts_what_it_streamed(tiny_model_dir):
    jobs = [(f"j{i}", mixed(i)) for i in range(4)]
    reference = run_jobs(Engine(load_model(tiny_model_dir), max_batch=4), jobs)
    model = load_model(tiny_model_dir, streamed={expert_key(i): 1 + i for i in range(3)})
    engine = Engine(model, max_batch=4)
    results = run_jobs(engine, jobs)
    assert all(np.array_equal(results[j].frames, reference[j].frames) for j, _ in jobs)
    stats = model.residency.stats
    expert = model.get("expert_0")
    blocks = streamed_blocks(expert)
    assert stats.blocks_streamed == engine.stats.expert_forwards * len(blocks)
    assert stats.bytes_streamed == engine.stats.expert_forwards * Layout(expert, blocks).nbytes
    assert stats.expert_loads() == 0  # no expert was ever placed whole
    assert max(r.residency.bytes_to_device for r in results.values()) <= stats.bytes_to_device
    assert min(r.residency.bytes_to_device for r in results.values()) >= Layout(expert, blocks).nbytes


class Token:
    """A copy issued ahead, holding weak references to the buffers it writes."""

    def __init__(self, pairs):
        self.buffers = [weakref.ref(dst if dst._base is None else dst._base) for dst, _ in pairs]


class Ordering(Transfers):
    """The CPU twin with CUDA's protocol made visible: a copy issued ahead returns a token, and
    waiting for a token whose buffer is already freed (a use-after-free on CUDA) fails."""

    overlaps = True

    def __init__(self):
        super().__init__(torch.device("cpu"))
        self.log = []

    def ahead(self, pairs):
        super().ahead(pairs)
        token = Token(pairs)
        self.log.append(("issue", token))
        return token

    def wait(self, pending):
        if pending is not None:
            assert all(ref() is not None for ref in pending.buffers), "waited for a copy into a freed buffer"
            self.log.append(("wait", pending))


def test_every_copy_issued_ahead_is_waited_for_before_its_buffer_is_read_or_freed():
    ordering = Ordering()
    r = Residency("cpu", streamed={"s": 2}, transfers=ordering)
    for name in ("a", "b", "s"):
        r.register(name, lambda: tiny_expert(0), 1)
    assert r.prefetch("a", protect=set())
    (_, token), = ordering.log
    r.get("a")  # the compute stream waits for the prefetch before the expert runs
    assert ordering.log == [("issue", token), ("wait", token)]

    ordering.log.clear()
    assert r.prefetch("b", protect=set())
    (_, token), = ordering.log
    r.evict("b")  # never used: waited for before its buffer goes
    assert ordering.log == [("issue", token), ("wait", token)] and token.buffers[0]() is None

    ordering.log.clear()
    expert = r.get("s")
    for index, block in enumerate(streamed_blocks(expert), start=1):
        block.register_forward_pre_hook(lambda *_, index=index: ordering.log.append(("enter", index)))
    with torch.inference_mode():
        expert(**expert_inputs(expert.config))
    issued = [token for kind, token in ordering.log if kind == "issue"]
    assert len(issued) == 1 + 4  # the stem and four blocks
    position = {}  # first occurrence of each event
    for i, (kind, x) in enumerate(ordering.log):
        position.setdefault((kind, x if kind == "enter" else id(x)), i)
    for index, token in enumerate(issued[1:], start=1):
        assert position["issue", id(token)] < position["wait", id(token)] < position["enter", index]
    assert all(ref() is None for token in issued for ref in token.buffers)  # every block's buffer freed after
