"""Resolving webhook hosts: the system resolver, or a named DNS server asked directly over UDP
(`PARIS_WEBHOOK_DNS_SERVER`: a resolver kept for webhook checks, with a hard time limit per
query, which getaddrinfo does not have), and a small cache in front of either, so a name asked
for again does not wait on DNS again.

The stub asks for A and AAAA records with recursion desired and reads the answers' addresses
(CNAME chains are followed by the recursive server it asks)."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]
_A, _AAAA, _IN = 1, 28, 1


def _query(host: str, qtype: int) -> tuple[int, bytes]:
    qid = secrets.randbelow(1 << 16)
    labels = b"".join(bytes([len(part)]) + part for part in host.rstrip(".").encode("ascii").split(b"."))
    if any(not 0 < len(part) < 64 for part in host.rstrip(".").split(".")):
        raise OSError(f"{host!r} is not a valid host name")
    return qid, struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", qtype, _IN)


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        length = msg[i]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return i + 2
        if length == 0:
            return i + 1
        i += 1 + length


def parse_reply(msg: bytes, qid: int, qtype: int) -> list[IPAddress]:
    """The addresses of type qtype in a DNS reply to query qid; OSError for an error reply."""
    try:
        rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", msg[:12])
        if rid != qid or not flags & 0x8000:
            raise OSError("the DNS reply does not answer our query")
        rcode = flags & 0xF
        if rcode == 3:
            raise OSError("no such host (NXDOMAIN)")
        if rcode:
            raise OSError(f"the DNS server answered with error code {rcode}")
        i = 12
        for _ in range(qd):
            i = _skip_name(msg, i) + 4
        out: list[IPAddress] = []
        for _ in range(an):
            i = _skip_name(msg, i)
            rtype, _rclass, _ttl, length = struct.unpack(">HHIH", msg[i:i + 10])
            data = msg[i + 10:i + 10 + length]
            i += 10 + length
            if rtype == qtype == _A and length == 4:
                out.append(ipaddress.IPv4Address(data))
            elif rtype == qtype == _AAAA and length == 16:
                out.append(ipaddress.IPv6Address(data))
        return out
    except (struct.error, IndexError):
        raise OSError("the DNS reply is malformed") from None


class DnsServerResolver:
    """Ask one DNS server (host, port) over UDP; each query waits at most `timeout_s`."""

    def __init__(self, server: tuple[str, int], timeout_s: float = 2.0):
        self.server, self.timeout_s = server, timeout_s

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        out: list[IPAddress] = []
        for qtype in (_A, _AAAA):
            qid, packet = _query(host, qtype)
            family = socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(self.server)
                sock.send(packet)
                try:
                    reply = sock.recv(4096)
                except TimeoutError:
                    raise OSError(f"the DNS server did not answer within {self.timeout_s:g} s") from None
            out += [ip for ip in parse_reply(reply, qid, qtype) if ip not in out]
        return out


def parse_server(text: str) -> tuple[str, int]:
    """'127.0.0.1', '127.0.0.1:5353' or '[::1]:53' -> (address, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "53"
    ipaddress.ip_address(host)  # ValueError: a DNS server is named by its address
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port)


class CachedResolver:
    """Answers (and failures) of `inner` kept for `ttl_s` seconds, the `size` most recent names."""

    def __init__(self, inner: Resolver, ttl_s: float = 60.0, size: int = 256):
        self.inner, self.ttl_s, self.size = inner, ttl_s, size
        self._entries: OrderedDict[tuple[str, int], tuple[float, list[IPAddress] | OSError]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        key = (host.lower(), port)
        with self._lock:
            hit = self._entries.get(key)
            if hit and hit[0] > time.monotonic():
                self._entries.move_to_end(key)
                if isinstance(hit[1], OSError):
                    raise hit[1]
                return list(hit[1])
        try:
            answer: list[IPAddress] | OSError = self.inner(host, port)
        except OSError as exc:
            answer = exc
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_s, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        if isinstance(answer, OSError):
            raise answer
        return list(answer)
