"""The deliverer: claims due deliveries from the outbox, signs and sends them, records each attempt.

Run any number of them, in any processes (`run` in a thread of the API or the worker): claims
keep them apart, and the deliveries of one that dies come due again when their lease ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from .outbox import Claimed, Outbox
from .sender import DeliveryError, WebhookSender
from .signing import WebhookSecret
from .urls import RefusedURL

log = logging.getLogger("paris.webhooks")


class Deliverer:
    """`secret_for(job_id)` picks the secret of the job's tenant (default: `secret` for all);
    URLs in `server_urls` (the operator's own) go through `server_sender`, whose policy may
    open more networks than the one tenants' URLs get."""

    def __init__(self, outbox: Outbox, sender: WebhookSender, secret: WebhookSecret, *, batch: int = 16,
                 secret_for: Callable[[str], WebhookSecret] | None = None,
                 server_sender: WebhookSender | None = None, server_urls: frozenset[str] = frozenset()):
        self.outbox = outbox
        self.sender = sender
        self.secret = secret
        self.batch = batch
        self.secret_for = secret_for
        self.server_sender = server_sender or sender
        self.server_urls = server_urls

    async def deliver_due(self, now: float | None = None) -> int:
        """One round: claim up to `batch` deliveries due at `now` (default: the clock) and send
        them concurrently. Returns how many were attempted."""
        now_ms = int((time.time() if now is None else now) * 1000)
        claimed = await asyncio.to_thread(self.outbox.claim, now_ms, self.batch)
        t0 = time.monotonic()
        results = await asyncio.gather(*(self._attempt(c, now_ms, t0) for c in claimed), return_exceptions=True)
        for c, result in zip(claimed, results):
            if isinstance(result, Exception):  # a bug, not the receiver: the lease brings it back
                log.error(json.dumps({"event": "webhook_attempt_crashed", "job": c.job_id, "delivery": c.delivery_id,
                                      "error": repr(result)}))
        return len(claimed)

    async def _attempt(self, c: Claimed, now_ms: int, t0: float) -> None:
        started = time.monotonic()
        attempt: dict = {"attempt": c.attempts, "at": round(time.time(), 3), "status_code": None, "error": None}
        try:
            # webhook-id is the event id on every attempt; the timestamp is this attempt's
            secret = await asyncio.to_thread(self.secret_for, c.job_id) if self.secret_for else self.secret
            headers = secret.headers(c.event_id, int(time.time()), c.body)
            sender = self.server_sender if c.url in self.server_urls else self.sender
            response = await sender.post(c.url, c.body, headers)
            attempt["status_code"] = response.status_code
            if not response.ok:  # the status only: a reply's body is the receiver's, not the tenant's to read
                attempt["error"] = f"HTTP {response.status_code}"
        except (RefusedURL, DeliveryError) as exc:
            attempt["error"] = str(exc)
        attempt["duration_ms"] = round((time.monotonic() - started) * 1000)
        end_ms = now_ms + round((time.monotonic() - t0) * 1000)
        retry = self.outbox.retry
        next_ms = 0
        if attempt["error"] is None:
            outcome = "delivered"
        elif c.attempts >= retry.max_attempts or end_ms - c.created_ms >= retry.max_age_s * 1000:
            outcome = "failed"
        else:
            outcome = "retry"
            next_ms = end_ms + round(retry.delay_s(c.attempts) * 1000)
        current = await asyncio.to_thread(self.outbox.record, c, end_ms, outcome, attempt, next_ms)
        log.info(json.dumps({"event": f"webhook_{outcome}", "job": c.job_id, "delivery": c.delivery_id,
                             "webhook_id": c.event_id, "attempt": c.attempts, "status_code": attempt["status_code"],
                             "error": attempt["error"], "claim_current": current}))

    def run(self, stop: threading.Event, idle_s: float = 0.5) -> None:
        """Deliver until `stop` is set. Blocking: start it in a thread of any process."""
        asyncio.run(self._loop(stop, idle_s))

    async def _loop(self, stop: threading.Event, idle_s: float) -> None:
        while not stop.is_set():
            try:
                attempted = await self.deliver_due()
            except redis.RedisError as exc:  # Redis restarting: try again shortly
                log.warning(json.dumps({"event": "webhook_claim_failed", "error": str(exc)}))
                attempted = 0
            if attempted == 0:
                await asyncio.to_thread(stop.wait, idle_s)
