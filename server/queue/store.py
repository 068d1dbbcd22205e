r"""The job store: a queue on raw Redis Streams, one hash per job (server/queue/jobs.py), a stream entry
carrying only the job id.

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
* requeue: a worker that cannot store a job's files (an infrastructure fault, not the job's)
  hands it back: queued again, first in line, its attempt refunded; a separate budget
  (`requeues`) bounds how often.
* notices (server/notify/notices.py): progress, the settles and cancel also append to the job's event
  log and queue its webhooks, guarded, in the same transaction; enqueue and an exhausted claim
  right after their script (guarded by the state it left).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from string import Template
from typing import Literal, NamedTuple, Self

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from pipeline.results import Progress  # torch-free: the API process never loads the engine

from .jobs import GROUP, Enqueued, Job, JobStatus, Keys, QueueError, decode, hash_args
from .metrics import Metrics
from server.notify.notices import JobNotices


def now_ms() -> int:
    return int(time.time() * 1000)


CANCELLED = (QueueError.CANCELLED.value, "The job was cancelled.")  # the error (code, message) of a cancelled job

# The words the scripts share with Python, from the job vocabulary (server/queue/jobs.py): $QUEUED and
# the other statuses (JobStatus), $CREATED and the other enqueue outcomes (Enqueued), $CANCELLED and the
# other error codes the scripts write (QueueError), $ACTIVE_SUFFIX (Keys) and $<field> for a field of the
# job hash. A name the vocabulary lacks (a
# renamed field, a typo) fails at import, not in Redis; `$$` is a literal `$`.
_WORDS = ({word.name: word.value for word in (*JobStatus, *Enqueued, *QueueError)}
          | {"ACTIVE_SUFFIX": Keys.ACTIVE_SUFFIX} | {field.name: field.name for field in dataclasses.fields(Job)})


def _lua(source: str) -> str:
    return Template(source).substitute(_WORDS)


# Shared Lua helper: finish a job (status, timestamps, expiry, active set, ack).
# KEYS: job, stream, owner_active, expiry.  Uses ARGV_now, ARGV_ttl, ARGV_group provided by caller.
_FINISH = """
local function finish(job, stream, active, expiry, id, status, now, ttl, group, extra)
  local entry = redis.call('HGET', job, '$entry_id')
  local expires = math.floor(now / 1000) + ttl
  redis.call('HSET', job, '$status', status, '$completed_at', math.floor(now / 1000), '$expires_at', expires)
  if #extra > 0 then redis.call('HSET', job, unpack(extra)) end
  redis.call('SREM', active, id)
  redis.call('ZADD', expiry, expires, id)
  redis.call('HDEL', job, '$worker')
  if entry then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
  end
end
"""

# The fence check every write of a running job's worker makes (progress, lease renewal, release,
# requeue, settle): the worker still holds the job (its fence is current) and the job still runs.
_HOLDS = """
local function holds(job, fence)
  return redis.call('HGET', job, '$fence') == fence and redis.call('HGET', job, '$status') == '$IN_PROGRESS'
end
"""

# KEYS: job, stream, queued, seq, owner_jobs, owner_active, idem ('' for none), limit set
# ARGV: id, max_active, enqueued_ms, idem_ttl, job_prefix, fingerprint, max_queued, field, value, ... (the whole
#       job hash); max_queued > 0: 'busy' while that many jobs are queued (the global admission limit)
# The idempotency key holds "<job id> <fingerprint>"; its job's hash is returned whole, read in this
# same script, so a DELETE racing the POST cannot leave the API holding an id with no job.
# The limit set is owner_active, or a per-client-address set (no API keys) that the finish scripts
# do not know about: jobs in it that finished or were deleted are forgotten here.
ENQUEUE = _lua("""
if KEYS[7] ~= '' then
  local ex = redis.call('GET', KEYS[7])
  if ex then
    local id, fingerprint = string.match(ex, '^(%S+) ?(%S*)$$')
    local job = redis.call('HGETALL', ARGV[5] .. id)
    if #job > 0 then
      if fingerprint ~= '' and fingerprint ~= ARGV[6] then return {'$CONFLICT', id} end  -- '': a key from before fingerprints
      return {'$EXISTING', id, job}
    end
  end
end
if KEYS[8] ~= KEYS[6] then
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[8])) do
    local status = redis.call('HGET', ARGV[5] .. member, '$status')
    if status ~= '$QUEUED' and status ~= '$IN_PROGRESS' then redis.call('SREM', KEYS[8], member) end
  end
