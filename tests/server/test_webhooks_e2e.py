"""Webhooks end to end on real `paris api` and `paris worker` processes (the tiny model) and a real
HTTPS receiver on 127.0.0.1 (allowed by PARIS_WEBHOOK_ALLOW_PRIVATE; its certificate from a test
CA the API trusts through PARIS_WEBHOOK_CA_FILE): a finished job sends `video.completed`, a
cancelled one `video.failed`, to its `webhook_url` and to PARIS_WEBHOOK_URLS, and the official
openai SDK accepts the signatures; a receiver down for 10 s while the API and the worker restart
still gets each event, once per event id; the job record shows the attempts. Without the setting,
private addresses are refused with a 400 naming webhook_url (the app in process)."""

import asyncio
import base64
import time
import uuid

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.errors import APIError
from server.process.settings import Settings
from server.api.webhook_service import WebhookService

from .harness import free_port, wait_until
from .webhook_receiver import Receiver, make_ca

SECRET = "whsec_" + base64.b64encode(b"the e2e test key, 32 bytes long.").decode()
STEPS = 4


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def receiver(ca):
    rec = Receiver(ca, free_port()).start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def stack(make_module_stack, ca, receiver):
    s = make_module_stack(webhook_secret=SECRET, webhook_allowed_networks="127.0.0.1/32", webhook_ca_file=str(ca.ca_file),
                          webhook_urls=[receiver.url("/all", "127.0.0.1")], webhook_retry_base_s="0.5",
                          webhook_retry_max_s="2", webhook_max_attempts="1000", tick_delay_s=0.1)
    s.start_api()
    s.start_worker("w1")
    return s


def create(url, **fields):
    r = httpx.post(url + "/v1/videos", data={"prompt": "a red circle moving left",
                                             "num_inference_steps": str(STEPS), **fields}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def video(stack, job_id):
    return httpx.get(f"{stack.url}/v1/videos/{job_id}", timeout=10).json()


def unwrap(received):
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    return client.webhooks.unwrap(received.body, received.headers, secret=SECRET)


def delivered(stack, job_id, n):
    hooks = video(stack, job_id)["webhooks"]
    return len(hooks) == n and all(h["state"] == "delivered" for h in hooks) and hooks


def test_completed_and_cancelled_jobs_send_signed_events_the_openai_sdk_accepts(stack, receiver):
    done = create(stack.url, webhook_url=receiver.url("/mine", "127.0.0.1"))
    assert done["webhooks"] == []  # nothing to deliver until the job ends
    hooks = wait_until(lambda: delivered(stack, done["id"], 2), 60, 0.2, "video.completed delivered")
    stopped = create(stack.url, num_inference_steps="50")
    wait_until(lambda: video(stack, stopped["id"])["status"] == "in_progress", 60, 0.1, "running")
    assert httpx.post(f"{stack.url}/v1/videos/{stopped['id']}/cancel").status_code == 200
    wait_until(lambda: delivered(stack, stopped["id"], 1), 60, 0.2, "video.failed delivered")

    got = {(x.path, unwrap(x).data.id): unwrap(x) for x in receiver.received}
    completed = got["/mine", done["id"]]
    assert (completed.type, completed.object) == ("video.completed", "event")
    assert got["/all", done["id"]].id == completed.id  # one event, two receivers
    assert got["/all", stopped["id"]].type == "video.failed"
    assert ("/mine", stopped["id"]) not in got  # the second job asked for no receiver of its own
    assert all(x.headers["webhook-id"] == unwrap(x).id for x in receiver.received)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        other = "whsec_" + base64.b64encode(b"another key that is 32 bytes ok.").decode()
        openai.OpenAI(api_key="unused").webhooks.unwrap(receiver.received[0].body, receiver.received[0].headers,
                                                        secret=other)

    origin = receiver.url("", "127.0.0.1")
    assert sorted(h["url"] for h in hooks) == [origin, origin]  # origins only: paths may carry tokens
    assert all(h["type"] == "video.completed" and h["event_id"] == completed.id for h in hooks)
    assert all([a["status_code"] for a in h["attempts"]] == [200] for h in hooks)


def test_a_receiver_down_for_10_s_while_api_and_worker_restart_still_gets_each_event_once(stack, ca):
    port = free_port()
    late = Receiver(ca, port)
    url = late.url("/late", "127.0.0.1")
    down_since = time.time()
    finished = create(stack.url, webhook_url=url)
    cancelled = create(stack.url, webhook_url=url, num_inference_steps="50")
    wait_until(lambda: video(stack, finished["id"])["status"] == "completed", 60, 0.1, "the first job done")
    assert httpx.post(f"{stack.url}/v1/videos/{cancelled['id']}/cancel").status_code == 200

    def mine(job_id):
        return [h for h in video(stack, job_id)["webhooks"] if h["url"].endswith(f":{port}")]

    wait_until(lambda: all(len(m) == 1 and len(m[0]["attempts"]) >= 2 for m in (mine(finished["id"]),
                                                                                 mine(cancelled["id"]))),
               60, 0.2, "failed attempts while the receiver is down")
    stack.api.stop()
    for w in stack.workers:
        w.stop()
    stack.start_api(wait=False)
    stack.start_worker("w2")
    wait_until(stack._healthy, 60, 0.1, "the api back")
    time.sleep(max(0.0, 10 - (time.time() - down_since)))
    late.start()
    try:
        for job in (finished, cancelled):
            wait_until(lambda: mine(job["id"])[0]["state"] == "delivered", 60, 0.2, "delivery after the restart")
        time.sleep(2)  # a duplicate would come within the retry delay
    finally:
        late.stop()
    events = [unwrap(x) for x in late.received]
    assert sorted((e.data.id, e.type) for e in events) == sorted(
        [(finished["id"], "video.completed"), (cancelled["id"], "video.failed")])
    assert len({x.headers["webhook-id"] for x in late.received}) == len(late.received) == 2  # once per event id
    for job in (finished, cancelled):
        attempts = mine(job["id"])[0]["attempts"]
        assert all(a["status_code"] is None and a["error"] for a in attempts[:-1]) and len(attempts) >= 3
        assert attempts[-1]["status_code"] == 200
        assert attempts[-1]["at"] - attempts[0]["at"] >= 10 - 1


def test_private_addresses_are_refused_with_400_unless_allowed(tiny_model_dir, valkey, tmp_path):
    """The real app on the real Valkey, in this process (a third API process would only add its
    start-up time): the same route and settings as `paris api` without PARIS_WEBHOOK_ALLOW_PRIVATE."""
    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path, key_prefix=f"t{uuid.uuid4().hex[:8]}",
                        webhook_secret=SECRET, allowed_hosts=["testserver"])  # TestClient's Host
    client = TestClient(create_app(settings, valkey.connection_url))
    for url, why in [("https://127.0.0.1:8443/hook", "loopback"), ("https://10.1.2.3/hook", "private"),
                     ("https://169.254.169.254/latest/meta-data", "link-local"), ("http://93.184.216.34/", "https"),
                     ("https://localhost/hook", "loopback")]:
        r = client.post("/v1/videos", data={"prompt": "a circle", "webhook_url": url})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("webhook_url", "invalid_webhook_url") and why in error["message"]
    assert client.get("/v1/videos").json()["data"] == []  # nothing was queued


