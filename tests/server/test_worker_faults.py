"""No request hangs or poisons others; storage faults are infrastructure faults (issue 11, the
worker's side). Real `paris api` and `paris worker` processes on a real Valkey; Redis faults come
from a link that cuts connections on cue (tests/server/faulty_link.py), storage faults from a
file put where the artifact directory should be (a write fails even for root)."""

import hashlib
import time

import httpx
import pytest

from pipeline.manifest import read_manifest
from pipeline.request import GenerationRequest, resolve
from server.api.auth import PUBLIC_OWNER
from server.queue.jobs import GROUP, Job, JobStatus, Keys, new_job_id
from server.queue.scripts import SETTLE
from tests.support.stores import JobStore
from weights.recipe.detector import read_mp4

from .faulty_link import FaultyLink
from .harness import wait_until

LEASE_MS = 3000
PROMPTS = ["a red circle moving left", "a blue square growing", "a green triangle fading in", "a yellow circle moving up"]


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(lease_ms=LEASE_MS)
    s.start_api()
    return s


@pytest.fixture
def worker(stack):
    """Starts one worker for the test, stopped at its end (the API is shared)."""
    started = []

    def start(name, **settings):
        w = stack.start_worker(name, **settings)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def post(stack, prompt, steps=4):
    r = httpx.post(stack.url + "/v1/videos", json={"prompt": prompt, "num_inference_steps": steps, "seed": 1})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def finished(stack, job_id, timeout=60):
    return wait_until(lambda: (lambda j: j if j.status.finished else None)(stack.job(job_id)),
                      timeout, 0.1, f"{job_id} finished")


def assert_downloadable(stack, job_id, tmp_path):
    r = httpx.get(f"{stack.url}/v1/videos/{job_id}/content")
    assert r.status_code == 200, r.text
    out = tmp_path / f"{job_id}.mp4"
    out.write_bytes(r.content)
    assert read_mp4(out)[0].shape == (9, 32, 32, 3)


def settle_to(status: str):
    """Matches the command that settles a job to `status` (the SETTLE script, by its sha)."""
    sha = hashlib.sha1(SETTLE.encode()).hexdigest().encode()
    return lambda data: sha in data and status.encode() in data


def events(w, name):
    return [e for e in w.events() if e["event"] == name]


def test_a_request_the_encoders_cannot_take_fails_alone_beside_ordinary_ones(stack, worker):
    # The API refuses a lone surrogate; this job is written straight into the queue, as if it had not.
    manifest = read_manifest(stack.model)
    store = JobStore(stack.redis(), stack.prefix)

    def enqueue(request):
        job = Job.new(new_job_id(), PUBLIC_OWNER, manifest.name, resolve(manifest, request))
        assert store.enqueue(job)[0] == "created"
        return job.id

    poison = enqueue(GenerationRequest("a red circle", seed=1, negative_prompt="\udfff", num_inference_steps=4))
    ordinary = [enqueue(GenerationRequest(p, seed=2, num_inference_steps=4)) for p in PROMPTS[1:]]
    w = worker("poison", max_batch=4)  # started after the four are queued: one read, one batch
    start = time.time()
    job = finished(stack, poison, timeout=30)
    assert job.status is JobStatus.FAILED and job.error_code == "encode_failed", job
    for job_id in ordinary:
        assert finished(stack, job_id, timeout=30).status is JobStatus.COMPLETED
    assert time.time() - start < 30
    assert {e["job"] for e in events(w, "job_claimed")} == {poison, *ordinary}


def test_a_redis_error_while_settling_one_of_several_results_settles_each_of_them(stack, worker, valkey, tmp_path):
    link = FaultyLink(valkey.port)
    try:
        # the first completion never reaches Valkey, and Valkey is unreachable for a second after it
        hit = link.cut(settle_to("completed"), reply_lost=False, down_s=1.0)
        ids = [post(stack, p) for p in PROMPTS]  # queued before the worker starts: one batch, done in one step
        w = worker("settle", redis_url=link.url, max_batch=4)
        jobs = [finished(stack, job_id, timeout=40) for job_id in ids]
        assert hit.wait(10)
        assert [(j.status, j.attempts, j.artifact_fence) for j in jobs] == [(JobStatus.COMPLETED, 1, 1)] * 4, jobs
        assert events(w, "settle_retry")
        for job_id in ids:
            assert_downloadable(stack, job_id, tmp_path)
    finally:
        link.close()


def test_a_settle_whose_reply_was_lost_keeps_the_accepted_files(stack, worker, valkey, tmp_path):
    link = FaultyLink(valkey.port)
    try:
        hit = link.cut(settle_to("completed"), reply_lost=True)  # it applies; the worker never hears
        job_id = post(stack, PROMPTS[0])
        w = worker("lost", redis_url=link.url)
        job = finished(stack, job_id)
        assert hit.wait(10)
        assert job.status is JobStatus.COMPLETED and job.artifact_fence == job.fence == 1, job
        wait_until(lambda: events(w, "job_completed"), 10, 0.1, "the worker's job_completed line")
        assert not events(w, "fenced_out")
        assert sorted(p.name for p in (stack.artifacts / job_id).glob("r*")) == ["r1"]
        assert_downloadable(stack, job_id, tmp_path)
    finally:
        link.close()


def ready(stack):
    r = httpx.get(stack.url + "/ready")
    return r.status_code, (r.json().get("error") or {}).get("code")


def test_storage_failing_for_20_s_hands_jobs_back_and_every_job_completes(stack, worker, tmp_path):
    w = worker("storage", max_batch=2)
    wait_until(lambda: ready(stack)[0] == 200, 20, 0.2, "ready")
    aside = stack.artifacts.with_name("artifacts-aside")
    stack.artifacts.rename(aside)
    stack.artifacts.write_text("a file where the artifact directory should be")
    broke = time.time()
    ids = [post(stack, PROMPTS[0])]
    wait_until(lambda: ready(stack) == (503, "storage_unavailable"), 20, 0.2, "/ready 503 storage_unavailable")
    while time.time() - broke < 20:  # jobs keep arriving; none may fail
        ids.append(post(stack, PROMPTS[len(ids) % 4]))
        assert all(not stack.job(j).status.finished for j in ids), [stack.job(j) for j in ids]
        time.sleep(2)
    stack.artifacts.unlink()
    aside.rename(stack.artifacts)
    jobs = [finished(stack, job_id, timeout=60) for job_id in ids]
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * len(ids), [(j.id, j.error_message) for j in jobs]
    assert all(j.attempts == 1 for j in jobs)  # handing a job back did not use up its attempts
    assert ready(stack)[0] == 200
    assert events(w, "storage_failed") and events(w, "job_requeued") and events(w, "storage_recovered")
    for job_id in ids:
        assert_downloadable(stack, job_id, tmp_path)
    r = stack.redis()
    assert r.xpending(Keys(stack.prefix).stream, GROUP)["pending"] == 0


def test_a_job_past_the_maximum_run_time_fails_with_timeout_and_frees_its_slot(stack, worker):
    worker("slow", max_batch=1, max_job_seconds=2, tick_delay_s=0.3)
    start = time.time()
    slow = post(stack, PROMPTS[0], steps=40)  # 40 steps x 0.3 s: far past 2 s
    after = post(stack, PROMPTS[1], steps=2)
    job = finished(stack, slow, timeout=30)
    assert job.status is JobStatus.FAILED and job.error_code == "timeout", job
    assert "2 s" in job.error_message and time.time() - start < 10
    assert finished(stack, after, timeout=30).status is JobStatus.COMPLETED
