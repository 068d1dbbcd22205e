"""A worker's side of the job store (server/queue/store.py): read and claim entries, report each
engine step in one round trip, hold leases, settle or requeue."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from pipeline.results import Progress  # torch-free: the queue never loads the engine

from .jobs import GROUP, Job, JobStatus, hash_args
from .scripts import CLAIM, PROGRESS, RELEASE, RENEW, REQUEUE, SETTLE, now_ms
from .store import Claim, JobState, RoundTrip, Store


@dataclass(frozen=True)
class StepProgress:
    """One request's advance in an engine step, as the engine reported it: what
    WorkerStore.after_step writes (`percent`, `progress.step`) and tells (`event()`)."""

    claim: Claim
    progress: Progress

    @property
    def percent(self) -> int:
        """0-99 while denoising: 100 is written only once the MP4 is stored (jobs.completion)."""
        return min(99, int(99 * self.progress.step / max(1, self.progress.total)))

    def event(self) -> dict[str, object]:
        """The `progress` event's payload (the job's event log, SSE)."""
        p = self.progress
        return {"step": p.step, "total": p.total, "progress": self.percent, "experts": list(p.experts),
                "weights": [round(w, 6) for w in p.weights]}


@dataclass
class StepReport:
    """WorkerStore.after_step's round trip: `send()` returns the watched jobs' states."""

    trip: RoundTrip
    watched: list[str]
    first_state: int

    @property
    def pipe(self) -> redis.client.Pipeline:
        return self.trip.pipe

    def send(self) -> dict[str, JobState]:
        states = self.trip.send()[self.first_state:self.first_state + len(self.watched)]
        return {job_id: JobState.read(values) for job_id, values in zip(self.watched, states, strict=True)}


class WorkerStore(Store):
    """A worker's side: read and claim entries, report steps, hold leases, settle or requeue."""

    def __init__(self, client: redis.Redis, prefix: str = "paris"):
        super().__init__(client, prefix)
        self._claim = client.register_script(CLAIM)
        self._progress = client.register_script(PROGRESS)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._requeue = client.register_script(REQUEUE)
        self._settle = client.register_script(SETTLE)

    def read_new(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, str]]:
        """XREADGROUP up to `count` new entries; returns (entry_id, job_id)."""
        if count <= 0:
            return []
        resp = self.redis.xreadgroup(GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block_ms or None)
        return [(entry_id, (fields or {}).get("job", "")) for _stream, entries in resp or []
                for entry_id, fields in entries]

    def reclaim_stale(self, consumer: str, count: int, lease_ms: int) -> list[tuple[str, str]]:
        """XAUTOCLAIM entries whose worker stopped renewing its lease."""
        if count <= 0:
            return []
        _next, entries, *_deleted = self.redis.xautoclaim(self.keys.stream, GROUP, consumer, min_idle_time=lease_ms,
                                                          start_id="0-0", count=count)
        return [(eid, (fields or {}).get("job", "")) for eid, fields in entries if fields]

    def claim(self, entries: list[tuple[str, str]], worker: str, *, ttl_s: int, max_attempts: int
              ) -> dict[str, tuple[Claim, Job]]:
        """Claim delivered entries (entry_id, job_id) in one round trip: job id -> the claim and
        the job's record. An entry whose job is gone or finished is acked and left out; a job
        past max_attempts fails and is left out."""
        k = self.keys
        trip = RoundTrip(self.redis)
        wanted = [(entry_id, job_id) for entry_id, job_id in entries if job_id]
        for entry_id, job_id in wanted:
            trip.script(self._claim, [k.job(job_id), k.stream, k.queued, k.expiry, k.owner_prefix],
                        [job_id, entry_id, worker, now_ms(), ttl_s, GROUP, max_attempts])
        for entry_id, job_id in entries:
            if not job_id:
                trip.pipe.xack(k.stream, GROUP, entry_id)
        claims = {}
        for (entry_id, job_id), (outcome, fence, attempts, *record) in zip(wanted, trip.send()[:len(wanted)], strict=True):
            if outcome == "exhausted":
                self.metrics.count("jobs_finished_total", JobStatus.FAILED)
                self._exhausted(job_id, int(fence))
            if outcome == "claimed":
                job = Job.from_hash(dict(zip(record[::2], record[1::2], strict=True)))
                claims[job_id] = (Claim(job_id, entry_id, int(fence), int(attempts)), job)
        return claims

    def after_step(self, progress: list[StepProgress], watched: list[str]) -> StepReport:
        """A worker's Redis work after one engine step, queued for one round trip: the fenced
        progress of every request that advanced, each with its event (guarded: only if the
        progress write applied), and the state of every job in `watched` (its stop checks; a
        progress write that did not apply shows there as a changed status or fence). The step's
        metrics go into `StepReport.pipe`."""
        trip = RoundTrip(self.redis)
        for p in progress:
            key = self.keys.job(p.claim.job_id)
            trip.script(self._progress, [key], [p.claim.fence, *hash_args(progress=p.percent, step=p.progress.step)])
            self.notices.progress(trip.pipe, key, p.claim.job_id, p.claim.fence, p.event())
        first_state = len(trip.pipe.command_stack)
        self._queue_states(trip.pipe, watched)
        return StepReport(trip, watched, first_state)

    def _exhausted(self, job_id: str, fence: int) -> None:
        """The claim script failed the job (attempts exhausted): its event and webhooks, as a settle
        would queue them (not in the claim's own transaction: the claim returns the fence)."""
        job = self.get(job_id)
        if job is None or job.error_code is None:
            return
        pipe = self.redis.pipeline(transaction=True)
        self.notices.ended(pipe, self.keys.job(job_id), job_id, job.webhook_urls or [], fence=fence,
                           error=(job.error_code, job.error_message or ""))
        pipe.execute()

    def renew(self, claims: list[Claim], consumer: str) -> list[bool]:
        """Renew the leases of `claims` (one round trip); False where the claim is no longer current."""
        trip = RoundTrip(self.redis)
        for c in claims:
            trip.script(self._renew, [self.keys.job(c.job_id), self.keys.stream], [c.fence, GROUP, consumer, c.entry_id])
        return [bool(x) for x in trip.send()]

    def release(self, claim: Claim, consumer: str, lease_ms: int) -> bool:
        """Graceful shutdown: mark our entry idle past the lease so another worker takes it now."""
        return bool(self._release(keys=[self.keys.job(claim.job_id), self.keys.stream],
                                  args=[claim.fence, GROUP, consumer, claim.entry_id, lease_ms * 10]))

    def requeue(self, claim: Claim, consumer: str, *, lease_ms: int, ttl_s: int, max_requeues: int) -> bool:
        """Hand a job whose files could not be stored back to the queue (see the module doc);
        past `max_requeues` it fails with `storage_unavailable`. False when fenced out."""
        job = self.get(claim.job_id)
        if job is None:
            return False
        k = self.keys
        out = self._requeue(keys=[k.job(claim.job_id), k.stream, k.queued, k.owner_active(job.owner), k.expiry],
                            args=[claim.job_id, claim.fence, GROUP, consumer, claim.entry_id, lease_ms * 10,
                                  max_requeues, now_ms(), ttl_s])
        if out == 2:
            self.metrics.count("jobs_finished_total", JobStatus.FAILED)
        elif out == 1:
            self.metrics.count("jobs_requeued_total")
        return bool(out)

    def complete(self, claim: Claim, ttl_s: int, fields: dict[str, object]) -> bool:
        """Completed, with the result's fields (jobs.completion); False when fenced out."""
        return self._finish(claim, JobStatus.COMPLETED, ttl_s,
                            hash_args(**fields, artifact_fence=claim.fence))

    def fail(self, claim: Claim, ttl_s: int, code: str, message: str) -> bool:
        # the message may quote what the engine could not take (a lone surrogate): keep it storable
        message = message[:2000].encode("utf-8", "backslashreplace").decode("utf-8")
        return self._finish(claim, JobStatus.FAILED, ttl_s, hash_args(error_code=code, error_message=message),
                            (code, message))

    def _finish(self, claim: Claim, status: JobStatus, ttl_s: int, args: list[str],
                error: tuple[str, str] | None = None) -> bool:
        job = self.get(claim.job_id)
        if job is None:
            return False
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        self._settle(keys=[k.job(claim.job_id), k.stream, k.owner_active(job.owner), k.expiry],
                     args=[claim.job_id, claim.fence, status, now_ms(), ttl_s, GROUP, *args], client=pipe)
        self.notices.ended(pipe, k.job(claim.job_id), claim.job_id, job.webhook_urls or [], fence=claim.fence,
                           error=error)
        ok = bool(pipe.execute()[0])
        if ok:
            self.metrics.count("jobs_finished_total", status)
        return ok

    def _queue_states(self, pipe: redis.client.Pipeline, job_ids: list[str]) -> None:
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), *JobState._fields)

    def state(self, job_ids: list[str]) -> dict[str, JobState]:
        """Status, fence and accepted attempt per job, one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        self._queue_states(pipe, job_ids)
        return {job_id: JobState.read(values) for job_id, values in zip(job_ids, pipe.execute(), strict=True)}

    def heartbeat(self, worker: str, storage_ok: bool = True) -> None:
        """The worker is alive; `storage_ok` False while it cannot store videos (not ready)."""
        now = time.time()
        k = self.keys
        pipe = self.redis.pipeline()
        pipe.zadd(k.workers, {worker: now})
        if storage_ok:
            pipe.zrem(k.workers_storage_down, worker)
        else:
            pipe.zadd(k.workers_storage_down, {worker: now})
        for key in (k.workers, k.workers_storage_down):
            pipe.zremrangebyscore(key, "-inf", now - 86400)  # forget workers gone for a day
        pipe.execute()
