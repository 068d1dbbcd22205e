"""The real-size estimate (tests/benchmarks/real_size.py) runs through in its quick form, its
numbers agree with one another and with counts made elsewhere, and its timeline model of the two
CUDA streams gives hand-computed times; what it predicts is an estimate and is not judged here."""

import json
import subprocess
import sys

import pytest
import torch

from pipeline.planner.footprint import Affine, ClipShape, ExpertCost, Footprint, ForwardFlops
from pipeline.residency import Residency
from pipeline.planner.plan import stream_batch_for
from tests.benchmarks.real_size import Timeline
from tests.pipeline.test_block_streaming import expert_inputs
from tests.pipeline.test_host_slab import tiny_expert

EXPERT_BYTES = 23782781056  # one 11B expert in bf16, from its config (module_bytes on the meta device)
T5_BYTES = 9524621312  # T5-XXL's encoder in bf16
ROW_TFLOP_33 = 42.0  # one row of the expert at 256x256, 33 frames (gpu-readiness: 84 TFLOP per 2-row step)


@pytest.fixture(scope="module")
def quick() -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.real_size", "--quick"], capture_output=True, text=True,
                         timeout=900, check=True)  # CPU-bound: 4 test workers share 2 cores
    return json.loads(out.stdout)


def test_quick_run_covers_every_budget_and_labels_its_figures_as_estimates(quick):
    assert quick["kind"].startswith("estimate")
    assert {(c["budget_gib"], c["requests"]) for c in quick["cases"]} == {(b, r) for b in (141, 80, 48, 24) for r in (1, 8)}
    assert all(c["frames"] == 33 and {"plan", "estimate"} <= set(c) for c in quick["cases"])


def test_quick_run_numbers_agree(quick):
    rate = quick["constants"]["peak_bf16_flops"] * quick["constants"]["mfu"]
    row_flops = {c["estimate"]["flops"] / (50 * 2 * c["requests"]) for c in quick["cases"]}
    assert len(row_flops) == 1 and row_flops.pop() == pytest.approx(ROW_TFLOP_33 * 1e12, rel=0.01)
    router, encode = set(), set()
    for case in quick["cases"]:
        runs = [case["estimate"]] + [case[k] for k in case if k == "estimate_gathering_streamed_rows"]
        for e in runs:
            assert e["compute_only_denoise_s"] == pytest.approx((e["flops"] + e["router_flops"]) / rate, abs=0.01)
            t5 = T5_BYTES if "t5" in case["plan"]["on_demand"] else 0  # copied in for the batch of new prompts
            assert e["streamed_passes"] * EXPERT_BYTES + t5 <= e["bytes_to_device"] <= e["streamed_passes"] * EXPERT_BYTES * 1.01 + t5
            # every request routed once a step; T5 and CLIP over each prompt and negative prompt once
            router.add(e["router_flops"] / (50 * case["requests"]))
            encode.add(e["encode_flops"] / (2 * case["requests"]))
            assert e["encode_s"] > 0
            assert e["resident_expert_reloads"] == 0  # T5 comes in without evicting an expert (N5)
            assert (e["streamed_passes"] == 0) == (not case["plan"]["streamed"]) == (e["denoise_ratio"] == 1.0)
            assert e["denoise_ratio"] >= 1.0 and e["video_ratio"] >= 1.0
    assert len(router) == 1 and len(encode) == 1 and router.pop() > 0 and encode.pop() > 0
    ratios = {(c["budget_gib"], c["requests"]): c["estimate"]["video_ratio"] for c in quick["cases"]}
    for requests in (1, 8):  # less memory, more streaming, never faster
        assert [ratios[(b, requests)] for b in (141, 80, 48, 24)] == sorted(ratios[(b, requests)] for b in (141, 80, 48, 24))
    gathered = [c for c in quick["cases"] if "estimate_gathering_streamed_rows" in c]
    assert gathered and all(c["requests"] == 8 and c["plan"]["streamed"] for c in gathered)
    for case in gathered:  # fewer, fuller streamed passes for the same request-steps, and sooner done
        plain, gathering_run = case["estimate"], case["estimate_gathering_streamed_rows"]
        assert gathering_run["flops"] == plain["flops"]
        assert gathering_run["streamed_passes"] < plain["streamed_passes"]
        assert gathering_run["rows_per_streamed_pass"] > plain["rows_per_streamed_pass"]
        assert gathering_run["denoise_s"] < plain["denoise_s"]


