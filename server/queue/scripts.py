"""The state machine's transitions (server/queue/store.py), one Lua script each, so each is atomic.
Their words (statuses, outcomes, error codes, hash fields) come from the job vocabulary
(server/queue/jobs.py)."""

from __future__ import annotations

import dataclasses
import time
from string import Template

from .jobs import Enqueued, Job, JobStatus, Keys, QueueError


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
