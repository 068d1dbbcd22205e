"""The API's side of the job store (server/queue/store.py): enqueue, read, list, cancel and delete
jobs; the queue's gauges."""

from __future__ import annotations

import time
from typing import Literal

import redis

from .jobs import GROUP, Enqueued, Job, JobStatus
from .scripts import CANCEL, CANCELLED, ENQUEUE, now_ms
from .store import Store


class JobQueue(Store):
    """The API's side: enqueue, read, list, cancel and delete jobs; the queue's gauges."""

    def __init__(self, client: redis.Redis, prefix: str = "paris"):
        super().__init__(client, prefix)
        self._enqueue = client.register_script(ENQUEUE)
        self._cancel = client.register_script(CANCEL)

    def enqueue(self, job: Job, *, max_active: int = 0, idempotency_key: str | None = None, fingerprint: str = "-",
                idem_ttl_s: int = 86400, client: str | None = None, max_queued: int = 0
                ) -> tuple[Enqueued, Job | None]:
        """The outcome and the job it concerns: `job` itself when CREATED, the job the
        Idempotency-Key already names (as it was when read) when EXISTING, None for CONFLICT
        (the key names a job made from another request, `fingerprint` differs), LIMIT (the
        owner's active jobs) and BUSY (`max_queued` jobs wait already).
        `client` (an address) counts the limit per client instead of per owner."""
        k = self.keys
        idem = k.idempotency(job.owner, idempotency_key) if idempotency_key else ""
        active = k.owner_active(job.owner)
        out = self._enqueue(
            keys=[k.job(job.id), k.stream, k.queued, k.seq, k.owner_jobs(job.owner), active, idem,
                  k.client_active(client) if client else active],
            args=[job.id, max_active, now_ms(), idem_ttl_s, k.job_prefix, fingerprint, max_queued,
                  *(x for field in job.to_hash().items() for x in field)])
        outcome = Enqueued(out[0])
        if outcome is Enqueued.CREATED:
            self.metrics.count("jobs_created_total")
            position = self.queue_position(job.id)
            if position is not None:
                self.notices.queued(self.redis, k.job(job.id), job.id, position)
            return outcome, job
        if outcome is Enqueued.EXISTING:
            return outcome, Job.from_hash(dict(zip(out[2][::2], out[2][1::2], strict=True)))
        return outcome, None

    def queue_position(self, job_id: str) -> int | None:
        rank = self.redis.zrank(self.keys.queued, job_id)
        return None if rank is None else rank + 1

    def queue_depth(self) -> int:
        return self.redis.zcard(self.keys.queued)

    def running_count(self) -> int:
        """Jobs delivered to a worker and not yet finished (the group's pending entries)."""
        return self.redis.xpending(self.keys.stream, GROUP)["pending"]

    def list(self, owner: str, *, after: str | None, limit: int, order: Literal["asc", "desc"]
             ) -> tuple[list[Job], bool]:
        key = self.keys.owner_jobs(owner)
        desc = order == "desc"
        start = 0
        if after:
            rank = self.redis.zrevrank(key, after) if desc else self.redis.zrank(key, after)
            if rank is None:
                return [], False
            start = rank + 1
        ids = (self.redis.zrevrange if desc else self.redis.zrange)(key, start, start + limit)
        jobs = [job for job in map(self.get, ids[:limit]) if job is not None]
        return jobs, len(ids) > limit

    def cancel(self, job_id: str, ttl_s: int) -> JobStatus | None:
        """Returns the status the job had before (None when it does not exist)."""
        job = self.get(job_id)
        if job is None:
            return None
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        self._cancel(keys=[k.job(job_id), k.stream, k.queued, k.owner_active(job.owner), k.expiry],
                     args=[job_id, now_ms(), ttl_s, GROUP, CANCELLED[1]], client=pipe)
        self.notices.ended(pipe, k.job(job_id), job_id, job.webhook_urls or [], fence=None, error=CANCELLED)
        prev = pipe.execute()[0]
        if not prev:
            return None
        prev = JobStatus(prev)
        if not prev.finished:
            self.metrics.count("jobs_finished_total", "cancelled")
        return prev

    def delete(self, job_id: str, ttl_s: int) -> JobStatus | None:
        """Cancel the job if it runs, then remove its record and index entries. Returns the status
        it had (None when it was already gone)."""
        job = self.get(job_id)
        prev = self.cancel(job_id, ttl_s) if job else None
        pipe = self.redis.pipeline()
        if job:
            pipe.delete(self.keys.job(job_id))
            pipe.zrem(self.keys.owner_jobs(job.owner), job_id)
            pipe.srem(self.keys.owner_active(job.owner), job_id)
        pipe.zrem(self.keys.expiry, job_id)
        pipe.execute()
        return prev

    def expired(self, now_s: int | None = None, count: int = 100) -> list[str]:
        return self.redis.zrangebyscore(self.keys.expiry, "-inf", now_s if now_s is not None else int(time.time()),
                                        start=0, num=count)

    def worker_counts(self, max_age_s: float) -> tuple[int, int]:
        """(workers with a fresh heartbeat, those of them that can store videos)."""
        pipe = self.redis.pipeline()
        pipe.zrangebyscore(self.keys.workers, time.time() - max_age_s, "+inf")
        pipe.zrange(self.keys.workers_storage_down, 0, -1)
        fresh, down = pipe.execute()
        return len(fresh), len(set(fresh) - set(down))
