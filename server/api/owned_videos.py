"""The jobs one API key may see, and the one place a job's record and files are deleted (by the
user, on sight of an expired job, or by the API's sweeper)."""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

from server.storage import ArtifactStore
from server.errors import not_found
from server.queue.jobs import Job, JobStatus, is_job_id
from server.queue.job_queue import JobQueue

log = logging.getLogger("paris.api")


def purge(store: JobQueue, artifacts: ArtifactStore, job_id: str, ttl_s: int) -> JobStatus | None:
    """Cancel the job if it runs (its worker then writes nothing more), delete its files, then its
    record; returns the status it had. The record goes last: if the storage fails, it is still there
    for the next DELETE or sweep to finish the job."""
    was = store.cancel(job_id, ttl_s)
    artifacts.remove(job_id)
    store.delete(job_id, ttl_s)
    return was


def sweep_expired(store: JobQueue, artifacts: ArtifactStore, ttl_s: int) -> int:
    """Purge finished jobs past expires_at; returns how many."""
    expired = store.expired()
    for job_id in expired:
        purge(store, artifacts, job_id, ttl_s)
        log.info(json.dumps({"event": "job_expired", "job": job_id}))
    return len(expired)


class OwnedVideos:
    """One owner's view of the store: every id that is malformed, unknown, another owner's or
    past its expiry is 404 `video_not_found` (an expired job is purged on sight, before the
    sweeper gets to it)."""

    def __init__(self, store: JobQueue, artifacts: ArtifactStore, ttl_s: int, owner: str):
        self.store, self.artifacts, self.ttl_s, self.owner = store, artifacts, ttl_s, owner

    def get(self, video_id: str) -> Job:
        job = self.store.get(video_id) if is_job_id(video_id) else None
        if job is None or job.owner != self.owner:
            raise not_found(video_id)
        if job.expires_at is not None and job.expires_at <= time.time():
            purge(self.store, self.artifacts, video_id, self.ttl_s)
            raise not_found(video_id)
        return job

    def list(self, *, after: str | None, limit: int, order: Literal["asc", "desc"]) -> tuple[list[Job], bool]:
        return self.store.list(self.owner, after=after, limit=limit, order=order)

    def cancel(self, video_id: str) -> tuple[Job, JobStatus | None]:
        """The job after the cancel, and the status it had before."""
        job = self.get(video_id)
        was = self.store.cancel(video_id, self.ttl_s)
        return self.store.get(video_id) or job, was

    def delete(self, video_id: str) -> JobStatus | None:
        self.get(video_id)
        return purge(self.store, self.artifacts, video_id, self.ttl_s)
