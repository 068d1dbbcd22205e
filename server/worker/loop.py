"""The worker: one loop around the step-level engine, and a pool of writer threads beside it.

    loop:
      claim up to the free capacity (XAUTOCLAIM of dead workers' jobs, then XREADGROUP COUNT=free;
        the claims in one round trip); nothing while the artifact storage fails (it is probed until
        it works again)
      admit each into the engine
      engine.tick()  -> Progress / Finished / Failed; each Finished or Failed goes to the writer pool
      fail the jobs the engine no longer holds that left it without an event, and those past their run time
      one Redis round trip, sent by a reporter thread so the engine does not wait on it: the progress of
        every request that advanced, the step's metrics, and the state of every job in the engine
        (cancelled, deleted or fenced-out ones leave it after the next step)
    writer pool (bounded): a result's MP4, thumbnail and spritesheet are written, then the job is settled
      (completed, fenced); a failure is settled the same way. Each result is settled on its own, and
      an unknown outcome (a Redis error, or a 0 that may answer a retry of a command whose reply was
      lost) is resolved by reading the job back before anything is sent again or deleted.
      An OS error while storing is the storage's fault, not the job's: the worker stops claiming,
      reports itself not ready, and hands the job back to the queue.
    a side thread renews the leases of the jobs the worker holds (fenced, one round trip) and writes
      the worker heartbeat, with its storage health.

Progress is 0-99 while denoising (step/total) and 100 only once the MP4 is stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import redis

from pipeline.engine import Engine
from pipeline.request import ResolvedRequest
from pipeline.results import Event, Failed, Finished, GenerationResult, Progress

from server.storage import ArtifactStore, open_artifacts
from server.queue.jobs import Job, JobStatus, completion
from server.queue.metrics import JOB_BUCKETS, STEP_BUCKETS, WeightMoves
from server.process.settings import Settings
from server.queue.store import Claim, JobState, StepProgress, StepReport, WorkerStore

log = logging.getLogger("paris.worker")

STORAGE_PROBE_S = 1.0  # while storage fails, how often the worker tries a small write


def _event(event: str, **kw) -> None:
    log.info(json.dumps({"event": event, **kw}, default=str))


@dataclass
class RunningJob:
    """A job this worker holds: its claim, and what the lease thread and the stop check know."""

    claim: Claim
    started: float
    deadline: float  # past it the job fails with `timeout`, and its lease is no longer renewed
    renewed_at: float = 0.0  # when the lease was last known good (claim or renewal): it holds lease_ms from then
    step: int = 0
    lease_lost: bool = False
    in_engine: bool = True  # False once it left the engine: the writer pool stores and settles it


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


class Worker:
    def __init__(self, settings: Settings, store: WorkerStore, artifacts: ArtifactStore, engine: Engine,
                 worker_id: str | None = None):
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self.id = worker_id or settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.running: dict[str, RunningJob] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stopped = threading.Event()  # set once shutdown is over: the lease keeper runs until then
        self.weight_moves = WeightMoves(store.metrics)
        self.writers = ThreadPoolExecutor(settings.artifact_writers, thread_name_prefix="writer",
                                          initializer=_lower_priority)
        self.reporter = ThreadPoolExecutor(1, thread_name_prefix="reporter")
        self._report: Future[dict[str, JobState]] | None = None  # the last step's round trip
        self.storage_ok = True
        self._last_probe = 0.0

    # ---- side thread: leases + heartbeat ---------------------------------------------------------
    def _renew_leases(self) -> None:
        period = max(0.05, self.settings.lease_ms / 1000 / 3)
        # also while shutting down: results waiting to be settled keep their leases
        while not self.stopped.is_set():
            try:
                now = time.time()
                # a job past its run time is not renewed: if the loop is stuck in a step that never
                # returns, the lease lapses and another worker takes the job over
                with self.lock:
                    jobs = [j for j in self.running.values() if not j.lease_lost and now < j.deadline]
                for job, renewed in zip(jobs, self.store.renew([j.claim for j in jobs], self.id)):
                    if renewed:
                        job.renewed_at = now
                    else:
                        job.lease_lost = True
                        _event("lease_lost", job=job.claim.job_id, worker=self.id, fence=job.claim.fence)
                self.store.heartbeat(self.id, self.storage_ok)
            except Exception as exc:
                _event("keeper_error", worker=self.id, error=str(exc))
            self.stopped.wait(min(period, self.settings.heartbeat_ttl_s / 3))

    # ---- claiming --------------------------------------------------------------------------------
    def _capacity(self) -> int:
        """How many jobs to claim now: the engine's free slots, but none while storage fails or
        while max_batch results wait for the writers (they hold their frames in memory)."""
        if not self.storage_ok:
            return 0
        with self.lock:
            writing = sum(not job.in_engine for job in self.running.values())
        return self.engine.free_slots if writing < self.settings.max_batch else 0

    def _claim_entries(self, entries: list[tuple[str, str]], source: Literal["new", "reclaim"]) -> None:
        with self.lock:
            mine = {job_id for _, job_id in entries if job_id in self.running}
        for job_id in mine:  # our own entry went idle (a slow step starved the lease thread): XAUTOCLAIM renewed it
            _event("lease_renewed_late", job=job_id, worker=self.id)
        entries = [(entry_id, job_id) for entry_id, job_id in entries if job_id not in mine]
        if not entries:
            return
        claims = self.store.claim(entries, self.id, ttl_s=self.settings.job_ttl_s,
                                  max_attempts=self.settings.max_attempts)
        for _, job_id in entries:
            if job_id not in claims:
                _event("claim_skipped", job=job_id, worker=self.id, how=source)
                continue
            claim, job = claims[job_id]
            _event("job_claimed", job=job_id, worker=self.id, how=source, fence=claim.fence, attempt=claim.attempts)
            self._admit(claim, job)

    def _admit(self, claim: Claim, job: Job) -> None:
        now = time.time()
        running = RunningJob(claim, now, now + self.settings.max_job_seconds, renewed_at=now)
        with self.lock:
            self.running[claim.job_id] = running
        try:
            first_frame = self.artifacts.read_input(claim.job_id) if job.has_image else None
        except OSError as exc:
            running.in_engine = False
            self.writers.submit(self._storage_failed, running, exc)
            return
        try:
            self.engine.admit(claim.job_id, ResolvedRequest.from_json(job.request, first_frame))
        except Exception as exc:
            _event("admit_failed", job=claim.job_id, worker=self.id, error=repr(exc))
            self._settle_failure(running, "generation_failed", f"could not start: {exc}")

    # ---- storage health --------------------------------------------------------------------------
    def _probe_storage(self) -> None:
        if self.storage_ok or time.time() - self._last_probe < STORAGE_PROBE_S:
            return
        self._last_probe = time.time()
        try:
            self.artifacts.check()
        except OSError:
            return
        self.storage_ok = True
        _event("storage_recovered", worker=self.id)
        self._report_health()

    def _report_health(self) -> None:
        try:
            self.store.heartbeat(self.id, self.storage_ok)
        except redis.RedisError:
            pass  # the lease thread reports it at its next beat

    # ---- stopping --------------------------------------------------------------------------------
    def _drop(self, job_id: str, reason: str) -> None:
        with self.lock:
            job = self.running.pop(job_id, None)
        self.engine.cancel(job_id)
        if job:
            _event("job_stopped", job=job_id, worker=self.id, reason=reason, step=job.step, fence=job.claim.fence)
            self.store.metrics.count("worker_stops_total", reason)

    @staticmethod
    def _stop_reason(job: RunningJob, state: JobState) -> str | None:
        if state.status is None:
            return "deleted"
        if state.fence != job.claim.fence:
            return "fenced_out"  # another worker took the job over
        if state.status is not JobStatus.IN_PROGRESS:
            return "cancelled"
        return "fenced_out" if job.lease_lost else None

    def _settle_failure(self, job: RunningJob, code: str, message: str) -> None:
        job.in_engine = False
        self.writers.submit(self._fail, job, code, message)

    def _fail_lost(self) -> None:
        """Fail every job the engine no longer holds that left it without an event: nothing
        else would ever finish it."""
        held = self.engine.job_ids
        with self.lock:
            lost = [job for job_id, job in self.running.items() if job.in_engine and job_id not in held]
        for job in lost:
            _event("job_lost", job=job.claim.job_id, worker=self.id, step=job.step)
            self.store.metrics.count("worker_stops_total", "engine_lost")
            self._settle_failure(job, "engine_lost", "The engine dropped the job without a result.")

    def _fail_overdue(self) -> None:
        now = time.time()
        with self.lock:
            overdue = [job for job in self.running.values() if job.in_engine and now >= job.deadline]
        for job in overdue:
            self.engine.cancel(job.claim.job_id)
            _event("job_timeout", job=job.claim.job_id, worker=self.id, step=job.step)
            self.store.metrics.count("worker_stops_total", "timeout")
            self._settle_failure(job, "timeout", f"The job ran longer than this server's limit of "
                                                 f"{self.settings.max_job_seconds:g} s.")

    # ---- results (writer pool) -------------------------------------------------------------------
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
                    with self.lock:
                        self.running.pop(c.job_id, None)
                    return outcome
            except redis.RedisError as exc:
                read_first = True
                _event("settle_retry", job=c.job_id, worker=self.id, to=target, error=repr(exc))
            if self.stop.is_set() and time.time() - job.renewed_at > self.settings.lease_ms / 1000:
                _event("settle_abandoned", job=c.job_id, worker=self.id, to=target, reason="lease_expired")
                with self.lock:
                    self.running.pop(c.job_id, None)
                return None
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def _fail(self, job: RunningJob, code: str, message: str) -> None:
        c = job.claim
        failed = self._settle(job, JobStatus.FAILED, lambda: self.store.fail(c, self.settings.job_ttl_s, code, message))
        if failed is not None:
            _event("job_failed" if failed else "fenced_out", job=c.job_id, worker=self.id, code=code, message=message)

    def _store(self, job: RunningJob, result: GenerationResult) -> None:
        """Write the attempt's files, then settle the job completed."""
        c = job.claim
        try:
            self.artifacts.write(c.job_id, c.fence, result)
        except OSError as exc:
            self._storage_failed(job, exc)
            return
        except Exception as exc:  # the files cannot be made from this result: the job's own failure
            _event("store_failed", job=c.job_id, worker=self.id, error=repr(exc))
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
            _event("fenced_out", job=c.job_id, worker=self.id, fence=c.fence, stage="complete")
            return
        for older in range(1, c.fence):  # earlier attempts' files (a worker that died storing them) are stale now
            self.artifacts.remove_attempt(c.job_id, older)
        seconds = time.time() - job.started
        _event("job_completed", job=c.job_id, worker=self.id, fence=c.fence, seconds=round(seconds, 3))
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
        if self.storage_ok:
            _event("storage_failed", worker=self.id, job=c.job_id, error=repr(exc))
        self.storage_ok = False
        self._report_health()
        self.store.metrics.count("storage_faults_total")
        self.artifacts.remove_attempt(c.job_id, c.fence)
        s = self.settings
        requeued = self._settle(job, JobStatus.QUEUED, lambda: self.store.requeue(
            c, self.id, lease_ms=s.lease_ms, ttl_s=s.job_ttl_s, max_requeues=s.max_storage_retries))
        if requeued is not None:
            _event("job_requeued" if requeued else "fenced_out", job=c.job_id, worker=self.id, reason="storage")

    # ---- the engine step -------------------------------------------------------------------------
    def _on_events(self, events: list[Event]) -> list[StepProgress]:
        """Hand each result to the writer pool; returns the progress to write and tell."""
        progress = []
        for event in events:
            with self.lock:
                job = self.running.get(event.job_id)
            if job is None or not job.in_engine:
                continue
            match event:
                case Progress(step=step, total=total, experts=experts, weights=weights):
                    job.step = step
                    progress.append(StepProgress(job.claim, min(99, int(99 * step / max(1, total))), step, total,
                                                 experts, weights))
                case Finished(result=result):
                    job.in_engine = False
                    _event("result_ready", job=event.job_id, worker=self.id, fence=job.claim.fence)
                    self.writers.submit(self._store, job, result)
                case Failed(message=message, code=code):
                    self._settle_failure(job, code, message)
        return progress

    def _engine_failed(self, exc: Exception) -> list[Event]:
        """The engine raised outside the parts it guards: every request it held fails (rather than
        the same step failing forever)."""
        job_ids = sorted(self.engine.job_ids)
        _event("engine_error", worker=self.id, error=repr(exc), jobs=job_ids)
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
        with self.lock:
            watched = [job_id for job_id, job in self.running.items() if job.in_engine]
        report: StepReport = self.store.after_step(progress, watched)
        self.store.metrics.observe("paris_step_seconds", seconds, STEP_BUCKETS, report.pipe)
        self.weight_moves.add(self.engine.model.residency.stats, report.pipe)
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
            _event("report_failed", worker=self.id, error=repr(exc))
            return
        for job_id, state in states.items():
            with self.lock:
                job = self.running.get(job_id)
            if job is not None and job.in_engine and (reason := self._stop_reason(job, state)):
                self._drop(job_id, reason)

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        self.store.ensure_group()
        threading.Thread(target=self._renew_leases, name="lease-keeper", daemon=True).start()
        _event("worker_started", worker=self.id, max_batch=s.max_batch, lease_ms=s.lease_ms)
        last_reclaim = 0.0
        while not self.stop.is_set():
            try:
                self._probe_storage()
                if self._capacity() > 0 and time.time() - last_reclaim > s.lease_ms / 1000 / 4:
                    last_reclaim = time.time()
                    self._claim_entries(self.store.reclaim_stale(self.id, self._capacity(), s.lease_ms), "reclaim")
                free = self._capacity()
                if free > 0:
                    block = 0 if self.engine.has_work else int(min(1000, s.lease_ms / 4))
                    self._claim_entries(self.store.read_new(self.id, free, block), "new")
                if self.engine.has_work:
                    self._step()
                    if s.tick_delay_s:
                        time.sleep(s.tick_delay_s)
                elif free <= 0:
                    self.stop.wait(0.05)  # storage fails or the writers are behind: nothing to do now
            except Exception as exc:  # Redis restart, transient errors: keep the loop alive
                _event("worker_loop_error", worker=self.id, error=repr(exc))
                time.sleep(0.5)
        self._shutdown()

    def _shutdown(self) -> None:
        self.stop.set()
        self.reporter.shutdown(wait=True)
        self.writers.shutdown(wait=True)  # results already made are stored and settled (within their leases)
        with self.lock:
            leftovers = list(self.running.values())
            self.running.clear()
        for job in leftovers:  # hand unfinished jobs to the other workers at once (no lease wait)
            try:
                released = self.store.release(job.claim, self.id, self.settings.lease_ms)
                _event("job_released", job=job.claim.job_id, worker=self.id, step=job.step, ok=released)
            except Exception as exc:
                _event("release_failed", job=job.claim.job_id, worker=self.id, error=repr(exc))
        self.stopped.set()
        _event("worker_stopped", worker=self.id)


