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

Many streams, few connections: each stream reads its job's log without blocking, on a small
bounded pool, and waits for news on an `EventFeed`, the one blocking XREAD of its API process,
over every followed job at once, that wakes the streams of a job when its log grows. So a
tenant's hundred open streams hold one Redis connection, not a hundred, and cannot starve other
tenants' streams or the API (issue 19, N1). A stream that cannot go on (Redis gone, the job
deleted) ends with an `interrupted` frame saying why, never a cut connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from string import Template

import redis.asyncio

from server.queue.guard import GUARD_LUA, UNGUARDED, Guard
from server.queue.jobs import JobStatus, Keys

MAXLEN = 1000            # per job; a 1000-step job keeps its latest ~1000 events
log = logging.getLogger("paris.api")


def parse_stream_id(text: str) -> tuple[int, int] | None:
    """A Redis stream id `ms-seq` (each part below 2**64), or None: what Last-Event-ID may hold."""
    ms, sep, seq = text.partition("-")
    if not sep or not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()) \
            or len(ms) > 20 or len(seq) > 20:
        return None
    parts = int(ms), int(seq)
    return parts if max(parts) < 2 ** 64 else None


class EventType(StrEnum):
    # a job's queued and terminal events are named by the status they report
    QUEUED = JobStatus.QUEUED.value
    PROGRESS = "progress"
    COMPLETED = JobStatus.COMPLETED.value
    FAILED = JobStatus.FAILED.value
    INTERRUPTED = "interrupted"  # made up by sse_stream: the stream ends early, {"code", "message"} say why


TERMINAL = (EventType.COMPLETED, EventType.FAILED)

# KEYS: stream, guard ; ARGV: maxlen, ttl_s, type, data, guard n, guard pairs...
# Nothing follows a terminal event (its words filled in from EventType).
_PUBLISH = GUARD_LUA + Template("""
if not guard_ok(KEYS[2], tonumber(ARGV[5]), 6) then return false end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local f = last[2]
  for i = 1, #f, 2 do
    if f[i] == 'type' and (f[i + 1] == '$COMPLETED' or f[i + 1] == '$FAILED') then return false end
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return id
""").substitute(COMPLETED=EventType.COMPLETED, FAILED=EventType.FAILED)


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
        self.keys = Keys(prefix)
        self.ttl_s = ttl_s

    def publish(self, pipe, job_id: str, event_type: EventType, data: dict, guard: Guard = UNGUARDED) -> None:
        """Queue the append on `pipe` (a sync or asyncio pipeline; with a plain sync client it runs
        at once). With a guard, the event is written only if the guard holds at that point."""
        pipe.eval(_PUBLISH, 2, self.keys.events(job_id), guard.key, MAXLEN, self.ttl_s,
                  EventType(event_type).value, json.dumps(data, separators=(",", ":")), *guard.args())

    async def read(self, client: redis.asyncio.Redis, job_id: str, after_id: str = "0-0",
                   block_ms: int | None = None, count: int = 100) -> list[JobEvent]:
        """Events after `after_id`, oldest first; waits up to block_ms for the first one."""
        reply = await client.xread({self.keys.events(job_id): after_id}, count=count, block=block_ms)
        return [JobEvent(entry_id, EventType(fields["type"]), json.loads(fields["data"]))
                for _, entries in reply for entry_id, fields in entries]

    async def sse_stream(self, client: redis.asyncio.Redis, job_id: str, last_event_id: str | None = None, *,
                         watch: Callable[[], Awaitable[JobView | None]] | None = None, feed: EventFeed | None = None,
                         keepalive_s: float = 15.0, block_ms: int = 1000) -> AsyncIterator[str]:
        """SSE frames of one job, from after `last_event_id` (the header a reconnecting
        EventSource sends; the caller has checked it with parse_stream_id) to the first terminal
        event. Reads go to `client` without blocking; news comes from `feed` (the process's
        shared one; without it, a feed of this stream's own on `client`). `watch` (the job's
        record, None once it is gone) is asked at most once per block_ms while nothing new
        arrives. Comment frames keep idle connections (and proxies) open."""
        own_feed = feed is None
        feed = EventFeed(client, self, block_ms) if own_feed else feed
        after = last_event_id or "0-0"
        feed.follow(job_id, after)
        yield f"retry: {block_ms * 2}\n\n"
        try:
            async for frame in self._frames(client, feed, job_id, after, watch, keepalive_s, block_ms):
                yield frame
        except redis.RedisError as exc:
            log.warning(json.dumps({"event": "event_stream_interrupted", "job": job_id, "error": repr(exc)}))
            yield interrupted("redis_unavailable", "The job store is unavailable; reconnect with Last-Event-ID.")
        except Exception as exc:  # never a traceback in the middle of a 200
            log.error(json.dumps({"event": "event_stream_failed", "job": job_id, "error": repr(exc)}))
            yield interrupted("internal_error", "The event stream failed; reconnect with Last-Event-ID.")
        finally:
            feed.unfollow(job_id)
            if own_feed:
                await feed.aclose()

    async def _frames(self, client: redis.asyncio.Redis, feed: EventFeed, job_id: str, after: str,
                      watch: Callable[[], Awaitable[JobView | None]] | None, keepalive_s: float,
                      block_ms: int) -> AsyncIterator[str]:
        position: int | None = None
        last_sent = time.monotonic()
        while True:
            seen = feed.version(job_id)
            events = await self.read(client, job_id, after)
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
            if await feed.wait(job_id, seen, block_ms / 1000):
                continue
            if watch is not None:
                view = await watch()
                if view is None:  # deleted: nothing more will come
                    yield interrupted("video_deleted", "The video was deleted.")
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


