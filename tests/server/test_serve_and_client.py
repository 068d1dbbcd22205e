"""`paris serve` (API + worker + embedded Valkey in one command), `paris submit`, and the
sync/async Python clients."""

import asyncio
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from client.api import AsyncParisClient, ParisClient, ParisError
from weights.recipe.detector import read_mp4

from .harness import REPO, Proc, free_port, wait_until


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    proc = Proc([sys.executable, "-m", "client.cli", "serve", "--model", str(tiny_model), "--data-dir",
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
    assert "step" in p.stderr and "seed 5" in p.stderr and "wrote" in p.stderr
    frames, _ = read_mp4(out)
    assert frames.shape == (9, 32, 32, 3)


def test_paris_submit_reports_errors(served):
    url, tmp = served
    p = subprocess.run([sys.executable, "-m", "client.cli", "submit", "x", "--size", "7x7", "--server", url,
                        "--out", str(tmp / "never.mp4")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "size" in p.stderr


def test_sync_client(served, tmp_path):
    url, _ = served
    with ParisClient(url) as c:
        v = c.create("a red circle", num_inference_steps=2, seed=3, expert_schedule=[2, 0])
        updates = []
        v = c.wait(v["id"], on_update=updates.append, poll_s=0.05)
        assert v["status"] == "completed" and updates
        trace = c.trace(v["id"])
        assert [s["experts"] for s in trace["steps"]] == [[2], [0]]  # the schedule bypassed the router
        assert v["routing"]["policy"] == "schedule"
        assert v["routing"]["step_share"] == v["routing"]["expert_share"] == {"0": 0.5, "1": 0.0, "2": 0.5}
        path = c.download(v["id"], tmp_path / "s.mp4")
        assert read_mp4(path)[0].shape[0] == 9
        with pytest.raises(ParisError) as err:
            c.create("a", num_frames=10)
        assert err.value.status == 400 and err.value.param == "num_frames"
        assert c.delete(v["id"])["deleted"] is True


def test_async_client(served, tmp_path):
    url, _ = served

    async def run():
        async with AsyncParisClient(url) as c:
            jobs = await asyncio.gather(*[c.create(f"a green circle {i}", num_inference_steps=2) for i in range(3)])
            done = await asyncio.gather(*[c.wait(j["id"], poll_s=0.05) for j in jobs])
            assert all(d["status"] == "completed" for d in done)
            path = await c.download(done[0]["id"], tmp_path / "a.mp4")
            return read_mp4(path)[0].shape

    assert asyncio.run(run()) == (9, 32, 32, 3)
