"""Per-job event log for Server-Sent Events: one Redis Stream per job.

Writers (worker and API) append with `publish`, inside the same pipeline as the job change it
reports. Any API process serves any job's events, because the log lives in Redis: `sse_stream`
reads the stream from the client's `Last-Event-ID` on, so a reconnect loses nothing, and ends
after a terminal event. The stream is not the job queue: it is capped (MAXLEN) and expires.

Who publishes what (data fields):
    queued     {"position"}                       API, in the enqueue transaction
    progress   {"step", "total", "progress", "experts", "weights"}   worker, after each step
    completed  {"progress": 100}                  worker, guarded, in the settle transaction
    failed     {"code", "message"}                worker (settle), API (cancel), claim (attempts
                                                   exhausted): every transition to failed
While the job waits, `sse_stream` also reports position changes it reads itself (`queued` frames
without an `id:`, so they do not move the client's Last-Event-ID).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio

from .guard import GUARD_LUA, UNGUARDED, Guard

# ---- key names (the lead may move these beside the job keys) ---------------------------------------
def events_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:events:{job_id}"


MAXLEN = 1000            # per job; a 1000-step job keeps its latest ~1000 events
STREAM_ID_RE = re.compile(r"^\d+-\d+$")


class EventType(StrEnum):
    QUEUED = "queued"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL = (EventType.COMPLETED, EventType.FAILED)

# KEYS: stream, guard ; ARGV: maxlen, ttl_s, type, data, guard n, guard pairs...
_PUBLISH = GUARD_LUA + """
if not guard_ok(KEYS[2], tonumber(ARGV[5]), 6) then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return id
"""


@dataclass(frozen=True)
class JobEvent:
    id: str | None          # the stream entry id; None for frames sse_stream makes up (queue position)
    type: EventType
    data: dict

    def sse(self) -> str:
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.type}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


class JobEvents:
    def __init__(self, prefix: str = "paris", ttl_s: int = 24 * 3600):
        self.prefix = prefix
        self.ttl_s = ttl_s

    def publish(self, pipe, job_id: str, event_type: EventType, data: dict, guard: Guard = UNGUARDED) -> None:
        """Queue the append on `pipe` (a sync or asyncio pipeline; with a plain sync client it runs
        at once). With a guard, the event is written only if the guard holds at that point."""
        pipe.eval(_PUBLISH, 2, events_key(self.prefix, job_id), guard.key, MAXLEN, self.ttl_s,
                  EventType(event_type).value, json.dumps(data, separators=(",", ":")), *guard.args())

    async def read(self, client: redis.asyncio.Redis, job_id: str, after_id: str = "0-0",
                   block_ms: int | None = None, count: int = 100) -> list[JobEvent]:
        """Events after `after_id`, oldest first; waits up to block_ms for the first one."""
        reply = await client.xread({events_key(self.prefix, job_id): after_id}, count=count, block=block_ms)
        return [JobEvent(entry_id, EventType(fields["type"]), json.loads(fields["data"]))
                for _, entries in reply for entry_id, fields in entries]

    async def sse_stream(self, client: redis.asyncio.Redis, job_id: str, last_event_id: str | None = None, *,
                         queue_position: Callable[[], Awaitable[int | None]] | None = None,
                         keepalive_s: float = 15.0, block_ms: int = 1000) -> AsyncIterator[str]:
        """SSE frames of one job, from after `last_event_id` (the header a reconnecting
        EventSource sends) to the first terminal event. `queue_position` is asked at most once per
        block_ms while nothing new arrives; a change is sent as a `queued` frame without an id.
        Comment frames keep idle connections (and proxies) open."""
        after = last_event_id if last_event_id and STREAM_ID_RE.match(last_event_id) else "0-0"
        position: int | None = None
        last_sent = time.monotonic()
        yield f"retry: {block_ms * 2}\n\n"
        while True:
            events = await self.read(client, job_id, after, block_ms)
            for event in events:
                after = event.id
                if event.type is EventType.QUEUED:
                    position = event.data.get("position")
                yield event.sse()
                if event.type in TERMINAL:
                    return
            if events:
                last_sent = time.monotonic()
                continue
            if queue_position is not None:
                now_at = await queue_position()
                if now_at is not None and now_at != position:
                    position = now_at
                    yield JobEvent(None, EventType.QUEUED, {"position": now_at}).sse()
                    last_sent = time.monotonic()
            if time.monotonic() - last_sent >= keepalive_s:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
