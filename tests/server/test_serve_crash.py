"""`paris serve` killed with SIGKILL while its worker holds finished results (issue 19, N8), and
what its worker may see and write (N9, N10), on real processes: the kill takes the embedded
Valkey down with it; the worker (told by the kernel that its parent died) keeps the results it
has made and settles them once `paris serve` is back on the same data dir, so no finished job
runs again and no attempt folder is left behind. The worker's environment holds none of the
API's secrets, and every artifact is 0600 in 0700 folders."""

from __future__ import annotations

import base64
import os
import signal
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .harness import Proc, free_port, wait_until

KEY = "pk-crash-test"
SECRET = "whsec_" + base64.b64encode(b"crash test secret, 32 bytes long").decode()
JOBS = 10


def serve(tmp: Path, model: Path, port: int, log: str) -> Proc:
    argv = [sys.executable, "-m", "client.cli", "serve", "--model", str(model), "--data-dir", str(tmp / "data"),
            "--port", str(port), "--max-batch", str(JOBS), "--lease-ms", "20000", "--threads", "1"]
    return Proc(argv, tmp / log, {"PARIS_API_KEYS": KEY, "PARIS_WEBHOOK_SECRET": SECRET})


def worker_pids(parent: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in out if b"worker" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_kill_9_of_serve_reruns_no_finished_job_and_leaves_no_stale_attempt(tmp_path, tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    head = {"Authorization": f"Bearer {KEY}"}
    first = serve(tmp_path, tiny_model_dir, port, "serve-1.log")
    try:
        wait_until(lambda: httpx.get(url + "/ready", timeout=1).status_code == 200 if _up(url) else False, 120, 0.2,
                   "serve ready")
        (worker,) = worker_pids(first.pid)
        env = dict(line.split("=", 1) for line in Path(f"/proc/{worker}/environ").read_text().split("\0") if "=" in line)
        assert "PARIS_REDIS_URL" in env  # what it needs ...
        assert not {"PARIS_API_KEYS", "PARIS_WEBHOOK_SECRET"} & env.keys()  # ... and not what it does not (N9)

        with ThreadPoolExecutor(JOBS) as pool:  # at once: they run in one batch and finish close together
            ids = list(pool.map(lambda i: httpx.post(url + "/v1/videos", headers=head, timeout=30, data={
                "prompt": f"a red circle {i}", "num_inference_steps": "4"}).json()["id"], range(JOBS)))
        # kill as the first result leaves the engine for the writers
        wait_until(lambda: any(e["event"] == "result_ready" for e in first.events()), 180, 0.005, "a first result")
        first.signal(signal.SIGKILL)
        first.p.wait(10)
        settled_before = {e["job"] for e in first.events() if e["event"] == "job_completed"}
        time.sleep(1.0)  # Valkey is down: the worker's settles fail and wait

        second = serve(tmp_path, tiny_model_dir, port, "serve-2.log")
        try:
            wait_until(lambda: all(_status(url, head, i) == "completed" for i in ids), 180, 0.5, "every job completed")
            wait_until(lambda: all(p.log.exists() for p in (first, second)), 5)
            events = first.events() + second.events()
            ready = {e["job"] for e in first.events() if e["event"] == "result_ready"}  # made before the kill
            assert ready, "the kill came before any result was made"
            claims = {i: sum(1 for e in events if e["event"] == "job_claimed" and e["job"] == i) for i in ids}
            assert all(claims[i] == 1 for i in ready), claims  # no finished job ran again
            late = {e["job"] for e in first.events() if e["event"] == "job_completed"} - settled_before
            print(f"N8: {len(ready)} results made by the killed worker, {len(settled_before)} settled before the "
                  f"kill, {len(late)} once Valkey was back; claims per job {sorted(claims.values())}")
            artifacts = tmp_path / "data" / "artifacts"
            for i in ids:
                attempts = sorted(p.name for p in (artifacts / i).iterdir())
                fence = httpx.get(f"{url}/v1/videos/{i}", headers=head).json()
                assert len(attempts) == 1, (i, attempts, fence)  # no stale attempt folder
            for path in artifacts.rglob("*"):  # N10: the user's only
                mode = stat.S_IMODE(path.stat().st_mode)
                assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        finally:
            second.signal(signal.SIGTERM)
            second.p.wait(30)
            second.stop()
    finally:
        first.stop()
        for pid in _leftover_workers(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _status(url: str, head: dict, job_id: str) -> str | None:
    try:
        return httpx.get(f"{url}/v1/videos/{job_id}", headers=head, timeout=5).json().get("status")
    except (httpx.HTTPError, ValueError):
        return None


def _leftover_workers(tmp: Path) -> list[int]:
    """Worker processes of this test still running (their command line names this test's model dir)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"worker" in cmd and str(tmp).encode() in cmd:
                out.append(int(proc.name))
    return out
