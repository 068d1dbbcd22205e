"""The worker does not trust the engine's promise that every request leaves it with an event:
a request the engine forgets fails (`engine_lost`), and a step that raises every time fails what
the engine held (`engine_error`) instead of hanging them; the worker goes on serving. The worker
runs in this process (real Valkey, real engine on the tiny model) so that the engine can be
made to break its promise on purpose."""

import threading
import uuid

import pytest

from pipeline.engine import Engine
from pipeline.manifest import read_manifest
from pipeline.request import GenerationRequest, resolve
from server.storage.local import LocalArtifacts
from server.api.auth import PUBLIC_OWNER
from server.queue.jobs import Job, JobStatus, new_job_id
from server.process.settings import Settings
from tests.support.stores import JobStore
from server.worker.loop import Worker

from .harness import wait_until

FORGOTTEN = "a red circle moving left"


class ForgetsOne(Engine):
    """Drops the request with prompt FORGOTTEN from its pending list without an event."""

    def tick(self):
        self.pending = [(job_id, r) for job_id, r in self.pending if r.prompt != FORGOTTEN]
        return super().tick()


class RaisesWhileHolding(Engine):
    """Every step raises while the request with prompt FORGOTTEN is in the engine (a bug that
    one request's state triggers)."""

    def tick(self):
        if any(r.prompt == FORGOTTEN for _, r in self.pending) or \
                any(s.request.prompt == FORGOTTEN for s in self.active.values()):
            super().tick()
            raise RuntimeError("injected")
        return super().tick()


@pytest.fixture
def run_worker(tiny_model, tiny_model_dir, valkey, tmp_path):
    started = []

    def start(engine_class):
        settings = Settings(model=str(tiny_model_dir), key_prefix=f"t{uuid.uuid4().hex[:8]}", lease_ms=3000,
                            max_batch=4, artifact_dir=tmp_path / "artifacts")
        store = JobStore.from_url(valkey.connection_url, settings.key_prefix)
        worker = Worker(settings, store, LocalArtifacts(settings.resolved_artifact_dir()),
                        engine_class(tiny_model, max_batch=4), "in-process")
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return store

    yield start
    for worker, thread in started:
        worker.stop.set()
        thread.join(30)
        assert not thread.is_alive()


def enqueue(store: JobStore, manifest, prompt: str) -> str:
    job = Job.new(new_job_id(), PUBLIC_OWNER, manifest.name,
                  resolve(manifest, GenerationRequest(prompt, seed=1, num_inference_steps=3)))
    assert store.enqueue(job)[0] == "created"
    return job.id


def finished(store: JobStore, job_id: str) -> Job:
    return wait_until(lambda: (lambda j: j if j.status.finished else None)(store.get(job_id)), 30, 0.05,
                      f"{job_id} finished")


def test_a_request_the_engine_forgets_fails_and_the_others_complete(run_worker, tiny_model_dir):
    manifest = read_manifest(tiny_model_dir)
    store = run_worker(ForgetsOne)
    forgotten = enqueue(store, manifest, FORGOTTEN)
    others = [enqueue(store, manifest, p) for p in ("a blue square growing", "a green triangle fading in")]
    job = finished(store, forgotten)
    assert job.status is JobStatus.FAILED and job.error_code == "engine_lost", job
    assert [finished(store, j).status for j in others] == [JobStatus.COMPLETED] * 2
    assert not store.redis.smembers(store.keys.owner_active(PUBLIC_OWNER))  # its active-job slot is free again


def test_a_step_that_always_raises_fails_what_the_engine_held_and_the_worker_goes_on(run_worker, tiny_model_dir):
    manifest = read_manifest(tiny_model_dir)
    store = run_worker(RaisesWhileHolding)
    job = finished(store, enqueue(store, manifest, FORGOTTEN))
    assert job.status is JobStatus.FAILED and job.error_code == "engine_error" and "injected" in job.error_message
    assert finished(store, enqueue(store, manifest, "a blue square growing")).status is JobStatus.COMPLETED
