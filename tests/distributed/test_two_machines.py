"""The worker group across two "machines": two torchrun launchers (one process each) meeting by
torchrun's multi-node rendezvous (c10d) on the loopback, as two hosts would over their network.
The group they form gives the frames one process gives."""

import json
import subprocess
import sys

import pytest

from pipeline.distributed.launch import free_port
from weights import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "model.json").is_file(),
                                reason="weights/paris-mini not built (run `make paris-mini`)")


def test_two_launchers_form_one_group_over_loopback(tmp_path):
    port = free_port()
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "paris-two-machines",
            "--max-restarts", "0", "-m", "tests.distributed.group_check", "--out", str(out), "--timeout", "30",
            "--only", "experts on rank 1;replicated on 0 and 1"]
    machines = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [m.communicate(timeout=180)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(log[-2000:] for log in logs)
    report = json.loads(out.read_text())  # written by whichever machine got rank 0
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert len(report["scenarios"]) == 4  # two placements, quality and fast
    for s in report["scenarios"]:
        if s["placement"] == "experts on rank 1":
            assert all(s["equal"]), s
        else:  # rows split between the two machines: see test_group_frames.py for the tolerance
            assert max(s["max_pixel_difference"]) <= 3, s
        assert s["bytes"] > 0 and s["most_conditioning_sends"] == 1
