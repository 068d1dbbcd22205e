"""`paris serve` (API + worker + embedded Valkey in one command) and `paris submit` (the sync
client behind a progress bar). The Python clients themselves: test_client.py."""

import subprocess
import sys

import httpx
import pytest
from PIL import Image

from client import exits
from weights.recipe.detector import read_mp4

from .harness import REPO, Proc, free_port, wait_until


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    proc = Proc([sys.executable, "-m", "client.cli", "serve", "--model", str(tiny_model_dir), "--data-dir",
                 str(tmp / "data"), "--port", str(port)], tmp / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), 90, 0.2, "paris serve ready")
        yield url, tmp
    finally:
        proc.stop()
        print(proc.log.read_text()[-3000:])
    assert "worker_stopped" in proc.log.read_text()  # SIGTERM stops the worker (and Valkey) too


def _ready(url):
    try:
        return httpx.get(url + "/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_paris_submit_shows_progress_and_writes_mp4(served):
    url, tmp = served
    first = tmp / "first.png"
    Image.new("RGB", (32, 32), (20, 20, 220)).save(first)
    out = tmp / "out.mp4"
    p = subprocess.run([sys.executable, "-m", "client.cli", "submit", "a blue square moving up", "--image", str(first),
                        "--server", url, "--out", str(out), "--steps", "3", "--seed", "5"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "step" in p.stderr and "seed 5" in p.stderr  # the job and its progress on stderr
    assert p.stdout.startswith(f"wrote {out} (9 frames, 32x32, 8 fps, seed 5)")  # the result on stdout
    frames, _ = read_mp4(out)
    assert frames.shape == (9, 32, 32, 3)


def test_paris_submit_reports_errors(served):
    url, tmp = served
    p = subprocess.run([sys.executable, "-m", "client.cli", "submit", "x", "--size", "7x7", "--server", url,
                        "--out", str(tmp / "never.mp4")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == exits.INVALID and p.stderr.count("\n") == 1 and "size" in p.stderr
