"""Jobs per minute at saturation through HTTP (`paris serve`: API, Valkey, worker, MP4 files)
against the same jobs through the engine directly, in one run.

Both sides run the same mixed text-to-video jobs (bench_engine's prompts, one seed each) with
the same max batch, after a warm-up. Served: every job is POSTed at once by 16 client threads;
the run ends when the last job is seen completed (the oldest unfinished job is polled every
100 ms, so the end is seen within one poll). Direct: `tests.support.jobs.run_jobs` on one long-lived
engine, no files. A shared machine drifts, so the two are run in alternating pairs and the
median pair's ratio is the result; each pair records the load average around it.
Prints one JSON object."""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from pipeline.engine import Engine
from pipeline.loader import load_model, quiet_library_logging
from tests.benchmarks.bench_engine import jobs as engine_jobs
from tests.support.jobs import run_jobs
from weights import DEFAULT_MODEL

TARGET_RATIO = 0.8


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_seconds(engine: Engine, n: int) -> float:
    work = engine_jobs(n)
    start = time.perf_counter()
    results = run_jobs(engine, work)
    seconds = time.perf_counter() - start
    assert len(results) == n
    return seconds


def served_seconds(client: httpx.Client, n: int) -> float:
    """POST n jobs at once, wait until every one is completed; seconds from the first POST."""
    bodies = [{"prompt": request.prompt, "seed": request.seed} for _, request in engine_jobs(n)]

    def post(body):
        r = client.post("/v1/videos", json=body)
        r.raise_for_status()
        return r.json()["id"]

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(post, bodies))
    for job_id in ids:  # jobs finish roughly in order: wait on the oldest unfinished one
        while True:
            video = client.get(f"/v1/videos/{job_id}").json()
            if video["status"] == "completed":
                break
            if video["status"] == "failed":
                raise RuntimeError(f"{job_id} failed: {video['error']}")
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    for job_id in ids:  # every result is there (not timed)
        r = client.get(f"/v1/videos/{job_id}/content")
        assert r.status_code == 200 and r.content[4:8] == b"ftyp", (job_id, r.status_code)
    return seconds


def start_server(model: str, port: int, data_dir: str, max_batch: int, threads: int | None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "client.cli", "serve", "--model", model, "--port", str(port), "--data-dir", data_dir,
            "--max-batch", str(max_batch), "--max-active-jobs-per-key", "100000"]
    if threads:
        argv += ["--threads", str(threads)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_ready(client: httpx.Client, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"paris serve exited with {server.returncode}")
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("paris serve was not ready in time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3, help="alternating direct / served runs")
    parser.add_argument("--threads", type=int, help="torch threads of both engines (default: torch's, one per core)")
    args = parser.parse_args()
    quiet_library_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(load_model(args.model), max_batch=args.max_batch)
    direct_seconds(engine, args.max_batch)  # warm-up: weights resident, prompts in the embedding cache
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(args.model, port, f"{tmp}/data", args.max_batch, args.threads)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
            wait_ready(client, server)
            served_seconds(client, args.max_batch)  # warm-up, the same for the worker's engine
            pairs = []
            for _ in range(args.pairs):
                load_before = os.getloadavg()[0]
                direct = direct_seconds(engine, args.jobs)
                served = served_seconds(client, args.jobs)
                pairs.append({"direct_jobs_per_min": round(60 * args.jobs / direct, 1),
                              "served_jobs_per_min": round(60 * args.jobs / served, 1),
                              "ratio": round(direct / served, 3),
                              "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    median = sorted(pairs, key=lambda p: p["ratio"])[len(pairs) // 2]
    print(json.dumps({"served_vs_direct": {
        "model": os.path.basename(os.path.normpath(args.model)), "jobs": args.jobs, "max_batch": args.max_batch,
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "direct_jobs_per_min": median["direct_jobs_per_min"],
        "served_jobs_per_min": median["served_jobs_per_min"], "ratio": median["ratio"], "target_ratio": TARGET_RATIO,
        "median_of_pairs": len(pairs), "ratio_of_each_pair": [p["ratio"] for p in pairs],
        "ratio_spread": round(max(p["ratio"] for p in pairs) - min(p["ratio"] for p in pairs), 3),
        "mean_ratio": round(statistics.fmean(p["ratio"] for p in pairs), 3), "pairs": pairs}}, indent=2))


if __name__ == "__main__":
    main()
