"""Artifacts on S3-compatible storage (a real SeaweedFS), so the API and the workers share no
filesystem: two machines simulated on one (an API and two workers, each with its own data dir,
one Redis, one S3 server). Issue 11: 30 jobs, text- and image-to-video, all downloadable (Range
too), the S3 server restarted mid-run with 0 jobs lost, expiry removes the objects."""

import io
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from server.storage import StorageError
from server.storage.s3 import S3Artifacts
from weights.recipe.detector import read_mp4

from .harness import REPO, wait_until
from .s3server import SeaweedS3, get_ok

BUCKET, TTL_S = "paris", 60  # long enough to check every job before it expires, on a loaded machine


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def test_two_machines_share_only_redis_and_s3(make_stack, s3, tmp_path):
    prefix = "run1"
    s = make_stack(artifact_url=f"s3://{BUCKET}/{prefix}", job_ttl_s=TTL_S, max_batch=8, lease_ms=10_000,
                   max_active_jobs_per_key=100)
    s.start_api(env=s3.env)
    for name in ("a", "b"):  # each "machine" has its own data dir; the artifact dir exists nowhere
        s.start_worker(name, data_dir=tmp_path / f"machine-{name}", env=s3.env)
    assert not s.artifacts.exists()

    ids, i2v = [], set()
    for i in range(30):
        files = {"input_reference": ("f.png", png((8 * i, 255 - 8 * i, 90)), "image/png")} if i % 3 == 0 else None
        r = httpx.post(s.url + "/v1/videos", data={"prompt": f"a red circle {i}", "num_inference_steps": "2",
                                                    "seed": str(i)}, files=files, timeout=60)
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
        if files:
            i2v.add(r.json()["id"])
    assert all(f"{prefix}/{j}/input.png" in s3.keys(BUCKET, f"{prefix}/{j}/") for j in i2v)

    done: dict[str, dict] = {}
    restarted = False
    deadline = time.time() + 240
    while len(done) < len(ids) and time.time() < deadline:
        for job_id in ids:
            if job_id in done:
                continue
            v = get_ok(f"{s.url}/v1/videos/{job_id}").json()
            assert v["status"] != "failed", v
            if v["status"] == "completed":
                check_download(s, job_id, tmp_path)
                done[job_id] = v
            if done and not restarted:  # mid-run: the storage goes away and comes back
                t0 = time.time()
                s3.stop()
                time.sleep(2)
                s3.start()
                print(f"S3 away for {time.time() - t0:.1f} s with {len(done)} of {len(ids)} jobs completed")
                restarted = True
        time.sleep(0.2)
    assert restarted and len(done) == len(ids), f"{len(done)} of {len(ids)} completed"
    assert {v["image_to_video"] for v in done.values()} == {True, False}

    for job_id in done:  # exactly the accepted attempt's files (and the first frame) are stored
        expected = [f"{prefix}/{job_id}/r{s.job(job_id).artifact_fence}/{name}" for name in
                    ("spritesheet.jpg", "thumbnail.jpg", "video.mp4")]
        if job_id in i2v:
            expected.insert(0, f"{prefix}/{job_id}/input.png")
        assert s3.keys(BUCKET, f"{prefix}/{job_id}/") == sorted(expected)

    # expiry: the sweeper deletes the records and every object
    wait_until(lambda: not s3.keys(BUCKET, prefix + "/"), TTL_S + 60, 1.0, "expired objects removed")
    assert httpx.get(f"{s.url}/v1/videos/{ids[0]}").status_code == 404


def check_download(s, job_id: str, tmp_path) -> None:
    full = get_ok(f"{s.url}/v1/videos/{job_id}/content")
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4", full.text[:300]
    assert full.headers["accept-ranges"] == "bytes"
    path = tmp_path / f"{job_id}.mp4"
    path.write_bytes(full.content)
    assert read_mp4(path)[0].shape == (9, 32, 32, 3)
    part = get_ok(f"{s.url}/v1/videos/{job_id}/content", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == full.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(full.content)}"
    tail = get_ok(f"{s.url}/v1/videos/{job_id}/content", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == full.content[-50:]
    thumb = get_ok(f"{s.url}/v1/videos/{job_id}/content", params={"variant": "thumbnail"})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert np.asarray(Image.open(io.BytesIO(thumb.content))).shape == (32, 32, 3)


def test_presigned_redirect_missing_objects_and_removal(s3, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    job_id = "video_" + "ab" * 16
    store = S3Artifacts(f"s3://{BUCKET}/presign", presign_s=60)
    store.check()
    s3.client().put_object(Bucket=BUCKET, Key=f"presign/{job_id}/r1/video.mp4", Body=b"0123456789" * 100)
    redirect = store.response(job_id, 1, "video", None)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(s3.endpoint) and "X-Amz-Signature" in location
    r = httpx.get(location, headers={"Range": "bytes=5-9"})
    assert r.status_code == 206 and r.content == b"56789"
    assert httpx.get(location).headers["content-disposition"] == f'attachment; filename="{job_id}.mp4"'
    with pytest.raises(FileNotFoundError):
        store.response(job_id, 2, "video", None)
    with pytest.raises(FileNotFoundError):
        S3Artifacts(f"s3://{BUCKET}/presign").response(job_id, 1, "thumbnail", None)
    store.remove(job_id)
    assert s3.keys(BUCKET, "presign/") == []
    with pytest.raises(StorageError, match="NoSuchBucket|404") as err:
        S3Artifacts("s3://no-such-bucket").check()
    assert s3.endpoint not in str(err.value)


def test_api_with_storage_down_answers_503_and_checks_the_bucket_at_start(make_stack, s3, tiny_model_dir):
    p = subprocess.run([sys.executable, "-m", "client.cli", "api", "--model", str(tiny_model_dir),
                        "--artifact-url", "s3://no-such-bucket/x", "--redis-url", "redis://127.0.0.1:1/0"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), **s3.env})
    assert p.returncode != 0 and "no-such-bucket" in p.stderr and "not reachable" in p.stderr, p.stderr[-2000:]

    s = make_stack(artifact_url=f"s3://{BUCKET}/down")
    s.start_api(env=s3.env)
    s3.stop()
    try:
        t0 = time.time()
        r = httpx.post(s.url + "/v1/videos", data={"prompt": "a"}, timeout=60,
                       files={"input_reference": ("f.png", png((1, 2, 3)), "image/png")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        assert r.headers["retry-after"] and s3.endpoint not in r.text and time.time() - t0 < 30
        # text-to-video needs no storage to be accepted
        assert httpx.post(s.url + "/v1/videos", data={"prompt": "a"}, timeout=30).status_code == 200
    finally:
        s3.start()
