"""Standard Webhooks signatures (https://www.standardwebhooks.com), as OpenAI's webhooks use them:

    webhook-id:        the event id, the same on every retry (receivers dedupe on it)
    webhook-timestamp: unix seconds of this attempt (receivers refuse ones older than ~5 min)
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

The key is the base64 part of a `whsec_<base64>` secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


class WebhookSecret:
    def __init__(self, text: str):
        if not text.startswith(PREFIX):
            raise ValueError(f"a webhook secret looks like {PREFIX}<base64 key>; make one with "
                             "`python -c 'from server.notify.webhooks import WebhookSecret; print(WebhookSecret.generate())'`")
        try:
            self._key = base64.b64decode(text[len(PREFIX):], validate=True)
        except binascii.Error:
            raise ValueError(f"the part after {PREFIX} of the webhook secret is not valid base64") from None
        if len(self._key) < 16:
            raise ValueError("the webhook secret's key must be at least 16 bytes (24 base64 characters)")

    @staticmethod
    def generate(nbytes: int = 32) -> str:
        return PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        mac = hmac.new(self._key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
        return "v1," + base64.b64encode(mac.digest()).decode()

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": self.signature(msg_id, timestamp, body)}

    def __repr__(self) -> str:  # never print the key
        return "WebhookSecret(whsec_***)"
