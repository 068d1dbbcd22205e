"""The webhook outbox in Redis: at-least-once delivery that survives a restart of any process.

One delivery = one (event, URL) pair. Its state machine (each step one Lua script):

    enqueue --> pending --claim--> (sending) --2xx--> delivered
                   ^                  |  \\--error, attempts or age exhausted--> failed
                   \\---retry at t-----/
                   \\---lease expired (the claimer died)---> claimable again

* `due` is a ZSET of delivery ids scored by the time (ms) they may next be claimed.
* claim takes due ids, bumps the delivery's `claim` token and `attempts`, and moves its score to
  now + lease: a claimer that dies leaves it to come due again once the lease ends.
* record applies an outcome only with the current claim token (a claimer whose lease ran out and
  whose delivery was claimed again cannot overwrite the newer state); the attempt itself is
  logged either way, since it did happen.
* the webhook-id sent is the event id on every attempt, so receivers can dedupe.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from server.queue.guard import GUARD_LUA, UNGUARDED, Guard
from server.queue.jobs import Keys
from .payloads import WebhookEvent


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 5.0          # first retry after ~base_s, then doubling
    max_delay_s: float = 3600.0
    max_attempts: int = 10
    max_age_s: float = 24 * 3600.0   # give up on a delivery this old
    lease_s: float = 60.0        # a claim's hold; longer than one delivery's total timeout
    keep_s: float = 7 * 24 * 3600.0  # records stay readable this long after enqueue (plus max_age_s)

    def delay_s(self, attempts: int) -> float:
        """Exponential backoff with jitter (half fixed, half random), so receivers that come
        back are not hit by every sender at the same instant."""
        d = min(self.max_delay_s, self.base_s * 2 ** max(0, attempts - 1))
        return d / 2 + random.random() * d / 2


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    token: str
    event_id: str
    job_id: str
    url: str
    body: bytes
    attempts: int
    created_ms: int


# KEYS: due, job list, guard, delivery_1 .. delivery_n
# ARGV: now_ms, keep_s, event_id, job_id, type, body, n (deliveries), guard n, guard pairs..., then
#       delivery_id, url for each delivery
_ENQUEUE = GUARD_LUA + """
local n = tonumber(ARGV[7])
if not guard_ok(KEYS[3], tonumber(ARGV[8]), 9) then return -1 end
local first = 9 + 2 * tonumber(ARGV[8])
local added = 0
for i = 1, n do
  local key = KEYS[3 + i]
  local id, url = ARGV[first + 2 * (i - 1)], ARGV[first + 2 * (i - 1) + 1]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'id', id, 'event_id', ARGV[3], 'job_id', ARGV[4], 'type', ARGV[5], 'url', url,
      'body', ARGV[6], 'state', 'pending', 'attempts', 0, 'claim', 0, 'created_ms', ARGV[1], 'next_ms', ARGV[1])
    redis.call('EXPIRE', key, ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    redis.call('RPUSH', KEYS[2], id)
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return added
"""

# KEYS: due ; ARGV: now_ms, lease_ms, limit, delivery_prefix, max_attempts, max_age_ms
_CLAIM = """
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  local d = redis.call('HMGET', key, 'state', 'attempts', 'created_ms')
  if d[1] ~= 'pending' then
    redis.call('ZREM', KEYS[1], id)
  elseif tonumber(d[2]) >= tonumber(ARGV[5]) or now - tonumber(d[3]) > tonumber(ARGV[6]) then
    -- its last claimer died mid-attempt with nothing left to try
    redis.call('HSET', key, 'state', 'failed', 'finished_ms', now, 'error', 'gave up after ' .. d[2] .. ' attempts')
    redis.call('ZREM', KEYS[1], id)
  else
    local token = redis.call('HINCRBY', key, 'claim', 1)
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    out[#out + 1] = id
    out[#out + 1] = token
  end
end
return out
"""

# KEYS: due, delivery, attempts ; ARGV: id, token, now_ms, outcome (delivered|retry|failed), next_ms, attempt json
_RECORD = """
redis.call('RPUSH', KEYS[3], ARGV[6])
local ttl = redis.call('TTL', KEYS[2])
if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
if redis.call('HGET', KEYS[2], 'claim') ~= ARGV[2] or redis.call('HGET', KEYS[2], 'state') ~= 'pending' then
  return 0
end
if ARGV[4] == 'retry' then
  redis.call('HSET', KEYS[2], 'next_ms', ARGV[5])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'state', ARGV[4], 'finished_ms', ARGV[3])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""


def delivery_id(event_id: str, url: str) -> str:
    """Follows from (event, URL): enqueuing an event again adds nothing."""
    return "dlv_" + hashlib.sha256(f"{event_id} {url}".encode()).hexdigest()[:32]


def _origin(url: str) -> str:
    """scheme://host[:port] only: paths and queries of receiver URLs often carry tokens."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class Outbox:
    def __init__(self, client: redis.Redis, prefix: str = "paris", retry: RetryPolicy = RetryPolicy()):
        self.r = client
        self.keys = Keys(prefix)
        self.retry = retry
        self._claim = client.register_script(_CLAIM)
        self._record = client.register_script(_RECORD)

    # ---- producer side -------------------------------------------------------------------------
    def enqueue(self, pipe, event: WebhookEvent, urls: list[str], guard: Guard = UNGUARDED,
                now_ms: int | None = None) -> None:
        """Queue the deliveries of `event` to each URL on `pipe` (a sync or asyncio pipeline; a
        sync client runs it at once). Put it in the MULTI that settles the job, after the settle,
        with a guard on the job's new state: deliveries then exist exactly when the settle
        succeeded. Idempotent per (event id, URL). URLs were checked when the job was created;
        they are checked again on every attempt."""
        unique = list(dict.fromkeys(urls))
        if not unique:
            return
        ids = [delivery_id(event.id, u) for u in unique]
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        keep_s = int(self.retry.max_age_s + self.retry.keep_s)
        args = [now_ms, keep_s, event.id, event.video_id, str(event.type), event.body, len(unique), *guard.args()]
        for did, url in zip(ids, unique):
            args += [did, url]
        pipe.eval(_ENQUEUE, 3 + len(ids), self.keys.webhook_due, self.keys.webhook_job(event.video_id), guard.key,
                  *[self.keys.webhook_delivery(d) for d in ids], *args)

    # ---- deliverer side ------------------------------------------------------------------------
    def claim(self, now_ms: int, limit: int) -> list[Claimed]:
        """Take up to `limit` due deliveries for one attempt each, leased for retry.lease_s."""
        flat = self._claim(keys=[self.keys.webhook_due],
                           args=[now_ms, int(self.retry.lease_s * 1000), limit, self.keys.webhook_delivery_prefix,
                                 self.retry.max_attempts, int(self.retry.max_age_s * 1000)])
        pairs = list(zip(flat[0::2], flat[1::2]))
        pipe = self.r.pipeline(transaction=False)
        for did, _ in pairs:
            pipe.hgetall(self.keys.webhook_delivery(did))
        out = []
        for (did, token), d in zip(pairs, pipe.execute()):
            out.append(Claimed(did, str(token), d["event_id"], d["job_id"], d["url"], d["body"].encode(),
                               int(d["attempts"]), int(d["created_ms"])))
        return out

    def record(self, claimed: Claimed, now_ms: int, outcome: str, attempt: dict, next_ms: int = 0) -> bool:
        """Log one attempt and apply its outcome ('delivered', 'retry' at next_ms, 'failed').
        False when the claim is no longer current (the lease ran out and another took it)."""
        return bool(self._record(keys=[self.keys.webhook_due, self.keys.webhook_delivery(claimed.delivery_id),
                                       self.keys.webhook_attempts(claimed.delivery_id)],
                                 args=[claimed.delivery_id, claimed.token, now_ms, outcome, next_ms,
                                       json.dumps(attempt, separators=(",", ":"))]))

    # ---- reading -------------------------------------------------------------------------------
    def deliveries(self, job_id: str) -> list[dict]:
        """The job's webhook deliveries with their attempts, oldest first, for the job record."""
        ids = self.r.lrange(self.keys.webhook_job(job_id), 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for did in ids:
            pipe.hmget(self.keys.webhook_delivery(did), "event_id", "type", "url", "state", "error", "created_ms",
                       "finished_ms", "next_ms")
            pipe.lrange(self.keys.webhook_attempts(did), 0, -1)
        replies = pipe.execute()
        out = []
        for did, fields, attempts in zip(ids, replies[0::2], replies[1::2]):
            event_id, type_, url, state, error, created_ms, finished_ms, next_ms = fields
            if state is None:  # expired
                continue
            out.append({"id": did, "event_id": event_id, "type": type_, "url": _origin(url), "state": state,
                        "created_at": int(created_ms) // 1000,
                        "finished_at": int(finished_ms) // 1000 if finished_ms else None,
                        "next_attempt_at": int(next_ms) // 1000 if state == "pending" else None,
                        "error": error, "attempts": [json.loads(a) for a in attempts]})
        return out
