"""Job creation as a service (server/api/creation.py) owns its upload: the first frame it stores
stays only when the queue created the job; a refusal (queue full, active-job limit, a reused
Idempotency-Key), an idempotent hit and an exception from the queue each remove it again, and the
refusals are the route's 429/409 errors. Called directly, on a real Valkey and a real local
artifact store (test_backpressure.py covers the 503 through HTTP)."""

from __future__ import annotations

import asyncio
import io
import uuid

import pytest
import redis
from PIL import Image

from pipeline.manifest import read_manifest
from server.api.creation import Caller, JobCreation
from server.api.schemas import CreateVideo
from server.api.uploads import ImageLimits, ImageSlots
from server.api.webhook_service import WebhookService
from server.errors import APIError
from server.process.settings import Settings
from server.queue.job_queue import JobQueue
from server.storage import INPUT
from server.storage.local import LocalArtifacts

from .harness import free_port

CALLER = Caller(owner="public", tenant="public", client=None)


class NotedArtifacts(LocalArtifacts):
    """The real local store, noting each first frame written: "no file left" then means removed,
    not never written."""

    def __init__(self, root):
        super().__init__(root)
        self.written: list[str] = []

    def write_input(self, job_id, image) -> None:
        super().write_input(job_id, image)
        self.written.append(job_id)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 32), (20, 200, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def make_creation(tmp_path, tiny_model_dir, valkey):
    """A JobCreation on the shared Valkey (a fresh key prefix) and a local artifact folder;
    `redis_url` points its queue elsewhere (a port nothing listens on)."""

    def make(redis_url: str = valkey.connection_url, **settings) -> JobCreation:
        s = Settings(model=str(tiny_model_dir), data_dir=tmp_path, key_prefix=f"t{uuid.uuid4().hex[:8]}", **settings)
        queue = JobQueue(redis.Redis.from_url(redis_url, decode_responses=True), s.key_prefix)
        limits = ImageLimits(max_bytes=s.max_upload_bytes, max_pixels=s.max_image_pixels, max_side=s.max_image_side,
                             max_aspect_ratio=s.max_image_aspect_ratio)
        return JobCreation(s, read_manifest(tiny_model_dir), queue, NotedArtifacts(s.resolved_artifact_dir()),
                           WebhookService(s), ImageSlots(2), limits)

    return make


def create(creation: JobCreation, prompt: str, image: bytes | None = None, caller: Caller = CALLER):
    return asyncio.run(creation.create(CreateVideo(prompt=prompt, num_inference_steps=2), image, caller))


def refusal(creation: JobCreation, prompt: str, image: bytes | None = None, caller: Caller = CALLER) -> APIError:
    with pytest.raises(APIError) as caught:
        create(creation, prompt, image, caller)
    return caught.value


def stored_jobs(creation: JobCreation) -> list[str]:
    """The job folders holding a first frame."""
    return sorted(p.parent.name for p in creation.artifacts.root.glob(f"video_*/{INPUT}"))


def test_a_created_job_keeps_its_first_frame(make_creation):
    c = make_creation()
    job = create(c, "a green square", png())
    assert job.has_image and c.store.get(job.id) is not None
    assert c.artifacts.written == stored_jobs(c) == [job.id]


def test_a_full_queue_is_a_429_and_leaves_no_first_frame(make_creation):
    c = make_creation(max_queued_jobs=1)
    create(c, "first")  # text only: it fills the queue
    error = refusal(c, "second", png())
    assert (error.status, error.code, error.headers) == (429, "queue_full", {"Retry-After": "5"})
    assert "(1 jobs waiting)" in error.message
    assert len(c.artifacts.written) == 1 and stored_jobs(c) == []


def test_the_active_job_limit_is_a_429_naming_the_key_or_the_client(make_creation):
    c = make_creation(max_active_jobs_per_key=1, poll_after_ms=2000)
    create(c, "first")
    error = refusal(c, "second", png())
    assert (error.status, error.code, error.headers) == (429, "too_many_queued_jobs", {"Retry-After": "10"})
    assert error.message.startswith("This key already has 1 queued or running jobs")
    by_address = Caller(owner="public", tenant="client:10.0.0.7", client="10.0.0.7")
    create(c, "first", caller=by_address)
    error = refusal(c, "second", png(), by_address)
    assert error.message.startswith("This client already has 1 queued or running jobs")
    assert len(c.artifacts.written) == 2 and stored_jobs(c) == []


def test_an_idempotent_hit_returns_the_first_job_and_removes_the_second_upload(make_creation):
    c = make_creation()
    keyed = Caller(owner="public", tenant="public", client=None, idempotency_key="k1")
    first = create(c, "a green square", png(), keyed)
    again = create(c, "a green square", png(), keyed)
    assert again.id == first.id
    error = refusal(c, "another prompt", png(), keyed)
    assert (error.status, error.code) == (409, "idempotency_key_reused")
    assert len(c.artifacts.written) == 3
    assert stored_jobs(c) == [first.id]  # only the job that exists has its first frame


def test_a_queue_that_raises_leaves_no_first_frame(make_creation):
    c = make_creation(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    with pytest.raises(redis.ConnectionError):
        create(c, "a green square", png())
    assert len(c.artifacts.written) == 1 and stored_jobs(c) == []
