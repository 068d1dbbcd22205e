"""The sync and async Python clients (client/api.py) against a real API, worker and Valkey: the
same calls give the same answers from both, and errors arrive as ParisError carrying the server's
status, code and param."""

import asyncio

import httpx
import numpy as np
import pytest

from client.api import AsyncParisClient, ParisClient, ParisError, _Poll
from weights.recipe.detector import read_mp4

KEY = "client-key-123"
# fields that differ between any two jobs (residency: the weight traffic depends on what ran before)
PER_JOB = {"id", "created_at", "completed_at", "expires_at", "residency"}


@pytest.fixture(scope="module")
def served(make_module_stack) -> str:
    s = make_module_stack(api_keys=[KEY])
    s.start_api()
    s.start_worker("w1")
    return s.url


@pytest.fixture(scope="module")
def queue_only(make_module_stack) -> str:
    """An API with no worker: its jobs stay queued."""
    s = make_module_stack(api_keys=[KEY])
    s.start_api()
    return s.url


@pytest.fixture
def both():
    """both(url) -> [(sync client, run), (async client, run)]: run(call) is the call's value, the
    async client's awaited on one event loop, so one test body drives either client."""
    loop = asyncio.new_event_loop()
    opened = []

    def open_both(url: str, api_key: str = KEY):
        sync, aio = ParisClient(url, api_key=api_key), AsyncParisClient(url, api_key=api_key)
        opened.append((sync, aio))
        return [(sync, lambda value: value), (aio, loop.run_until_complete)]

    yield open_both
    for sync, aio in opened:
        sync.close()
        loop.run_until_complete(aio.aclose())
    loop.close()


def paris_error(run, make_call) -> ParisError:
    with pytest.raises(ParisError) as err:
        run(make_call())
    return err.value


def without(video: dict, keys: set[str]) -> dict:
    return {k: v for k, v in video.items() if k not in keys}


def job_independent(video: dict) -> dict:
    """The video object less what names or times this particular job."""
    routing = video["routing"] and without(video["routing"], {"trace_url"})
    return {**without(video, PER_JOB), "routing": routing}


def test_both_clients_generate_and_fetch_the_same_video(served, both, tmp_path):
    def generate(client, run, name: str) -> dict:
        updates = []
        created = run(client.create("a red circle", num_inference_steps=2, seed=3, expert_schedule=[2, 0]))
        done = run(client.wait(created["id"], on_update=updates.append, poll_s=0.05))
        out = tmp_path / f"{name}.mp4"
        return {"created": created, "done": done, "updates": updates, "retrieved": run(client.retrieve(created["id"])),
                "trace": run(client.trace(created["id"])), "frames": read_mp4(run(client.download(created["id"], out)))[0],
                "thumbnail": run(client.download(created["id"], out.with_suffix(".png"), variant="thumbnail")).read_bytes()}

    clients = both(served)
    sync, aio = [generate(client, run, name) for (client, run), name in zip(clients, ["sync", "async"])]
    for got in (sync, aio):
        job_id = got["created"]["id"]
        # the job as created (the worker may already have claimed it, so its status is not fixed)
        assert got["created"]["seed"] == 3 and got["created"]["num_inference_steps"] == 2
        assert got["done"]["status"] == "completed" and got["done"]["progress"] == 100
        assert got["updates"][-1] == got["done"] == got["retrieved"]
        assert got["trace"]["id"] == job_id and got["trace"]["routing"] == got["done"]["routing"]
        assert [s["experts"] for s in got["trace"]["steps"]] == [[2], [0]]  # the schedule bypassed the router
        assert got["frames"].shape == (9, 32, 32, 3)
    assert sync["created"]["id"] != aio["created"]["id"]
    assert job_independent(sync["done"]) == job_independent(aio["done"])
    assert sync["trace"]["steps"] == aio["trace"]["steps"]
    assert np.array_equal(sync["frames"], aio["frames"]) and sync["thumbnail"] == aio["thumbnail"]

    listings = [run(client.list(limit=100)) for client, run in clients]
    assert listings[0] == listings[1]
    assert {sync["created"]["id"], aio["created"]["id"]} <= {v["id"] for v in listings[0]["data"]}
    newest = [run(client.list(limit=1, order="desc")) for client, run in clients]
    assert newest[0] == newest[1] and newest[0]["data"][0]["id"] == aio["created"]["id"] and newest[0]["has_more"]

    for (client, run), got in zip(clients, (sync, aio)):
        job_id = got["created"]["id"]
        assert run(client.delete(job_id)) == {"id": job_id, "object": "video.deleted", "deleted": True}
        assert paris_error(run, lambda: client.retrieve(job_id)).code == "video_not_found"


