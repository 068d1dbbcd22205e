"""The webhooks as the settings configure them, for the API process: which URLs a new job's
events go to (the request's `webhook_url` checked against the SSRF policy, plus
PARIS_WEBHOOK_URLS), and the deliverer thread that sends them.

The URLs are stored on the job when it is created, so the worker that settles it needs no webhook
settings, and a job keeps the receivers it was created with.

Checking a `webhook_url` resolves its host, which can hang (a DNS server that never answers). So
it runs on a few threads of its own, never the request threadpool; a request waits for it at
most CHECK_TIMEOUT_S (then 400); one key has at most MAX_PENDING_CHECKS checks under way, counted
until their thread is free again (429 beyond); and answers are cached for a minute (issue 19, N2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import redis

from server.errors import APIError
from server.queue.jobs import Keys
from .tenants import parse_networks
from server.process.settings import Settings
from server.notify.webhooks.resolver import CachedResolver, DnsServerResolver, parse_server
from server.notify.webhooks.urls import system_resolver
from server.notify.webhooks import Deliverer, Outbox, RefusedURL, RetryPolicy, UrlPolicy, WebhookSecret, WebhookSender

log = logging.getLogger("paris.webhooks")
CHECK_THREADS = 4        # webhook URL checks (DNS) at once, in all
MAX_PENDING_CHECKS = 2   # ... of them for one key
CHECK_TIMEOUT_S = 3.0    # a request waits this long for its check


class WebhookService:
    def __init__(self, settings: Settings):
        resolver = system_resolver
        if settings.webhook_dns_server:
            resolver = DnsServerResolver(parse_server(settings.webhook_dns_server))
        resolver = CachedResolver(resolver)
        networks = parse_networks(settings.webhook_allowed_networks)
        # a job's webhook_url: public addresses and the named networks only; the operator's own
        # PARIS_WEBHOOK_URLS may also be private when webhook_allow_private says so
        self.policy = UrlPolicy(allowed_networks=networks, resolver=resolver)
        self.server_policy = UrlPolicy(allow_private=settings.webhook_allow_private, allowed_networks=networks,
                                       resolver=resolver)
        self.key_secrets = {digest.lower().removeprefix("sha256:")[:24]: WebhookSecret(secret)
                            for digest, _, secret in (e.partition("=") for e in settings.webhook_key_secrets)}
        self._checks = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="webhook-check")
        self._pending: Counter[str] = Counter()  # checks under way per key (touched on the event loop only)
        secret = settings.webhook_secret
        self.secret = WebhookSecret(secret.get_secret_value()) if secret is not None else None
        self.server_urls = list(dict.fromkeys(settings.webhook_urls))
        self.retry = RetryPolicy(base_s=settings.webhook_retry_base_s, max_delay_s=settings.webhook_retry_max_s,
                                 max_attempts=settings.webhook_max_attempts)
        ca = settings.webhook_ca_file
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True

    def check_server_urls(self) -> None:
        """At startup (blocking DNS): a PARIS_WEBHOOK_URLS entry the policy refuses stops the API."""
        for url in self.server_urls:
            try:
                self.server_policy.check(url)
            except RefusedURL as exc:
                raise ValueError(f"PARIS_WEBHOOK_URLS: {url} is refused: {exc.reason} "
                                 "(PARIS_WEBHOOK_ALLOW_PRIVATE=1 allows private and loopback receivers)") from None

    async def urls_for(self, requested: str | None, owner: str) -> list[str]:
        """A new job's webhook URLs; a refused `webhook_url` is a 400 naming it, one whose check
        `owner` cannot start now a 429."""
        if requested is None:
            return list(self.server_urls)
        if self.secret is None:
            raise APIError(400, "This server sends no webhooks (it has no PARIS_WEBHOOK_SECRET to sign them).",
                           param="webhook_url", code="webhooks_disabled")
        if self._pending[owner] >= MAX_PENDING_CHECKS:
            raise APIError(429, f"This key already has {MAX_PENDING_CHECKS} webhook URLs being checked (their "
                                "host names resolve slowly); try again shortly.", param="webhook_url",
                           code="too_many_webhook_checks", headers={"Retry-After": str(int(CHECK_TIMEOUT_S))})
        self._pending[owner] += 1
        check = asyncio.wrap_future(self._checks.submit(self.policy.check, requested))
        check.add_done_callback(lambda _: self._release(owner))  # when the thread is done, not when we stop waiting
        try:
            await asyncio.wait_for(asyncio.shield(check), CHECK_TIMEOUT_S)
        except TimeoutError:
            raise APIError(400, f"webhook_url is refused: its host did not resolve within {CHECK_TIMEOUT_S:g} s.",
                           param="webhook_url", code="invalid_webhook_url") from None
        except RefusedURL as exc:
            raise APIError(400, f"webhook_url is refused: {exc.reason}.", param="webhook_url",
                           code="invalid_webhook_url") from None
        return list(dict.fromkeys([*self.server_urls, requested]))

    def _release(self, owner: str) -> None:
        self._pending[owner] -= 1
        if self._pending[owner] <= 0:
            del self._pending[owner]

    def start_deliverer(self, client: redis.Redis, prefix: str) -> threading.Event | None:
        """A deliverer thread on the job store's Redis; set the returned event to stop it. None
        when there is no secret (nothing can be signed, so nothing is sent)."""
        if self.secret is None:
            return None
        keys = Keys(prefix)

        def secret_for(job_id: str) -> WebhookSecret:  # the job's tenant's own secret, else the server's
            owner = client.hget(keys.job(job_id), "owner") if self.key_secrets else None
            return self.key_secrets.get(owner, self.secret)

        deliverer = Deliverer(Outbox(client, prefix, self.retry), WebhookSender(self.policy, verify=self.verify),
                              self.secret, secret_for=secret_for,
                              server_sender=WebhookSender(self.server_policy, verify=self.verify),
                              server_urls=frozenset(self.server_urls))
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per attempt is the deliverer's own
        stop = threading.Event()
        threading.Thread(target=deliverer.run, args=(stop,), name="webhook-deliverer", daemon=True).start()
        log.info(json.dumps({"event": "webhook_deliverer_started", "server_urls": len(self.server_urls)}))
        return stop
