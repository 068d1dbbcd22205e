"""The GPU benchmark script (tests/benchmarks/gpu_expert_11b.py) has only a GPU machine to run
its real size on; here its whole code path runs on a tiny config (on the CPU in CI), so a GPU
session does not spend its device time finding a crash."""

import math

import torch

from tests.benchmarks.gpu_expert_11b import TINY, main


def test_script_runs_end_to_end_on_a_tiny_config():
    result = main(["--tiny"])
    assert result["config"] == "tiny" and result["versions"]["torch"] == torch.__version__
    assert result["attention_backends"] == ["CUDNN_ATTENTION", "FLASH_ATTENTION"]
    assert 1.0 <= result["slab_over_raw"] <= 1.5  # the tiny config's small tensors pad more than 11B's (<= 1.01)
    cases = {(c["frames"], c["rows"]): c for c in result["cases"]}
    assert set(cases) == {(f, r) for f in TINY.frames for r in (2, 16)}
    copies = result["copies"]
    # every forward streams the whole slab: the stem and every block once
    assert {c["bytes_streamed_per_forward"] for c in cases.values()} == {copies["expert"]["bytes"]}
    assert copies["double_block"]["bytes"] > copies["single_block"]["bytes"] > 0
    assert all(c["resident_s"] > 0 and math.isfinite(c["streamed_over_resident"]) for c in cases.values())
    assert result["vae_decode"]["frames"] == 9 and result["vae_decode"]["seconds"] > 0
