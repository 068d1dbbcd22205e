"""The webhook resolver on real UDP sockets: a DNS server on 127.0.0.1 that answers (the stub
reads its A and AAAA answers, through a compressed name), one that never answers (an OSError
within the time limit), and the cache (a second ask does not reach the server)."""

import ipaddress
import socket
import struct
import threading
import time

import pytest

from server.notify.webhooks.resolver import CachedResolver, DnsServerResolver, parse_reply, parse_server
from server.notify.webhooks.urls import RefusedURL, UrlPolicy


class Responder:
    """A DNS server answering every A query with `v4` and every AAAA with `v6`, counting queries."""

    def __init__(self, v4: str, v6: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.v4, self.v6, self.queries = v4, v6, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                msg, peer = self.sock.recvfrom(512)
            except OSError:
                return
            self.queries += 1
            qid = msg[:2]
            end = msg.index(b"\x00", 12) + 5  # the question: name, type, class
            qtype = struct.unpack(">H", msg[end - 4:end - 2])[0]
            data = ipaddress.ip_address(self.v4 if qtype == 1 else self.v6).packed
            answer = b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 60, len(data)) + data  # name: pointer to the question
            self.sock.sendto(qid + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + msg[12:end] + answer, peer)

    def close(self):
        self.sock.close()


def test_the_stub_reads_a_and_aaaa_answers_and_the_policy_refuses_them():
    server = Responder("127.0.0.1", "::1")
    try:
        resolve = DnsServerResolver(server.address, timeout_s=2)
        assert resolve("receiver.example", 443) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        with pytest.raises(RefusedURL, match="resolves to 127.0.0.1, a loopback address"):
            UrlPolicy(resolver=resolve).check("https://receiver.example/hook")
        cached = CachedResolver(resolve)
        cached("Receiver.example", 443)
        cached("receiver.example", 443)
        assert server.queries == 2 + 2 + 2  # A and AAAA for each of: the stub, the policy, the cache's one miss
    finally:
        server.close()


def test_a_server_that_never_answers_fails_within_the_time_limit_and_the_failure_is_cached():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        cached = CachedResolver(DnsServerResolver(silent.getsockname(), timeout_s=0.3))
        t0 = time.monotonic()
        with pytest.raises(OSError, match="did not answer within 0.3 s"):
            cached("slow.example", 443)
        assert time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        with pytest.raises(OSError):
            cached("slow.example", 443)
        assert time.monotonic() - t0 < 0.1  # from the cache
    finally:
        silent.close()


def test_replies_that_do_not_answer_the_query_are_errors():
    with pytest.raises(OSError, match="does not answer"):
        parse_reply(struct.pack(">HHHHHH", 7, 0x8180, 0, 0, 0, 0), 8, 1)
    with pytest.raises(OSError, match="NXDOMAIN"):
        parse_reply(struct.pack(">HHHHHH", 7, 0x8183, 0, 0, 0, 0), 7, 1)
    with pytest.raises(OSError, match="malformed"):
        parse_reply(struct.pack(">HHHHHH", 7, 0x8180, 0, 1, 0, 0) + b"\x03abc", 7, 1)
    assert parse_server("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_server("[::1]:5353") == ("::1", 5353)
    with pytest.raises(ValueError):
        parse_server("dns.example:53")
