"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on each request's headers. uvicorn closes idle
keep-alive connections, but a client that sends half a request line and stops (slowloris) holds
its connection forever; this closes it once the deadline passes. The body has its own deadline
where it is read (server/api/bodies.py)."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """An H11Protocol class (uvicorn's `http=`) that closes connections whose request headers do
    not arrive within `seconds` of the connection opening or of the previous response."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(seconds, self._deadline_passed)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _deadline_passed(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # headers still incomplete
                self.transport.close()

    return HeaderTimeoutProtocol
