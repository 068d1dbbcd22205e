"""The GPU benchmark script (tests/benchmarks/gpu_expert_11b.py) has only a GPU machine to run
its real size on; here its whole code path runs on a tiny config (on the CPU in CI), so a GPU
session does not spend its device time finding a crash."""

import math

from tests.benchmarks.gpu_expert_11b import main


def test_script_runs_end_to_end_on_a_tiny_config():
    result = main(["--tiny"])
    assert result["config"] == "tiny" and result["latent_frames_x_size"] == "3 x 8x8"
    assert result["step_seconds_cfg_batch2"] > 0 and math.isfinite(result["h2d_gb_per_s"])
    # expert_0: first load, reload after eviction; expert_1: load, serial reload, prefetched reload
    assert result["device_loads"] == {"expert_0": 2, "expert_1": 3}
    assert 0.0 <= result["share_of_load_hidden_by_prefetch"] <= 1.0
