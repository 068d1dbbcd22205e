"""Per-job event log for Server-Sent Events: one Redis Stream per job.

Writers (worker and API) append with `publish`, inside the same pipeline as the job change it
reports. Any API process serves any job's events, because the log lives in Redis: `sse_stream`
reads the stream from the client's `Last-Event-ID` on, so a reconnect loses nothing, and ends
after a terminal event. The stream is not the job queue: it is capped (MAXLEN) and expires.

Who publishes what (data fields):
    queued     {"position"}                       API, right after the enqueue (while still queued)
    progress   {"step", "total", "progress", "experts", "weights"}   worker, after each step
    completed  {"progress": 100}                  worker, guarded, in the settle transaction
    failed     {"code", "message"}                worker (settle), API (cancel), claim (attempts
                                                   exhausted): every transition to failed
A job's log ends with its first terminal event: nothing is appended after it, so a repeated
cancel or a retried settle cannot add a second ending.

While nothing new arrives, `sse_stream` looks at the job's record (`watch`): it reports queue
position changes (`queued` frames without an `id:`, so they do not move the client's
Last-Event-ID), ends when the record is gone, and, should the record have ended without its log
saying so (the log expired, or its writer died between the two), sends the ending from the
record (again without an `id:`).
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
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local f = last[2]
  for i = 1, #f, 2 do
    if f[i] == 'type' and (f[i + 1] == 'completed' or f[i + 1] == 'failed') then return false end
  end
end
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


@dataclass(frozen=True)
class JobView:
    """What `sse_stream` reads of the job's record while no event arrives."""

    status: str                       # the job's status: queued, in_progress, completed, failed
    position: int | None = None       # queue position while queued
    error: dict | None = None         # {"code", "message"} once failed

    def ending(self) -> JobEvent | None:
        """The terminal frame this record calls for (no id: it is not in the log), if it ended."""
        if self.status == EventType.COMPLETED:
            return JobEvent(None, EventType.COMPLETED, {"progress": 100})
        if self.status == EventType.FAILED:
            return JobEvent(None, EventType.FAILED, self.error or {"code": "failed", "message": ""})
        return None


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
                         watch: Callable[[], Awaitable[JobView | None]] | None = None,
                         keepalive_s: float = 15.0, block_ms: int = 1000) -> AsyncIterator[str]:
        """SSE frames of one job, from after `last_event_id` (the header a reconnecting
        EventSource sends) to the first terminal event. `watch` (the job's record, None once it
        is gone) is asked at most once per block_ms while nothing new arrives. Comment frames keep
        idle connections (and proxies) open."""
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
            if watch is not None:
                view = await watch()
                if view is None:  # deleted: nothing more will come
                    return
                ending = view.ending()
                if ending is not None:
                    # The settle writes record and event together: look once more before
                    # sending the record's ending, in case the event landed after our read.
                    if await self.read(client, job_id, after, count=1):
                        continue
                    yield ending.sse()
                    return
                if view.status == EventType.QUEUED and view.position is not None and view.position != position:
                    position = view.position
                    yield JobEvent(None, EventType.QUEUED, {"position": position}).sse()
                    last_sent = time.monotonic()
            if time.monotonic() - last_sent >= keepalive_s:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
