"""API keys: stored as sha256 digests only, compared in constant time. A key's identity (the
owner of its jobs) is a prefix of its digest; without keys configured every caller is `public`."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from .errors import APIError

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


def require_owner(request: Request) -> str:
    """FastAPI dependency: the caller's owner id, or 401."""
    ring: KeyRing = request.app.state.keys
    if not ring.enabled:
        return PUBLIC_OWNER
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "Missing API key. Send 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    owner = ring.owner_for(token.strip())
    if owner is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return owner
