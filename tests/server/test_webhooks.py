"""Webhooks: Standard Webhooks signatures checked by the official openai SDK and by the
standardwebhooks package; the Redis outbox delivering at least once to a real HTTPS receiver
(down for a while, a deliverer killed mid-delivery, retries with the same event id); the URL
policy refusing private, loopback, link-local and IPv4-in-IPv6 addresses, also behind redirects."""

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import threading
import time
import uuid

import openai
import pytest
import redis
from standardwebhooks import Webhook

from server.queue.guard import Guard
from server.notify.webhooks import (Deliverer, DeliveryError, Outbox, RefusedURL, RetryPolicy, Timeouts, UrlPolicy,
                             WebhookEventType, WebhookSecret, WebhookSender, video_event)

from .harness import free_port, wait_until
from .webhook_receiver import Receiver, make_ca

LOOPBACK = ipaddress.ip_network("127.0.0.1/32")
SECRET = "whsec_" + base64.b64encode(b"a test key of 32 bytes, exactly.").decode()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def r(valkey):
    return redis.Redis.from_url(valkey.connection_url, decode_responses=True)


@pytest.fixture
def receiver(ca):
    rec = Receiver(ca, free_port()).start()
    yield rec
    rec.stop()


def resolve_hooks_example(host: str, port: int):
    """DNS for a name no real resolver knows: the sender must connect to this checked answer."""
    assert host == "hooks.example", host
    return [ipaddress.ip_address("127.0.0.1")]


def deliverer_for(r, ca, retry=RetryPolicy(), timeouts=Timeouts(), prefix=None, **policy) -> Deliverer:
    """Allowed: exactly 127.0.0.1 (the receiver), so other private addresses stay refused."""
    policy = UrlPolicy(**{"allowed_networks": (LOOPBACK,), **policy})
    outbox = Outbox(r, prefix or f"t{uuid.uuid4().hex[:8]}", retry)
    return Deliverer(outbox, WebhookSender(policy, timeouts, verify=ca.client_context()), WebhookSecret(SECRET))


def enqueue(deliverer: Deliverer, video_id: str, urls: list[str], kind=WebhookEventType.VIDEO_COMPLETED):
    event = video_event(kind, video_id)
    deliverer.outbox.enqueue(deliverer.outbox.r, event, urls)
    return event


def unwrap(received):
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    return client.webhooks.unwrap(received.body, received.headers, secret=SECRET)


# ---- signatures ------------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_of_id_timestamp_body_and_both_verifiers_accept_it():
    body = video_event(WebhookEventType.VIDEO_FAILED, "video_" + "ab" * 16, created_at=1_800_000_000).body
    now = int(time.time())
    headers = WebhookSecret(SECRET).headers("evt_1", now, body)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"evt_1.{now}.".encode() + body, hashlib.sha256).digest()).decode()
    assert headers == {"webhook-id": "evt_1", "webhook-timestamp": str(now), "webhook-signature": f"v1,{expected}"}
    assert json.loads(body) == {"id": json.loads(body)["id"], "object": "event", "type": "video.failed",
                                "created_at": 1_800_000_000, "data": {"id": "video_" + "ab" * 16}}
    assert Webhook(SECRET).verify(body, headers)["type"] == "video.failed"
    event = openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == "video.failed" and event.data.id == "video_" + "ab" * 16
    other = WebhookSecret.generate()
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=other)


