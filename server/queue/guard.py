"""A condition on a Redis hash that a write must meet, checked inside the write's own Lua script.

Why: a job's terminal event and its webhook deliveries must exist exactly when the job's settle
(or cancel) succeeded. Queue the settle script, then the guarded writes, in one MULTI pipeline:
the guarded scripts run right after the settle, see its result (say, `status` and `fence` of the
job hash), and write nothing when it was refused, so a fenced-out worker adds no event and a
crash cannot land between the job's new state and its events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Lua: true when the hash KEYS[key_index] holds every field/value pair given in ARGV[first ...]
# (`n` pairs). No guard: key_index points at an empty key name and n is 0.
GUARD_LUA = """
local function guard_ok(key, n, first)
  for i = 0, n - 1 do
    if redis.call('HGET', key, ARGV[first + 2 * i]) ~= ARGV[first + 2 * i + 1] then return false end
  end
  return true
end
"""


@dataclass(frozen=True)
class Guard:
    """Write only if the hash at `key` holds these field values, e.g.
    `Guard(job_key, {"status": "completed", "fence": "3"})` after a settle with fence 3."""

    key: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def args(self) -> list[str]:
        """The ARGV tail GUARD_LUA reads: n, then field, value pairs."""
        out = [str(len(self.fields))]
        for name, value in self.fields.items():
            out += [name, str(value)]
        return out


UNGUARDED = Guard("", {})
