"""The worker: one loop around the step-level engine. Claiming and leases are leases.py, settling
results (the writer pool) is settle.py; this module feeds the engine and reads what it returns.

    loop:
      claim up to the free capacity (leases.py); nothing while the artifact storage fails (it is
        probed until it works again) or while max_batch results wait for the writers
      admit each into the engine
      engine.tick()  -> Progress / Finished / Failed; each Finished or Failed goes to the writer pool (settle.py)
      fail the jobs the engine no longer holds that left it without an event, and those past their run time
      one Redis round trip, sent by a reporter thread so the engine does not wait on it: the progress of
        every request that advanced, the step's metrics (its weight traffic among them), and the state
        of every job in the engine (cancelled, deleted or fenced-out ones leave it after the next step)
    shutdown: the writers settle what is made, the jobs still held go back to the queue at once.

Progress is 0-99 while denoising (step/total) and 100 only once the MP4 is stored.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import redis

from pipeline.engine import Engine
from pipeline.request import ResolvedRequest
from pipeline.results import Event, Failed, Finished, Progress

from server.process.settings import Settings
from server.queue.jobs import Job, JobStatus
from server.queue.metrics import STEP_BUCKETS, WeightMoves
from server.queue.store import JobState
from server.queue.worker_store import StepProgress, StepReport, WorkerStore
from server.storage import ArtifactStore

from .leases import Leases, RunningJob, StorageHealth
from .log import event
from .settle import Settler


class Worker:
    def __init__(self, settings: Settings, store: WorkerStore, artifacts: ArtifactStore, engine: Engine,
                 worker_id: str | None = None):
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self.id = worker_id or settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stop = threading.Event()
        self.health = StorageHealth(store, artifacts, self.id)
        self.leases = Leases(settings, store, self.health, self.id)
        self.settler = Settler(settings, store, artifacts, self.leases, self.stop)
        self.weight_moves = WeightMoves(store.metrics)
        self.reporter = ThreadPoolExecutor(1, thread_name_prefix="reporter")
        self._report: Future[dict[str, JobState]] | None = None  # the last step's round trip
        self._report_sent_at = 0.0  # it reads the jobs' states no earlier than this

    # ---- claiming --------------------------------------------------------------------------------
    def _capacity(self) -> int:
        """How many jobs to claim now: the engine's free slots, but none while storage fails or
        while max_batch results wait for the writers (they hold their frames in memory)."""
        if not self.health.ok:
            return 0
        return self.engine.free_slots if self.leases.writing() < self.settings.max_batch else 0

    def _admit(self, claimed: Iterable[tuple[RunningJob, Job]]) -> None:
        for running, job in claimed:
            job_id = running.claim.job_id
            try:
                first_frame = self.artifacts.read_input(job_id) if job.has_image else None
            except OSError as exc:
                self.settler.storage_failed(running, exc)
                continue
            try:
                self.engine.admit(job_id, ResolvedRequest.from_json(job.request, first_frame))
            except Exception as exc:
                event("admit_failed", job=job_id, worker=self.id, error=repr(exc))
                self.settler.failed(running, "generation_failed", f"could not start: {exc}")

    # ---- stopping jobs ---------------------------------------------------------------------------
    def _drop(self, job_id: str, reason: str) -> None:
        job = self.leases.forget(job_id)
        self.engine.cancel(job_id)
        if job:
            event("job_stopped", job=job_id, worker=self.id, reason=reason, step=job.step, fence=job.claim.fence)
            self.store.metrics.count("worker_stops_total", reason)

    @staticmethod
    def _stop_reason(job: RunningJob, state: JobState, read_after: float) -> str | None:
        """Why the job must stop, from its state as a step report read it (no earlier than
        `read_after`); None: it runs on."""
        if state.status is None:
            return "deleted"
        if state.fence != job.claim.fence:
            return "fenced_out"  # another worker took the job over
        if state.status is not JobStatus.IN_PROGRESS:
            return "cancelled"
        # The lease is gone but the job still reads as ours: a report read before the renewal
        # failed may predate the cancel that made it fail; the next report says which it was.
        lost = job.lease_lost_at
        return "fenced_out" if lost is not None and lost <= read_after else None

    def _fail_lost(self) -> None:
        """Fail every job the engine no longer holds that left it without an event: nothing
        else would ever finish it."""
        held = self.engine.job_ids
        for job in [job for job in self.leases.in_engine() if job.claim.job_id not in held]:
            event("job_lost", job=job.claim.job_id, worker=self.id, step=job.step)
            self.store.metrics.count("worker_stops_total", "engine_lost")
            self.settler.failed(job, "engine_lost", "The engine dropped the job without a result.")

    def _fail_overdue(self) -> None:
        now = time.time()
        for job in [job for job in self.leases.in_engine() if now >= job.deadline]:
            self.engine.cancel(job.claim.job_id)
            event("job_timeout", job=job.claim.job_id, worker=self.id, step=job.step)
            self.store.metrics.count("worker_stops_total", "timeout")
            self.settler.failed(job, "timeout", f"The job ran longer than this server's limit of "
                                                f"{self.settings.max_job_seconds:g} s.")

    # ---- the engine step -------------------------------------------------------------------------
    def _on_events(self, events: list[Event]) -> list[StepProgress]:
        """Hand each result to the writer pool; returns the progress to write and tell."""
        progress = []
        for e in events:
            job = self.leases.get(e.job_id)
            if job is None or not job.in_engine:
                continue
            match e:
                case Progress(step=step):
                    job.step = step
                    progress.append(StepProgress(job.claim, e))
                case Finished(result=result):
                    self.settler.completed(job, result)
                case Failed(message=message, code=code):
                    self.settler.failed(job, code, message)
        return progress

    def _engine_failed(self, exc: Exception) -> list[Event]:
        """The engine raised outside the parts it guards: every request it held fails (rather than
        the same step failing forever)."""
        job_ids = sorted(self.engine.job_ids)
        event("engine_error", worker=self.id, error=repr(exc), jobs=job_ids)
        for job_id in job_ids:
            self.engine.cancel(job_id)
        return [Failed(job_id, f"the engine failed: {exc}", "engine_error") for job_id in job_ids]

    def _step(self) -> None:
        t0 = time.time()
        try:
            events = self.engine.tick()
        except Exception as exc:
            events = self._engine_failed(exc)
        seconds = time.time() - t0
        progress = self._on_events(events)
        self._fail_lost()
        self._fail_overdue()
        self._apply_report()
        watched = [job.claim.job_id for job in self.leases.in_engine()]
        report: StepReport = self.store.after_step(progress, watched)
        self.store.metrics.observe("paris_step_seconds", seconds, STEP_BUCKETS, report.pipe)
        self.weight_moves.add(self.engine.weight_traffic, report.pipe)
        self._report_sent_at = time.time()
        self._report = self.reporter.submit(report.send)

    def _apply_report(self) -> None:
        """Stop the jobs the last step's round trip found cancelled, deleted or fenced out (it
        waits for that round trip only if it is still under way)."""
        report, self._report = self._report, None
        if report is None:
            return
        try:
            states = report.result()
        except redis.RedisError as exc:  # progress and stop checks resume with the next step
            event("report_failed", worker=self.id, error=repr(exc))
            return
        for job_id, state in states.items():
            job = self.leases.get(job_id)
            if job is not None and job.in_engine and (reason := self._stop_reason(job, state, self._report_sent_at)):
                self._drop(job_id, reason)

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        self.store.ensure_group()
        self.leases.start_keeper()
        event("worker_started", worker=self.id, max_batch=s.max_batch, lease_ms=s.lease_ms)
        last_reclaim = 0.0
        while not self.stop.is_set():
            try:
                self.health.probe()
                if self._capacity() > 0 and time.time() - last_reclaim > s.lease_ms / 1000 / 4:
                    last_reclaim = time.time()
                    self._admit(self.leases.reclaim(self._capacity()))
                free = self._capacity()
                if free > 0:
                    block = 0 if self.engine.has_work else int(min(1000, s.lease_ms / 4))
                    self._admit(self.leases.read_new(free, block))
                if self.engine.has_work:
                    self._step()
                    if s.tick_delay_s:
                        time.sleep(s.tick_delay_s)
                elif free <= 0:
                    self.stop.wait(0.05)  # storage fails or the writers are behind: nothing to do now
            except Exception as exc:  # Redis restart, transient errors: keep the loop alive
                event("worker_loop_error", worker=self.id, error=repr(exc))
                time.sleep(0.5)
        self.shutdown()

    def shutdown(self) -> None:
        self.stop.set()
        self.reporter.shutdown(wait=True)
        self.settler.shutdown()
        for job in self.leases.forget_all():  # hand unfinished jobs to the other workers at once (no lease wait)
            try:
                released = self.store.release(job.claim, self.id, self.settings.lease_ms)
                event("job_released", job=job.claim.job_id, worker=self.id, step=job.step, ok=released)
            except Exception as exc:
                event("release_failed", job=job.claim.job_id, worker=self.id, error=repr(exc))
        self.leases.stopped.set()
        event("worker_stopped", worker=self.id)
