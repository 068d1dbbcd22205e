"""One webhook POST, safely: the URL is checked by the policy, the connection goes to the checked
address (Host header and TLS name stay the URL's host, so certificates are still verified against
it), each redirect hop is checked again, every phase has a time limit, and only the start of the
response body is read.

Pinning the address closes the DNS-rebinding gap: a name that resolved to a public address when
checked cannot resolve to 127.0.0.1 when connecting, because the sender does not resolve again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from .urls import Target, UrlPolicy

REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "paris-serve-webhooks/1"


class DeliveryError(Exception):
    """The receiver could not be reached or did not answer in time (retried later)."""


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 10.0     # each socket read or write
    total_s: float = 30.0    # the whole delivery, redirects included


@dataclass(frozen=True)
class Response:
    status_code: int
    url: str                 # the URL that answered (after redirects)
    head: bytes              # the start of the body, at most max_response_bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


class WebhookSender:
    def __init__(self, policy: UrlPolicy, timeouts: Timeouts = Timeouts(), *, max_redirects: int = 3,
                 max_response_bytes: int = 4096, verify: ssl.SSLContext | bool = True):
        self.policy = policy
        self.timeouts = timeouts
        self.max_redirects = max_redirects
        self.max_response_bytes = max_response_bytes
        self.verify = verify

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST body to url. Raises RefusedURL (policy, on any hop) or DeliveryError (network,
        time, too many redirects); a non-2xx answer is a Response, not an error."""
        try:
            async with asyncio.timeout(self.timeouts.total_s):
                return await self._follow(url, body, headers)
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeouts.total_s:g} s") from None

    async def _follow(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        # Every redirect is POSTed again with the same signed body: a webhook is only a POST.
        for _ in range(self.max_redirects + 1):
            target = await asyncio.to_thread(self.policy.check, url)
            response, location = await self._post_pinned(target, body, headers)
            if response.status_code not in REDIRECTS or not location:
                return response
            url = str(target.url.join(location))
        raise DeliveryError(f"more than {self.max_redirects} redirects")

    async def _post_pinned(self, target: Target, body: bytes, headers: Mapping[str, str]) -> tuple[Response, str]:
        # A fresh client per delivery: no connection pool can hand a connection made for one host
        # name to another that shares its address; trust_env=False: no proxy from the environment.
        timeout = httpx.Timeout(self.timeouts.read_s, connect=self.timeouts.connect_s)
        sent = {"content-type": "application/json", "user-agent": USER_AGENT, "accept-encoding": "identity",
                **headers, "host": target.url.netloc.decode("ascii")}
        async with httpx.AsyncClient(verify=self.verify, trust_env=False, follow_redirects=False,
                                     timeout=timeout) as client:
            last_error: Exception | None = None
            for ip in target.addresses:  # in resolver order; the next one only if connecting failed
                request = client.build_request("POST", target.url.copy_with(host=str(ip)), content=body,
                                               headers=sent, extensions={"sni_hostname": target.host})
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectError as exc:
                    last_error = exc
                    continue
                except httpx.HTTPError as exc:
                    raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
                try:
                    head = await self._head(response)
                finally:
                    await response.aclose()
                return Response(response.status_code, str(target.url), head), response.headers.get("location", "")
            raise DeliveryError(f"could not connect to {target.host}: {last_error}")

    async def _head(self, response: httpx.Response) -> bytes:
        head = b""
        try:
            async for chunk in response.aiter_raw():
                head += chunk[: self.max_response_bytes - len(head)]
                if len(head) >= self.max_response_bytes:
                    break
        except httpx.HTTPError:
            pass  # the status line is what counts; a body cut short does not undo it
        return head
