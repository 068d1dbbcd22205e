"""API keys: stored as sha256 digests only, compared in constant time. A key's identity (the
owner of its jobs) is a prefix of its digest; without keys configured every caller is `public`."""

from __future__ import annotations

import hashlib
import hmac

from server.errors import APIError

PUBLIC_OWNER = "public"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, plain_keys: list[str], digests: list[str]):
        self._digests = [hash_key(k) for k in plain_keys] + [d.lower().removeprefix("sha256:") for d in digests]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner_for(self, presented: str) -> str | None:
        digest = hash_key(presented)
        match = None
        for d in self._digests:  # compare against every digest: time does not depend on which matched
            if hmac.compare_digest(digest, d):
                match = d
        return match[:24] if match else None

    def owner(self, authorization: str | None) -> str:
        """The owner of the key in an `Authorization: Bearer KEY` header, or 401."""
        if not self.enabled:
            return PUBLIC_OWNER
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Missing API key. Send 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        owner = self.owner_for(token.strip())
        if owner is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return owner
