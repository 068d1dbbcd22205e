"""Per-tenant views and the last edges of issue 19 (item 8 and 10), on a real `paris api` and
worker: /metrics needs an operator key when one is set, /docs and /openapi.json follow the API's
key rule, downloads answer HEAD, a bad Range is a JSON error naming Range, an uploaded first
frame has its EXIF orientation applied, and a client that half-closes after its body leaves no
traceback in the log."""

import hashlib
import io
import socket

import httpx
import pytest
from PIL import Image

from .harness import wait_until

TENANT, OPERATOR = "pk-view-tenant", "pk-view-operator"
T = {"Authorization": f"Bearer {TENANT}"}


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(api_keys=[TENANT], operator_key_hashes=hashlib.sha256(OPERATOR.encode()).hexdigest())
    s.start_api()
    return s


def test_metrics_need_the_operator_key(stack):
    assert httpx.get(stack.url + "/metrics").status_code == 401
    r = httpx.get(stack.url + "/metrics", headers=T)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # a tenant's key is not one
    r = httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 200 and "paris_queue_depth" in r.text
    assert "video_" not in r.text  # totals only: no job ids


def test_docs_follow_the_api_key_rule(stack):
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(stack.url + path).status_code in (401, 404), path
    assert httpx.get(stack.url + "/openapi.json", headers=T).json()["info"]["title"]
    assert "swagger" in httpx.get(stack.url + "/docs", headers=T).text.lower()


def exif_rotated_jpeg() -> bytes:
    """A 64x32 JPEG whose EXIF says: rotate 90 degrees to show it (orientation 6)."""
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    for x in range(32):
        for y in range(32):
            img.putpixel((x, y), (0, 0, 255))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def test_downloads_answer_head_and_json_range_errors_and_exif_is_applied(stack):
    job = httpx.post(stack.url + "/v1/videos", headers=T, timeout=30,
                     data={"prompt": "a", "num_inference_steps": "2", "size": "32x32"},
                     files={"input_reference": ("phone.jpg", exif_rotated_jpeg(), "image/jpeg")})
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    stored = Image.open(stack.artifacts / job_id / "input.png")
    assert stored.size == (32, 64)  # upright: the EXIF rotation applied
    assert stored.getpixel((16, 5))[2] > 200 and stored.getpixel((16, 58))[0] > 200  # blue on top after rotating
    stack.start_worker("w1")
    wait_until(lambda: httpx.get(f"{stack.url}/v1/videos/{job_id}", headers=T).json()["status"] == "completed",
               120, 0.2, "completed")
    url = f"{stack.url}/v1/videos/{job_id}/content"
    full = httpx.get(url, headers=T)
    head = httpx.head(url, headers=T)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(full.content)) and head.headers["content-type"] == "video/mp4"
    for value, status in (("bytes=99999999-", 416), ("lines=0-1", 400), ("bytes=5-2", 400)):
        r = httpx.get(url, headers={**T, "Range": value})
        assert r.status_code == status and r.json()["error"]["param"] == "Range", (value, r.status_code, r.text)
    assert httpx.get(url, headers={**T, "Range": "bytes=0-9"}).content == full.content[:10]


def test_a_client_that_half_closes_after_its_body_leaves_no_traceback(stack):
    host, port = stack.url.removeprefix("http://").split(":")
    body = b'{"prompt": "a"}'
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: %s:%s\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (host.encode(), port.encode(), TENANT.encode(), len(body), body))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # uvicorn takes the half-close for a disconnect and closes without a reply
                pass
    log = stack.api.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert httpx.get(stack.url + "/health").status_code == 200
