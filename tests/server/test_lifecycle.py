"""Must show: queued stays queued while no worker runs; progress moves through intermediate values
(100 only with the MP4 stored); cancel and delete of queued, running and finished jobs, the running
one stopping within a step. One API and one worker (max_batch=1) run in this module, in order."""

import time

import httpx
import pytest

from .harness import wait_until

STEPS = 12


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(max_batch=1, tick_delay_s=0.2, lease_ms=5000)
    s.start_api()
    return s


def create(stack, **fields):
    r = httpx.post(stack.url + "/v1/videos", data={"prompt": "a red circle moving left",
                                                   "num_inference_steps": str(STEPS), **fields})
    assert r.status_code == 200, r.text
    return r.json()


def get(stack, job_id):
    return httpx.get(f"{stack.url}/v1/videos/{job_id}")


def worker(stack):
    return stack.workers[0]


def test_queued_stays_queued_without_worker_then_progress_rises(stack):
    job = create(stack)
    assert job["status"] == "queued" and job["progress"] == 0 and job["queue_position"] == 1
    assert httpx.get(stack.url + "/ready").status_code == 503  # no worker heartbeat
    time.sleep(2.0)
    still = get(stack, job["id"]).json()
    assert still["status"] == "queued" and still["progress"] == 0 and still["queue_position"] == 1
    assert get(stack, job["id"]).headers["openai-poll-after-ms"]

    stack.start_worker("w1")
    seen = []
    end = time.time() + 60
    while time.time() < end:
        v = get(stack, job["id"]).json()
        seen.append((v["status"], v["progress"]))
        if v["progress"] == 100:
            # 100 only when the MP4 is stored: content is downloadable right now
            assert v["status"] == "completed"
            assert httpx.get(f"{stack.url}/v1/videos/{job['id']}/content").status_code == 200
        if v["status"] in ("completed", "failed"):
            break
        time.sleep(0.05)
    assert seen[-1] == ("completed", 100), seen
    progress = [p for _, p in seen]
    assert progress == sorted(progress), "progress must not go back"
    intermediate = {p for s, p in seen if s == "in_progress" and 0 < p < 100}
    assert len(intermediate) >= 3, seen
    assert httpx.get(stack.url + "/ready").status_code == 200


def _wait_step(stack, job_id, step):
    return wait_until(lambda: (lambda v: v if v["status"] == "in_progress" and (v["step"] or 0) >= step else None)(
        get(stack, job_id).json()), 60, 0.05, f"{job_id} at step {step}")


def test_cancel_and_delete_queued_and_running(stack):
    running = create(stack)
    queued_cancel = create(stack)
    queued_delete = create(stack)
    _wait_step(stack, running["id"], 2)
    # queued jobs (max_batch=1, so these wait)
    assert get(stack, queued_cancel["id"]).json()["status"] == "queued"
    r = httpx.post(f"{stack.url}/v1/videos/{queued_cancel['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "failed" and r.json()["error"]["code"] == "cancelled"
    r = httpx.delete(f"{stack.url}/v1/videos/{queued_delete['id']}")
    assert r.json() == {"id": queued_delete["id"], "object": "video.deleted", "deleted": True}
    assert get(stack, queued_delete["id"]).status_code == 404

    # the running one: cancel keeps the record, the worker stops within two steps and frees its slot
    # (the step's round trip, progress and stop checks, is sent off the engine loop: the record's step
    # may trail the engine by one, and the check that sees the cancel is read after the next step)
    r = httpx.post(f"{stack.url}/v1/videos/{running['id']}/cancel")
    v = r.json()
    assert v["status"] == "failed" and v["error"]["code"] == "cancelled"
    at = stack.job(running["id"]).cancelled_at_step
    stop = wait_until(lambda: next((e for e in worker(stack).events() if e["event"] == "job_stopped"
                                    and e["job"] == running["id"]), None), 10, 0.05, "worker stop")
    assert stop["reason"] == "cancelled" and stop["step"] <= at + 2, (stop, at)
    after = get(stack, running["id"]).json()
    assert after["status"] == "failed" and after["step"] <= at + 1

    # cancelled / deleted queued jobs never run; the slot goes to the next job
    nxt = create(stack)
    _wait_step(stack, nxt["id"], 1)
    claimed = {e["job"] for e in worker(stack).events() if e["event"] == "job_claimed"}
    assert queued_cancel["id"] not in claimed and queued_delete["id"] not in claimed
    assert stack.job(queued_cancel["id"]).attempts == 0

    # delete of a running job: the record and files go, the worker drops it
    r = httpx.delete(f"{stack.url}/v1/videos/{nxt['id']}")
    assert r.status_code == 200 and get(stack, nxt["id"]).status_code == 404
    stop = wait_until(lambda: next((e for e in worker(stack).events() if e["event"] == "job_stopped"
                                    and e["job"] == nxt["id"]), None), 10, 0.05, "worker drop")
    assert stop["reason"] == "deleted"
    time.sleep(0.5)
    assert not (stack.artifacts / nxt["id"]).exists()
    assert stack.job(nxt["id"]) is None


def test_cancel_and_delete_finished(stack):
    job = create(stack, num_inference_steps="2")
    done = wait_until(lambda: (lambda v: v if v["status"] == "completed" else None)(get(stack, job["id"]).json()),
                      60, 0.1, "completion")
    r = httpx.post(f"{stack.url}/v1/videos/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "video_already_finished"
    assert get(stack, job["id"]).json()["status"] == "completed"
    assert done["expires_at"] > done["completed_at"]
    assert (stack.artifacts / job["id"]).exists()
    r = httpx.delete(f"{stack.url}/v1/videos/{job['id']}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert get(stack, job["id"]).status_code == 404
    r = httpx.get(f"{stack.url}/v1/videos/{job['id']}/content")
    assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_found"
    assert not (stack.artifacts / job["id"]).exists()


def test_content_not_ready_is_404(stack):
    job = create(stack)
    r = httpx.get(f"{stack.url}/v1/videos/{job['id']}/content")
    assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_ready"
    httpx.delete(f"{stack.url}/v1/videos/{job['id']}")


def test_list_pagination(stack):
    ids = [create(stack, num_inference_steps="1")["id"] for _ in range(3)]
    page = httpx.get(stack.url + "/v1/videos", params={"limit": 2, "order": "desc"}).json()
    assert page["object"] == "list" and len(page["data"]) == 2 and page["has_more"] is True
    assert page["first_id"] == ids[-1]
    rest = httpx.get(stack.url + "/v1/videos", params={"limit": 2, "order": "desc", "after": page["last_id"]}).json()
    assert rest["data"][0]["id"] == ids[0]
    asc = [v["id"] for v in httpx.get(stack.url + "/v1/videos", params={"order": "asc", "limit": 100}).json()["data"]]
    desc = [v["id"] for v in httpx.get(stack.url + "/v1/videos", params={"order": "desc", "limit": 100}).json()["data"]]
    assert asc == desc[::-1] and asc[-3:] == ids
    for i in ids:
        httpx.delete(f"{stack.url}/v1/videos/{i}")
