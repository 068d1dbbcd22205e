"""Signed webhooks for finished jobs (`video.completed`, `video.failed`), delivered at least once.

    policy   = UrlPolicy(allow_private=settings.webhook_allow_private)
    policy.check(url)                      # at job creation: RefusedURL -> 400 naming webhook_url
    outbox   = Outbox(redis_client, settings.key_prefix)
    outbox.enqueue(pipe, video_event(WebhookEventType.VIDEO_COMPLETED, job_id), urls, guard)  # in the settle MULTI
    Deliverer(outbox, WebhookSender(policy), WebhookSecret(settings.webhook_secret)).run(stop)  # in a thread
    outbox.deliveries(job_id)              # attempts, for the job record

Modules: signing (Standard Webhooks headers), payloads (OpenAI's event shape), urls (which URLs
may be called), sender (one pinned, bounded POST), outbox (Redis state), deliverer (the loop).
"""

from .deliverer import Deliverer
from .outbox import Outbox, RetryPolicy
from .payloads import WebhookEvent, WebhookEventType, video_event
from .sender import DeliveryError, Response, Timeouts, WebhookSender
from .signing import WebhookSecret
from .urls import RefusedURL, Target, UrlPolicy

__all__ = ["Deliverer", "DeliveryError", "Outbox", "RefusedURL", "Response", "RetryPolicy", "Target",
           "Timeouts", "UrlPolicy", "WebhookEvent", "WebhookEventType", "WebhookSecret", "WebhookSender",
           "video_event"]
