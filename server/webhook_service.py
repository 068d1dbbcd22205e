"""The webhooks as the settings configure them, for the API process: which URLs a new job's
events go to (the request's `webhook_url` checked against the SSRF policy, plus
PARIS_WEBHOOK_URLS), and the deliverer thread that sends them.

The URLs are stored on the job when it is created, so the worker that settles it needs no webhook
settings, and a job keeps the receivers it was created with.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading

import redis

from .errors import APIError
from .settings import Settings
from .webhooks import Deliverer, Outbox, RefusedURL, RetryPolicy, UrlPolicy, WebhookSecret, WebhookSender

log = logging.getLogger("paris.webhooks")


class WebhookService:
    def __init__(self, settings: Settings):
        self.policy = UrlPolicy(allow_private=settings.webhook_allow_private)
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
                self.policy.check(url)
            except RefusedURL as exc:
                raise ValueError(f"PARIS_WEBHOOK_URLS: {url} is refused: {exc.reason} "
                                 "(PARIS_WEBHOOK_ALLOW_PRIVATE=1 allows private and loopback receivers)") from None

    def urls_for(self, requested: str | None) -> list[str]:
        """A new job's webhook URLs; a refused `webhook_url` is a 400 naming it. Resolves DNS
        (blocking): call it from a thread."""
        if requested is None:
            return list(self.server_urls)
        if self.secret is None:
            raise APIError(400, "This server sends no webhooks (it has no PARIS_WEBHOOK_SECRET to sign them).",
                           param="webhook_url", code="webhooks_disabled")
        try:
            self.policy.check(requested)
        except RefusedURL as exc:
            raise APIError(400, f"webhook_url is refused: {exc.reason}.", param="webhook_url",
                           code="invalid_webhook_url") from None
        return list(dict.fromkeys([*self.server_urls, requested]))

    def start_deliverer(self, client: redis.Redis, prefix: str) -> threading.Event | None:
        """A deliverer thread on the job store's Redis; set the returned event to stop it. None
        when there is no secret (nothing can be signed, so nothing is sent)."""
        if self.secret is None:
            return None
        deliverer = Deliverer(Outbox(client, prefix, self.retry), WebhookSender(self.policy, verify=self.verify),
                              self.secret)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per attempt is the deliverer's own
        stop = threading.Event()
        threading.Thread(target=deliverer.run, args=(stop,), name="webhook-deliverer", daemon=True).start()
        log.info(json.dumps({"event": "webhook_deliverer_started", "server_urls": len(self.server_urls)}))
        return stop