def test_secret_must_be_whsec_base64():
    for bad in ("plain", "whsec_not*base64", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            WebhookSecret(bad)


def test_event_id_follows_from_job_and_type():
    a = video_event(WebhookEventType.VIDEO_COMPLETED, "video_1")
    assert a.id == video_event(WebhookEventType.VIDEO_COMPLETED, "video_1").id
    assert a.id != video_event(WebhookEventType.VIDEO_FAILED, "video_1").id
    assert a.id != video_event(WebhookEventType.VIDEO_COMPLETED, "video_2").id


# ---- delivery --------------------------------------------------------------------------------------
def test_delivered_to_the_checked_address_and_verified_by_the_openai_sdk(r, ca, receiver):
    d = deliverer_for(r, ca, resolver=resolve_hooks_example)
    event = enqueue(d, "video_" + "1" * 32, [receiver.url(host="hooks.example")])
    assert asyncio.run(d.deliver_due()) == 1
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert got.headers["host"] == f"hooks.example:{receiver.port}" and got.headers["webhook-id"] == event.id
    assert got.body == event.body
    unwrapped = unwrap(got)
    assert (unwrapped.id, unwrapped.type, unwrapped.data.id) == (event.id, "video.completed", "video_" + "1" * 32)
    [record] = d.outbox.deliveries("video_" + "1" * 32)
    assert record["state"] == "delivered" and record["event_id"] == event.id
    assert record["url"] == f"https://hooks.example:{receiver.port}"  # origin only: paths may carry tokens
    assert [(a["attempt"], a["status_code"], a["error"]) for a in record["attempts"]] == [(1, 200, None)]
    assert asyncio.run(d.deliver_due()) == 0  # nothing left


def test_the_certificate_is_still_checked_against_the_url_host(r, ca, receiver):
    """Pinning the address must not skip TLS verification: a name the certificate lacks fails."""
    def resolve(host, port):
        return [ipaddress.ip_address("127.0.0.1")]

    d = deliverer_for(r, ca, resolver=resolve, retry=RetryPolicy(max_attempts=1))
    enqueue(d, "video_tls", [f"https://other.example:{receiver.port}/hook"])
    asyncio.run(d.deliver_due())
    [record] = d.outbox.deliveries("video_tls")
    assert record["state"] == "failed" and receiver.received == []
    assert "certificate" in record["attempts"][0]["error"].lower(), record


def test_receiver_down_then_up_is_delivered_once(r, ca):
    port = free_port()
    d = deliverer_for(r, ca, retry=RetryPolicy(base_s=0.2, max_delay_s=0.8))
    late = Receiver(ca, port)
    event = enqueue(d, "video_down", [late.url()])
    stop = threading.Event()
    loop = threading.Thread(target=d.run, args=(stop, 0.05), daemon=True)
    loop.start()
    try:
        wait_until(lambda: len(d.outbox.deliveries("video_down")[0]["attempts"]) >= 3, 20, 0.05, "failed attempts")
        time.sleep(1.0)
        late.start()
        wait_until(lambda: d.outbox.deliveries("video_down")[0]["state"] == "delivered", 20, 0.05, "delivery")
    finally:
        stop.set()
        loop.join(10)
        late.stop()
    assert [x.headers["webhook-id"] for x in late.received] == [event.id]
    assert unwrap(late.received[0]).data.id == "video_down"
    attempts = d.outbox.deliveries("video_down")[0]["attempts"]
    assert all(a["status_code"] is None and "connect" in a["error"] for a in attempts[:-1]), attempts
    assert attempts[-1]["status_code"] == 200 and [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    gaps = [b["at"] - a["at"] for a, b in zip(attempts, attempts[1:])]
    assert min(gaps) >= 0.1 - 0.02, gaps  # base 0.2 s, half of it at least (jitter), not a busy loop


def test_a_deliverer_that_dies_mid_delivery_is_taken_over_after_its_lease(r, ca, receiver):
    retry = RetryPolicy(lease_s=30)
    dead = deliverer_for(r, ca, retry=retry)
    prefix = dead.outbox.keys.prefix
    events = [enqueue(dead, f"video_dead{i}", [receiver.url()]) for i in range(3)]
    now = time.time()
    assert len(dead.outbox.claim(int(now * 1000), 10)) == 3  # claimed, never sent, never recorded: "killed"
    del dead
    fresh = deliverer_for(r, ca, retry=retry, prefix=prefix)  # a new process on the same Redis
    assert asyncio.run(fresh.deliver_due(now + 1)) == 0        # still leased to the dead one
    assert asyncio.run(fresh.deliver_due(now + 31)) == 3       # lease over: taken over
    assert asyncio.run(fresh.deliver_due(now + 62)) == 0       # and not again
    assert sorted(x.headers["webhook-id"] for x in receiver.received) == sorted(e.id for e in events)
    for i in range(3):
        [record] = fresh.outbox.deliveries(f"video_dead{i}")
        # the dead claim counted as attempt 1 (a delivery that crashes its deliverer cannot loop forever)
        assert record["state"] == "delivered" and [a["attempt"] for a in record["attempts"]] == [2]


def test_retries_send_the_same_event_id_and_body_and_stop_after_max_attempts(r, ca, receiver):
    receiver.answers["/flaky"] = (500, {}, b"x" * 100_000, 0.0)
    d = deliverer_for(r, ca, retry=RetryPolicy(base_s=0.01, max_delay_s=0.01, max_attempts=3))
    event = enqueue(d, "video_flaky", [receiver.url("/flaky"), receiver.url("/fine")], WebhookEventType.VIDEO_FAILED)
    end = time.time() + 20
    while time.time() < end and any(x["state"] == "pending" for x in d.outbox.deliveries("video_flaky")):
        asyncio.run(d.deliver_due())
        time.sleep(0.02)
    flaky = [x for x in receiver.received if x.path == "/flaky"]
    assert len(flaky) == 3 and {x.headers["webhook-id"] for x in flaky} == {event.id}
    assert {x.body for x in flaky} == {event.body}
    assert all(unwrap(x).type == "video.failed" for x in flaky)
    by_state = {x["url"] + x["state"]: x for x in d.outbox.deliveries("video_flaky")}
    origin = f"https://localhost:{receiver.port}"
    assert set(by_state) == {origin + "failed", origin + "delivered"}
    failed = by_state[origin + "failed"]["attempts"]
    assert [a["status_code"] for a in failed] == [500, 500, 500]
    assert failed[0]["error"] == "HTTP 500"  # the receiver's reply is not stored for the tenant to read (N11)


def test_enqueue_is_idempotent_and_obeys_its_guard_inside_a_transaction(r, ca, receiver):
    d = deliverer_for(r, ca)
    job = f"{d.outbox.keys.prefix}:job:video_g"
    urls = [receiver.url("/a"), receiver.url("/b"), receiver.url("/a")]
    event = video_event(WebhookEventType.VIDEO_COMPLETED, "video_g")

    pipe = r.pipeline(transaction=True)  # a settle that was refused: the job is not completed
    pipe.hset(job, mapping={"status": "in_progress", "fence": "2"})
    d.outbox.enqueue(pipe, event, urls, Guard(job, {"status": "completed", "fence": "2"}))
    pipe.execute()
    assert d.outbox.deliveries("video_g") == []

    for _ in range(2):  # the settle succeeded (twice, as a retried settle would): one delivery per URL
        pipe = r.pipeline(transaction=True)
        pipe.hset(job, mapping={"status": "completed", "fence": "2"})
        d.outbox.enqueue(pipe, event, urls, Guard(job, {"status": "completed", "fence": "2"}))
        pipe.execute()
    assert sorted(x["url"] for x in d.outbox.deliveries("video_g")) == [receiver.url("")] * 2
    assert asyncio.run(d.deliver_due()) == 2
    assert sorted(x.path for x in receiver.received) == ["/a", "/b"]


# ---- the URL policy --------------------------------------------------------------------------------
REFUSED = {
    "http://93.184.216.34/hook": "only https",
    "https://127.0.0.1/hook": "loopback",
    "https://[::1]/hook": "loopback",
    "https://10.1.2.3/hook": "private",
    "https://192.168.0.10/hook": "private",
    "https://100.64.0.1/hook": "not globally routable",      # shared (CGNAT) space
    "https://169.254.169.254/latest/meta-data": "link-local",
    "https://[fe80::1]/hook": "link-local",
    "https://[::ffff:127.0.0.1]/hook": "carrying the loopback address 127.0.0.1",
    "https://[::ffff:10.0.0.1]/hook": "carrying the private address 10.0.0.1",
    "https://[2002:a9fe:a9fe::1]/hook": "carrying the link-local address 169.254.169.254",  # 6to4
    "https://[64:ff9b::7f00:1]/hook": "carrying the loopback address 127.0.0.1",           # NAT64
    "https://[::127.0.0.1]/hook": "IPv4-compatible",
    "https://0.0.0.0/hook": "unspecified",
    "https://224.0.0.1/hook": "multicast",
    "https://[ff02::1]/hook": "multicast",
    "https://240.0.0.1/hook": "reserved",
    "/relative": "only https",
}


@pytest.mark.parametrize("url", list(REFUSED))
def test_private_loopback_link_local_and_mapped_addresses_are_refused(url):
    with pytest.raises(RefusedURL) as exc:
        UrlPolicy().check(url)
    assert REFUSED[url] in exc.value.reason, exc.value.reason


def test_names_are_checked_after_resolution():
    with pytest.raises(RefusedURL, match="localhost resolves to .*loopback"):
        UrlPolicy().check("https://localhost/hook")  # the system resolver

    def mixed(host, port):  # one bad address is enough: the sender may connect to any of them
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("::ffff:192.168.1.1")]

    with pytest.raises(RefusedURL, match="hooks.example resolves to .* carrying the private address 192.168.1.1"):
        UrlPolicy(resolver=mixed).check("https://hooks.example/hook")
    with pytest.raises(RefusedURL, match="does not resolve"):
        UrlPolicy().check("https://no-such-host.invalid/hook")
    target = UrlPolicy(resolver=lambda h, p: [ipaddress.ip_address("93.184.216.34")]).check("https://hooks.example/x")
    assert target.host == "hooks.example" and target.addresses == (ipaddress.ip_address("93.184.216.34"),)


def test_allow_private_opens_private_ranges_but_not_link_local_and_networks_open_exactly_themselves():
    loose = UrlPolicy(allow_private=True)
    for ok in ("https://127.0.0.1/h", "https://10.1.2.3/h", "https://[::ffff:127.0.0.1]/h", "https://[::1]/h"):
        assert loose.check(ok).addresses
    for still_refused in ("https://169.254.169.254/h", "https://[fe80::1]/h", "https://0.0.0.0/h",
                          "http://127.0.0.1/h"):
        with pytest.raises(RefusedURL):
            loose.check(still_refused)
    exact = UrlPolicy(allowed_networks=(ipaddress.ip_network("169.254.169.254/32"), LOOPBACK))
    assert exact.check("https://169.254.169.254/h") and exact.check("https://[::ffff:127.0.0.1]/h")
    with pytest.raises(RefusedURL, match="loopback"):
        exact.check("https://127.0.0.2/h")


def test_every_redirect_hop_is_checked(r, ca, receiver):
    receiver.answers["/to-metadata"] = (307, {"location": "https://169.254.169.254/latest/meta-data"}, b"", 0.0)
    receiver.answers["/to-loopback2"] = (308, {"location": f"https://127.0.0.2:{receiver.port}/hook"}, b"", 0.0)
    receiver.answers["/to-http"] = (302, {"location": f"http://127.0.0.1:{receiver.port}/hook"}, b"", 0.0)
    receiver.answers["/loop"] = (307, {"location": "/loop"}, b"", 0.0)
    receiver.answers["/moved"] = (308, {"location": "/final"}, b"", 0.0)
    sender = WebhookSender(UrlPolicy(allowed_networks=(LOOPBACK,)), verify=ca.client_context(), max_redirects=3)

    def post(path):
        return asyncio.run(sender.post(receiver.url(path, "127.0.0.1"), b"{}", {}))

    with pytest.raises(RefusedURL, match="169.254.169.254, a link-local address"):
        post("/to-metadata")
    with pytest.raises(RefusedURL, match="127.0.0.2, a loopback address"):
        post("/to-loopback2")
    with pytest.raises(RefusedURL, match="only https"):
        post("/to-http")
    with pytest.raises(DeliveryError, match="more than 3 redirects"):
        post("/loop")
    assert [x.path for x in receiver.received].count("/loop") == 4
    moved = post("/moved")  # an allowed hop is followed, with the same POST
    assert moved.status_code == 200 and moved.url.endswith("/final")
    assert [x.path for x in receiver.received if x.path == "/final"] == ["/final"]


def test_time_limits_and_response_cap(ca, receiver):
    receiver.answers["/slow"] = (200, {}, b"late", 3.0)
    receiver.answers["/big"] = (200, {}, b"y" * 1_000_000, 0.0)
    sender = WebhookSender(UrlPolicy(allowed_networks=(LOOPBACK,)), Timeouts(connect_s=1, read_s=0.5, total_s=1.0),
                           verify=ca.client_context(), max_response_bytes=1000)
    t0 = time.monotonic()
    with pytest.raises(DeliveryError):
        asyncio.run(sender.post(receiver.url("/slow"), b"{}", {}))
    assert time.monotonic() - t0 < 2.0
    big = asyncio.run(sender.post(receiver.url("/big"), b"{}", {}))
    assert big.status_code == 200 and big.head == b"y" * 1000
