"""A TCP link between a worker and a real Valkey that fails on cue, the way a network or a
restarting server does: it can cut the connection that carries one chosen command before the
command reaches Valkey (it never applies), or after (it applies, and the reply is lost), and it
can refuse every connection for a while (Valkey down). Nothing about Valkey is simulated."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Match = Callable[[bytes], bool]


@dataclass
class _Cut:
    match: Match
    reply_lost: bool  # False: cut before the command reaches Valkey; True: after it ran, before its reply
    down_s: float  # then refuse connections for this long
    hit: threading.Event


class FaultyLink:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        self._cuts: list[_Cut] = []
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, match: Match, *, reply_lost: bool, down_s: float = 0.0) -> threading.Event:
        """Cut the connection of the next command whose bytes satisfy `match`; the event is set
        once that happened."""
        cut = _Cut(match, reply_lost, down_s, threading.Event())
        with self._lock:
            self._cuts.append(cut)
        return cut.hit

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.time() < self._down_until:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            muted = threading.Event()
            threading.Thread(target=self._to_server, args=(client, server, muted), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, muted), daemon=True).start()

    def _take_cut(self, data: bytes) -> _Cut | None:
        with self._lock:
            for cut in self._cuts:
                if cut.match(data):
                    self._cuts.remove(cut)
                    return cut
        return None

    def _to_server(self, client: socket.socket, server: socket.socket, muted: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if time.time() < self._down_until:
                    break
                cut = self._take_cut(data)
                if cut is None:
                    server.sendall(data)
                    continue
                self._down_until = time.time() + cut.down_s
                if cut.reply_lost:
                    muted.set()  # whatever Valkey answers from now on is dropped
                    server.sendall(data)
                    time.sleep(0.3)  # let it run
                cut.hit.set()
                break
        except OSError:
            pass
        _close(client, server)

    @staticmethod
    def _to_client(server: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if muted.is_set():
                    break
                client.sendall(data)
        except OSError:
            pass
        _close(client, server)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
