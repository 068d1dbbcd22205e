"""The real-size estimate (tests/benchmarks/real_size.py) runs through in its quick form and its
numbers agree with one another and with hand-computed cases; what it predicts is an estimate
and is not judged here."""

import json
import subprocess
import sys

import pytest

from pipeline.planner.footprint import Affine, ClipShape, ExpertCost, Footprint, ForwardFlops
from tests.benchmarks.real_size import H2D_BYTES_PER_S, streamed_pass_seconds

GB = 1e9


@pytest.fixture(scope="module")
def quick() -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.real_size", "--quick"], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout)


def test_quick_run_covers_every_budget_and_labels_its_figures_as_estimates(quick):
    assert quick["kind"].startswith("estimate")
    assert {(c["budget_gib"], c["requests"]) for c in quick["cases"]} == {(b, r) for b in (141, 80, 48, 24) for r in (1, 8)}
    assert all(c["frames"] == 33 and set(c) == {"frames", "budget_gib", "requests", "plan", "estimate"} for c in quick["cases"])


def test_quick_run_numbers_agree(quick):
    rate = quick["constants"]["peak_bf16_flops"] * quick["constants"]["mfu"]
    expert_bytes = 23782781056
    for case in quick["cases"]:
        e, plan, n = case["estimate"], case["plan"], case["requests"]
        assert e["compute_only_step_s"] == pytest.approx(e["flops_per_step"] / rate, rel=1e-3)
        used = 1 - (2 / 3) ** n  # chance that a given expert has a request this step
        assert e["bytes_moved_per_step"] == pytest.approx(len(plan["streamed"]) * used * expert_bytes, rel=1e-6)
        assert (e["step_ratio"] == 1.0) == (not plan["streamed"])
        assert e["step_ratio"] >= 1.0 and e["video_ratio"] >= 1.0
    ratios = {(c["budget_gib"], c["requests"]): c["estimate"]["step_ratio"] for c in quick["cases"]}
    for requests in (1, 8):  # less memory, more streaming, never faster
        assert [ratios[(b, requests)] for b in (141, 80, 48, 24)] == sorted(ratios[(b, requests)] for b in (141, 80, 48, 24))


def two_block_footprint(block_gb: float, block_flops: float) -> Footprint:
    """An expert of two equal blocks and an empty stem, for hand-computed pipelines."""
    shape = ClipShape(256, 256, 33, 9, 32, 32, 2304, 512)
    cost = ExpertCost(activation=Affine(0, 1), flops_per_row=ForwardFlops(int(2 * block_flops), 0),
                      block_bytes=(int(block_gb * GB),) * 2, block_flops_per_row=(int(block_flops),) * 2, stem_bytes=0)
    return Footprint(model="hand", shape=shape, max_batch=1, rows_per_request=2, weights={}, weight_sources={},
                     expert=cost, router_peak=0, decode_peak=1, decode_flops=0, t5_peak=0, clip_peak=0,
                     image_encode_peak=0, embedding_bytes=0, expert_names=())


def test_a_streamed_pass_costs_the_first_copy_then_the_slower_of_copy_and_compute_per_block():
    copy = GB / H2D_BYTES_PER_S  # 20 ms a block
    # compute 30 ms a block: the second copy hides behind the first block's compute
    assert streamed_pass_seconds(two_block_footprint(1, 30e12), 1, 2, 1e15) == pytest.approx(copy + 0.060)
    # compute 10 ms a block: copy-bound, the last block computes after its copy
    assert streamed_pass_seconds(two_block_footprint(1, 10e12), 1, 2, 1e15) == pytest.approx(2 * copy + 0.010)
    # a window of one block: nothing overlaps
    assert streamed_pass_seconds(two_block_footprint(1, 30e12), 1, 1, 1e15) == pytest.approx(2 * (copy + 0.030))
