"""Must show: kill -9 of a worker mid-job -> another worker completes it, exactly one result;
a SIGSTOPped worker past its lease cannot overwrite the result of the worker that took over;
after max attempts the job fails clearly. Real worker processes on a real Valkey."""

import signal
import time

import httpx
import pytest

from server.queue.jobs import GROUP, JobStatus, Keys
from weights.recipe.detector import read_mp4

from .harness import wait_until

LEASE_MS = 2500


def create(stack, steps=14):
    r = httpx.post(stack.url + "/v1/videos", data={"prompt": "a blue square moving up",
                                                   "num_inference_steps": str(steps)})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def running_at(stack, job_id, step):
    def check():
        j = stack.job(job_id)
        return j if j.status is JobStatus.IN_PROGRESS and j.step >= step else None
    return wait_until(check, 60, 0.05, f"{job_id} running at step {step}")


def completed(stack, job_id, timeout=60):
    return wait_until(lambda: (lambda j: j if j.status.finished else None)(stack.job(job_id)),
                      timeout, 0.1, f"{job_id} finished")


def by_name(stack, name):
    return next(w for w in stack.workers if w.log.name == f"worker-{name}.log")


def result_dirs(stack, job_id):
    return sorted(p.name for p in (stack.artifacts / job_id).glob("r*"))


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(lease_ms=LEASE_MS, tick_delay_s=0.25, max_attempts=2, max_batch=2)
    s.start_api()
    return s


def test_kill9_worker_mid_job_other_worker_completes_once(stack, tmp_path):
    a = stack.start_worker("a", wait=False)
    b = stack.start_worker("b", wait=False)
    for w in (a, b):
        wait_until(lambda w=w: any(e["event"] == "worker_started" for e in w.events()), 90, 0.1, "worker start")
    job_id = create(stack)
    victim_name = running_at(stack, job_id, 2).worker
    victim = by_name(stack, victim_name)
    survivor = b if victim is a else a
    victim.signal(signal.SIGKILL)
    victim.p.wait(5)

    job = completed(stack, job_id)
    assert job.status is JobStatus.COMPLETED, job
    assert job.attempts == 2 and job.artifact_fence == job.fence == 2
    assert any(e["event"] == "job_claimed" and e["job"] == job_id and e["how"] == "reclaim"
               for e in survivor.events())
    # exactly one result: one attempt directory, one completion, nothing left pending in the group
    assert result_dirs(stack, job_id) == ["r2"]
    def completions():  # the worker logs just after the record says completed
        return sum(1 for e in survivor.events() if e["event"] == "job_completed" and e["job"] == job_id)
    wait_until(completions, 10, 0.05, "the survivor's job_completed line")
    assert completions() == 1
    r = stack.redis()
    assert r.xpending(Keys(stack.prefix).stream, GROUP)["pending"] == 0
    out = tmp_path / "v.mp4"
    out.write_bytes(httpx.get(f"{stack.url}/v1/videos/{job_id}/content").content)
    assert read_mp4(out)[0].shape == (9, 32, 32, 3)


def test_sigstopped_worker_cannot_overwrite_the_takeover_result(stack):
    stack.start_worker("c")  # the killed worker's replacement; "b" (or "a") is still alive
    alive = [w for w in stack.workers if w.p.poll() is None]
    assert len(alive) == 2
    job_id = create(stack, steps=12)
    victim = by_name(stack, running_at(stack, job_id, 2).worker)
    victim.signal(signal.SIGSTOP)
    try:
        job = completed(stack, job_id)
        assert job.status is JobStatus.COMPLETED and job.fence == 2, job
        snapshot = job
        video = httpx.get(f"{stack.url}/v1/videos/{job_id}/content").content
    finally:
        victim.signal(signal.SIGCONT)
    # the resumed worker notices it lost the lease / fence and drops the job without writing
    stop = wait_until(lambda: next((e for e in victim.events() if e["event"] in ("job_stopped", "fenced_out")
                                    and e["job"] == job_id), None), 15, 0.1, "stale worker drop")
    assert stop.get("reason", "fenced_out") == "fenced_out" and stop["fence"] == 1
    time.sleep(1.0)
    assert stack.job(job_id) == snapshot
    assert httpx.get(f"{stack.url}/v1/videos/{job_id}/content").content == video
    assert result_dirs(stack, job_id) == ["r2"]
    assert victim.p.poll() is None  # the stale worker keeps serving


def test_job_fails_after_max_attempts(stack):
    job_id = create(stack, steps=40)
    for attempt in (1, 2):
        name = running_at(stack, job_id, 1).worker
        assert stack.job(job_id).attempts == attempt
        w = by_name(stack, name)
        w.signal(signal.SIGKILL)
        w.p.wait(5)
        if attempt == 1:
            # the other live worker reclaims it after the lease
            wait_until(lambda: (lambda j: j.attempts == 2 and j.status is JobStatus.IN_PROGRESS)(stack.job(job_id)),
                       30, 0.1, "second attempt")
    assert not any(w.p.poll() is None for w in stack.workers)
    stack.start_worker("d")
    job = completed(stack, job_id, timeout=30)
    assert job.status is JobStatus.FAILED and job.error_code == "max_attempts_exceeded", job
    v = httpx.get(f"{stack.url}/v1/videos/{job_id}").json()
    assert v["error"]["code"] == "max_attempts_exceeded" and "2 times" in v["error"]["message"]


def test_sigterm_hands_the_running_job_over_at_once(stack):
    stack.start_worker("e")
    job_id = create(stack, steps=16)
    victim = by_name(stack, running_at(stack, job_id, 2).worker)
    victim.signal(signal.SIGTERM)
    victim.p.wait(15)
    released = [e for e in victim.events() if e["event"] == "job_released" and e["job"] == job_id]
    assert released and released[0]["ok"] is True
    job = completed(stack, job_id)
    assert job.status is JobStatus.COMPLETED and job.fence == 2
    assert result_dirs(stack, job_id) == ["r2"]