def test_without_a_secret_no_webhook_is_accepted_and_server_urls_are_checked_at_startup():
    with pytest.raises(APIError) as exc:
        asyncio.run(WebhookService(Settings()).urls_for("https://93.184.216.34/hook", "public"))
    assert (exc.value.status, exc.value.param, exc.value.code) == (400, "webhook_url", "webhooks_disabled")
    with pytest.raises(ValueError, match="PARIS_WEBHOOK_URLS needs PARIS_WEBHOOK_SECRET"):
        Settings(webhook_urls="https://93.184.216.34/hook")
    with pytest.raises(ValueError, match="10.0.0.7.*private"):
        WebhookService(Settings(webhook_secret=SECRET, webhook_urls="https://10.0.0.7/hook")).check_server_urls()
    allowed = Settings(webhook_secret=SECRET, webhook_urls="https://10.0.0.7/hook", webhook_allow_private=True)
    WebhookService(allowed).check_server_urls()


def test_each_key_signs_with_its_own_secret_private_networks_open_only_by_name_and_replies_are_not_kept(
        make_stack, ca, receiver):
    """Issue 19, N11, on real processes: a key with its own secret gets events only that secret
    verifies (a receiver of one tenant cannot be fed another tenant's events); others get the
    server's. With private receivers allowed for the operator's URLs, a job's webhook_url still
    reaches only the named network (127.0.0.1/32, not 127.0.0.2 nor 10.x); a receiver's error
    reply is recorded as its status only."""
    import hashlib

    own = "whsec_" + base64.b64encode(b"tenant one's own secret, 32 byte").decode()
    one, two = "pk-hooks-one", "pk-hooks-two"
    s = make_stack(api_keys=[one, two], webhook_secret=SECRET, webhook_allow_private="true",
                   webhook_allowed_networks="127.0.0.1/32", webhook_ca_file=str(ca.ca_file),
                   webhook_key_secrets=f"{hashlib.sha256(one.encode()).hexdigest()}={own}", webhook_retry_base_s="0.5",
                   webhook_max_attempts="1", tick_delay_s=0.05)
    s.start_api()
    s.start_worker("w1")
    receiver.answers["/refuses"] = (500, {}, b"internal detail of the receiver " * 20, 0)

    def post(key, **fields):
        r = httpx.post(s.url + "/v1/videos", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                       data={"prompt": "a red circle", "num_inference_steps": "2", **fields})
        return r

    for blocked in ("https://127.0.0.2:9/x", "https://10.1.2.3/x"):
        r = post(one, webhook_url=blocked)
        assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url", r.text
    jobs = {key: post(key, webhook_url=receiver.url(f"/{key}", "127.0.0.1")).json()["id"] for key in (one, two)}
    refused = post(two, webhook_url=receiver.url("/refuses", "127.0.0.1")).json()["id"]

    def hooks(key, job_id):
        return httpx.get(f"{s.url}/v1/videos/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()["webhooks"]

    wait_until(lambda: all(h and h[0]["state"] == "delivered" for h in (hooks(k, j) for k, j in jobs.items())),
               60, 0.2, "both delivered")
    wait_until(lambda: hooks(two, refused) and hooks(two, refused)[0]["state"] == "failed", 60, 0.2, "refused")
    got = {x.path: x for x in receiver.received if x.path in (f"/{one}", f"/{two}")}
    sdk = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    assert sdk.webhooks.unwrap(got[f"/{one}"].body, got[f"/{one}"].headers, secret=own).data.id == jobs[one]
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(got[f"/{one}"].body, got[f"/{one}"].headers, secret=SECRET)
    assert sdk.webhooks.unwrap(got[f"/{two}"].body, got[f"/{two}"].headers, secret=SECRET).data.id == jobs[two]
    attempt = hooks(two, refused)[0]["attempts"][0]
    assert attempt["status_code"] == 500 and attempt["error"] == "HTTP 500"
    assert "internal detail" not in httpx.get(f"{s.url}/v1/videos/{refused}",
                                              headers={"Authorization": f"Bearer {two}"}).text
