"""The group benchmark's smoke run (--tiny): it runs through and its numbers hang together.
Speed is not judged (shared machine); the full run is `python -m tests.benchmarks.bench_group`."""

import json
import subprocess
import sys

import pytest

from weights import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "model.json").is_file(),
                                reason="weights/paris-mini not built (run `make paris-mini`)")


def test_bench_group_tiny():
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_group", "--tiny"], capture_output=True,
                         text=True, timeout=900)  # CPU-bound: 4 test workers share 2 cores
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    runs = result["measured_cpu"]["runs"]
    assert [r["ranks"] for r in runs] == [2, 3]
    for r in runs:
        assert r["frames_equal_to_one_process"]  # each expert on one rank: bit for bit
        assert abs(r["bytes_per_video"] * r["jobs"] - r["bytes_total"]) <= r["jobs"]
        assert r["bytes_per_step"] > 0 and r["seconds_group"] > 0
    est = result["estimate"]["by_frames"]["9 frames"]
    msg = est["message_bytes"]
    assert msg["first_tick"] > msg["later_tick"] > 0  # conditioning travels on the first tick only
    cases = {c["gpus"]: c for c in est["cases"]}
    links = {"NVLink 4", "PCIe 5 x16", "100 GbE", "10 GbE", "1 GbE"}
    assert "group" not in cases[1] and set(cases[2]["group"]) == links | {"placement", "streamed"}
    assert set(cases[2]["group_stream_copies"]) == links | {"placement", "streamed"}
    slow, fast = cases[2]["group"]["1 GbE"], cases[2]["group"]["NVLink 4"]
    assert slow["exchange_share_of_step_1_request"] > fast["exchange_share_of_step_1_request"]
    assert slow["latency_s"] >= fast["latency_s"]
