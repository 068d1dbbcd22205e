"""Who a request is for the per-tenant limits: its API key's owner, or, when the server has no
keys, the client's address. That address is the connection's peer, unless the peer is one of
the `trusted_proxies` networks: then it is the last X-Forwarded-For hop no trusted proxy added.
Anything else in X-Forwarded-For is ignored, and the result is always an IP address, so a header
can neither dodge a per-client limit nor name a Redis key (issue 19, N5)."""

from __future__ import annotations

import ipaddress

from fastapi import Request

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: list[str]) -> tuple[IPNetwork, ...]:
    """CIDRs or single addresses ("10.0.0.0/8", "127.0.0.1"); ValueError naming a bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (e.g. 10.0.0.0/8) or address") from None
    return tuple(out)


def _within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: Request, trusted_proxies: tuple[IPNetwork, ...]) -> str:
    peer = request.client.host if request.client else "unknown"
    if not _within(peer, trusted_proxies):
        return peer
    hops = [h.strip() for value in request.headers.getlist("x-forwarded-for") for h in value.split(",")]
    for hop in reversed(hops):  # the right end is what our own proxies added
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a hop no proxy of ours wrote: trust nothing beyond the proxy itself
        if not any(ip in net for net in trusted_proxies):
            return str(ip)
    return peer


def tenant(request: Request, services, owner: str) -> str:
    """The owner with keys; `client:<address>` without them."""
    if services.keys.enabled:
        return owner
    return "client:" + client_address(request, services.trusted_proxies)
