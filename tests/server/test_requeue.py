"""The requeue transition (a job whose files could not be stored goes back to the queue) on a
real Valkey: its attempt is refunded, it is first in line and any worker may take it at once,
and past its own budget it fails with a message that names no server path."""

import uuid

from pipeline.manifest import read_manifest
from pipeline.request import GenerationRequest, resolve
from server.api.auth import PUBLIC_OWNER
from server.queue.jobs import Job, JobStatus, new_job_id
from tests.support.stores import JobStore


def test_requeue_refunds_the_attempt_and_its_budget_ends_in_a_clear_failure(valkey, tiny_model_dir):
    manifest = read_manifest(tiny_model_dir)
    store = JobStore.from_url(valkey.connection_url, f"t{uuid.uuid4().hex[:8]}")
    store.ensure_group()
    ids = []
    for prompt in ("a red circle", "a blue square"):
        job = Job.new(new_job_id(), PUBLIC_OWNER, manifest.name, resolve(manifest, GenerationRequest(prompt)))
        store.enqueue(job)
        ids.append(job.id)
    [(entry, job_id)] = store.read_new("w1", 1, 0)
    assert job_id == ids[0]
    first, record = store.claim([(entry, job_id)], "w1", ttl_s=60, max_attempts=3)[job_id]
    assert record.status is JobStatus.IN_PROGRESS and record.fence == first.fence == 1
    assert store.requeue(first, "w1", lease_ms=1000, ttl_s=60, max_requeues=1)
    job = store.get(job_id)
    assert (job.status, job.attempts, job.worker) == (JobStatus.QUEUED, 0, None)
    assert store.queue_position(job_id) == 1 and store.queue_position(ids[1]) == 2
    assert not store.requeue(first, "w1", lease_ms=1000, ttl_s=60, max_requeues=1)  # no longer in progress

    # another worker takes it at once, without waiting for a lease to lapse
    assert [j for _, j in store.reclaim_stale("w2", 5, lease_ms=1000)] == [job_id]
    second, _ = store.claim([(entry, job_id)], "w2", ttl_s=60, max_attempts=3)[job_id]
    assert (second.fence, second.attempts) == (2, 1)
    assert store.requeue(second, "w2", lease_ms=1000, ttl_s=60, max_requeues=1)  # the budget is spent: fails
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error_code == "storage_unavailable"
    assert "storage failed 1 times" in job.error_message and "/" not in job.error_message
    assert not store.redis.sismember(store.keys.owner_active(PUBLIC_OWNER), job_id)
    assert store.state([job_id])[job_id] == (JobStatus.FAILED, 2, None)
