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

Here: what both sides share (`Store`: the connection, the keys, a job's record; `Claim`, `JobState`,
`RoundTrip`). The transitions are in scripts.py; the API's side is job_queue.py (`JobQueue`), a
worker's is worker_store.py (`WorkerStore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Self

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from .jobs import GROUP, Job, JobStatus, Keys, decode
from .metrics import Metrics
from server.notify.notices import JobNotices


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


class Store:
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
