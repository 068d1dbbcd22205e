"""How many event streams one API process holds open: at most `per_key` for one owner (an API
key, or the client address without keys) and `total` in all. A stream over either is refused
before it starts (429 for the owner's cap, 503 for the process's), so one tenant's streams cannot
take the connections and tasks every other tenant's streams and requests need (issue 19, N1)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from server.errors import APIError

RETRY_AFTER_S = 5


class StreamSlots:
    def __init__(self, per_key: int, total: int):
        self.per_key, self.total = per_key, total
        self._held: Counter[str] = Counter()

    def take(self, owner: str) -> None:
        """One slot for `owner`, or the APIError saying which limit is reached."""
        if self._held[owner] >= self.per_key:
            raise APIError(429, f"This key already has {self.per_key} open event streams; close one or poll "
                                "GET /v1/videos/{id} instead.", code="too_many_streams",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        if sum(self._held.values()) >= self.total:
            raise APIError(503, f"This server holds its limit of {self.total} event streams; try again shortly.",
                           code="too_many_streams", headers={"Retry-After": str(RETRY_AFTER_S)})
        self._held[owner] += 1

    def give_back(self, owner: str) -> None:
        self._held[owner] -= 1
        if self._held[owner] <= 0:
            del self._held[owner]

    @contextlib.contextmanager
    def held(self, owner: str) -> Iterator[None]:
        self.take(owner)
        try:
            yield
        finally:
            self.give_back(owner)
