"""Job creation: POST /v1/videos's work once the route has read the body and who asks.

Decode the first frame, resolve the request, check its webhook URLs, store the first frame, enqueue.
The stored first frame belongs to no job until the queue creates one: every other outcome (a
refusal, an idempotent hit, an exception such as Redis down or the client gone) removes it again,
so no path leaves a first frame without its job (issue 19, N7).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool
from PIL import Image

from pipeline.manifest import Manifest
from server.errors import APIError, StorageError
from server.process.settings import Settings
from server.queue.jobs import Enqueued, Job, new_job_id
from server.queue.job_queue import JobQueue
from server.storage import ArtifactStore
from .intake import fingerprint, resolve_create
from .schemas import CreateVideo
from .uploads import ImageLimits, ImageSlots, load_image
from .webhook_service import WebhookService

log = logging.getLogger("paris.api")
BUSY_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Caller:
    """Who asks for a job, as the route read it from the request."""

    owner: str
    tenant: str  # whose webhook checks these are: the owner with API keys, `client:<address>` without
    client: str | None  # without API keys, the address whose active jobs the limit counts; None: the owner's
    idempotency_key: str | None = None


@dataclass(frozen=True)
class JobCreation:
    settings: Settings
    manifest: Manifest
    store: JobQueue
    artifacts: ArtifactStore
    webhooks: WebhookService
    image_slots: ImageSlots  # image decodes and writes run a few at a time, off the event loop
    image_limits: ImageLimits

    async def create(self, body: CreateVideo, image_bytes: bytes | None, caller: Caller) -> Job:
        """The job the request names: created now, or the one its Idempotency-Key made before.
        A full queue or too many active jobs is a 429, a key reused for another request a 409."""
        image = None
        if image_bytes is not None:
            image = await self.image_slots.run(load_image, image_bytes, self.image_limits)
        resolved = resolve_create(body, image, self.manifest)
        webhook_urls = await self.webhooks.urls_for(body.webhook_url, caller.tenant)
        job = Job.new(new_job_id(), caller.owner, self.manifest.name, resolved, webhook_urls)
        outcome, found = await self._enqueue(job, image, caller, fingerprint(body, image_bytes))
        refusal = self._refusal(outcome, caller)
        if refusal is not None:
            raise refusal
        log.info(json.dumps({"event": "job_created" if outcome is Enqueued.CREATED else "job_idempotent_hit",
                             "job": found.id, "owner": caller.owner, "frames": resolved.num_frames,
                             "size": resolved.size, "steps": resolved.num_inference_steps}))
        return found

    async def _enqueue(self, job: Job, image: Image.Image | None, caller: Caller, fingerprint: str
                       ) -> tuple[Enqueued, Job | None]:
        """Store the job's first frame, then enqueue the job; the frame stays only if it was created."""
        s = self.settings
        try:
            if image is not None:
                await self.image_slots.run(self.artifacts.write_input, job.id, image)
            outcome, found = await run_in_threadpool(
                self.store.enqueue, job, max_active=s.max_active_jobs_per_key, idempotency_key=caller.idempotency_key,
                fingerprint=fingerprint, idem_ttl_s=s.job_ttl_s, max_queued=s.max_queued_jobs, client=caller.client)
        except BaseException:
            if image is not None:
                await self._remove_first_frame(job.id)
            raise
        if image is not None and outcome is not Enqueued.CREATED:
            await run_in_threadpool(self.artifacts.remove, job.id)
        return outcome, found

    async def _remove_first_frame(self, job_id: str) -> None:
        """While another error is on its way out: that one is the client's answer, so a storage
        that cannot delete either is logged, not raised over it."""
        try:
            await run_in_threadpool(self.artifacts.remove, job_id)
        except StorageError as exc:
            log.warning(json.dumps({"event": "first_frame_not_removed", "job": job_id, "error": str(exc)}))

    def _refusal(self, outcome: Enqueued, caller: Caller) -> APIError | None:
        """The error a refused enqueue answers with; None when the request has its job."""
        s = self.settings
        match outcome:
            case Enqueued.BUSY:
                return APIError(429, f"The server's queue is full ({s.max_queued_jobs} jobs waiting); try again "
                                     "shortly.", code="queue_full", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
            case Enqueued.LIMIT:
                who = "This client" if caller.client is not None else "This key"
                return APIError(429, f"{who} already has {s.max_active_jobs_per_key} queued or running jobs; "
                                     "wait for one to finish.", code="too_many_queued_jobs",
                                headers={"Retry-After": str(max(1, s.poll_after_ms // 1000 * 5))})
            case Enqueued.CONFLICT:
                return APIError(409, "This Idempotency-Key was already used with a different request; send the "
                                     "same request to get its job, or use a new key.", code="idempotency_key_reused")
        return None
