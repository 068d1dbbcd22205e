"""The per-job event log behind Server-Sent Events, on a real Valkey: frames in order, nothing lost
across a reconnect with Last-Event-ID, the stream ends after a terminal event and nothing is
appended after one, two readers (two API processes) both see every event, guarded publishes write
nothing when the guard fails, and what the stream adds on its own from the job's record: queue
position changes, keep-alives, the end of a job whose log missed it, the end of a deleted job."""

import asyncio
import uuid

import pytest
import redis
import redis.asyncio

from server.notify.events import EventType, JobEvents, JobView
from server.queue.guard import Guard

from .sse import parse


@pytest.fixture
def log():
    return JobEvents(prefix=f"t{uuid.uuid4().hex[:8]}", ttl_s=600)


@pytest.fixture
def r(valkey):
    return redis.Redis.from_url(valkey.connection_url, decode_responses=True)


async def take(stream, n: int) -> list[dict]:
    """The next n event frames (retry hints and comments skipped)."""
    frames = []
    async for raw in stream:
        frame = parse(raw)
        if "event" in frame:
            frames.append(frame)
            if len(frames) == n:
                break
    return frames


def progress(step: int, total: int = 6) -> dict:
    return {"step": step, "total": total, "progress": int(99 * step / total), "experts": [step % 3],
            "weights": [1.0]}


