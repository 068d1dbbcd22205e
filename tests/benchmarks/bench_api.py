"""What the API + queue + worker path adds to one job, against calling the engine directly.
Starts `paris serve` (embedded Valkey) on a free loopback port. Prints one JSON object."""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from pipeline.engine import Engine
from pipeline.loader import load_model, quiet_library_logging
from pipeline.request import GenerationRequest
from pipeline.video import write_mp4, write_spritesheet, write_thumbnail
from tests.support.jobs import run_jobs
from weights import DEFAULT_MODEL

PROMPT = "a red circle moving left"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_seconds(model_dir: str, seed: int, out_dir: str, runs: int) -> float:
    """The same work the worker does for one job (one long-lived engine, so the same warm
    caches), without HTTP, Redis or polling: the fastest of `runs`."""
    engine = Engine(load_model(model_dir), max_batch=8)
    run_jobs(engine, [("warm-up", GenerationRequest(PROMPT, seed=seed))])
    best = float("inf")
    for i in range(runs):
        start = time.perf_counter()
        result = run_jobs(engine, [(f"job{i}", GenerationRequest(PROMPT, seed=seed))])[f"job{i}"]
        write_mp4(result.frames, result.fps, f"{out_dir}/direct.mp4")
        write_thumbnail(result.frames, f"{out_dir}/direct.png")
        write_spritesheet(result.frames, f"{out_dir}/direct_sheet.png")
        best = min(best, time.perf_counter() - start)
    return best


def api_seconds(client: httpx.Client, seed: int) -> float:
    start = time.perf_counter()
    video = client.post("/v1/videos", data={"prompt": PROMPT, "seed": str(seed)}).json()
    while video["status"] not in ("completed", "failed"):
        time.sleep(0.01)
        video = client.get(f"/v1/videos/{video['id']}").json()
    assert video["status"] == "completed", video
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    quiet_library_logging()
    with tempfile.TemporaryDirectory() as tmp:
        direct = direct_seconds(args.model, 1, tmp, args.runs)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "client.cli", "serve", "--model", args.model, "--port", str(port),
                                   "--data-dir", f"{tmp}/data"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            api_seconds(client, 1)  # warm-up
            api = min(api_seconds(client, 1) for _ in range(args.runs))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    allowed = 0.10 * direct + 0.100
    print(json.dumps({"api_path_overhead": {
        "direct_seconds": round(direct, 3), "api_seconds": round(api, 3), "added_seconds": round(api - direct, 3),
        "allowed_seconds": round(allowed, 3), "within_target": api - direct <= allowed}}, indent=2))


if __name__ == "__main__":
    main()
