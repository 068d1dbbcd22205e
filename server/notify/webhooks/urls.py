"""Which webhook URLs the server may call: https only, and only globally routable addresses after
DNS resolution, so a caller cannot point the server at its own network (SSRF). The sender
connects to exactly the addresses checked here (see sender.py), and checks again on every
redirect hop and every retry.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[IPAddress]]

MAX_URL_LENGTH = 2048
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")   # deprecated ::a.b.c.d form


class RefusedURL(ValueError):
    """The URL may not be called; `reason` says why (the API turns it into a 400 on webhook_url)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"webhook URL refused: {reason}")
        self.url = url
        self.reason = reason


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for host, in its order, without duplicates."""
    out: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])  # drop an IPv6 zone id
        if ip not in out:
            out.append(ip)
    return out


@dataclass(frozen=True)
class Target:
    """A checked URL: the addresses to connect to, and the name for Host and TLS (SNI, cert check)."""

    url: httpx.URL
    host: str               # ASCII (IDNA) host name or IP literal
    addresses: tuple[IPAddress, ...]


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.version == 4:
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _kind(ip: IPAddress) -> str | None:
    """Why this address is not a public unicast address, or None when it is."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.version == 6 and ip in _IPV4_COMPATIBLE:
        return "deprecated IPv4-compatible"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class UrlPolicy:
    """allow_private: also private, loopback, shared (CGNAT) and reserved unicast addresses, for a
    receiver on the server's own network. Link-local (cloud metadata at 169.254.169.254),
    multicast and unspecified addresses stay refused unless listed in `allowed_networks`, which
    opens exactly the networks named (e.g. a receiver at 10.0.3.7/32)."""

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why the server may not connect to `ip`, or None."""
        inner = _embedded_ipv4(ip)
        for candidate in (ip, inner) if inner else (ip,):
            if any(candidate in net for net in self.allowed_networks):
                return None
        if inner is not None:
            kind = _kind(inner)
            return f"an IPv6 address carrying the {kind} address {inner}" if kind and not self._opens(kind) else None
        kind = _kind(ip)
        return f"a {kind} address" if kind and not self._opens(kind) else None

    def _opens(self, kind: str) -> bool:
        return self.allow_private and kind in ("loopback", "private", "reserved", "not globally routable")

    def check(self, url: str) -> Target:
        """The URL's target if the server may call it; else RefusedURL naming why. Resolves DNS
        (blocking): call it from a thread in async code."""
        if len(url) > MAX_URL_LENGTH:
            raise RefusedURL(url, f"longer than {MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise RefusedURL(url, f"not a valid URL ({exc})") from None
        if parsed.scheme != "https":
            raise RefusedURL(url, f"only https URLs are allowed, not {parsed.scheme or 'a relative URL'}")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise RefusedURL(url, "the URL has no host")
        port = parsed.port or 443
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise RefusedURL(url, f"{host} does not resolve ({exc})") from None
            if not addresses:
                raise RefusedURL(url, f"{host} does not resolve")
        for ip in addresses:
            why = self.refusal(ip)
            if why:
                where = f"{host} resolves to {ip}" if str(ip) != host else str(ip)
                raise RefusedURL(url, f"{where}, {why}; the server only calls public addresses")
        return Target(parsed, host, tuple(addresses))
