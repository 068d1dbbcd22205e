"""GET /v1/videos/{id}/events: the job's Server-Sent Events (server/notify/events.py). The log lives in
Redis, so any API process serves the events of a job any worker runs; same auth and 404
isolation as the other /v1/videos routes; a reconnect sends Last-Event-ID and misses nothing.
Each open stream holds one of its tenant's stream slots (server/api/stream_slots.py) until it ends."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..dependencies import Owner, ServicesDep, Videos
from server.errors import APIError
from server.notify.events import SSE_HEADERS, JobView, parse_stream_id
from server.queue.jobs import JobStatus
from ..tenants import tenant

router = APIRouter(prefix="/v1", tags=["videos"])


class _HeldStream(StreamingResponse):
    """A StreamingResponse that gives its slot back when it is done, however it ends (a client
    that leaves before the first byte included: then the frames are never iterated)."""

    def __init__(self, frames, release, **kwargs):
        super().__init__(frames, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@router.get("/videos/{video_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "queued, progress, then completed or failed; ends after the last "
                                            "(or with `interrupted` saying why it ended early)"},
                       429: {"description": "this key holds its limit of open event streams"}})
async def video_events(video_id: str, request: Request, owner: Owner, videos: Videos, services: ServicesDep,
                       last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None):
    if last_event_id is not None and parse_stream_id(last_event_id) is None:
        raise APIError(400, "Last-Event-ID must be an event id this server sent (two numbers joined by '-', "
                            "each below 2**64).", param="Last-Event-ID", code="invalid_value")
    await run_in_threadpool(videos.get, video_id)  # 404 for another key's, unknown or expired jobs
    store, reader, feed = services.store, services.event_reader, services.event_feed
    keys = store.keys

    async def watch() -> JobView | None:
        pipe = reader.pipeline(transaction=False)
        pipe.hmget(keys.job(video_id), "status", "error_code", "error_message")
        pipe.zrank(keys.queued, video_id)
        (status, code, message), rank = await pipe.execute()
        if status is None:
            return None
        position = rank + 1 if status == JobStatus.QUEUED and rank is not None else None
        return JobView(status, position, {"code": code, "message": message or ""} if code else None)

    who = tenant(request, services, owner)
    services.stream_slots.take(who)
    frames = store.notices.events.sse_stream(reader, video_id, last_event_id, watch=watch, feed=feed)
    return _HeldStream(frames, lambda: services.stream_slots.give_back(who), media_type="text/event-stream",
                       headers=SSE_HEADERS)