GB = 1e9


def timeline() -> Timeline:
    return Timeline(flop_rate=1e15, copy_rate=50 * GB)  # 1 TFLOP takes 1 ms, 1 GB takes 20 ms


def test_the_timeline_overlaps_copies_issued_ahead_with_compute_as_two_streams_do():
    t = timeline()
    t.replay([("ahead", GB), ("ahead", GB), ("wait", 0), ("compute", 30e12), ("wait", 1), ("compute", 30e12)], rows=1)
    assert t.compute_end == pytest.approx(0.020 + 0.030 + 0.030)  # the second copy hides behind the first block
    t = timeline()
    t.replay([("ahead", GB), ("ahead", GB), ("wait", 0), ("compute", 10e12), ("wait", 1), ("compute", 10e12)], rows=1)
    assert t.compute_end == pytest.approx(0.040 + 0.010)  # copy-bound: the last block waits for its copy
    t = timeline()
    t.replay([("compute", 30e12), ("ahead", GB), ("wait", 1)], rows=2)  # a copy starts after the compute issued before it
    assert t.compute_end == pytest.approx(0.060 + 0.020)
    t = timeline()
    t.replay([("ahead", GB), ("copy", GB)], rows=1)  # a copy on the compute stream shares the bus
    assert t.compute_end == t.copy_end == pytest.approx(0.040)


def test_a_replayed_pass_is_the_recorded_pass_with_its_compute_scaled_by_rows():
    """On a tiny expert streamed on the meta device: what one row issues, with its FLOPs times
    three, is what three rows issue (FLOPs are linear in rows, the copies do not change)."""
    t = timeline()
    r = Residency("meta", host_budget_bytes=2**30, streamed={"a": 2}, transfers=t)
    r.register("a", lambda: tiny_expert().to("meta"), 1)
    expert = r.get("a")
    inputs = {rows: {k: v.to("meta") for k, v in expert_inputs(expert.config, rows).items()} for rows in (1, 3)}
    recorded = {}
    for rows in (1, 3):
        with torch.no_grad():
            recorded[rows] = t.record(lambda: expert(**inputs[rows]))
    assert [(k, a * 3 if k == "compute" else a) for k, a in recorded[1]] == recorded[3]
    assert sum(k == "ahead" for k, _ in recorded[1]) == 1 + 4  # the stem and four blocks
    assert t.compute_end == t.copy_end == 0.0  # recording leaves the clocks alone
    t.replay(recorded[1], rows=3)
    once = t.compute_end
    t.compute_end = t.copy_end = 0.0
    t.replay(recorded[3], rows=1)
    assert t.compute_end == pytest.approx(once) and once > 0


def test_gathering_asks_for_the_requests_whose_compute_covers_a_streamed_pass():
    shape = ClipShape(256, 256, 33, 9, 32, 32, 2304, 512)
    cost = ExpertCost(activation=Affine(0, 1), flops_per_row=ForwardFlops(int(42e12), 0), block_bytes=(1,),
                      block_flops_per_row=(1,), stem_bytes=0)
    footprint = Footprint(model="hand", shape=shape, max_batch=8, rows_per_request=2, weights={"expert_0": int(24 * GB)},
                          weight_sources={}, expert=cost, router_peak=0, decode_peak=1, decode_flops=0, t5_peak=0,
                          clip_peak=0, image_encode_peak=0, embedding_bytes=0, expert_names=("expert_0",))
    # copy 0.48 s; one row 42 TFLOP / 445 TFLOP/s = 0.094 s: 6 rows cover it, 3 requests of 2 rows
    assert stream_batch_for(footprint, 445e12, 50 * GB) == 3
    assert stream_batch_for(footprint, 445e12 / 4, 50 * GB) == 1  # four times slower compute covers it with one request
