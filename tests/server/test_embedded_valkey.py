"""The embedded Valkey is owned by one instance per data dir, supervised, password-protected and
dies with its owner (issue 11, items 3, 7, 8). Real `paris api` / `paris serve` processes."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from server.process.embedded import discover

from .harness import REPO, Proc, free_port, wait_until


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat_fields[0] != "Z":  # a zombie is already dead
                parents[int(entry.name)] = int(stat_fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def valkey_pid(stack) -> int:
    return int(stack.redis().info("server")["process_id"])


def create(url: str, prompt: str = "a blue square", steps: int = 3) -> str:
    r = httpx.post(url + "/v1/videos", data={"prompt": prompt, "num_inference_steps": str(steps)}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def completed(url: str, job_id: str, timeout: float = 90) -> dict:
    return wait_until(lambda: (lambda v: v if v["status"] in ("completed", "failed") else None)(
        httpx.get(f"{url}/v1/videos/{job_id}", timeout=10).json()), timeout, 0.1, f"{job_id} finished")


def test_second_instance_on_the_same_data_dir_exits_and_leaves_the_first_working(make_stack):
    s = make_stack(embedded=True)
    s.start_api()
    first_valkey = valkey_pid(s)
    for port in (s.port, free_port()):  # the same HTTP port (the reported case) and another one
        p = subprocess.run([sys.executable, "-m", "client.cli", "serve", "--model", str(s.model), "--data-dir",
                            str(s.data_dir), "--port", str(port)], cwd=REPO, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "PARIS_KEY_PREFIX": s.prefix})
        assert p.returncode != 0
        assert "in use by another paris serve/api" in p.stderr and f"pid {s.api.pid}" in p.stderr, p.stderr[-2000:]
    # the first instance did not notice: same Valkey, healthy, takes jobs
    assert valkey_pid(s) == first_valkey
    assert httpx.get(s.url + "/health").status_code == 200
    job = create(s.url)
    assert httpx.get(f"{s.url}/v1/videos/{job}").json()["status"] == "queued"


def test_password_port_and_discovery(make_stack):
    s = make_stack(embedded=True)
    s.start_api()
    vdir = s.data_dir / "valkey"
    for name in ("password", "valkey.conf"):
        assert stat.S_IMODE((vdir / name).stat().st_mode) == 0o600, name
    password = (vdir / "password").read_text().strip()
    assert len(password) >= 32
    url = discover(s.data_dir)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.AuthenticationError):  # no password, no access
        redis.Redis(port=port).ping()
    pid = valkey_pid(s)
    assert password not in Path(f"/proc/{pid}/cmdline").read_text()

    # a separately started worker finds the Valkey through the data dir, and follows it across a
    # restart of the API (the port is fixed for the data dir)
    w = s.start_worker("w")
    assert password not in Path(f"/proc/{w.pid}/cmdline").read_text()
    assert completed(s.url, create(s.url))["status"] == "completed"
    s.api.stop()
    s.start_api()
    assert discover(s.data_dir) == url
    assert completed(s.url, create(s.url))["status"] == "completed"
    assert w.p.poll() is None


def test_port_taken_by_another_program_is_a_clear_error(make_stack):
    s = make_stack(embedded=True)
    s.start_api()
    port = int(discover(s.data_dir).rsplit(":", 1)[1].split("/")[0])
    s.api.stop()
    import socket

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        p = subprocess.run([sys.executable, "-m", "client.cli", "api", "--model", str(s.model), "--data-dir",
                            str(s.data_dir), "--port", str(s.port)], cwd=REPO, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode != 0 and f"port {port}" in p.stderr and "in use by another program" in p.stderr, p.stderr


def test_valkey_is_supervised_health_follows_it(make_stack):
    s = make_stack(embedded=True)
    s.start_api()
    s.start_worker("w")
    ids = [create(s.url, f"a red circle {i}", steps=4) for i in range(6)]
    pid = valkey_pid(s)

    os.kill(pid, signal.SIGSTOP)  # Valkey stops answering: not alive, though its process exists
    try:
        wait_until(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 503, 10, 0.1, "health 503")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 200, 10, 0.1, "health back")

    os.kill(pid, signal.SIGKILL)  # under load: restarted by the API, on the same port, jobs not lost
    wait_until(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 200 and valkey_pid(s) != pid,
               30, 0.1, "valkey restarted")
    assert any(e["event"] == "valkey_restarted" for e in s.api.events())
    ids += [create(s.url, f"a green square {i}", steps=4) for i in range(4)]
    for job_id in ids:
        assert completed(s.url, job_id, timeout=120)["status"] == "completed", job_id


def test_kill9_of_serve_leaves_no_process(tmp_path, tiny_model_dir):
    port = free_port()
    serve = Proc([sys.executable, "-m", "client.cli", "serve", "--model", str(tiny_model_dir), "--data-dir",
                  str(tmp_path / "data"), "--port", str(port), "--workers", "2"], tmp_path / "serve.log")
    kids: list[int] = []
    try:
        wait_until(lambda: _ready(port), 120, 0.2, "serve ready")
        kids = children_of(serve.pid)
        assert len(kids) >= 3, kids  # Valkey and two workers
        serve.signal(signal.SIGKILL)
        serve.p.wait(5)
        deadline = time.time() + 10
        while (left := [_cmdline(k) for k in kids if alive(k)]) and time.time() < deadline:
            time.sleep(0.1)
        assert not left, f"still running 10 s after the parent's kill -9: {left}"
    finally:
        serve.stop()
        for k in kids:  # a failed run leaves nothing behind either
            if alive(k):
                os.kill(k, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
    except OSError:
        return "?"


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
