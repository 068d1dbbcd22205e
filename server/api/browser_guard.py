"""Without API keys, a browser is the attacker's tool (issue 19, N6): a page on another site can
POST a form to this server (cross-site request forgery), and a name the attacker controls can be
pointed at this server's address (DNS rebinding), making the browser read replies. So, when no
keys are configured:

* the Host header must name this server: `allowed_hosts` (default: the bound address,
  localhost, 127.0.0.1 and ::1; "*" turns the check off), else 400 naming Host;
* a request that changes state (any method but GET, HEAD and OPTIONS) coming from another origin,
  by its Origin header or the browser's Sec-Fetch-Site, is a 403.

With keys, neither applies: a forged request carries no key, and a rebinding page reads nothing
without one."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers

from server.errors import error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str:
    """The name in a Host header, without its port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def default_hosts(bound: str) -> frozenset[str]:
    return frozenset({host_name(bound), *LOCAL_NAMES})


class BrowserGuard:
    """ASGI middleware; `allowed_hosts` None turns it off (the server has keys)."""

    def __init__(self, app, allowed_hosts: frozenset[str] | None):
        self.app = app
        self.allowed = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allowed is None:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if "*" not in self.allowed and host_name(host) not in self.allowed:
            response = error_response(400, "This server does not answer to that host name "
                                           "(PARIS_ALLOWED_HOSTS).", "Host", "invalid_host")
            return await response(scope, receive, send)
        if scope["method"] not in SAFE_METHODS and self._cross_site(headers, host):
            response = error_response(403, "Cross-site requests that change state are refused (this server has "
                                           "no API keys to tell them apart).", "Origin", "cross_site_request")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    @staticmethod
    def _cross_site(headers: Headers, host: str) -> bool:
        if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
            return True
        origin = headers.get("origin")
        if origin is None:
            return False  # not a browser's cross-origin request (browsers send Origin on every POST they forge)
        return origin == "null" or urlsplit(origin).netloc.lower() != host.strip().lower()
