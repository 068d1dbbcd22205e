"""The worker: one loop around the step-level engine.

    loop:
      claim up to engine.free_slots jobs (XAUTOCLAIM of dead workers' jobs, then XREADGROUP COUNT=free)
      admit each into the engine
      stop jobs that were cancelled, deleted or fenced out (checked between steps)
      engine.tick()  -> Progress (fenced progress write) / Finished (artifacts, then fenced complete) / Failed
    a side thread renews the leases of running jobs (fenced) and writes the worker heartbeat.

Progress is 0-99 while denoising (step/total) and 100 only once the MP4 is stored.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from pipeline.engine import Engine
from pipeline.request import ResolvedRequest
from pipeline.results import Event, Failed, Finished, GenerationResult, Progress

from .artifacts import ArtifactStore
from .jobs import JobStatus, completion
from .metrics import JOB_BUCKETS, STEP_BUCKETS, WeightMoves
from .settings import Settings
from .store import Claim, JobState, JobStore

log = logging.getLogger("paris.worker")


def _event(event: str, **kw) -> None:
    log.info(json.dumps({"event": event, **kw}, default=str))


@dataclass
class RunningJob:
    """A job this worker holds: its claim, and what the lease thread and the stop check know."""

    claim: Claim
    request: ResolvedRequest
    started: float
    step: int = 0
    lease_lost: bool = False


class Worker:
    def __init__(self, settings: Settings, store: JobStore, artifacts: ArtifactStore, engine: Engine,
                 worker_id: str | None = None):
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self.id = worker_id or settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.running: dict[str, RunningJob] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.weight_moves = WeightMoves(store.metrics)

    # ---- side thread: leases + heartbeat ---------------------------------------------------------
    def _renew_leases(self) -> None:
        period = max(0.05, self.settings.lease_ms / 1000 / 3)
        while not self.stop.is_set():
            try:
                with self.lock:
                    jobs = list(self.running.values())
                for job in jobs:
                    if not job.lease_lost and not self.store.renew(job.claim, self.id):
                        job.lease_lost = True
                        _event("lease_lost", job=job.claim.job_id, worker=self.id, fence=job.claim.fence)
                self.store.heartbeat(self.id)
            except Exception as exc:
                _event("keeper_error", worker=self.id, error=str(exc))
            self.stop.wait(min(period, self.settings.heartbeat_ttl_s / 3))

    # ---- claiming --------------------------------------------------------------------------------
    def _claim_entries(self, entries: list[tuple[str, str]], source: Literal["new", "reclaim"]) -> None:
        for entry_id, job_id in entries:
            with self.lock:
                mine = job_id in self.running
            if mine:  # our own entry went idle (a slow step starved the lease thread): XAUTOCLAIM renewed it
                _event("lease_renewed_late", job=job_id, worker=self.id)
                continue
            claim = self.store.claim(entry_id, job_id, self.id, ttl_s=self.settings.job_ttl_s,
                                     max_attempts=self.settings.max_attempts)
            if claim is None:
                _event("claim_skipped", job=job_id, worker=self.id, how=source)
                continue
            _event("job_claimed", job=job_id, worker=self.id, how=source, fence=claim.fence, attempt=claim.attempts)
            self._admit(claim)

    def _admit(self, claim: Claim) -> None:
        try:
            job = self.store.get(claim.job_id)
            if job is None:  # deleted since the claim: nothing to run
                return
            image = None
            if job.has_image:
                with Image.open(self.artifacts.input_path(claim.job_id)) as im:
                    image = im.convert("RGB")
            request = ResolvedRequest.from_json(job.request, image)
            with self.lock:
                self.running[claim.job_id] = RunningJob(claim, request, time.time())
            self.engine.admit(claim.job_id, request)
        except Exception as exc:
            _event("admit_failed", job=claim.job_id, worker=self.id, error=repr(exc))
            self._fail(claim, "generation_failed", f"could not start: {exc}")

    # ---- stopping --------------------------------------------------------------------------------
    def _drop(self, job_id: str, reason: str) -> None:
        with self.lock:
            job = self.running.pop(job_id, None)
        self.engine.cancel(job_id)
        if job:
            _event("job_stopped", job=job_id, worker=self.id, reason=reason, step=job.step, fence=job.claim.fence)
            self.store.metrics.count("worker_stops_total", reason)

    def _check_stops(self) -> None:
        with self.lock:
            jobs = list(self.running.items())
        if not jobs:
            return
        states = self.store.state([job_id for job_id, _ in jobs])
        for job_id, job in jobs:
            reason = self._stop_reason(job, states[job_id])
            if reason:
                self._drop(job_id, reason)

    @staticmethod
    def _stop_reason(job: RunningJob, state: JobState) -> str | None:
        if state.status is None:
            return "deleted"
        if state.fence != job.claim.fence:
            return "fenced_out"  # another worker took the job over
        if state.status is not JobStatus.IN_PROGRESS:
            return "cancelled"
        return "fenced_out" if job.lease_lost else None

    # ---- results ---------------------------------------------------------------------------------
    def _fail(self, claim: Claim, code: str, message: str) -> None:
        with self.lock:
            self.running.pop(claim.job_id, None)
        ok = self.store.fail(claim, self.settings.job_ttl_s, code, message)
        _event("job_failed" if ok else "fenced_out", job=claim.job_id, worker=self.id, code=code, message=message)

    def _complete(self, job: RunningJob, result: GenerationResult) -> None:
        c = job.claim
        self.artifacts.write(c.job_id, c.fence, result)
        if not self.store.complete(c, self.settings.job_ttl_s, completion(c.job_id, result)):
            # fenced out, cancelled or deleted meanwhile: our files are not the result
            self.artifacts.remove_attempt(c.job_id, c.fence)
            if self.store.get(c.job_id) is None:
                self.artifacts.remove(c.job_id)
            _event("fenced_out", job=c.job_id, worker=self.id, fence=c.fence, stage="complete")
            return
        seconds = time.time() - job.started
        _event("job_completed", job=c.job_id, worker=self.id, fence=c.fence, seconds=round(seconds, 3))
        self.store.metrics.count_routing(result.trace)
        self.store.metrics.observe("paris_job_seconds", seconds, JOB_BUCKETS)

    def _handle(self, event: Event) -> None:
        with self.lock:
            job = self.running.get(event.job_id)
        if job is None:
            return
        match event:
            case Progress(job_id=job_id, step=step, total=total, experts=experts, weights=weights):
                job.step = step
                percent = min(99, int(99 * step / max(1, total)))
                if not self.store.progress(job.claim, percent, step, total=total, experts=experts, weights=weights):
                    state = self.store.state([job_id])[job_id]
                    self._drop(job_id, self._stop_reason(job, state) or "fenced_out")
            case Finished(job_id=job_id, result=result):
                with self.lock:
                    self.running.pop(job_id, None)
                try:
                    self._complete(job, result)
                except Exception as exc:
                    _event("store_failed", job=job_id, worker=self.id, error=repr(exc))
                    self.artifacts.remove_attempt(job.claim.job_id, job.claim.fence)
                    self._fail(job.claim, "generation_failed", f"could not store the video: {exc}")
            case Failed(message=message, code=code):
                self._fail(job.claim, code, message)

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        self.store.ensure_group()
        threading.Thread(target=self._renew_leases, name="lease-keeper", daemon=True).start()
        _event("worker_started", worker=self.id, max_batch=s.max_batch, lease_ms=s.lease_ms)
        last_reclaim = 0.0
        while not self.stop.is_set():
            try:
                if self.engine.free_slots > 0 and time.time() - last_reclaim > s.lease_ms / 1000 / 4:
                    last_reclaim = time.time()
                    self._claim_entries(self.store.reclaim_stale(self.id, self.engine.free_slots, s.lease_ms),
                                        "reclaim")
                if self.engine.free_slots > 0:
                    block = 0 if self.engine.has_work else int(min(1000, s.lease_ms / 4))
                    self._claim_entries(self.store.read_new(self.id, self.engine.free_slots, block), "new")
                self._check_stops()
                if self.engine.has_work:
                    t0 = time.time()
                    events = self.engine.tick()
                    self.store.metrics.observe("paris_step_seconds", time.time() - t0, STEP_BUCKETS)
                    self.weight_moves.add(self.engine.model.residency.stats)
                    for event in events:
                        self._handle(event)
                    if s.tick_delay_s:
                        time.sleep(s.tick_delay_s)
            except Exception as exc:  # Redis restart, transient errors: keep the loop alive
                _event("worker_loop_error", worker=self.id, error=repr(exc))
                time.sleep(0.5)
        self.stop.set()
        with self.lock:
            leftovers = list(self.running.values())
            self.running.clear()
        for job in leftovers:  # hand unfinished jobs to the other workers at once (no lease wait)
            try:
                released = self.store.release(job.claim, self.id, s.lease_ms)
                _event("job_released", job=job.claim.job_id, worker=self.id, step=job.step, ok=released)
            except Exception as exc:
                _event("release_failed", job=job.claim.job_id, worker=self.id, error=repr(exc))
        _event("worker_stopped", worker=self.id)


def build_worker(settings: Settings, redis_url: str) -> Worker:
    from pipeline.loader import load_model, quiet_library_logging
    from pipeline.residency import parse_budget

    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    t0 = time.time()
    quiet_library_logging()
    model = load_model(settings.model, device=settings.device,
                       budget_bytes=parse_budget(settings.device_memory, settings.device))
    engine = Engine(model, max_batch=settings.max_batch, max_wait=settings.max_wait)
    _event("model_loaded", model=model.manifest.name, seconds=round(time.time() - t0, 2))
    store = JobStore.from_url(redis_url, settings.key_prefix)
    return Worker(settings, store, ArtifactStore(settings.resolved_artifact_dir()), engine)