def interrupted(code: str, message: str) -> str:
    return JobEvent(None, EventType.INTERRUPTED, {"code": code, "message": message}).sse()


class EventFeed:
    """One blocking XREAD over the logs of every job some stream of this process follows: it
    only wakes the streams of a job whose log grew (they read the entries themselves, from their
    own Last-Event-ID). A wake-up missed while a stream was reading costs it at most one
    `wait` timeout, never an event: streams read again after every wait."""

    def __init__(self, client: redis.asyncio.Redis, events: JobEvents, block_ms: int = 250):
        self.client, self.events, self.block_ms = client, events, block_ms
        self._cursors: dict[str, str] = {}      # job id -> the last entry id the feed has seen
        self._followers: dict[str, int] = {}
        self._versions: dict[str, int] = {}     # job id -> bumped whenever its log grew
        self._news = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._failing = False

    def follow(self, job_id: str, after: str) -> None:
        self._followers[job_id] = self._followers.get(job_id, 0) + 1
        self._cursors.setdefault(job_id, after)
        self._versions.setdefault(job_id, 0)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unfollow(self, job_id: str) -> None:
        left = self._followers.get(job_id, 1) - 1
        if left > 0:
            self._followers[job_id] = left
            return
        for table in (self._followers, self._cursors, self._versions):
            table.pop(job_id, None)

    def version(self, job_id: str) -> int:
        return self._versions.get(job_id, 0)

    async def wait(self, job_id: str, seen: int, timeout_s: float) -> bool:
        """True once the job's log grew since `seen` (at once if it already did); False after timeout_s."""
        async with self._news:
            try:
                await asyncio.wait_for(self._news.wait_for(lambda: self.version(job_id) != seen), timeout_s)
            except TimeoutError:
                return False
        return True

    async def _run(self) -> None:
        while self._followers:
            keys = {self.events.keys.events(job): cursor for job, cursor in self._cursors.items()}
            try:
                reply = await self.client.xread(keys, count=100, block=self.block_ms)
                self._failing = False
            except redis.RedisError as exc:  # the streams see it on their own reads and end
                if not self._failing:
                    log.warning(json.dumps({"event": "event_feed_error", "error": repr(exc)}))
                self._failing = True
                await asyncio.sleep(0.5)
                continue
            grown = []
            for key, entries in reply or []:
                job = key.rsplit(":", 1)[1]
                if entries and job in self._cursors:
                    self._cursors[job] = entries[-1][0]
                    self._versions[job] += 1
                    grown.append(job)
            if grown:
                async with self._news:
                    self._news.notify_all()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, redis.RedisError):
                await self._task


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