end
if tonumber(ARGV[2]) > 0 and redis.call('SCARD', KEYS[8]) >= tonumber(ARGV[2]) then
  return {'$LIMIT', ''}
end
if tonumber(ARGV[7]) > 0 and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then
  return {'$BUSY', ''}
end
local id = ARGV[1]
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), id)  -- queue position: enqueue order
redis.call('ZADD', KEYS[5], ARGV[3], id)
redis.call('SADD', KEYS[6], id)
if KEYS[8] ~= KEYS[6] then
  redis.call('SADD', KEYS[8], id)
  redis.call('EXPIRE', KEYS[8], ARGV[4])
end
if KEYS[7] ~= '' then redis.call('SET', KEYS[7], id .. ' ' .. ARGV[6], 'EX', ARGV[4]) end
local entry = redis.call('XADD', KEYS[2], '*', 'job', id)
redis.call('HSET', KEYS[1], '$entry_id', entry)
return {'$CREATED', id}
""")

# KEYS: job, stream, queued, expiry, active_prefix
# ARGV: id, entry, worker, now, ttl, group, max_attempts
CLAIM = _lua(_FINISH + """
local status = redis.call('HGET', KEYS[1], '$status')
if not status or (status ~= '$QUEUED' and status ~= '$IN_PROGRESS') then
  redis.call('XACK', KEYS[2], ARGV[6], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return {'skip', 0, 0}
end
local owner = redis.call('HGET', KEYS[1], '$owner')
local active = KEYS[5] .. owner .. '$ACTIVE_SUFFIX'
local attempts = redis.call('HINCRBY', KEYS[1], '$attempts', 1)
local fence = redis.call('HINCRBY', KEYS[1], '$fence', 1)
redis.call('ZREM', KEYS[3], ARGV[1])
if attempts > tonumber(ARGV[7]) then
  finish(KEYS[1], KEYS[2], active, KEYS[4], ARGV[1], '$FAILED', tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6],
    {'$error_code', '$MAX_ATTEMPTS_EXCEEDED',
     '$error_message', 'The job was started ' .. (attempts - 1) .. ' times and its worker stopped each time; giving up.'})
  return {'exhausted', fence, attempts}
end
redis.call('HSET', KEYS[1], '$status', '$IN_PROGRESS', '$worker', ARGV[3], '$progress', 0, '$step', 0)
return {'claimed', fence, attempts, unpack(redis.call('HGETALL', KEYS[1]))}  -- the claimed job's record
""")

# KEYS: job ; ARGV: fence, field, value, ...
PROGRESS = _lua(_HOLDS + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
""")

# KEYS: job, stream ; ARGV: fence, group, consumer, entry
RENEW = _lua(_HOLDS + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
return 1
""")

# KEYS: job, stream ; ARGV: fence, group, consumer, entry, idle_ms
RELEASE = _lua(_HOLDS + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'IDLE', ARGV[5], 'JUSTID')
return 1
""")

# KEYS: job, stream, queued, owner_active, expiry
# ARGV: id, fence, group, consumer, entry, idle_ms, max_requeues, now, ttl
REQUEUE = _lua(_HOLDS + _FINISH + """
if not holds(KEYS[1], ARGV[2]) then return 0 end
local requeues = redis.call('HINCRBY', KEYS[1], '$requeues', 1)
if requeues > tonumber(ARGV[7]) then
  finish(KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[1], '$FAILED', tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[3],
    {'$error_code', '$STORAGE_UNAVAILABLE',
     '$error_message', "The video could not be stored: the server's storage failed " .. (requeues - 1) .. " times."})
  return 2
end
redis.call('HINCRBY', KEYS[1], '$attempts', -1)  -- an infrastructure fault does not use up the job's attempts
redis.call('HSET', KEYS[1], '$status', '$QUEUED', '$progress', 0, '$step', 0)
redis.call('HDEL', KEYS[1], '$worker')
redis.call('ZADD', KEYS[3], 0, ARGV[1])  -- it was first in line when it was claimed
redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[5], 'IDLE', ARGV[6], 'JUSTID')  -- any worker may take it now
return 1
""")

