"""GET /v1/videos/{id}/events on real processes: two `paris api` processes on one Redis and one
`paris worker` (the tiny model, one job at a time). A client reads part of a job's events from
the first API, drops the connection, and reconnects to the second with Last-Event-ID: together
they are the job's whole log, in order, none twice, ending with `completed`; the progress events
name the experts and weights /trace records for each step; a queued job hears its position move;
a cancelled job's stream ends with `failed`; another key's job is 404, no key is 401."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .harness import wait_until
from .sse import read_events

KEY, OTHER = "pk-events-a", "pk-events-b"
STEPS = 6


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(api_keys=[KEY, OTHER], max_batch=1, tick_delay_s=0.25, poll_after_ms=200)
    s.start_api()
    s.second_url = s.start_another_api()
    return s


def create(url, key=KEY, **fields):
    r = httpx.post(url + "/v1/videos", headers={"Authorization": f"Bearer {key}"},
                   data={"prompt": "a red circle moving left", "num_inference_steps": str(STEPS), "top_k": "2",
                         **fields}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def events_url(base, job_id):
    return f"{base}/v1/videos/{job_id}/events"


def test_two_apis_serve_one_log_in_order_across_a_reconnect_with_last_event_id(stack):
    first = create(stack.url)
    second = create(stack.second_url)  # queued behind the first: position 2, then 1
    with ThreadPoolExecutor(1) as pool:  # someone watches the second job from the start
        later = pool.submit(read_events, events_url(stack.url, second["id"]), KEY)
        stack.start_worker("w1")
        whole, head, tail = follow_with_a_reconnect(stack, first["id"])
        later = later.result(timeout=120)
    assert [(f["event"], f["data"].get("position"), "id" in f) for f in later[:2]] == [
        ("queued", 2, True), ("queued", 1, False)]  # the move is read from the queue, not logged
    assert [f["event"] for f in later[2:]] == ["progress"] * STEPS + ["completed"]

    assert [f["id"] for f in head + tail] == [f["id"] for f in whole]
    assert head + tail == whole
    ids = [tuple(map(int, f["id"].split("-"))) for f in whole]
    assert ids == sorted(set(ids))
    assert [f["event"] for f in whole] == ["queued"] + ["progress"] * STEPS + ["completed"]
    assert whole[0]["data"] == {"position": 1}
    progress = [f["data"] for f in whole[1:-1]]
    assert [p["step"] for p in progress] == list(range(1, STEPS + 1))
    assert all(p["total"] == STEPS for p in progress)
    assert [p["progress"] for p in progress] == [min(99, int(99 * s / STEPS)) for s in range(1, STEPS + 1)]

    trace = httpx.get(f"{stack.url}/v1/videos/{first['id']}/trace", headers={"Authorization": f"Bearer {KEY}"}).json()
    for p, step in zip(progress, trace["steps"], strict=True):  # progress step n ran trace step n - 1
        assert p["experts"] == step["experts"] and len(p["experts"]) == 2
        assert p["weights"] == pytest.approx(step["weights"], abs=1e-6)


def follow_with_a_reconnect(stack, job_id):
    """Three events from the first API, then the connection drops; the rest from the second with
    Last-Event-ID; and, once it ended, the whole log from the start."""
    head = read_events(events_url(stack.url, job_id), KEY, limit=3)
    tail = read_events(events_url(stack.second_url, job_id), KEY, last_event_id=head[-1]["id"])
    return read_events(events_url(stack.second_url, job_id), KEY), head, tail


def test_a_cancelled_job_ends_its_stream_with_failed(stack):
    job = create(stack.url, num_inference_steps="40")
    wait_until(lambda: httpx.get(f"{stack.url}/v1/videos/{job['id']}", headers={"Authorization": f"Bearer {KEY}"}
                                 ).json()["step"], 60, 0.1, "first step")
    r = httpx.post(f"{stack.second_url}/v1/videos/{job['id']}/cancel", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    frames = read_events(events_url(stack.url, job["id"]), KEY)
    assert frames[-1]["event"] == "failed" and frames[-1]["data"] == {"code": "cancelled",
                                                                      "message": "The job was cancelled."}
    assert {f["event"] for f in frames[:-1]} <= {"queued", "progress"}
    again = httpx.post(f"{stack.url}/v1/videos/{job['id']}/cancel", headers={"Authorization": f"Bearer {KEY}"})
    assert again.status_code == 409
    assert read_events(events_url(stack.second_url, job["id"]), KEY) == frames  # one ending, however often asked


def test_same_auth_and_isolation_as_the_other_routes(stack):
    job = create(stack.url)
    url = events_url(stack.second_url, job["id"])
    other = httpx.get(url, headers={"Authorization": f"Bearer {OTHER}"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "video_not_found"
    assert httpx.get(url).status_code == 401
    assert httpx.get(events_url(stack.url, "video_" + "0" * 32), headers={"Authorization": f"Bearer {KEY}"}
                     ).status_code == 404
    assert read_events(url, KEY)[-1]["event"] == "completed"