class WorkerRefused(RuntimeError):
    """The model cannot be served on this device and budget; the message says what does not fit."""


def memory_plan(settings: Settings):
    """The worker's memory plan (pipeline/planner), logged as one line; None on a CPU given no
    device budget (no limit). Raises PlanRefused naming what does not fit."""
    import torch

    from pipeline.planner.serving import budget_target, check_free, serving_plan

    target = budget_target(torch.device(settings.device), settings.device_memory, settings.host_memory,
                           settings.reserve, settings.max_batch)
    if target is None:
        _event("memory_plan", plan=None, reason="no device budget on cpu: no limit")
        return None
    check_free(target, torch.device(settings.device))
    plan = serving_plan(settings.model, target)
    _event("memory_plan", **plan.to_json())
    return plan


def build_worker(settings: Settings, redis_url: str, group=None) -> Worker:
    """Plans memory before loading anything, and refuses (WorkerRefused) a platform known to fail
    on the VAE or a budget that cannot serve one request of the largest size the model allows.
    `group`: rank 0 of a worker group (pipeline.distributed.serving.WorkerGroup), whose placement
    gives the memory plan and whose runner computes the experts' rows on their ranks."""
    import torch

    from pipeline.cuda_env import configure_process
    from pipeline.engine import MemoryLimits
    from pipeline.loader import load_model, quiet_library_logging
    from pipeline.manifest import read_manifest
    from pipeline.planner.plan import PlanRefused
    from pipeline.planner.serving import memory_limits, residency_settings
    from pipeline.vae_platform import UnsupportedPlatform, check_vae_platform

    configure_process(settings.device)  # before any CUDA call: the allocator's settings, and only this device
    if settings.threads:
        torch.set_num_threads(settings.threads)
    t0 = time.time()
    quiet_library_logging()
    device = torch.device(settings.device)
    try:
        check_vae_platform(device, read_manifest(settings.model).components.vae.dtype)
        plan = group.plan if group is not None else memory_plan(settings)
    except (UnsupportedPlatform, PlanRefused) as exc:
        raise WorkerRefused(str(exc)) from None
    model = load_model(settings.model, device=device, **residency_settings(plan))
    engine = Engine(model, max_batch=settings.max_batch, max_wait=settings.max_wait,
                    limits=memory_limits(plan) if plan else MemoryLimits(), stream_batch=plan.stream_batch if plan else 1,
                    expert_runner=group.runner_for(model) if group is not None else None)
    _event("model_loaded", model=model.manifest.name, seconds=round(time.time() - t0, 2))
    store = WorkerStore.from_url(redis_url, settings.key_prefix)
    return Worker(settings, store, open_artifacts(settings, patient=True), engine)
