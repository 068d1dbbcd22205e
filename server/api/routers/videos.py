"""/v1/videos: create, retrieve, list, delete, cancel, content, trace (OpenAI Videos API shape)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..bodies import read_create_video
from ..creation import Caller
from ..dependencies import ArtifactsDep, Owner, ServicesDep, SettingsDep, StoreDep, Videos
from server.errors import APIError
from server.queue.jobs import Job, JobStatus
from ..schemas import Video, VideoDeleted, VideoList, VideoTrace
from server.queue.job_queue import JobQueue
from ..tenants import client_address, tenant

router = APIRouter(prefix="/v1", tags=["videos"])
log = logging.getLogger("paris.api")


def _video(job: Job, store: JobQueue) -> Video:
    return Video.from_job(job, store.queue_position(job.id) if job.status is JobStatus.QUEUED else None,
                          store.notices.deliveries(job.id) if job.webhook_urls else None)


@router.post("/videos", response_model=Video)
async def create_video(request: Request, owner: Owner, services: ServicesDep,
                       idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None):
    settings = services.settings
    body, image_bytes = await read_create_video(request, settings.max_upload_bytes, settings.body_timeout_s)
    client = None if services.keys.enabled else client_address(request, services.trusted_proxies)
    caller = Caller(owner, tenant(request, services, owner), client, idempotency_key)
    job = await services.creation.create(body, image_bytes, caller)
    return await run_in_threadpool(_video, job, services.store)


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

