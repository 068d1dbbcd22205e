"""A job as the server knows it: its status, the typed record behind `paris:job:<id>`, and the
names of every Redis key the server uses (the queue, the event logs, the webhook outbox).

`Job.from_hash` / `Job.to_hash` are the only code that turns the Redis hash into values and back;
`hash_args` is the same encoding for the partial updates the Lua transitions write.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from pipeline.request import ResolvedRequest
from pipeline.results import ComputeCounts, GenerationResult, TraceStep  # torch-free: the API never loads the engine

from .results import Residency, Routing

GROUP = "workers"  # the stream's consumer group: every worker reads through it
JOB_ID = re.compile(r"^video_[0-9a-f]{32}$")


class JobStatus(StrEnum):
    """The states of the machine in server/queue/store.py (the Lua scripts in scripts.py take these values)."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


class Enqueued(StrEnum):
    """What JobQueue.enqueue did with a new job (the ENQUEUE script returns these words)."""

    CREATED = "created"
    EXISTING = "existing"  # its Idempotency-Key already names a job made from the same request
    CONFLICT = "conflict"  # its Idempotency-Key names a job made from another request
    LIMIT = "limit"        # its owner (or client address) has max_active jobs queued or running
    BUSY = "busy"          # max_queued jobs wait already (the server-wide admission limit)


class QueueError(StrEnum):
    """The error codes the queue itself writes on a failed job (the worker and the engine name theirs)."""

    CANCELLED = "cancelled"
    MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"  # its workers stopped (died) max_attempts times
    STORAGE_UNAVAILABLE = "storage_unavailable"      # storing its files failed max_requeues times


def new_job_id() -> str:
    return "video_" + secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    return JOB_ID.match(text) is not None


@dataclass(frozen=True)
class Keys:
    """Every Redis key, under one prefix (so several deployments can share a Redis)."""

    prefix: str = "paris"

    @property
    def stream(self) -> str:  # entries {job: id}, read by the consumer group GROUP
        return f"{self.prefix}:jobs"

    @property
    def queued(self) -> str:  # ZSET of queued ids by enqueue order (queue position)
        return f"{self.prefix}:queued"

    @property
    def seq(self) -> str:  # counter giving `queued` its scores
        return f"{self.prefix}:seq"

    @property
    def expiry(self) -> str:  # ZSET of finished ids by expires_at
        return f"{self.prefix}:expiry"

    @property
    def workers(self) -> str:  # ZSET of worker ids by last heartbeat
        return f"{self.prefix}:workers"

    @property
    def workers_storage_down(self) -> str:  # ZSET of worker ids whose artifact storage fails, by last report
        return f"{self.prefix}:workers:storage_down"

    @property
    def metrics(self) -> str:  # hash of counters and histogram buckets (server/queue/metrics.py)
        return f"{self.prefix}:metrics"

    @property
    def job_prefix(self) -> str:
        return f"{self.prefix}:job:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    @property
    def owner_prefix(self) -> str:  # the claim script builds owner_active from the job's owner
        return f"{self.prefix}:owner:"

    def owner_jobs(self, owner: str) -> str:  # ZSET of an owner's ids by creation time (listing)
        return f"{self.owner_prefix}{owner}:jobs"

    ACTIVE_SUFFIX = ":active"  # not a field: the claim script appends it to owner_prefix + the job's owner

    def owner_active(self, owner: str) -> str:  # SET of an owner's queued and running ids (the limit)
        return f"{self.owner_prefix}{owner}{self.ACTIVE_SUFFIX}"

    def client_active(self, address: str) -> str:  # SET of a client address's active ids (the limit without keys)
        return f"{self.prefix}:client:{address}:active"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{key}"

    def events(self, job_id: str) -> str:  # a job's event log, a capped stream (server/notify/events.py)
        return f"{self.prefix}:events:{job_id}"

    # the webhook outbox (server/notify/webhooks/outbox.py)
    @property
    def webhook_due(self) -> str:  # ZSET of delivery ids by the time (ms) they may next be claimed
        return f"{self.prefix}:webhook:due"

    @property
    def webhook_delivery_prefix(self) -> str:
        return f"{self.prefix}:webhook:delivery:"

    def webhook_delivery(self, delivery_id: str) -> str:  # hash of one delivery's state
        return self.webhook_delivery_prefix + delivery_id

    def webhook_attempts(self, delivery_id: str) -> str:  # LIST of its attempts (JSON)
        return f"{self.prefix}:webhook:attempts:{delivery_id}"

    def webhook_job(self, job_id: str) -> str:  # LIST of a job's delivery ids
        return f"{self.prefix}:webhook:job:{job_id}"


