"""Step caching per row: the split expert forward is the forward; rows decide alone; entries
serve only the next step of the same expert and branch."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pipeline.models.expert import MMDiT, image_positions, pack
from pipeline.residency import Residency
from pipeline.sampling import Branch
from pipeline.speed import CachePolicy
from pipeline.step_cache import CacheRow, StepCache, cached_forward, relative_change
from tests.pipeline.test_host_slab import assert_one_allocation
from tests.support.tiny_model import tiny_expert_config

ALWAYS = CachePolicy(threshold=1e9, warmup=0.0, max_reuse=100)  # reuses wherever the rules allow


@pytest.fixture(scope="module")
def expert():
    torch.manual_seed(0)
    model = MMDiT(tiny_expert_config(depth=2, depth_single_blocks=2)).eval()
    for p in model.parameters():  # cond_in starts at zero; give every weight a value
        p.data.normal_(0, 0.2)
    return model


def inputs(expert, rows: int, seed: int = 0, t: float = 0.5):
    c = expert.config
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(rows, 16, 3, 8, 8, generator=g)
    n = 3 * 4 * 4
    return (pack(latents), image_positions(3, 8, 8)[None].repeat(rows, 1, 1), torch.randn(rows, 5, c.context_in_dim, generator=g),
            torch.zeros(rows, 5, 3), torch.full((rows,), t), torch.randn(rows, c.vec_in_dim, generator=g),
            torch.randn(rows, n, c.in_channels + c.patch_size**2, generator=g))


def rows_for(caches, step, key="expert_0", branch=Branch.COND):
    return [CacheRow(c, key, branch, step) for c in caches]


def test_the_split_forward_is_the_forward_bit_for_bit(expert):
    x = inputs(expert, 3)
    with torch.inference_mode():
        assert torch.equal(expert.final(expert.run_blocks(expert.embed(*x))), expert(*x))


def test_rows_that_compute_give_the_plain_forward_and_fill_their_cache(expert):
    x = inputs(expert, 2)
    caches = [StepCache(ALWAYS, 10), StepCache(ALWAYS, 10)]
    with torch.inference_mode():
        out, blocks = cached_forward(expert, x, rows_for(caches, 0))  # step 0: warm-up, every row computes
        assert torch.equal(out, expert(*x)) and blocks == [4, 4]
        assert all(c.candidate("expert_0", Branch.COND, 1) is not None for c in caches)


def test_entries_own_their_tensors_rather_than_views_of_the_batch(expert):
    """An entry outlives the forward: a view of a row would keep the whole batch's tensor alive."""
    x = inputs(expert, 3)
    caches = [StepCache(ALWAYS, 10) for _ in range(3)]
    with torch.inference_mode():
        cached_forward(expert, x, rows_for(caches, 0))  # every row computes and stores
        cached_forward(expert, x, rows_for(caches, 1))  # every row reuses and updates its signal
    for c in caches:
        entry = c.candidate("expert_0", Branch.COND, 2)
        assert entry.reused == 1
        for t in (entry.signal, entry.residual):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_each_row_decides_alone_in_a_mixed_batch(expert):
    """Row 0's input barely moves, row 1's moves a lot: row 0 reuses (no block), row 1 computes
    (4 blocks) and gets what a forward of its own inputs gives."""
    policy = CachePolicy(threshold=0.05, warmup=0.0, max_reuse=3)
    first = inputs(expert, 2, seed=1)
    caches = [StepCache(policy, 10), StepCache(policy, 10)]
    second = list(inputs(expert, 2, seed=1))
    second[0] = first[0].clone()
    second[0][0] += 1e-4  # row 0: nearly the same latent
    second[0][1] = torch.randn_like(second[0][1])  # row 1: another latent
    with torch.inference_mode():
        cached_forward(expert, first, rows_for(caches, 0))
        out, blocks = cached_forward(expert, tuple(second), rows_for(caches, 1))
        assert blocks == [0, 4]
        alone = expert(*(a[1:2] for a in second))
        assert torch.allclose(out[1:2], alone, atol=1e-5)
        # row 0: this step's embedding plus what the blocks added at step 0
        h0, h1 = expert.embed(*first), expert.embed(*second)
        embedded = h0.img  # run_blocks replaces it in h0
        h1.img = h1.img + (expert.run_blocks(h0).img - embedded)
        assert torch.allclose(out[0], expert.final(h1)[0], atol=1e-5)


def test_a_row_computes_once_the_summed_drift_passes_the_threshold(expert):
    """The latent moves a little every step: the relative changes of the first block's input add
    up since the last compute, and the row computes when the sum would reach the threshold."""
    policy = CachePolicy(threshold=0.05, warmup=0.0, max_reuse=100)
    cache, x = StepCache(policy, 100), list(inputs(expert, 1, seed=2))
    g = torch.Generator().manual_seed(3)
    ran, expected, drift, before = [], [], 0.0, None
    with torch.inference_mode():
        for step in range(12):
            signal = expert.modulated_input(expert.embed(*x))[0].double()
            change = 0.0 if before is None else float((signal - before).abs().mean() / before.abs().mean())
            if step > 0 and drift + change < policy.threshold:
                expected.append(0)
                drift += change
            else:
                expected.append(4)
                drift = 0.0
            before = signal
            _, blocks = cached_forward(expert, tuple(x), rows_for([cache], step))
            ran.append(blocks[0])
            x[0] = x[0] + 0.02 * torch.randn(x[0].shape, generator=g)
    assert ran == expected
    assert 0 in ran and ran.count(4) >= 2  # computed, reused, computed again