def test_errors_carry_status_code_and_param(served, both):
    seen = []
    for client, run in both(served):
        bad = paris_error(run, lambda: client.create("a", num_frames=10))
        missing = paris_error(run, lambda: client.retrieve("video_doesnotexist"))
        seen.append([(e.status, e.code, e.param, str(e)) for e in (bad, missing)])
        assert (bad.status, bad.code, bad.param) == (400, "invalid_value", "num_frames")
        assert (missing.status, missing.code, missing.param) == (404, "video_not_found", "video_id")
    for client, run in both(served, api_key="wrong-key"):
        wrong = paris_error(run, lambda: client.list())
        seen.append([(wrong.status, wrong.code, wrong.param, str(wrong))])
        assert (wrong.status, wrong.code, wrong.param) == (401, "invalid_api_key", None)
    assert seen[0] == seen[1] and seen[2] == seen[3]


def test_queued_job_wait_times_out_then_cancel_idempotency_and_download_error(queue_only, both, tmp_path):
    seen = []
    for i, (client, run) in enumerate(both(queue_only)):
        created = run(client.create("a queued job", seed=5, idempotency_key=f"same-{i}"))
        again = run(client.create("a queued job", seed=5, idempotency_key=f"same-{i}"))
        assert again["id"] == created["id"]
        updates = []
        with pytest.raises(TimeoutError):
            run(client.wait(created["id"], on_update=updates.append, poll_s=0.05, timeout_s=1.0))
        assert len(updates) >= 2 and all(u["status"] == "queued" and u["queue_position"] >= 1 for u in updates)
        out = tmp_path / "never.mp4"
        not_ready = paris_error(run, lambda: client.download(created["id"], out))
        assert (not_ready.status, not_ready.code) == (404, "video_not_ready") and not out.exists()
        cancelled = run(client.cancel(created["id"]))
        assert cancelled["status"] == "failed" and cancelled["error"]["code"] == "cancelled"
        assert run(client.wait(created["id"])) == run(client.retrieve(created["id"]))  # finished: no polling
        seen.append((job_independent(cancelled), not_ready.status, not_ready.code))
        run(client.delete(created["id"]))
    assert seen[0] == seen[1]


def test_async_client_runs_requests_concurrently(served):
    async def run():
        async with AsyncParisClient(served, api_key=KEY) as c:
            jobs = await asyncio.gather(*[c.create(f"a green circle {i}", num_inference_steps=2) for i in range(3)])
            done = await asyncio.gather(*[c.wait(j["id"], poll_s=0.05) for j in jobs])
            traces = await asyncio.gather(*[c.trace(j["id"]) for j in jobs])
            return jobs, done, traces

    jobs, done, traces = asyncio.run(run())
    assert len({j["id"] for j in jobs}) == 3
    assert [d["status"] for d in done] == ["completed"] * 3
    assert [t["id"] for t in traces] == [j["id"] for j in jobs] and all(len(t["steps"]) == 2 for t in traces)


def test_poll_sleeps_as_the_server_says_unless_told_otherwise():
    queued = {"id": "video_1", "status": "queued"}
    response = httpx.Response(200, json=queued, headers={"openai-poll-after-ms": "250"})
    seen = []
    assert _Poll("video_1", seen.append, None, None).delay(response) == 0.25
    assert _Poll("video_1", None, 0.05, None).delay(response) == 0.05
    assert seen == [queued]
    assert _Poll("video_1", None, None, None).delay(httpx.Response(200, json={**queued, "status": "failed"})) is None
    with pytest.raises(TimeoutError):
        _Poll("video_1", None, 0.05, -1).delay(response)
    with pytest.raises(ParisError) as err:
        _Poll("video_1", None, None, None).delay(httpx.Response(404, json={"error": {"code": "video_not_found"}}))
    assert err.value.status == 404 and err.value.code == "video_not_found"
