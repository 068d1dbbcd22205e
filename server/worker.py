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
from dataclasses import dataclass, field

from PIL import Image

from .artifacts import ArtifactStore
from .metrics import JOB_BUCKETS, STEP_BUCKETS
from .queue import Claim, JobStore
from .settings import Settings

log = logging.getLogger("paris.worker")


def _event(event: str, **kw) -> None:
    log.info(json.dumps({"event": event, **kw}, default=str))


@dataclass
class Running:
    claim: Claim
    started: float
    routing: str
    top_k: int
    step: int = 0
    total: int = 0
    lost: bool = field(default=False)


class Worker:
    def __init__(self, settings: Settings, store: JobStore, artifacts: ArtifactStore, engine, num_experts: int,
                 worker_id: str | None = None):
        self.s = settings
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self.num_experts = num_experts
        self.id = worker_id or settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.running: dict[str, Running] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._moved_seen: dict[str, float] = {}  # residency counters already added to the metrics

    # ---- side thread: leases + heartbeat ---------------------------------------------------------
    def _keeper(self) -> None:
        period = max(0.05, self.s.lease_ms / 1000 / 3)
        while not self.stop.is_set():
            try:
                with self.lock:
                    items = list(self.running.values())
                for run in items:
                    if not run.lost and not self.store.renew(run.claim, self.id):
                        run.lost = True
                        _event("lease_lost", job=run.claim.job_id, worker=self.id, fence=run.claim.fence)
                self.store.heartbeat(self.id, {"running": len(items), "free_slots": self.engine.free_slots,
                                               "pid": os.getpid()})
            except Exception as exc:
                _event("keeper_error", worker=self.id, error=str(exc))
            self.stop.wait(min(period, self.s.heartbeat_ttl_s / 3))

    # ---- claiming --------------------------------------------------------------------------------
    def _take(self, entries: list[tuple[str, str]], how: str) -> None:
        for entry_id, job_id in entries:
            with self.lock:
                mine = job_id in self.running
            if mine:  # our own entry went idle (a slow step starved the keeper): XAUTOCLAIM renewed it
                _event("lease_renewed_late", job=job_id, worker=self.id)
                continue
            claim = self.store.claim(entry_id, job_id, self.id, ttl_s=self.s.job_ttl_s, max_attempts=self.s.max_attempts)
            if claim is None:
                _event("claim_skipped", job=job_id, worker=self.id, how=how)
                continue
            _event("job_claimed", job=job_id, worker=self.id, how=how, fence=claim.fence, attempt=claim.attempts)
            self._admit(claim)

    def _admit(self, claim: Claim) -> None:
        from pipeline.request import ResolvedRequest

        job = self.store.get(claim.job_id) or {}
        try:
            image = None
            if job.get("has_image") == "1":
                with Image.open(self.artifacts.input_path(claim.job_id)) as im:
                    image = im.convert("RGB")
            request = ResolvedRequest.from_json(job["request"], image)
            run = Running(claim, time.time(), request.routing, request.top_k, total=request.num_inference_steps)
            with self.lock:
                self.running[claim.job_id] = run
            self.engine.admit(claim.job_id, request)
        except Exception as exc:
            _event("admit_failed", job=claim.job_id, worker=self.id, error=repr(exc))
            self._finish_failed(claim, "generation_failed", f"could not start: {exc}")

    # ---- stopping --------------------------------------------------------------------------------
    def _drop(self, job_id: str, reason: str) -> None:
        with self.lock:
            run = self.running.pop(job_id, None)
        self.engine.cancel(job_id)
        if run:
            _event("job_stopped", job=job_id, worker=self.id, reason=reason, step=run.step, fence=run.claim.fence)
            self.store.count("worker_stops_total", reason)

    def _check_stops(self) -> None:
        with self.lock:
            items = list(self.running.items())
        if not items:
            return
        states = self.store.state([j for j, _ in items])
        for job_id, run in items:
            reason = self._stop_reason(run, *states.get(job_id, (None, None)))
            if reason:
                self._drop(job_id, reason)

    @staticmethod
    def _stop_reason(run: Running, status: str | None, fence: str | None) -> str | None:
        if status is None:
            return "deleted"
        if fence != str(run.claim.fence):
            return "fenced_out"  # another worker took the job over
        if status != "in_progress":
            return "cancelled"
        return "fenced_out" if run.lost else None

    # ---- results ---------------------------------------------------------------------------------
    def _finish_failed(self, claim: Claim, code: str, message: str) -> None:
        with self.lock:
            self.running.pop(claim.job_id, None)
        ok = self.store.settle(claim, "failed", self.s.job_ttl_s, error_code=code, error_message=message[:2000])
        _event("job_failed" if ok else "fenced_out", job=claim.job_id, worker=self.id, code=code, message=message)

    def _finish_ok(self, run: Running, result) -> None:
        from pipeline.video import write_mp4, write_spritesheet, write_thumbnail

        c = run.claim
        out = self.artifacts.attempt_dir(c.job_id, c.fence)
        out.mkdir(parents=True, exist_ok=True)
        write_mp4(result.frames, result.fps, self.artifacts.variant_path(c.job_id, c.fence, "video"))
        write_thumbnail(result.frames, self.artifacts.variant_path(c.job_id, c.fence, "thumbnail"))
        write_spritesheet(result.frames, self.artifacts.variant_path(c.job_id, c.fence, "spritesheet"))
        steps = result.trace.steps
        summary = result.routing
        step_share = {str(i): v for i, v in enumerate(summary.step_share)}
        routing = {"policy": str(run.routing), "top_k": run.top_k, "step_share": step_share,
                   "expert_share": step_share,  # the old name of step_share, kept for clients that read it
                   "weight_share": {str(i): v for i, v in enumerate(summary.weight_share)},
                   "steps": len(steps), "trace_url": f"/v1/videos/{c.job_id}/trace"}
        ok = self.store.settle(c, "completed", self.s.job_ttl_s, progress=100, step=run.total,
                               artifact_fence=c.fence, seed=int(result.seed), routing=routing, trace=steps,
                               residency=result.residency.to_dict())
        if not ok:  # fenced out, cancelled or deleted meanwhile: our files are not the result
            self.artifacts.remove_attempt(c.job_id, c.fence)
            if self.store.get(c.job_id) is None:
                self.artifacts.remove(c.job_id)
            _event("fenced_out", job=c.job_id, worker=self.id, fence=c.fence, stage="complete")
            return
        for s in steps:
            for e in s["experts"]:
                self.store.count("expert_steps_total", str(e))
        self.store.observe("paris_job_seconds", time.time() - run.started, JOB_BUCKETS)
        _event("job_completed", job=c.job_id, worker=self.id, fence=c.fence, seconds=round(time.time() - run.started, 3))

    def _handle(self, ev) -> None:
        from pipeline.engine import Failed, Finished, Progress

        with self.lock:
            run = self.running.get(ev.job_id)
        if run is None:
            return
        if isinstance(ev, Progress):
            run.step, run.total = ev.step, ev.total
            pct = min(99, int(99 * ev.step / max(1, ev.total)))
            if not self.store.progress(run.claim, progress=pct, step=ev.step, total_steps=ev.total):
                status, fence = self.store.state([ev.job_id])[ev.job_id]
                self._drop(ev.job_id, self._stop_reason(run, status, fence) or "fenced_out")
        elif isinstance(ev, Finished):
            with self.lock:
                self.running.pop(ev.job_id, None)
            try:
                self._finish_ok(run, ev.result)
            except Exception as exc:
                _event("store_failed", job=ev.job_id, worker=self.id, error=repr(exc))
                self.artifacts.remove_attempt(run.claim.job_id, run.claim.fence)
                self._finish_failed(run.claim, "generation_failed", f"could not store the video: {exc}")
        elif isinstance(ev, Failed):
            self._finish_failed(run.claim, "generation_failed", ev.message)

    def _count_weight_moves(self) -> None:
        """Add this worker's new component loads and bytes moved to the shared metrics."""
        stats = self.engine.model.residency.stats
        now = {f"component_loads_total|{k}": v for k, v in stats.device_loads.items()}
        now["bytes_to_device_total|"] = stats.bytes_to_device
        now["bytes_from_disk_total|"] = stats.bytes_from_disk
        for key, value in now.items():
            delta = value - self._moved_seen.get(key, 0)
            if delta:
                name, label = key.split("|", 1)
                self.store.count(name, label, delta)
                self._moved_seen[key] = value

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self.store.ensure_group()
        keeper = threading.Thread(target=self._keeper, name="lease-keeper", daemon=True)
        keeper.start()
        _event("worker_started", worker=self.id, max_batch=self.s.max_batch, lease_ms=self.s.lease_ms)
        last_reclaim = 0.0
        while not self.stop.is_set():
            try:
                if self.engine.free_slots > 0 and time.time() - last_reclaim > self.s.lease_ms / 1000 / 4:
                    last_reclaim = time.time()
                    self._take(self.store.reclaim_stale(self.id, self.engine.free_slots, self.s.lease_ms), "reclaim")
                if self.engine.free_slots > 0:
                    block = 0 if self.engine.has_work else int(min(1000, self.s.lease_ms / 4))
                    self._take(self.store.read_new(self.id, self.engine.free_slots, block), "new")
                self._check_stops()
                if self.engine.has_work:
                    t0 = time.time()
                    events = self.engine.tick()
                    self.store.observe("paris_step_seconds", time.time() - t0, STEP_BUCKETS)
                    self._count_weight_moves()
                    for ev in events:
                        self._handle(ev)
                    if self.s.tick_delay_s:
                        time.sleep(self.s.tick_delay_s)
            except Exception as exc:  # Redis restart, transient errors: keep the loop alive
                _event("worker_loop_error", worker=self.id, error=repr(exc))
                time.sleep(0.5)
        self.stop.set()
        with self.lock:
            leftovers = list(self.running.values())
            self.running.clear()
        for run in leftovers:  # hand unfinished jobs to the other workers at once (no lease wait)
            try:
                released = self.store.release(run.claim, self.id, self.s.lease_ms)
                _event("job_released", job=run.claim.job_id, worker=self.id, step=run.step, ok=released)
            except Exception as exc:
                _event("release_failed", job=run.claim.job_id, worker=self.id, error=repr(exc))
        _event("worker_stopped", worker=self.id)


def build_worker(settings: Settings, redis_url: str) -> Worker:
    from pipeline.engine import Engine
    from pipeline.loader import load_model
    from pipeline.manifest import read_manifest
    from pipeline.residency import parse_budget

    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    manifest = read_manifest(settings.model)
    t0 = time.time()
    model = load_model(settings.model, device=settings.device,
                       budget_bytes=parse_budget(settings.device_memory, settings.device))
    engine = Engine(model, max_batch=settings.max_batch, max_wait=settings.max_wait)
    _event("model_loaded", model=manifest.name, seconds=round(time.time() - t0, 2))
    store = JobStore.from_url(redis_url, settings.key_prefix)
    return Worker(settings, store, ArtifactStore(settings.resolved_artifact_dir()), engine,
                  num_experts=len(manifest.components.experts))