# KEYS: job, stream, owner_active, expiry ; ARGV: id, fence, status, now, ttl, group, field, value, ...
SETTLE = _lua(_HOLDS + _FINISH + """
if not holds(KEYS[1], ARGV[2]) then return 0 end
local extra = {}
for i = 7, #ARGV do extra[#extra + 1] = ARGV[i] end
finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], extra)
return 1
""")

# KEYS: job, stream, queued, owner_active, expiry ; ARGV: id, now, ttl, group, message
CANCEL = _lua(_FINISH + """
local status = redis.call('HGET', KEYS[1], '$status')
if not status then return '' end
if status == '$QUEUED' or status == '$IN_PROGRESS' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  finish(KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[1], '$FAILED', tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4],
    {'$error_code', '$CANCELLED', '$error_message', ARGV[5], '$cancelled_at_step',
     redis.call('HGET', KEYS[1], '$step') or '0'})
end
return status
""")


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: writes are fenced by `fence` (see the module doc)."""

    job_id: str
    entry_id: str
    fence: int
    attempts: int


class JobState(NamedTuple):
    """What a running job's worker checks between steps and after settling it; all None once the
    job is deleted."""

    status: JobStatus | None
    fence: int | None
    artifact_fence: int | None = None

    @classmethod
    def read(cls, values: list[str | None]) -> JobState:
        """From HMGET job status fence artifact_fence (`_queue_states`)."""
        return cls(*(decode(name, raw) for name, raw in zip(cls._fields, values, strict=True)))


class RoundTrip:
    """Commands queued now and sent later as one pipeline (possibly from another thread).
    Scripts go by EVALSHA alone (a registered script in a pipeline costs a SCRIPT EXISTS round
    trip first); one the server lost (a restart) is loaded and run again."""

    def __init__(self, client: redis.Redis):
        self.pipe = client.pipeline(transaction=False)
        self._scripts: list[tuple[int, Script, list[str], list]] = []

    def script(self, script: Script, keys: list[str], args: list) -> None:
        self._scripts.append((len(self.pipe.command_stack), script, keys, args))
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)

    def send(self) -> list:
        results = self.pipe.execute(raise_on_error=False)
        for i, script, keys, args in self._scripts:
            if isinstance(results[i], NoScriptError):
                results[i] = script(keys=keys, args=args)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results


@dataclass(frozen=True)
class StepProgress:
    """One request's advance in an engine step, as the engine reported it: what
    WorkerStore.after_step writes (`percent`, `progress.step`) and tells (`event()`)."""

    claim: Claim
    progress: Progress

    @property
    def percent(self) -> int:
        """0-99 while denoising: 100 is written only once the MP4 is stored (jobs.completion)."""
        return min(99, int(99 * self.progress.step / max(1, self.progress.total)))

    def event(self) -> dict[str, object]:
        """The `progress` event's payload (the job's event log, SSE)."""
        p = self.progress
        return {"step": p.step, "total": p.total, "progress": self.percent, "experts": list(p.experts),
                "weights": [round(w, 6) for w in p.weights]}


@dataclass
class StepReport:
    """JobStore.after_step's round trip: `send()` returns the watched jobs' states."""

    trip: RoundTrip
    watched: list[str]
    first_state: int

    @property
    def pipe(self) -> redis.client.Pipeline:
        return self.trip.pipe

    def send(self) -> dict[str, JobState]:
        states = self.trip.send()[self.first_state:self.first_state + len(self.watched)]
        return {job_id: JobState.read(values) for job_id, values in zip(self.watched, states, strict=True)}


class _Store:
    """What both sides share: the connection, the keys, a job's record. Each side registers the
    scripts it runs."""

    def __init__(self, client: redis.Redis, prefix: str = "paris"):
        self.redis = client
        self.keys = Keys(prefix)
        self.metrics = Metrics(client, self.keys.metrics)
        self.notices = JobNotices(client, prefix)

    @classmethod
    def from_url(cls, url: str, prefix: str = "paris") -> Self:
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=10), prefix)

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def get(self, job_id: str) -> Job | None:
        data = self.redis.hgetall(self.keys.job(job_id))
        return Job.from_hash(data) if data else None



class JobQueue(_Store):
    """The API's side: enqueue, read, list, cancel and delete jobs; the queue's gauges."""

    def __init__(self, client: redis.Redis, prefix: str = "paris"):
        super().__init__(client, prefix)
        self._enqueue = client.register_script(ENQUEUE)
        self._cancel = client.register_script(CANCEL)

    def enqueue(self, job: Job, *, max_active: int = 0, idempotency_key: str | None = None, fingerprint: str = "-",
                idem_ttl_s: int = 86400, client: str | None = None, max_queued: int = 0
                ) -> tuple[Enqueued, Job | None]:
        """The outcome and the job it concerns: `job` itself when CREATED, the job the
        Idempotency-Key already names (as it was when read) when EXISTING, None for CONFLICT
        (the key names a job made from another request, `fingerprint` differs), LIMIT (the
        owner's active jobs) and BUSY (`max_queued` jobs wait already).
        `client` (an address) counts the limit per client instead of per owner."""
        k = self.keys
        idem = k.idempotency(job.owner, idempotency_key) if idempotency_key else ""
        active = k.owner_active(job.owner)
        out = self._enqueue(
            keys=[k.job(job.id), k.stream, k.queued, k.seq, k.owner_jobs(job.owner), active, idem,
                  k.client_active(client) if client else active],
            args=[job.id, max_active, now_ms(), idem_ttl_s, k.job_prefix, fingerprint, max_queued,
                  *(x for field in job.to_hash().items() for x in field)])
        outcome = Enqueued(out[0])
        if outcome is Enqueued.CREATED:
            self.metrics.count("jobs_created_total")
            position = self.queue_position(job.id)
            if position is not None:
                self.notices.queued(self.redis, k.job(job.id), job.id, position)
            return outcome, job
        if outcome is Enqueued.EXISTING:
            return outcome, Job.from_hash(dict(zip(out[2][::2], out[2][1::2], strict=True)))
        return outcome, None

    def queue_position(self, job_id: str) -> int | None:
        rank = self.redis.zrank(self.keys.queued, job_id)
        return None if rank is None else rank + 1

    def queue_depth(self) -> int:
        return self.redis.zcard(self.keys.queued)

    def running_count(self) -> int:
        """Jobs delivered to a worker and not yet finished (the group's pending entries)."""
        return self.redis.xpending(self.keys.stream, GROUP)["pending"]

    def list(self, owner: str, *, after: str | None, limit: int, order: Literal["asc", "desc"]
             ) -> tuple[list[Job], bool]:
        key = self.keys.owner_jobs(owner)
        desc = order == "desc"
        start = 0
        if after:
            rank = self.redis.zrevrank(key, after) if desc else self.redis.zrank(key, after)
            if rank is None:
                return [], False
            start = rank + 1
        ids = (self.redis.zrevrange if desc else self.redis.zrange)(key, start, start + limit)
        jobs = [job for job in map(self.get, ids[:limit]) if job is not None]
        return jobs, len(ids) > limit

    def cancel(self, job_id: str, ttl_s: int) -> JobStatus | None:
        """Returns the status the job had before (None when it does not exist)."""
        job = self.get(job_id)
        if job is None:
            return None
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        self._cancel(keys=[k.job(job_id), k.stream, k.queued, k.owner_active(job.owner), k.expiry],
                     args=[job_id, now_ms(), ttl_s, GROUP, CANCELLED[1]], client=pipe)
        self.notices.ended(pipe, k.job(job_id), job_id, job.webhook_urls or [], fence=None, error=CANCELLED)
        prev = pipe.execute()[0]
        if not prev:
            return None
        prev = JobStatus(prev)
        if not prev.finished:
            self.metrics.count("jobs_finished_total", "cancelled")
        return prev

    def delete(self, job_id: str, ttl_s: int) -> JobStatus | None:
        """Cancel the job if it runs, then remove its record and index entries. Returns the status
        it had (None when it was already gone)."""
        job = self.get(job_id)
        prev = self.cancel(job_id, ttl_s) if job else None
        pipe = self.redis.pipeline()
        if job:
            pipe.delete(self.keys.job(job_id))
            pipe.zrem(self.keys.owner_jobs(job.owner), job_id)
            pipe.srem(self.keys.owner_active(job.owner), job_id)
        pipe.zrem(self.keys.expiry, job_id)
        pipe.execute()
        return prev

    def expired(self, now_s: int | None = None, count: int = 100) -> list[str]:
        return self.redis.zrangebyscore(self.keys.expiry, "-inf", now_s if now_s is not None else int(time.time()),
                                        start=0, num=count)

    def worker_counts(self, max_age_s: float) -> tuple[int, int]:
        """(workers with a fresh heartbeat, those of them that can store videos)."""
        pipe = self.redis.pipeline()
        pipe.zrangebyscore(self.keys.workers, time.time() - max_age_s, "+inf")
        pipe.zrange(self.keys.workers_storage_down, 0, -1)
        fresh, down = pipe.execute()
        return len(fresh), len(set(fresh) - set(down))


class WorkerStore(_Store):
    """A worker's side: read and claim entries, report steps, hold leases, settle or requeue."""

    def __init__(self, client: redis.Redis, prefix: str = "paris"):
        super().__init__(client, prefix)
        self._claim = client.register_script(CLAIM)
        self._progress = client.register_script(PROGRESS)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._requeue = client.register_script(REQUEUE)
        self._settle = client.register_script(SETTLE)

    def read_new(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, str]]:
        """XREADGROUP up to `count` new entries; returns (entry_id, job_id)."""
        if count <= 0:
            return []
        resp = self.redis.xreadgroup(GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block_ms or None)
        return [(entry_id, (fields or {}).get("job", "")) for _stream, entries in resp or []
                for entry_id, fields in entries]

    def reclaim_stale(self, consumer: str, count: int, lease_ms: int) -> list[tuple[str, str]]:
        """XAUTOCLAIM entries whose worker stopped renewing its lease."""
        if count <= 0:
            return []
        _next, entries, *_deleted = self.redis.xautoclaim(self.keys.stream, GROUP, consumer, min_idle_time=lease_ms,
                                                          start_id="0-0", count=count)
        return [(eid, (fields or {}).get("job", "")) for eid, fields in entries if fields]

    def claim(self, entries: list[tuple[str, str]], worker: str, *, ttl_s: int, max_attempts: int
              ) -> dict[str, tuple[Claim, Job]]:
        """Claim delivered entries (entry_id, job_id) in one round trip: job id -> the claim and
        the job's record. An entry whose job is gone or finished is acked and left out; a job
        past max_attempts fails and is left out."""
        k = self.keys
        trip = RoundTrip(self.redis)
        wanted = [(entry_id, job_id) for entry_id, job_id in entries if job_id]
        for entry_id, job_id in wanted:
            trip.script(self._claim, [k.job(job_id), k.stream, k.queued, k.expiry, k.owner_prefix],
                        [job_id, entry_id, worker, now_ms(), ttl_s, GROUP, max_attempts])
        for entry_id, job_id in entries:
            if not job_id:
                trip.pipe.xack(k.stream, GROUP, entry_id)
        claims = {}
        for (entry_id, job_id), (outcome, fence, attempts, *record) in zip(wanted, trip.send()[:len(wanted)], strict=True):
            if outcome == "exhausted":
                self.metrics.count("jobs_finished_total", JobStatus.FAILED)
                self._exhausted(job_id, int(fence))
            if outcome == "claimed":
                job = Job.from_hash(dict(zip(record[::2], record[1::2], strict=True)))
                claims[job_id] = (Claim(job_id, entry_id, int(fence), int(attempts)), job)
        return claims

    def after_step(self, progress: list[StepProgress], watched: list[str]) -> StepReport:
        """A worker's Redis work after one engine step, queued for one round trip: the fenced
        progress of every request that advanced, each with its event (guarded: only if the
        progress write applied), and the state of every job in `watched` (its stop checks; a
        progress write that did not apply shows there as a changed status or fence). The step's
        metrics go into `StepReport.pipe`."""
        trip = RoundTrip(self.redis)
        for p in progress:
            key = self.keys.job(p.claim.job_id)
            trip.script(self._progress, [key], [p.claim.fence, *hash_args(progress=p.percent, step=p.progress.step)])
            self.notices.progress(trip.pipe, key, p.claim.job_id, p.claim.fence, p.event())
        first_state = len(trip.pipe.command_stack)
        self._queue_states(trip.pipe, watched)
        return StepReport(trip, watched, first_state)

    def _exhausted(self, job_id: str, fence: int) -> None:
        """The claim script failed the job (attempts exhausted): its event and webhooks, as a settle
        would queue them (not in the claim's own transaction: the claim returns the fence)."""
        job = self.get(job_id)
        if job is None or job.error_code is None:
            return
        pipe = self.redis.pipeline(transaction=True)
        self.notices.ended(pipe, self.keys.job(job_id), job_id, job.webhook_urls or [], fence=fence,
                           error=(job.error_code, job.error_message or ""))
        pipe.execute()

    def renew(self, claims: list[Claim], consumer: str) -> list[bool]:
        """Renew the leases of `claims` (one round trip); False where the claim is no longer current."""
        trip = RoundTrip(self.redis)
        for c in claims:
            trip.script(self._renew, [self.keys.job(c.job_id), self.keys.stream], [c.fence, GROUP, consumer, c.entry_id])
        return [bool(x) for x in trip.send()]

    def release(self, claim: Claim, consumer: str, lease_ms: int) -> bool:
        """Graceful shutdown: mark our entry idle past the lease so another worker takes it now."""
        return bool(self._release(keys=[self.keys.job(claim.job_id), self.keys.stream],
                                  args=[claim.fence, GROUP, consumer, claim.entry_id, lease_ms * 10]))

    def requeue(self, claim: Claim, consumer: str, *, lease_ms: int, ttl_s: int, max_requeues: int) -> bool:
        """Hand a job whose files could not be stored back to the queue (see the module doc);
        past `max_requeues` it fails with `storage_unavailable`. False when fenced out."""
        job = self.get(claim.job_id)
        if job is None:
            return False
        k = self.keys
        out = self._requeue(keys=[k.job(claim.job_id), k.stream, k.queued, k.owner_active(job.owner), k.expiry],
                            args=[claim.job_id, claim.fence, GROUP, consumer, claim.entry_id, lease_ms * 10,
                                  max_requeues, now_ms(), ttl_s])
        if out == 2:
            self.metrics.count("jobs_finished_total", JobStatus.FAILED)
        elif out == 1:
            self.metrics.count("jobs_requeued_total")
        return bool(out)

    def complete(self, claim: Claim, ttl_s: int, fields: dict[str, object]) -> bool:
        """Completed, with the result's fields (jobs.completion); False when fenced out."""
        return self._finish(claim, JobStatus.COMPLETED, ttl_s,
                            hash_args(**fields, artifact_fence=claim.fence))

    def fail(self, claim: Claim, ttl_s: int, code: str, message: str) -> bool:
        # the message may quote what the engine could not take (a lone surrogate): keep it storable
        message = message[:2000].encode("utf-8", "backslashreplace").decode("utf-8")
        return self._finish(claim, JobStatus.FAILED, ttl_s, hash_args(error_code=code, error_message=message),
                            (code, message))

    def _finish(self, claim: Claim, status: JobStatus, ttl_s: int, args: list[str],
                error: tuple[str, str] | None = None) -> bool:
        job = self.get(claim.job_id)
        if job is None:
            return False
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        self._settle(keys=[k.job(claim.job_id), k.stream, k.owner_active(job.owner), k.expiry],
                     args=[claim.job_id, claim.fence, status, now_ms(), ttl_s, GROUP, *args], client=pipe)
        self.notices.ended(pipe, k.job(claim.job_id), claim.job_id, job.webhook_urls or [], fence=claim.fence,
                           error=error)
        ok = bool(pipe.execute()[0])
        if ok:
            self.metrics.count("jobs_finished_total", status)
        return ok

    def _queue_states(self, pipe: redis.client.Pipeline, job_ids: list[str]) -> None:
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), *JobState._fields)

    def state(self, job_ids: list[str]) -> dict[str, JobState]:
        """Status, fence and accepted attempt per job, one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        self._queue_states(pipe, job_ids)
        return {job_id: JobState.read(values) for job_id, values in zip(job_ids, pipe.execute(), strict=True)}

    def heartbeat(self, worker: str, storage_ok: bool = True) -> None:
        """The worker is alive; `storage_ok` False while it cannot store videos (not ready)."""
        now = time.time()
        k = self.keys
        pipe = self.redis.pipeline()
        pipe.zadd(k.workers, {worker: now})
        if storage_ok:
            pipe.zrem(k.workers_storage_down, worker)
        else:
            pipe.zadd(k.workers_storage_down, {worker: now})
        for key in (k.workers, k.workers_storage_down):
            pipe.zremrangebyscore(key, "-inf", now - 86400)  # forget workers gone for a day
        pipe.execute()


class JobStore(JobQueue, WorkerStore):
    """Both sides on one connection, for code that plays the API and a worker at once (the tests,
    tools); the API holds a JobQueue and a worker a WorkerStore."""
