"""Webhook events in the shape of OpenAI's video webhooks:
`{"id": "evt_...", "object": "event", "type": "video.completed", "created_at": <unix>, "data": {"id": "video_..."}}`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from enum import StrEnum


class WebhookEventType(StrEnum):
    VIDEO_COMPLETED = "video.completed"
    VIDEO_FAILED = "video.failed"


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: WebhookEventType
    video_id: str
    created_at: int

    @property
    def body(self) -> bytes:
        """The exact bytes that are signed and sent."""
        return json.dumps({"id": self.id, "object": "event", "type": str(self.type), "created_at": self.created_at,
                           "data": {"id": self.video_id}}, separators=(",", ":")).encode()


def video_event(event_type: WebhookEventType, video_id: str, created_at: int | None = None) -> WebhookEvent:
    """A job ends once, so its event id follows from (job, type): enqueuing the same event twice
    (a repeated cancel, a retried settle) finds the deliveries already there and adds none."""
    digest = hashlib.sha256(f"{video_id}:{event_type}".encode()).hexdigest()[:32]
    return WebhookEvent(f"evt_{digest}", WebhookEventType(event_type), video_id,
                        int(time.time()) if created_at is None else created_at)
