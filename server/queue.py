r"""Job queue on raw Redis Streams: one hash per job, a stream entry carrying only the job id.

State machine (every transition is one Lua script, so it is atomic):

    queued --claim--> in_progress --complete--> completed
       |                  |  \--fail / attempts exhausted--> failed
       \--cancel----------+--cancel--> failed (error.code = "cancelled")

* enqueue: the job hash is written first, then XADD of {job: id} (no MAXLEN trimming).
* claim: a worker reads with XREADGROUP COUNT=<free slots>; the claim script bumps the job's
  `fence` (fencing token) and `attempts`; past `max_attempts` the job fails instead.
* lease: a delivered entry stays in the group's pending list; the worker renews its lease by
  re-claiming its own entries (XCLAIM min-idle 0 resets idle time), guarded by its fence.
  A worker that stops renewing (killed, paused) leaves entries idle; after `lease_ms` any other
  worker takes them with XAUTOCLAIM and runs the job again from the start with a new fence.
* fencing: progress, renew, complete and fail only apply when the caller's fence equals the
  job's current fence and the job is still in_progress, so a stale worker cannot write.
* cancel: sets status failed/cancelled at once, removes the entry (XACK+XDEL); the running
  worker sees it between steps and frees the slot.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

import redis

GROUP = "workers"
JOB_ID_RE = r"^video_[0-9a-f]{32}$"
TERMINAL = ("completed", "failed")


def new_job_id() -> str:
    return "video_" + secrets.token_hex(16)


def now_ms() -> int:
    return int(time.time() * 1000)


# Shared Lua helper: finish a job (status, timestamps, expiry, active set, ack).
# KEYS: job, stream, owner_active, expiry.  Uses ARGV_now, ARGV_ttl, ARGV_group provided by caller.
_FINISH = """
local function finish(job, stream, active, expiry, id, status, now, ttl, group, extra)
  local entry = redis.call('HGET', job, 'entry_id')
  local expires = math.floor(now / 1000) + ttl
  redis.call('HSET', job, 'status', status, 'completed_at', math.floor(now / 1000), 'expires_at', expires)
  if #extra > 0 then redis.call('HSET', job, unpack(extra)) end
  redis.call('SREM', active, id)
  redis.call('ZADD', expiry, expires, id)
  redis.call('HDEL', job, 'worker')
  if entry then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
  end
end
"""

# KEYS: job, stream, queued, seq, owner_jobs, owner_active, idem ('' for none)
# ARGV: id, max_active, created_ms, idem_ttl, job_prefix, field, value, ...
ENQUEUE = """
if KEYS[7] ~= '' then
  local ex = redis.call('GET', KEYS[7])
  if ex and redis.call('EXISTS', ARGV[5] .. ex) == 1 then return {'existing', ex} end
end
if tonumber(ARGV[2]) > 0 and redis.call('SCARD', KEYS[6]) >= tonumber(ARGV[2]) then
  return {'limit', ''}
end
local id = ARGV[1]
local seq = redis.call('INCR', KEYS[4])
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'queue_seq', seq, 'fence', 0, 'attempts', 0, 'progress', 0, 'status', 'queued')
redis.call('ZADD', KEYS[3], seq, id)
redis.call('ZADD', KEYS[5], ARGV[3], id)
redis.call('SADD', KEYS[6], id)
if KEYS[7] ~= '' then redis.call('SET', KEYS[7], id, 'EX', ARGV[4]) end
local entry = redis.call('XADD', KEYS[2], '*', 'job', id)
redis.call('HSET', KEYS[1], 'entry_id', entry)
return {'created', id}
"""

# KEYS: job, stream, queued, expiry, active_prefix
# ARGV: id, entry, worker, now, ttl, group, max_attempts
CLAIM = _FINISH + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or (status ~= 'queued' and status ~= 'in_progress') then
  redis.call('XACK', KEYS[2], ARGV[6], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return {'skip', 0, 0}
end
local owner = redis.call('HGET', KEYS[1], 'owner')
local active = KEYS[5] .. owner .. ':active'
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('ZREM', KEYS[3], ARGV[1])
if attempts > tonumber(ARGV[7]) then
  finish(KEYS[1], KEYS[2], active, KEYS[4], ARGV[1], 'failed', tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6],
    {'error_code', 'max_attempts_exceeded',
     'error_message', 'The job was started ' .. (attempts - 1) .. ' times and its worker stopped each time; giving up.'})
  return {'exhausted', fence, attempts}
end
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'worker', ARGV[3], 'started_at', math.floor(tonumber(ARGV[4]) / 1000),
  'progress', 0, 'step', 0)
return {'claimed', fence, attempts}
"""

# KEYS: job ; ARGV: fence, field, value, ...
PROGRESS = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then
  return 0
end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""

