"""/v1/videos: create, retrieve, list, delete, cancel, content, trace (OpenAI Videos API shape)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from ..artifacts import VARIANTS
from ..bodies import read_create_video
from ..dependencies import ArtifactsDep, ManifestDep, Owner, SettingsDep, StoreDep, Videos, WebhooksDep
from ..errors import APIError
from ..intake import resolve_create
from ..jobs import Job, JobStatus, new_job_id
from ..schemas import Video, VideoDeleted, VideoList
from ..store import JobStore

router = APIRouter(prefix="/v1", tags=["videos"])
log = logging.getLogger("paris.api")


def _video(job: Job, store: JobStore) -> Video:
    return Video.from_job(job, store.queue_position(job.id) if job.status is JobStatus.QUEUED else None,
                          store.notices.deliveries(job.id) if job.webhook_urls else None)


@router.post("/videos", response_model=Video)
async def create_video(request: Request, owner: Owner, settings: SettingsDep, manifest: ManifestDep,
                       store: StoreDep, artifacts: ArtifactsDep, webhooks: WebhooksDep,
                       idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None):
    body, image_bytes = await read_create_video(request, settings.max_upload_bytes)
    resolved = resolve_create(body, image_bytes, manifest, settings)
    webhook_urls = await run_in_threadpool(webhooks.urls_for, body.webhook_url)
    job = Job.new(new_job_id(), owner, manifest.name, resolved, webhook_urls)
    if resolved.image is not None:
        path = artifacts.input_path(job.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        await run_in_threadpool(resolved.image.save, path, "PNG")
    outcome, job_id = await run_in_threadpool(
        store.enqueue, job, max_active=settings.max_active_jobs_per_key, idempotency_key=idempotency_key,
        idem_ttl_s=settings.job_ttl_s)
    if outcome != "created" and resolved.image is not None:
        artifacts.remove(job.id)
    if outcome == "limit":
        raise APIError(429, f"This key already has {settings.max_active_jobs_per_key} queued or running jobs; "
                            "wait for one to finish.", code="too_many_queued_jobs",
                       headers={"Retry-After": str(max(1, settings.poll_after_ms // 1000 * 5))})
    log.info(json.dumps({"event": "job_created" if outcome == "created" else "job_idempotent_hit", "job": job_id,
                         "owner": owner, "frames": resolved.num_frames, "size": resolved.size,
                         "steps": resolved.num_inference_steps}))
    return _video(store.get(job_id), store)


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


@router.get("/videos/{video_id}/trace")
def video_trace(video_id: str, videos: Videos):
    job = videos.get(video_id)
    if job.status is not JobStatus.COMPLETED:
        raise APIError(404, f"Video '{video_id}' has no routing trace yet (status {job.status}).",
                       param="video_id", code="video_not_ready")
    return {"id": video_id, "object": "video.trace", "routing": job.routing, "steps": job.trace or []}


@router.get("/videos/{video_id}/content")
def video_content(video_id: str, videos: Videos, artifacts: ArtifactsDep,
                  variant: Literal["video", "thumbnail", "spritesheet"] = "video"):
    job = videos.get(video_id)
    if job.status is not JobStatus.COMPLETED:
        raise APIError(404, f"Video '{video_id}' is not ready (status {job.status}, progress {job.progress}%).",
                       param="video_id", code="video_not_ready")
    path = artifacts.variant_path(video_id, job.artifact_fence, variant)
    if not path.is_file():
        raise APIError(404, f"The {variant} of video '{video_id}' is missing from the artifact store.",
                       param="variant", code="video_not_ready")
    filename, media_type = VARIANTS[variant]
    return FileResponse(path, media_type=media_type, filename=f"{video_id}.{filename.rsplit('.', 1)[1]}")


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