def test_relative_change_per_row():
    before = torch.ones(2, 3, 4)
    now = before.clone()
    now[1] *= 1.5
    assert relative_change(now, before).tolist() == pytest.approx([0.0, 0.5])


def test_entries_serve_only_the_next_step_of_their_expert_and_branch():
    cache = StepCache(ALWAYS, 10)
    cache.store("expert_0", Branch.COND, 3, torch.zeros(1), torch.zeros(1))
    assert cache.candidate("expert_0", Branch.COND, 4) is not None
    assert cache.candidate("expert_0", Branch.UNCOND_TEXT, 4) is None
    assert cache.candidate("expert_1", Branch.COND, 4) is None  # the router moved the request: expert 1 computes
    assert cache.candidate("expert_0", Branch.COND, 5) is None  # skipped a step: stale
    cache.end_step(4)  # step 4 did not use the entry: it is gone
    assert cache.candidate("expert_0", Branch.COND, 5) is None


def test_warm_up_last_step_and_reuse_limit_always_compute():
    policy = CachePolicy(threshold=1e9, warmup=0.2, max_reuse=2)  # 2 warm-up steps of 10

    def candidate(step: int, reused: int = 0):
        cache = StepCache(policy, 10)
        cache.store("e", Branch.COND, step - 1, torch.zeros(1), torch.zeros(1))
        cache._entries["e", Branch.COND].reused = reused
        return cache.candidate("e", Branch.COND, step)

    assert [candidate(s) is not None for s in (1, 2, 8, 9)] == [False, True, True, False]
    assert candidate(5, reused=1) is not None and candidate(5, reused=2) is None
    quality = StepCache(CachePolicy(), 10)
    quality.store("e", Branch.COND, 4, torch.zeros(1), torch.zeros(1))
    assert quality.candidate("e", Branch.COND, 5) is None


# copies (the streamer's transfers) and the check `tensor.data = ...` makes (its pointing at buffers)
NOT_COMPUTE = {torch.ops.aten.copy_.default, torch.ops.aten._has_compatible_shallow_copy_type.default}


class ComputeOnTheSlab(TorchDispatchMode):
    """Records every op, other than a copy or a view, that reads a tensor lying in `storage` (a
    host slab): on CUDA such an op would meet host weights with device activations and fail.
    Reads of `allowed` tensors are not recorded."""

    def __init__(self, storage: torch.Tensor, allowed: list[torch.Tensor]):
        super().__init__()
        self.low, self.high = storage.data_ptr(), storage.data_ptr() + storage.numel() * storage.element_size()
        self.allowed = {t.data_ptr() for t in allowed}
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not func.is_view and func not in NOT_COMPUTE:
            for t in tree_leaves((args, kwargs)):
                if (isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.numel()
                        and self.low <= t.data_ptr() < self.high and t.data_ptr() not in self.allowed):
                    self.ops.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("window", [1, 3])
def test_a_streamed_expert_caches_as_the_resident_one_and_computes_on_device_weights_only(expert, window):
    """The cached forward is one call of the expert, so block streaming's hooks bring the stem
    and each block as in a plain forward. Step 1 mixes rows that reuse and rows that compute,
    step 2 reuses every row (no block runs). Block 0's modulation weights are the one read
    from the slab the twin cannot tell apart: MMDiT.modulated_input moves them to the
    activations' device itself (a copy on CUDA, the same memory here)."""
    residency = Residency("cpu", streamed={"a": window})
    residency.register("a", lambda: copy.deepcopy(expert), 1)
    streamed = residency.get("a")
    slab = residency.host_copy("a").storage
    allowed = list(streamed.double_blocks[0].img_mod.parameters())  # pointing at the slab between passes
    policy = CachePolicy(threshold=0.05, warmup=0.0, max_reuse=3)
    first = inputs(expert, 2, seed=1)
    second = list(first)
    second[0] = first[0].clone()
    second[0][0] += 1e-4  # row 0 reuses at step 1
    second[0][1] = torch.randn_like(second[0][1])  # row 1 computes
    steps = [first, tuple(second), tuple(second)]  # step 2: nothing moved, both rows reuse
    outputs = {}
    for name, model in (("resident", expert), ("streamed", streamed)):
        caches, outputs[name] = [StepCache(policy, 10), StepCache(policy, 10)], []
        with torch.inference_mode():
            for step, x in enumerate(steps):
                watch = ComputeOnTheSlab(slab, allowed)
                with watch:
                    outputs[name].append(cached_forward(model, x, rows_for(caches, step)))
                assert name == "resident" or watch.ops == [], watch.ops
    assert [blocks for _, blocks in outputs["resident"]] == [[4, 4], [0, 4], [0, 0]]
    for (a, blocks_a), (b, blocks_b) in zip(outputs["resident"], outputs["streamed"]):
        assert torch.equal(a, b) and blocks_a == blocks_b
    assert_one_allocation(streamed, residency.host_bytes)  # every tensor back in the slab