# KEYS: job, stream ; ARGV: fence, group, consumer, entry
RENEW = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
return 1
"""

# KEYS: job, stream ; ARGV: fence, group, consumer, entry, idle_ms
RELEASE = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'IDLE', ARGV[5], 'JUSTID')
return 1
"""

# KEYS: job, stream, owner_active, expiry ; ARGV: id, fence, status, now, ttl, group, field, value, ...
SETTLE = _FINISH + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then
  return 0
end
local extra = {}
for i = 7, #ARGV do extra[#extra + 1] = ARGV[i] end
finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], extra)
return 1
"""

# KEYS: job, stream, queued, owner_active, expiry ; ARGV: id, now, ttl, group
CANCEL = _FINISH + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status == 'queued' or status == 'in_progress' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  finish(KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[1], 'failed', tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4],
    {'error_code', 'cancelled', 'error_message', 'The job was cancelled.', 'cancelled_at_step',
     redis.call('HGET', KEYS[1], 'step') or '0'})
end
return status
"""


@dataclass
class Claim:
    job_id: str
    entry_id: str
    fence: int
    attempts: int


class JobStore:
    """Everything the API and the workers do to jobs in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "paris"):
        self.r = client
        self.p = prefix
        self.stream = f"{prefix}:jobs"
        self.queued = f"{prefix}:queued"
        self.expiry = f"{prefix}:expiry"
        self.workers = f"{prefix}:workers"
        self.metrics_key = f"{prefix}:metrics"
        self._enqueue = client.register_script(ENQUEUE)
        self._claim = client.register_script(CLAIM)
        self._progress = client.register_script(PROGRESS)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._settle = client.register_script(SETTLE)
        self._cancel = client.register_script(CANCEL)

    @classmethod
    def from_url(cls, url: str, prefix: str = "paris") -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=10), prefix)

    # keys
    def job_key(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.p}:owner:{owner}:jobs"

    def owner_active(self, owner: str) -> str:
        return f"{self.p}:owner:{owner}:active"

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # ---- API side -------------------------------------------------------------------------
    def enqueue(self, job_id: str, owner: str, fields: dict, *, max_active: int = 0,
                idempotency_key: str | None = None, idem_ttl_s: int = 86400) -> tuple[str, str]:
        """Returns (outcome, job_id) with outcome 'created' | 'existing' | 'limit'."""
        idem = f"{self.p}:idem:{owner}:{idempotency_key}" if idempotency_key else ""
        created = now_ms()
        flat: list = []
        for k, v in {**fields, "id": job_id, "owner": owner, "created_at": created // 1000}.items():
            flat += [k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
        out = self._enqueue(
            keys=[self.job_key(job_id), self.stream, self.queued, f"{self.p}:seq", self.owner_jobs(owner),
                  self.owner_active(owner), idem],
            args=[job_id, max_active, created, idem_ttl_s, f"{self.p}:job:", *flat])
        if out[0] == "created":
            self.count("jobs_created_total")
        return out[0], out[1]

    def get(self, job_id: str) -> dict | None:
        data = self.r.hgetall(self.job_key(job_id))
        return data or None

    def queue_position(self, job_id: str) -> int | None:
        rank = self.r.zrank(self.queued, job_id)
        return None if rank is None else rank + 1

    def queue_depth(self) -> int:
        return self.r.zcard(self.queued)

    def list(self, owner: str, *, after: str | None, limit: int, order: str) -> tuple[list[dict], bool]:
        key = self.owner_jobs(owner)
        desc = order == "desc"
        start = 0
        if after:
            rank = self.r.zrevrank(key, after) if desc else self.r.zrank(key, after)
            if rank is None:
                return [], False
            start = rank + 1
        ids = (self.r.zrevrange if desc else self.r.zrange)(key, start, start + limit)
        has_more = len(ids) > limit
        jobs = []
        for job_id in ids[:limit]:
            job = self.get(job_id)
            if job:
                jobs.append(job)
        return jobs, has_more

    def cancel(self, job_id: str, ttl_s: int) -> str:
        """Returns the status the job had before ('' when it does not exist)."""
        job = self.get(job_id)
        if not job:
            return ""
        prev = self._cancel(keys=[self.job_key(job_id), self.stream, self.queued, self.owner_active(job["owner"]),
                                  self.expiry], args=[job_id, now_ms(), ttl_s, GROUP])
        if prev in ("queued", "in_progress"):
            self.count("jobs_finished_total", "cancelled")
        return prev

    def delete(self, job_id: str, ttl_s: int) -> str:
        job = self.get(job_id)
        if not job:
            return ""
        prev = self.cancel(job_id, ttl_s)
        pipe = self.r.pipeline()
        pipe.delete(self.job_key(job_id))
        pipe.zrem(self.owner_jobs(job["owner"]), job_id)
        pipe.srem(self.owner_active(job["owner"]), job_id)
        pipe.zrem(self.expiry, job_id)
        pipe.execute()
        return prev

    def expired(self, now_s: int | None = None, count: int = 100) -> list[str]:
        return self.r.zrangebyscore(self.expiry, "-inf", now_s if now_s is not None else int(time.time()),
                                    start=0, num=count)

    # ---- worker side ----------------------------------------------------------------------
    def read_new(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, str]]:
        """XREADGROUP up to `count` new entries; returns (entry_id, job_id)."""
        if count <= 0:
            return []
        resp = self.r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms or None)
        out = []
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                out.append((entry_id, (fields or {}).get("job", "")))
        return out

    def reclaim_stale(self, consumer: str, count: int, lease_ms: int) -> list[tuple[str, str]]:
        """XAUTOCLAIM entries whose worker stopped renewing its lease."""
        if count <= 0:
            return []
        _next, entries, *_deleted = self.r.xautoclaim(self.stream, GROUP, consumer, min_idle_time=lease_ms,
                                                      start_id="0-0", count=count)
        return [(eid, (fields or {}).get("job", "")) for eid, fields in entries if fields]

    def claim(self, entry_id: str, job_id: str, worker: str, *, ttl_s: int, max_attempts: int) -> Claim | None:
        if not job_id:
            self.r.xack(self.stream, GROUP, entry_id)
            return None
        outcome, fence, attempts = self._claim(
            keys=[self.job_key(job_id), self.stream, self.queued, self.expiry, f"{self.p}:owner:"],
            args=[job_id, entry_id, worker, now_ms(), ttl_s, GROUP, max_attempts])
        if outcome == "exhausted":
            self.count("jobs_finished_total", "failed")
        if outcome != "claimed":
            return None
        return Claim(job_id, entry_id, int(fence), int(attempts))

    def progress(self, c: Claim, **fields) -> bool:
        flat = []
        for k, v in fields.items():
            flat += [k, str(v)]
        return bool(self._progress(keys=[self.job_key(c.job_id)], args=[c.fence, *flat]))

    def renew(self, c: Claim, consumer: str) -> bool:
        return bool(self._renew(keys=[self.job_key(c.job_id), self.stream],
                                args=[c.fence, GROUP, consumer, c.entry_id]))

    def release(self, c: Claim, consumer: str, lease_ms: int) -> bool:
        """Graceful shutdown: mark our entry idle past the lease so another worker takes it now."""
        return bool(self._release(keys=[self.job_key(c.job_id), self.stream],
                                  args=[c.fence, GROUP, consumer, c.entry_id, lease_ms * 10]))

    def settle(self, c: Claim, status: str, ttl_s: int, **fields) -> bool:
        job = self.get(c.job_id)
        if not job:
            return False
        flat = []
        for k, v in fields.items():
            flat += [k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
        ok = bool(self._settle(keys=[self.job_key(c.job_id), self.stream, self.owner_active(job["owner"]),
                                     self.expiry],
                               args=[c.job_id, c.fence, status, now_ms(), ttl_s, GROUP, *flat]))
        if ok:
            self.count("jobs_finished_total", status)
        return ok

    def state(self, job_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """(status, fence) per job, one round trip."""
        pipe = self.r.pipeline()
        for j in job_ids:
            pipe.hmget(self.job_key(j), "status", "fence")
        return {j: tuple(v) for j, v in zip(job_ids, pipe.execute(), strict=True)}

    def heartbeat(self, worker: str, info: dict) -> None:
        pipe = self.r.pipeline()
        pipe.zadd(self.workers, {worker: time.time()})
        pipe.zremrangebyscore(self.workers, "-inf", time.time() - 86400)  # forget workers gone for a day
        pipe.set(f"{self.p}:worker:{worker}", json.dumps(info), ex=60)
        pipe.execute()

    def fresh_workers(self, max_age_s: float) -> int:
        return self.r.zcount(self.workers, time.time() - max_age_s, "+inf")

    # ---- metrics stored in Redis, so every process contributes -----------------------------
    def count(self, name: str, label: str = "", by: float = 1) -> None:
        try:
            self.r.hincrbyfloat(self.metrics_key, f"{name}|{label}", by)
        except redis.RedisError:
            pass

    def observe(self, name: str, seconds: float, buckets: tuple[float, ...]) -> None:
        pipe = self.r.pipeline()
        for b in buckets:
            if seconds <= b:
                pipe.hincrbyfloat(self.metrics_key, f"{name}_bucket|{b}", 1)
        pipe.hincrbyfloat(self.metrics_key, f"{name}_count|", 1)
        pipe.hincrbyfloat(self.metrics_key, f"{name}_sum|", seconds)
        pipe.execute()

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall(self.metrics_key).items()}
