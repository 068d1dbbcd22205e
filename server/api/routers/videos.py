"""/v1/videos: create, retrieve, list, delete, cancel, content, trace (OpenAI Videos API shape)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..bodies import read_create_video
from ..dependencies import ArtifactsDep, Owner, ServicesDep, SettingsDep, StoreDep, Videos
from server.errors import APIError
from ..intake import fingerprint, resolve_create
from server.queue.jobs import Job, JobStatus, new_job_id
from ..schemas import Video, VideoDeleted, VideoList, VideoTrace
from server.queue.store import JobQueue
from ..tenants import client_address, tenant
from ..uploads import load_image

router = APIRouter(prefix="/v1", tags=["videos"])
log = logging.getLogger("paris.api")
BUSY_RETRY_AFTER_S = 5


def _video(job: Job, store: JobQueue) -> Video:
    return Video.from_job(job, store.queue_position(job.id) if job.status is JobStatus.QUEUED else None,
                          store.notices.deliveries(job.id) if job.webhook_urls else None)


@router.post("/videos", response_model=Video)
async def create_video(request: Request, owner: Owner, services: ServicesDep,
                       idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None):
    settings, store, artifacts = services.settings, services.store, services.artifacts
    body, image_bytes = await read_create_video(request, settings.max_upload_bytes, settings.body_timeout_s)
    image = None
    if image_bytes is not None:
        image = await services.image_slots.run(load_image, image_bytes, services.image_limits)
    resolved = resolve_create(body, image, services.manifest)
    webhook_urls = await services.webhooks.urls_for(body.webhook_url, tenant(request, services, owner))
    job = Job.new(new_job_id(), owner, services.manifest.name, resolved, webhook_urls)
    if image is not None:
        await services.image_slots.run(artifacts.write_input, job.id, image)
    try:
        outcome, found = await run_in_threadpool(
            store.enqueue, job, max_active=settings.max_active_jobs_per_key, idempotency_key=idempotency_key,
            fingerprint=fingerprint(body, image_bytes), idem_ttl_s=settings.job_ttl_s,
            max_queued=settings.max_queued_jobs,
            client=None if services.keys.enabled else client_address(request, services.trusted_proxies))
    except BaseException:  # Redis down (503) or the client gone: no job owns the upload (issue 19, N7)
        if image is not None:
            await run_in_threadpool(artifacts.remove, job.id)
        raise
    if outcome != "created" and image is not None:
        await run_in_threadpool(artifacts.remove, job.id)
    if outcome == "busy":
        raise APIError(429, f"The server's queue is full ({settings.max_queued_jobs} jobs waiting); try again "
                            "shortly.", code="queue_full", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
    if outcome == "limit":
        who = "This key" if services.keys.enabled else "This client"
        raise APIError(429, f"{who} already has {settings.max_active_jobs_per_key} queued or running jobs; "
                            "wait for one to finish.", code="too_many_queued_jobs",
                       headers={"Retry-After": str(max(1, settings.poll_after_ms // 1000 * 5))})
    if outcome == "conflict":
        raise APIError(409, "This Idempotency-Key was already used with a different request; send the same "
                            "request to get its job, or use a new key.", code="idempotency_key_reused")
    log.info(json.dumps({"event": "job_created" if outcome == "created" else "job_idempotent_hit", "job": found.id,
                         "owner": owner, "frames": resolved.num_frames, "size": resolved.size,
                         "steps": resolved.num_inference_steps}))
    return await run_in_threadpool(_video, found, store)


@router.get("/videos", response_model=VideoList)
def list_videos(videos: Videos, store: StoreDep, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=100)] = 20, order: Literal["asc", "desc"] = "desc"):
    jobs, has_more = videos.list(after=after, limit=limit, order=order)
    data = [_video(job, store) for job in jobs]
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=has_more)


@router.get("/videos/{video_id}", response_model=Video)
def retrieve_video(video_id: str, response: Response, videos: Videos, store: StoreDep, settings: SettingsDep):
    job = videos.get(video_id)
    response.headers["openai-poll-after-ms"] = str(settings.poll_after_ms)
    return _video(job, store)


@router.get("/videos/{video_id}/trace", response_model=VideoTrace)
def video_trace(video_id: str, videos: Videos):
    job = videos.get(video_id)
    if job.status is not JobStatus.COMPLETED:
        raise APIError(404, f"Video '{video_id}' has no routing trace yet (status {job.status}).",
                       param="video_id", code="video_not_ready")
    return VideoTrace(id=video_id, routing=job.routing, steps=job.trace or [])


@router.api_route("/videos/{video_id}/content", methods=["GET", "HEAD"])  # HEAD: size and type, no body
def video_content(video_id: str, request: Request, videos: Videos, artifacts: ArtifactsDep,
                  variant: Literal["video", "thumbnail", "spritesheet"] = "video"):
    job = videos.get(video_id)
    if job.status is not JobStatus.COMPLETED:
        raise APIError(404, f"Video '{video_id}' is not ready (status {job.status}, progress {job.progress}%).",
                       param="video_id", code="video_not_ready")
    try:
        return artifacts.response(video_id, job.artifact_fence, variant, request.headers.get("range"))
    except FileNotFoundError:
        raise APIError(404, f"The {variant} of video '{video_id}' is missing from the artifact store.",
                       param="variant", code="video_not_ready") from None


@router.post("/videos/{video_id}/cancel", response_model=Video)
def cancel_video(video_id: str, videos: Videos, store: StoreDep):
    job, was = videos.cancel(video_id)
    if was is not None and was.finished:
        raise APIError(409, f"Video '{video_id}' already finished (status {was}); nothing to cancel.",
                       param="video_id", code="video_already_finished")
    log.info(json.dumps({"event": "job_cancelled", "job": video_id, "was": was}))
    return _video(job, store)


@router.delete("/videos/{video_id}", response_model=VideoDeleted)
def delete_video(video_id: str, videos: Videos):
    was = videos.delete(video_id)
    log.info(json.dumps({"event": "job_deleted", "job": video_id, "was": was}))
    return VideoDeleted(id=video_id)

