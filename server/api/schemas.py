"""Pydantic models for request bodies and responses (OpenAI Videos API shape + extensions)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from pipeline.manifest import Manifest
from pipeline.request import REQUEST_FIELDS
from pipeline.request_fields import takes_numbers
from pipeline.results import ComputeCounts, TraceStep
from pipeline.speed import Speed

from server.queue.jobs import Job, JobStatus
from server.queue.results import Residency, Routing


class _BodyRules(BaseModel):
    """What every field of the `POST /v1/videos` body obeys."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # Infinity, NaN, "inf": 400 naming the field

    @field_validator("*", mode="before")
    @classmethod
    def _typed(cls, v, info: ValidationInfo):
        # pydantic's lax mode reads true as 1: `num_frames: true` would make a 1-frame video
        if takes_numbers(cls.model_fields[info.field_name].annotation) and (
                isinstance(v, bool) or (isinstance(v, list) and any(isinstance(x, bool) for x in v))):
            raise ValueError("must be a number, not true or false")
        listed = _LISTED.get(info.field_name)
        if listed is not None and isinstance(v, str):  # "0,2,1" (multipart) -> [0, 2, 1]
            return listed.parse(v)
        return v


_LISTED = {f.name: f for f in REQUEST_FIELDS if f.listed}


def _create_video_fields() -> dict:
    """GenerationRequest's fields (pipeline/request.py) and the API's own: `model`, `seconds` (instead
    of num_frames) and `webhook_url` (an https receiver of this job's video.completed / video.failed).
    The first frame is an upload (`input_reference`), not a field."""
    fields = {f.name: (f.body_type, ... if f.required else None) for f in REQUEST_FIELDS if not f.file}
    return {"prompt": fields.pop("prompt"), "model": (str | None, None),
            "seconds": (float | None, Field(default=None, gt=0)), **fields, "webhook_url": (str | None, None)}


class CreateVideo(create_model("CreateVideoFields", __base__=_BodyRules, **_create_video_fields())):
    """`POST /v1/videos` fields; multipart form values arrive as strings and are coerced."""


class VideoError(BaseModel):
    code: str
    message: str


class WebhookAttempt(BaseModel):
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDelivery(BaseModel):
    """One event to one receiver (server/notify/webhooks/outbox.py); `url` is the receiver's origin only."""

    id: str
    event_id: str
    type: str
    url: str
    state: Literal["pending", "delivered", "failed"]
    created_at: int
    finished_at: int | None
    next_attempt_at: int | None
    error: str | None
    attempts: list[WebhookAttempt]


class Video(BaseModel):
    id: str
    object: Literal["video"] = "video"
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    model: str
    status: JobStatus
    progress: int
    prompt: str | None = None
    seconds: str
    size: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    # extensions
    seed: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    num_inference_steps: int | None = None
    step: int | None = None
    queue_position: int | None = None
    attempts: int = 0
    image_to_video: bool = False
    routing: Routing | None = Field(default=None, description="routing policy and share of steps per expert; "
                                                              "full per-step trace at /v1/videos/{id}/trace")
    residency: Residency | None = Field(default=None, description="expert loads and weight bytes moved to the device "
                                        "while this job ran, and the most ticks it waited for its expert")
    compute: ComputeCounts | None = Field(default=None, description="expert row-forwards and block-forwards run and "
                                          "skipped (guidance interval, step caching): what the speed preset saved")
    webhooks: list[WebhookDelivery] | None = Field(default=None, description="deliveries of this job's webhook "
                                                   "event and their attempts (null: the job has no webhook URL)")

    @classmethod
    def from_job(cls, job: Job, queue_position: int | None = None,
                 webhooks: list[dict] | None = None) -> "Video":
        error = VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None
        return cls(id=job.id, created_at=job.created_at, completed_at=job.completed_at, expires_at=job.expires_at,
                   model=job.model, status=job.status, progress=job.progress, prompt=job.prompt,
                   seconds=f"{job.seconds:g}", size=job.size, error=error, seed=job.seed, num_frames=job.num_frames,
                   fps=job.fps, num_inference_steps=job.num_inference_steps, step=job.step, attempts=job.attempts,
                   queue_position=queue_position, image_to_video=job.has_image, routing=job.routing,
                   residency=job.residency, compute=job.compute, webhooks=webhooks)


class VideoTrace(BaseModel):
    """`GET /v1/videos/{id}/trace`: a completed job's routing summary and its every step."""

    id: str
    object: Literal["video.trace"] = "video.trace"
    routing: Routing | None
    steps: list[TraceStep]


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "paris"
    # extensions, from the model's manifest (the playground shows them)
    description: str = ""
    experts: list[str] = Field(default_factory=list, description="expert names by index: the keys of a video's "
                                                                 "routing shares")
    examples: list[str] = Field(default_factory=list, description="prompts that show what the model does")
    speed_presets: list[str] = Field(default_factory=list, description="values the `speed` field accepts")
    default_speed: str | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, created: int) -> "Model":
        return cls(id=manifest.name, created=created, description=manifest.description,
                   experts=[e.name or f"expert {i}" for i, e in enumerate(manifest.components.experts)],
                   examples=manifest.examples, speed_presets=[s.value for s in Speed],
                   default_speed=manifest.sampling.speed.value)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