@dataclass
class Job:
    # written once, at enqueue
    id: str
    owner: str
    model: str
    created_at: int
    request: str  # ResolvedRequest.to_json(); its first frame, if any, is the job's input artifact
    prompt: str
    seed: int
    num_frames: int
    fps: int
    size: str
    num_inference_steps: int
    has_image: bool
    webhook_urls: list[str] | None = None  # where video.completed / video.failed go (server-wide + the request's)
    # the state machine
    status: JobStatus = JobStatus.QUEUED
    entry_id: str | None = None  # the stream entry; acked and deleted when the job finishes
    fence: int = 0  # bumped by every claim; only the holder of the current fence may write
    attempts: int = 0
    worker: str | None = None  # set while in_progress
    progress: int = 0  # 0-99 while denoising, 100 once the MP4 is stored
    step: int | None = None
    completed_at: int | None = None
    expires_at: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    cancelled_at_step: int | None = None
    requeues: int | None = None  # times its storage failed and REQUEUE handed it back (the Lua script counts them)
    # the result (completed jobs)
    artifact_fence: int | None = None  # the attempt whose files are the result
    routing: Routing | None = None
    trace: list[TraceStep] | None = None
    residency: Residency | None = None
    compute: ComputeCounts | None = None

    @classmethod
    def new(cls, job_id: str, owner: str, model: str, request: ResolvedRequest,
            webhook_urls: list[str] | None = None) -> Job:
        return cls(id=job_id, owner=owner, model=model, created_at=int(time.time()), request=request.to_json(),
                   prompt=request.prompt, seed=request.seed, num_frames=request.num_frames, fps=request.fps,
                   size=request.size, num_inference_steps=request.num_inference_steps,
                   has_image=request.has_image, webhook_urls=webhook_urls or None)

    @property
    def seconds(self) -> float:
        return (self.num_frames - 1) / self.fps

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Job:
        """The job in a Redis hash (fields this version does not know are ignored)."""
        return cls(**{name: decode(name, raw) for name, raw in h.items() if name in _FIELDS})

    def to_hash(self) -> dict[str, str]:
        """The Redis hash of this job (fields that are None are absent)."""
        args = hash_args(**dataclasses.asdict(self))
        return dict(zip(args[::2], args[1::2], strict=True))


_FIELDS = frozenset(f.name for f in dataclasses.fields(Job))
_INTS = frozenset({"created_at", "seed", "num_frames", "fps", "num_inference_steps", "fence", "attempts", "progress",
                   "step", "completed_at", "expires_at", "cancelled_at_step", "requeues", "artifact_fence"})
_JSON = frozenset({"webhook_urls", "routing", "trace", "residency", "compute"})
_RECORDS = {"routing": Routing, "residency": Residency, "compute": ComputeCounts}  # JSON objects read as these


def decode(name: str, raw: str | None) -> object:
    """One field of the job hash as its value: the one decoder (Job.from_hash and the store's
    partial reads use it). An absent field, or an empty optional number or JSON, is None."""
    if name in _INTS or name in _JSON:
        if not raw:
            return None
        if name in _INTS:
            return int(raw)
        value = json.loads(raw)
        if name == "trace":
            return [TraceStep(**step) for step in value]
        return _RECORDS[name](**value) if name in _RECORDS else value
    if raw is None:
        return None
    if name == "status":
        return JobStatus(raw)
    if name == "has_image":
        return raw == "1"
    return raw


def _encode(value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "1" if value else "0"
    if isinstance(value, (dict, list)) or dataclasses.is_dataclass(value):
        return json.dumps(value, default=dataclasses.asdict)  # a record: its fields, in their order
    return str(value)  # str, int, JobStatus


def hash_args(**fields: object) -> list[str]:
    """Job fields as flat HSET arguments [name, value, ...]: the one encoding of a value in the
    hash. Names must be Job fields; None values are left out."""
    unknown = fields.keys() - _FIELDS
    if unknown:
        raise KeyError(f"not job fields: {sorted(unknown)}")
    out: list[str] = []
    for name, value in fields.items():
        if value is not None:
            out += [name, _encode(value)]
    return out


def completion(job_id: str, result: GenerationResult) -> dict[str, object]:
    """The fields a job gains when its result is stored: the routing summary users read on the
    Video object, the full per-step trace (/trace), the weight traffic while it ran and the expert
    work it ran and skipped."""
    request, summary, moved = result.request, result.routing, result.residency
    step_share = {str(i): v for i, v in enumerate(summary.step_share)}
    routing = Routing(policy=str(request.routing), top_k=request.top_k, step_share=step_share,
                      expert_share=step_share, weight_share={str(i): v for i, v in enumerate(summary.weight_share)},
                      steps=len(result.trace.steps), trace_url=f"/v1/videos/{job_id}/trace")
    residency = Residency(expert_loads_while_running=moved.expert_loads,
                          bytes_to_device_while_running=moved.bytes_to_device, max_waited_ticks=moved.max_waited_ticks)
    return {"progress": 100, "step": request.num_inference_steps, "routing": routing,
            "trace": list(result.trace.steps), "residency": residency,
            "compute": result.compute}
