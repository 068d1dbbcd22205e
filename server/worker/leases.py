"""Claiming and leases: the jobs a worker holds, how it claims them, and what keeps them its own.

    claim: XAUTOCLAIM of dead workers' jobs, then XREADGROUP COUNT=free; the claims in one round
      trip. Each claimed job enters the table below; the engine loop (loop.py) admits it.
    the table: per held job its claim, its deadline and step, whether its lease was lost, and
      whether it is still in the engine or with the writer pool (settle.py).
    the lease keeper, a side thread: renews the leases of the held jobs (fenced, one round trip)
      and writes the worker heartbeat with its storage health; it runs until the worker's shutdown
      is over, so results waiting to be settled keep their leases.
    storage health: an OS error while storing stops claiming and reports the worker not ready
      until a probe write works again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import redis

from server.process.settings import Settings
from server.queue.jobs import Job
from server.queue.store import Claim
from server.queue.worker_store import WorkerStore
from server.storage import ArtifactStore

from .log import event

STORAGE_PROBE_S = 1.0  # while storage fails, how often the worker tries a small write


@dataclass
class RunningJob:
    """A job this worker holds: its claim, and what the lease thread and the stop check know."""

    claim: Claim
    started: float
    deadline: float  # past it the job fails with `timeout`, and its lease is no longer renewed
    renewed_at: float = 0.0  # when the lease was last known good (claim or renewal): it holds lease_ms from then
    step: int = 0
    lease_lost_at: float | None = None  # when a renewal found the lease gone (a cancel, a delete, a takeover)
    in_engine: bool = True  # False once it left the engine: the writer pool stores and settles it


class StorageHealth:
    """Whether the artifact storage works, as the heartbeat reports it (not ready while it fails)."""

    def __init__(self, store: WorkerStore, artifacts: ArtifactStore, worker_id: str):
        self.store = store
        self.artifacts = artifacts
        self.id = worker_id
        self.ok = True
        self._last_probe = 0.0

    def failed(self, job_id: str, exc: OSError) -> None:
        if self.ok:
            event("storage_failed", worker=self.id, job=job_id, error=repr(exc))
        self.ok = False
        self.report()

    def probe(self) -> None:
        """While storage fails: a small write, at most every STORAGE_PROBE_S."""
        if self.ok or time.time() - self._last_probe < STORAGE_PROBE_S:
            return
        self._last_probe = time.time()
        try:
            self.artifacts.check()
        except OSError:
            return
        self.ok = True
        event("storage_recovered", worker=self.id)
        self.report()

    def report(self) -> None:
        try:
            self.store.heartbeat(self.id, self.ok)
        except redis.RedisError:
            pass  # the lease keeper reports it at its next beat


class Leases:
    """The jobs this worker holds, shared by the engine loop, the writer pool and the lease keeper
    (under `lock`)."""

    def __init__(self, settings: Settings, store: WorkerStore, health: StorageHealth, worker_id: str):
        self.settings = settings
        self.store = store
        self.health = health
        self.id = worker_id
        self.jobs: dict[str, RunningJob] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()  # set once the worker's shutdown is over: the keeper runs until then

    # ---- the table -------------------------------------------------------------------------------
    def get(self, job_id: str) -> RunningJob | None:
        with self.lock:
            return self.jobs.get(job_id)

    def forget(self, job_id: str) -> RunningJob | None:
        """The job is no longer this worker's (settled, stopped, abandoned)."""
        with self.lock:
            return self.jobs.pop(job_id, None)

    def in_engine(self) -> list[RunningJob]:
        with self.lock:
            return [job for job in self.jobs.values() if job.in_engine]

    def writing(self) -> int:
        """How many results wait for the writer pool."""
        with self.lock:
            return sum(not job.in_engine for job in self.jobs.values())

    def forget_all(self) -> list[RunningJob]:
        with self.lock:
            jobs = list(self.jobs.values())
            self.jobs.clear()
        return jobs

    # ---- claiming --------------------------------------------------------------------------------
    def reclaim(self, count: int) -> Iterator[tuple[RunningJob, Job]]:
        """Up to `count` jobs whose worker stopped renewing their leases (see `_claim`)."""
        return self._claim(self.store.reclaim_stale(self.id, count, self.settings.lease_ms), "reclaim")

    def read_new(self, count: int, block_ms: int) -> Iterator[tuple[RunningJob, Job]]:
        """Up to `count` new jobs, waiting at most `block_ms` for one (see `_claim`)."""
        return self._claim(self.store.read_new(self.id, count, block_ms), "new")

    def _claim(self, entries: list[tuple[str, str]], source: Literal["new", "reclaim"]
               ) -> Iterator[tuple[RunningJob, Job]]:
        """Claims the entries in one round trip, then yields each claimed job as it enters the
        table: the caller admits it before the next one enters (its run time starts then)."""
        with self.lock:
            mine = {job_id for _, job_id in entries if job_id in self.jobs}
        for job_id in mine:  # our own entry went idle (a slow step starved the lease thread): XAUTOCLAIM renewed it
            event("lease_renewed_late", job=job_id, worker=self.id)
        entries = [(entry_id, job_id) for entry_id, job_id in entries if job_id not in mine]
        if not entries:
            return
        claims = self.store.claim(entries, self.id, ttl_s=self.settings.job_ttl_s,
                                  max_attempts=self.settings.max_attempts)
        for _, job_id in entries:
            if job_id not in claims:
                event("claim_skipped", job=job_id, worker=self.id, how=source)
                continue
            claim, job = claims[job_id]
            event("job_claimed", job=job_id, worker=self.id, how=source, fence=claim.fence, attempt=claim.attempts)
            now = time.time()
            running = RunningJob(claim, now, now + self.settings.max_job_seconds, renewed_at=now)
            with self.lock:
                self.jobs[job_id] = running
            yield running, job

    # ---- the lease keeper (side thread) ----------------------------------------------------------
    def start_keeper(self) -> None:
        threading.Thread(target=self._keep, name="lease-keeper", daemon=True).start()

    def _keep(self) -> None:
        period = max(0.05, self.settings.lease_ms / 1000 / 3)
        # also while shutting down: results waiting to be settled keep their leases
        while not self.stopped.is_set():
            try:
                now = time.time()
                # a job past its run time is not renewed: if the loop is stuck in a step that never
                # returns, the lease lapses and another worker takes the job over
                with self.lock:
                    jobs = [j for j in self.jobs.values() if j.lease_lost_at is None and now < j.deadline]
                for job, renewed in zip(jobs, self.store.renew([j.claim for j in jobs], self.id)):
                    if renewed:
                        job.renewed_at = now
                    else:
                        job.lease_lost_at = time.time()  # after the answer: what failed it came before
                        event("lease_lost", job=job.claim.job_id, worker=self.id, fence=job.claim.fence)
                self.store.heartbeat(self.id, self.health.ok)
            except Exception as exc:
                event("keeper_error", worker=self.id, error=str(exc))
            self.stopped.wait(min(period, self.settings.heartbeat_ttl_s / 3))
