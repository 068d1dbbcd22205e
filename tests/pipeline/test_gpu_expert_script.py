"""The GPU benchmark script (tests/benchmarks/gpu_expert_11b.py) has only a GPU machine to run
its real size on; here its whole code path runs on a tiny config (on the CPU in CI), so a GPU
session does not spend its device time finding a crash. On the CPU its memory section counts
with the planner's own tracker, so the comparison with the plan is checked here too."""

import math

import torch

from tests.benchmarks.gpu_expert_11b import main, missing_dependencies, shapes


def test_script_runs_end_to_end_on_a_tiny_config():
    result = main(["--tiny"])
    _, tiny = shapes()
    assert result["config"] == "tiny" and result["versions"]["torch"] == torch.__version__
    assert result["allocator"] and "expandable_segments" in result["allocator"]
    assert result["attention_backends"] == ["CUDNN_ATTENTION", "FLASH_ATTENTION"]
    assert result["sdpa_backend"] == ["aten::_scaled_dot_product_flash_attention_for_cpu"]  # what a CPU dispatches
    assert 1.0 <= result["slab_over_raw"] <= 1.5  # the tiny config's small tensors pad more than 11B's (<= 1.01)
    cases = {(c["frames"], c["rows"]): c for c in result["cases"]}
    assert set(cases) == {(f, r) for f in tiny.frames for r in (2, 16, 24)}
    copies = result["copies"]
    # every forward streams the whole slab (the stem and every block once) and gives the resident output
    assert {c["bytes_streamed_per_forward"] for c in cases.values()} == {copies["expert"]["bytes"]}
    assert all(c["streamed_equals_resident"] for c in cases.values())
    assert copies["double_block"]["bytes"] > copies["single_block"]["bytes"] > 0
    assert all(c["resident_s"] > 0 and math.isfinite(c["streamed_over_resident"]) for c in cases.values())
    assert set(result["s_per_step"]) == {str(f) for f in tiny.frames}
    # each phase allocates no more than the plan books for it (plain, step-cached, streamed)
    memory = result["memory"]
    assert len(memory) == len(tiny.frames) * 3 * 3
    assert all(0.7 <= p["allocated_over_plan"] <= 1.0 for p in memory.values()), memory
    decode = result["vae_decode"]
    assert decode["frames"] == 9 and decode["seconds"] > 0 and decode["allocated"] <= decode["plan"]
    assert result["skipped"] == []


def test_the_dependency_check_names_what_is_missing():
    assert missing_dependencies(tiny=True) == []
    if not torch.cuda.is_available():
        assert missing_dependencies(tiny=False) == [
            f"a CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})"]
