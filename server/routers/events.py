"""GET /v1/videos/{id}/events: the job's Server-Sent Events (server/events.py). The log lives in
Redis, so any API process serves the events of a job any worker runs; same auth and 404
isolation as the other /v1/videos routes; a reconnect sends Last-Event-ID and misses nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..dependencies import EventReaderDep, StoreDep, Videos
from ..events import SSE_HEADERS, JobView
from ..jobs import JobStatus
from ..store import JobStore

router = APIRouter(prefix="/v1", tags=["videos"])


def _view(store: JobStore, video_id: str) -> JobView | None:
    job = store.get(video_id)
    if job is None:
        return None
    position = store.queue_position(video_id) if job.status is JobStatus.QUEUED else None
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return JobView(str(job.status), position, error)


@router.get("/videos/{video_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "queued, progress, then completed or failed; ends after the last"}})
async def video_events(video_id: str, videos: Videos, store: StoreDep, reader: EventReaderDep,
                       last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None):
    await run_in_threadpool(videos.get, video_id)  # 404 for another key's, unknown or expired jobs

    async def watch() -> JobView | None:
        return await run_in_threadpool(_view, store, video_id)

    frames = store.notices.events.sse_stream(reader, video_id, last_event_id, watch=watch)
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