def test_in_order_and_nothing_lost_across_a_reconnect_then_the_terminal_event_ends_it(r, log, valkey):
    job = "video_a"
    log.publish(r, job, EventType.QUEUED, {"position": 2})
    for step in (1, 2, 3):
        log.publish(r, job, EventType.PROGRESS, progress(step))

    async def scenario():
        client = redis.asyncio.Redis.from_url(valkey.connection_url, decode_responses=True)
        first = log.sse_stream(client, job)
        seen = await take(first, 3)  # the connection drops after three events
        await first.aclose()
        for step in (4, 5, 6):  # published while nobody listens
            log.publish(r, job, EventType.PROGRESS, progress(step))
        log.publish(r, job, EventType.COMPLETED, {"progress": 100})
        log.publish(r, job, EventType.PROGRESS, progress(7))  # after the end: never sent
        rest = [parse(f) async for f in log.sse_stream(client, job, last_event_id=seen[-1]["id"])]
        await client.aclose()
        return seen, rest

    seen, rest = asyncio.run(scenario())
    events = seen + [f for f in rest if "event" in f]
    assert [(f["event"], f["data"].get("step")) for f in events] == (
        [("queued", None)] + [("progress", s) for s in range(1, 7)] + [("completed", None)])
    assert events[0]["data"] == {"position": 2} and events[3]["data"] == progress(3)
    ids = [tuple(map(int, f["id"].split("-"))) for f in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert rest[0] == {"comment": [], "retry": "2000"}  # the reconnect hint comes first


def test_two_readers_on_separate_connections_both_see_every_event(r, log, valkey):
    """Two API processes: each has its own Redis client and blocks on the stream while a worker
    (a third client) publishes."""
    job = "video_b"

    async def reader():
        client = redis.asyncio.Redis.from_url(valkey.connection_url, decode_responses=True)
        try:
            return [parse(f) async for f in log.sse_stream(client, job, block_ms=200)]
        finally:
            await client.aclose()

    async def worker():
        await asyncio.sleep(0.3)  # both readers are waiting on an empty stream
        for step in range(1, 5):
            log.publish(r, job, EventType.PROGRESS, progress(step, 4))
            await asyncio.sleep(0.05)
        log.publish(r, job, EventType.FAILED, {"code": "cancelled", "message": "The job was cancelled."})

    async def scenario():
        a, b, _ = await asyncio.wait_for(asyncio.gather(reader(), reader(), worker()), 20)
        return a, b

    a, b = asyncio.run(scenario())
    events_a = [f for f in a if "event" in f]
    assert [f["event"] for f in events_a] == ["progress"] * 4 + ["failed"]
    assert [f["data"].get("step") for f in events_a[:4]] == [1, 2, 3, 4]
    assert events_a == [f for f in b if "event" in f]


def test_a_guarded_publish_writes_only_when_the_guard_holds_inside_the_transaction(r, log, valkey):
    job_key = f"{log.prefix}:job:video_c"
    pipe = r.pipeline(transaction=True)  # a settle the fence refused: status still in_progress
    pipe.hset(job_key, mapping={"status": "in_progress", "fence": "1"})
    log.publish(pipe, "video_c", EventType.COMPLETED, {"progress": 100}, Guard(job_key, {"status": "completed",
                                                                                         "fence": "1"}))
    pipe.execute()

    async def read():
        client = redis.asyncio.Redis.from_url(valkey.connection_url, decode_responses=True)
        try:
            return await log.read(client, "video_c")
        finally:
            await client.aclose()

    assert asyncio.run(read()) == []
    pipe = r.pipeline(transaction=True)
    pipe.hset(job_key, mapping={"status": "completed"})
    log.publish(pipe, "video_c", EventType.COMPLETED, {"progress": 100}, Guard(job_key, {"status": "completed",
                                                                                         "fence": "1"}))
    pipe.execute()
    [event] = asyncio.run(read())
    assert (event.type, event.data) == (EventType.COMPLETED, {"progress": 100})
    assert 0 < r.ttl(f"{log.prefix}:events:video_c") <= 600


def test_queue_position_changes_and_keep_alives_come_from_the_stream_itself(r, log, valkey):
    job = "video_d"
    log.publish(r, job, EventType.QUEUED, {"position": 3})
    views = iter([JobView("queued", 3), JobView("queued", 3), JobView("queued", 2), JobView("queued", 2),
                  JobView("queued", 1)])

    async def watch():
        return next(views, JobView("in_progress"))

    async def scenario():
        client = redis.asyncio.Redis.from_url(valkey.connection_url, decode_responses=True)
        frames = []
        stream = log.sse_stream(client, job, watch=watch, keepalive_s=0.3, block_ms=100)
        async for raw in stream:
            frames.append(parse(raw))
            if len([f for f in frames if f["comment"]]) == 2:
                log.publish(r, job, EventType.FAILED, {"code": "generation_failed", "message": "x"})
        await client.aclose()
        return frames

    frames = asyncio.run(asyncio.wait_for(scenario(), 20))
    events = [f for f in frames if "event" in f]
    assert [(f["event"], f["data"].get("position")) for f in events] == [
        ("queued", 3), ("queued", 2), ("queued", 1), ("failed", None)]
    assert "id" in events[0] and "id" not in events[1] and "id" not in events[2]  # made-up frames keep Last-Event-ID
    assert sum(1 for f in frames if f["comment"] == ["keep-alive"]) == 2


def test_nothing_is_appended_after_a_terminal_event(r, log, valkey):
    """A repeated cancel or a retried settle must not add a second ending, nor anything after it."""
    job = "video_e"
    log.publish(r, job, EventType.PROGRESS, progress(1))
    log.publish(r, job, EventType.FAILED, {"code": "cancelled", "message": "The job was cancelled."})
    log.publish(r, job, EventType.FAILED, {"code": "cancelled", "message": "The job was cancelled."})
    log.publish(r, job, EventType.COMPLETED, {"progress": 100})
    log.publish(r, job, EventType.PROGRESS, progress(2))
    entries = r.xrange(f"{log.prefix}:events:{job}")
    assert [fields["type"] for _, fields in entries] == ["progress", "failed"]


def test_a_record_that_ended_without_its_event_ends_the_stream_and_a_deleted_one_closes_it(r, log, valkey):
    """The log expired or its writer died between the job's end and its event: the stream sends
    the record's ending (without an id); a job deleted meanwhile ends the stream with
    `interrupted`."""
    log.publish(r, "video_f", EventType.PROGRESS, progress(1))
    error = {"code": "max_attempts_exceeded", "message": "gave up"}
    views = {"video_f": iter([JobView("in_progress"), JobView("failed", error=error)]),
             "video_g": iter([JobView("queued", 1), None]),
             "video_h": iter([JobView("completed")])}

    async def frames(job):
        client = redis.asyncio.Redis.from_url(valkey.connection_url, decode_responses=True)

        async def watch():
            if job == "video_h":  # the settle lands between the stream's read and its look at the record
                log.publish(r, job, EventType.COMPLETED, {"progress": 100})
            return next(views[job])

        try:
            return [parse(f) async for f in log.sse_stream(client, job, watch=watch, block_ms=100)]
        finally:
            await client.aclose()

    ended = [f for f in asyncio.run(asyncio.wait_for(frames("video_f"), 20)) if "event" in f]
    assert [(f["event"], f["data"]) for f in ended] == [("progress", progress(1)), ("failed", error)]
    assert "id" in ended[0] and "id" not in ended[1]
    gone = [f for f in asyncio.run(asyncio.wait_for(frames("video_g"), 20)) if "event" in f]
    assert [(f["event"], f["data"]) for f in gone] == [  # the stream says why it ends (issue 19, N1)
        ("queued", {"position": 1}), ("interrupted", {"code": "video_deleted", "message": "The video was deleted."})]
    raced = [f for f in asyncio.run(asyncio.wait_for(frames("video_h"), 20)) if "event" in f]
    assert [f["event"] for f in raced] == ["completed"] and "id" in raced[0]  # the logged event, not a made-up one
