"""Must show: bad input is a 4xx envelope naming the problem, no job is created, the server stays
healthy; auth: no key 401, wrong key 401, another key's job 404. API only (no worker), so
accepted jobs stay queued."""

import io
import struct
import subprocess
import sys
import zlib

import httpx
import pytest
from PIL import Image

from .harness import REPO

KEY_A, KEY_B = "key-alpha-123", "key-bravo-456"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(api_keys=[KEY_A, KEY_B], max_upload_bytes=200_000, max_image_pixels=512 * 512,
                          max_active_jobs_per_key=3)
    s.start_api()
    return s


def png(w=32, h=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(w=50_000, h=50_000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = zlib.compress(b"\x00" * (w // 8 + 1) * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def job_count(stack) -> int:
    r = stack.redis()
    return r.xlen(f"{stack.prefix}:jobs") if r.exists(f"{stack.prefix}:jobs") else 0


BAD = [
    # (description, kwargs for httpx.post, status, param, code)
    ("missing prompt", {"data": {"size": "32x32"}}, 400, "prompt", "missing_required_parameter"),
    ("empty prompt", {"data": {"prompt": "  "}}, 400, "prompt", None),
    ("wrong type num_frames", {"data": {"prompt": "a", "num_frames": "nine"}}, 400, "num_frames", "invalid_value"),
    ("wrong type seed json", {"json": {"prompt": "a", "seed": "x1"}}, 400, "seed", "invalid_value"),
    ("wrong type guidance", {"json": {"prompt": "a", "guidance_scale": [1]}}, 400, "guidance_scale", "invalid_value"),
    ("unknown model", {"data": {"prompt": "a", "model": "sora-2"}}, 400, "model", "model_not_found"),
    ("bad size", {"data": {"prompt": "a", "size": "640x480"}}, 400, "size", None),
    ("malformed size", {"data": {"prompt": "a", "size": "big"}}, 400, "size", None),
    ("bad frames", {"data": {"prompt": "a", "num_frames": "10"}}, 400, "num_frames", None),
    ("too many frames", {"data": {"prompt": "a", "num_frames": "4001"}}, 400, "num_frames", None),
    ("too many seconds", {"data": {"prompt": "a", "seconds": "1000"}}, 400, "seconds", None),
    ("too many steps", {"json": {"prompt": "a", "num_inference_steps": 100000}}, 400, "num_inference_steps", None),
    ("bad expert schedule", {"data": {"prompt": "a", "expert_schedule": "0,x"}}, 400, "expert_schedule", None),
    ("schedule out of range", {"data": {"prompt": "a", "expert_schedule": "0,1,2,9"}}, 400, "expert_schedule", None),
    ("prompt too long", {"json": {"prompt": "a " * 5000}}, 400, "prompt", None),
    ("unknown speed", {"json": {"prompt": "a", "speed": "turbo"}}, 400, "speed", "invalid_value"),
    ("inverted guidance interval", {"data": {"prompt": "a", "guidance_interval": "0.9,0.1"}}, 400, "guidance_interval", None),
    ("malformed guidance interval", {"data": {"prompt": "a", "guidance_interval": "low,high"}}, 400, "guidance_interval",
     "invalid_value"),
    ("unknown field", {"json": {"prompt": "a", "colour": "red"}}, 400, "colour", "unknown_parameter"),
    ("bad json", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, None, "invalid_json"),
    ("oversize upload", {"data": {"prompt": "a"}, "files": {"input_reference": ("a.png", b"\x89PNG\r\n\x1a\n" + b"0" * 400_000, "image/png")}},
     413, "input_reference", "file_too_large"),
    ("non-image upload named .png", {"data": {"prompt": "a"}, "files": {"input_reference": ("x.png", b"GIF89a not an image", "image/png")}},
     415, "input_reference", "unsupported_media_type"),
    ("text upload", {"data": {"prompt": "a"}, "files": {"input_reference": ("x.txt", b"hello", "text/plain")}},
     415, "input_reference", "unsupported_media_type"),
    ("decompression bomb", {"data": {"prompt": "a"}, "files": {"input_reference": ("b.png", bomb_png(), "image/png")}},
     400, "input_reference", "image_too_large"),
    ("truncated png", {"data": {"prompt": "a"}, "files": {"input_reference": ("t.png", png()[:60], "image/png")}},
     400, "input_reference", "invalid_image"),
]


@pytest.mark.parametrize("desc,kwargs,status,param,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_envelope_and_creates_no_job(stack, desc, kwargs, status, param, code):
    before = job_count(stack)
    headers = {**A, **kwargs.pop("headers", {})}
    r = httpx.post(stack.url + "/v1/videos", headers=headers, timeout=30, **kwargs)
    assert r.status_code == status, (desc, r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, (desc, err)
    if code:
        assert err["code"] == code, (desc, err)
    assert job_count(stack) == before
    assert httpx.get(stack.url + "/health").status_code == 200


def test_query_validation_is_400_not_422(stack):
    r = httpx.get(stack.url + "/v1/videos", params={"limit": "many"}, headers=A)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    # a job that exists, so the answer is about the variant, not about a missing video
    job = httpx.post(stack.url + "/v1/videos", data={"prompt": "a"}, headers=A).json()
    r = httpx.get(f"{stack.url}/v1/videos/{job['id']}/content", params={"variant": "gif"}, headers=A)
    assert r.status_code == 400 and r.json()["error"]["param"] == "variant", r.text
    httpx.delete(f"{stack.url}/v1/videos/{job['id']}", headers=A)


def test_auth_no_key_wrong_key_other_keys_job(stack):
    assert httpx.get(stack.url + "/health").status_code == 200          # health needs no key
    r = httpx.get(stack.url + "/v1/videos")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.post(stack.url + "/v1/videos", data={"prompt": "a"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(stack.url + "/v1/models").status_code == 401
    assert httpx.get(stack.url + "/metrics").status_code == 401

    job = httpx.post(stack.url + "/v1/videos", data={"prompt": "a red circle"}, headers=A).json()
    assert job["status"] == "queued" and job["queue_position"] >= 1
    assert httpx.get(f"{stack.url}/v1/videos/{job['id']}", headers=A).status_code == 200
    for method, path in [("GET", ""), ("GET", "/content"), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/trace")]:
        r = httpx.request(method, f"{stack.url}/v1/videos/{job['id']}{path}", headers=B)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "video_not_found"
    assert job["id"] not in [v["id"] for v in httpx.get(stack.url + "/v1/videos", headers=B).json()["data"]]
    assert job["id"] in [v["id"] for v in httpx.get(stack.url + "/v1/videos", headers=A).json()["data"]]
    # keys are not stored anywhere in Redis in plain text
    r = stack.redis()
    assert not any(KEY_A in k for k in r.keys(f"{stack.prefix}:*"))
    assert KEY_A not in str(r.hgetall(f"{stack.prefix}:job:{job['id']}"))
    httpx.delete(f"{stack.url}/v1/videos/{job['id']}", headers=A)


def test_queued_jobs_per_key_429(stack):
    ids = []
    for _ in range(3):
        r = httpx.post(stack.url + "/v1/videos", data={"prompt": "a"}, headers=B)
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    r = httpx.post(stack.url + "/v1/videos", data={"prompt": "a"}, headers=B)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "too_many_queued_jobs"
    # the other key is not affected, and cancelling frees a slot
    httpx.post(f"{stack.url}/v1/videos/{ids[0]}/cancel", headers=B)
    assert httpx.post(stack.url + "/v1/videos", data={"prompt": "a"}, headers=B).status_code == 200


def delete_all_jobs(stack, headers) -> None:
    for v in httpx.get(stack.url + "/v1/videos", params={"limit": 100}, headers=headers).json()["data"]:
        httpx.delete(f"{stack.url}/v1/videos/{v['id']}", headers=headers)


def test_idempotency_key_gives_one_job(stack):
    delete_all_jobs(stack, B)  # B may be at its active-job limit from another test; it needs a free slot here
    before = job_count(stack)
    h = {**A, "Idempotency-Key": "same-request-1"}
    one = httpx.post(stack.url + "/v1/videos", data={"prompt": "a green square"}, headers=h).json()
    two = httpx.post(stack.url + "/v1/videos", data={"prompt": "a green square"}, headers=h).json()
    assert one["id"] == two["id"]
    assert job_count(stack) == before + 1
    other = httpx.post(stack.url + "/v1/videos", data={"prompt": "a green square"},
                       headers={**A, "Idempotency-Key": "same-request-2"}).json()
    assert other["id"] != one["id"]
    # the same key string from another API key is a different job
    theirs = httpx.post(stack.url + "/v1/videos", data={"prompt": "a green square"},
                        headers={**B, "Idempotency-Key": "same-request-1"})
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["id"] != one["id"]


def test_unauthenticated_public_bind_is_refused(tmp_path, tiny_model_dir):
    p = subprocess.run([sys.executable, "-m", "client.cli", "api", "--model", str(tiny_model_dir), "--host", "0.0.0.0",
                        "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert p.returncode != 0 and "--api-key" in p.stderr


def test_chunked_oversize_upload_is_413_without_reading_it_all(stack):
    def body():
        yield (b'--bnd\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na\r\n--bnd\r\n'
               b'Content-Disposition: form-data; name="input_reference"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n")
        for _ in range(40):  # 2.6 MB, no Content-Length (chunked)
            yield b"0" * 65536
        yield b"\r\n--bnd--\r\n"

    before = job_count(stack)
    try:
        r = httpx.post(stack.url + "/v1/videos", content=body(),
                       headers={**A, "Content-Type": "multipart/form-data; boundary=bnd"}, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    except httpx.WriteError:
        pass  # the server answered and closed before the client finished sending
    assert job_count(stack) == before
    assert httpx.get(stack.url + "/health").status_code == 200


def test_json_body_with_data_url_image(stack):
    import base64

    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    r = httpx.post(stack.url + "/v1/videos", headers=A,
                   json={"prompt": "a red circle", "input_reference": {"image_url": url}, "seed": 11,
                         "num_frames": 9, "size": "32x32", "expert_schedule": [0, 1, 2, 0]})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["image_to_video"] is True and v["seed"] == 11 and v["status"] == "queued"
    r = httpx.post(stack.url + "/v1/videos", headers=A,
                   json={"prompt": "a", "input_reference": {"image_url": "https://example.com/a.png"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_reference"
    httpx.delete(f"{stack.url}/v1/videos/{v['id']}", headers=A)
    assert httpx.get(stack.url + "/v1/models/tiny-random", headers=A).json()["id"] == "tiny-random"
