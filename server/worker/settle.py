"""Settling results: the worker's writer pool (bounded), beside the engine loop.

    a result: its MP4, thumbnail and spritesheet are written, then the job is settled completed
      (fenced); a failure is settled the same way. Each result is settled on its own, and an
      unknown outcome (a Redis error, or a 0 that may answer a retry of a command whose reply was
      lost) is resolved by reading the job back before anything is sent again or deleted.
    an OS error while storing is the storage's fault, not the job's: the worker stops claiming,
      reports itself not ready (leases.py: StorageHealth), and hands the job back to the queue.

A settled job leaves the worker's table (leases.py); until then its lease is renewed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import redis

from server.process.settings import Settings
from server.queue.jobs import JobStatus, completion
from server.queue.metrics import JOB_BUCKETS
from server.queue.store import Claim, JobState
from server.queue.worker_store import WorkerStore
from server.storage import ArtifactStore

from .leases import Leases, RunningJob
from .log import event

if TYPE_CHECKING:  # the worker process has the engine loaded; this module needs only its result's type
    from pipeline.results import GenerationResult


def _lower_priority() -> None:
    """Writer threads (and the ffmpeg processes they start, which inherit it) yield the CPU to
    the engine's thread: storing is background work, feeding the engine is not. Linux sets nice
    per thread; elsewhere this is a no-op."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _settled_as(claim: Claim, target: JobStatus, state: JobState) -> bool | None:
    """Whether the job's state shows this claim's final transition to `target`: None while the
    job is still this claim's and running (the transition did not apply: send it again)."""
    if state.status is JobStatus.IN_PROGRESS and state.fence == claim.fence:
        return None
    if target is JobStatus.COMPLETED:
        return state.status is JobStatus.COMPLETED and state.artifact_fence == claim.fence
    # failed (by us, or cancelled meanwhile: the same end), or queued again (failed once its budget is spent)
    return state.fence == claim.fence and state.status in (target, JobStatus.FAILED)


class Settler:
    """Hands each job that left the engine to the writer pool, which stores and settles it."""

    def __init__(self, settings: Settings, store: WorkerStore, artifacts: ArtifactStore, leases: Leases,
                 stopping: threading.Event):
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.leases = leases
        self.stopping = stopping  # the worker is stopping: a settle gives up once the job's lease ran out
        self.id = leases.id
        self.writers = ThreadPoolExecutor(settings.artifact_writers, thread_name_prefix="writer",
                                          initializer=_lower_priority)

    # ---- what the engine loop hands over ---------------------------------------------------------
    def completed(self, job: RunningJob, result: GenerationResult) -> None:
        job.in_engine = False
        event("result_ready", job=job.claim.job_id, worker=self.id, fence=job.claim.fence)
        self.writers.submit(self._store, job, result)

    def failed(self, job: RunningJob, code: str, message: str) -> None:
        job.in_engine = False
        self.writers.submit(self._fail, job, code, message)

    def storage_failed(self, job: RunningJob, exc: OSError) -> None:
        job.in_engine = False
        self.writers.submit(self._storage_failed, job, exc)

    def shutdown(self) -> None:
        """Results already made are stored and settled (within their leases)."""
        self.writers.shutdown(wait=True)

    # ---- the writer pool -------------------------------------------------------------------------
    def _settle(self, job: RunningJob, target: JobStatus, apply: Callable[[], bool]) -> bool | None:
        """Apply one fenced final transition of the job (complete, fail, requeue) and learn
        whether it took: True when the job shows it, False when someone else finished the job
        first (cancel, delete, a newer attempt), None when the worker is stopping and its lease
        ran out before Redis answered (another worker then takes the job). The job stays held
        (its lease renewed) until then, a stopping worker included: a result already made is
        settled once Redis is back rather than made again (issue 19, N8). Redis errors are
        retried with backoff."""
        c = job.claim
        read_first, delay = False, 0.05
        while True:
            try:
                if not read_first and apply():
                    outcome = True
                else:  # unknown (an error) or refused (0): the job itself says what happened
                    outcome = _settled_as(c, target, self.store.state([c.job_id])[c.job_id])
                read_first = False
                if outcome is not None:
                    self.leases.forget(c.job_id)
                    return outcome
            except redis.RedisError as exc:
                read_first = True
                event("settle_retry", job=c.job_id, worker=self.id, to=target, error=repr(exc))
            if self.stopping.is_set() and time.time() - job.renewed_at > self.settings.lease_ms / 1000:
                event("settle_abandoned", job=c.job_id, worker=self.id, to=target, reason="lease_expired")
                self.leases.forget(c.job_id)
                return None
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def _fail(self, job: RunningJob, code: str, message: str) -> None:
        c = job.claim
        failed = self._settle(job, JobStatus.FAILED, lambda: self.store.fail(c, self.settings.job_ttl_s, code, message))
        if failed is not None:
            event("job_failed" if failed else "fenced_out", job=c.job_id, worker=self.id, code=code, message=message)

    def _store(self, job: RunningJob, result: GenerationResult) -> None:
        """Write the attempt's files, then settle the job completed."""
        c = job.claim
        try:
            self.artifacts.write(c.job_id, c.fence, result)
        except OSError as exc:
            self._storage_failed(job, exc)
            return
        except Exception as exc:  # the files cannot be made from this result: the job's own failure
            event("store_failed", job=c.job_id, worker=self.id, error=repr(exc))
            self.artifacts.remove_attempt(c.job_id, c.fence)
            self._fail(job, "store_failed", f"could not write the video files ({type(exc).__name__})")
            return
        fields = completion(c.job_id, result)
        accepted = self._settle(job, JobStatus.COMPLETED,
                                lambda: self.store.complete(c, self.settings.job_ttl_s, fields))
        if accepted is None:
            return
        if not accepted:  # cancelled, deleted or fenced out meanwhile: our files are not the result
            self._discard(c)
            event("fenced_out", job=c.job_id, worker=self.id, fence=c.fence, stage="complete")
            return
        for older in range(1, c.fence):  # earlier attempts' files (a worker that died storing them) are stale now
            self.artifacts.remove_attempt(c.job_id, older)
        seconds = time.time() - job.started
        event("job_completed", job=c.job_id, worker=self.id, fence=c.fence, seconds=round(seconds, 3))
        self.store.metrics.count_routing(result.trace)
        self.store.metrics.observe("paris_job_seconds", seconds, JOB_BUCKETS)

    def _discard(self, claim: Claim) -> None:
        self.artifacts.remove_attempt(claim.job_id, claim.fence)
        try:
            if self.store.get(claim.job_id) is None:
                self.artifacts.remove(claim.job_id)
        except redis.RedisError:
            pass  # the job's directory goes when the job expires or is deleted

    def _storage_failed(self, job: RunningJob, exc: OSError) -> None:
        """Storing failed with an OS error (read-only, full, gone): not the job's fault. Stop
        claiming until a probe write works, report not ready, hand the job back to the queue."""
        c = job.claim
        self.leases.health.failed(c.job_id, exc)
        self.store.metrics.count("storage_faults_total")
        self.artifacts.remove_attempt(c.job_id, c.fence)
        s = self.settings
        requeued = self._settle(job, JobStatus.QUEUED, lambda: self.store.requeue(
            c, self.id, lease_ms=s.lease_ms, ttl_s=s.job_ttl_s, max_requeues=s.max_storage_retries))
        if requeued is not None:
            event("job_requeued" if requeued else "fenced_out", job=c.job_id, worker=self.id, reason="storage")
