"""`paris serve` (API + one worker + embedded Valkey), `paris api`, `paris worker`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

log = logging.getLogger("paris.cli")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one Settings field."""

    name: str
    field: str
    type: Callable[[str], object] = str
    help: str | None = None


# Settings that `paris worker` reads: `paris serve` forwards each one that is set to its worker.
QUEUE_FLAGS = (
    Flag("--job-ttl", "job_ttl_s", int, "seconds finished jobs and files are kept"),
    Flag("--lease-ms", "lease_ms", int, "job lease; a job whose worker stops renewing it for this long is taken "
         "over by another worker"),
    Flag("--max-attempts", "max_attempts", int, "times a job is started before it fails"),
)
WORKER_FLAGS = (
    Flag("--device", "device", str, "torch device for the worker (default cpu)"),
    Flag("--max-batch", "max_batch", int, "requests denoised together (worker capacity)"),
    Flag("--device-memory", "device_memory", str, "device memory for weights: e.g. 40GiB, or a fraction of free "
         "memory such as 0.8 (default: no limit); experts beyond it move in and out"),
    Flag("--threads", "threads", int, "torch CPU threads for the worker (default: torch's choice); 1 avoids thread "
         "stalls on a shared CPU"),
    Flag("--max-wait", "max_wait", int, "ticks a request may wait for its expert before it is served first "
         "(default 24)"),
    Flag("--worker-id", "worker_id"),
    Flag("--tick-delay", "tick_delay_s", float, "sleep after each step (debugging)"),
)


def _add(p: argparse.ArgumentParser, flags: tuple[Flag, ...]) -> None:
    for flag in flags:
        p.add_argument(flag.name, dest=flag.field, type=flag.type, help=flag.help)


def _common(p: argparse.ArgumentParser, http: bool, worker: bool) -> None:
    p.add_argument("--model", help="model folder (default weights/paris-mini; env PARIS_MODEL)")
    p.add_argument("--redis-url", help="Redis >= 7.2 / Valkey URL; omitted: embedded Valkey with AOF in --data-dir")
    p.add_argument("--data-dir", type=Path, help="embedded Valkey data and default artifact dir (default .paris)")
    p.add_argument("--artifact-dir", type=Path, help="shared artifact directory (default DATA_DIR/artifacts)")
    _add(p, QUEUE_FLAGS)
    p.add_argument("--log-level", default="INFO")
    if http:
        p.add_argument("--host", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 8000)")
        p.add_argument("--api-key", dest="api_keys", action="append", help="accept this API key (repeatable; "
                       "env PARIS_API_KEYS=k1,k2); keys are kept only as sha256 digests")
        p.add_argument("--allow-unauthenticated-public", action="store_true", default=None,
                       help="allow binding beyond 127.0.0.1 without API keys")
        p.add_argument("--max-upload-bytes", type=int)
        p.add_argument("--max-active-jobs-per-key", type=int)
    if worker:
        _add(p, WORKER_FLAGS)


def settings_from_args(args: argparse.Namespace) -> Settings:
    from pipeline.manifest import read_manifest

    fields = set(Settings.model_fields)
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: a clear message, not a traceback
        raise SystemExit(f"paris {args.command}: {exc}") from None
    try:
        read_manifest(settings.model)
    except Exception as exc:  # say what is wrong before starting anything
        raise SystemExit(f"paris {args.command}: cannot serve model folder {settings.model!r}: {exc}") from None
    return settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


def _redis_url(settings: Settings, start: bool):
    """(url, embedded server or None)."""
    if settings.redis_url:
        return settings.redis_url, None
    if start:
        from .embedded import start_embedded
        server = start_embedded(settings.data_dir)
        return server.connection_url, server
    port_file = Path(settings.data_dir) / "valkey" / "port.json"
    if port_file.exists():
        return f"redis://127.0.0.1:{json.loads(port_file.read_text())['port']}", None
    raise SystemExit("paris worker: no --redis-url and no embedded Valkey found in the data dir; "
                     "start `paris api` first or pass --redis-url")


def _check_bind(settings: Settings) -> None:
    if settings.host not in LOOPBACK and not (settings.api_keys or settings.api_key_hashes) \
            and not settings.allow_unauthenticated_public:
        raise SystemExit(f"refusing to bind {settings.host} without API keys: pass --api-key KEY "
                         "(or PARIS_API_KEYS), or --allow-unauthenticated-public to serve without keys")


def _exit_on_signal(signum, frame):
    raise SystemExit(0)


def _run_api(settings: Settings, url: str) -> None:
    import uvicorn

    from .app import create_app

    try:
        app = create_app(settings, redis_url=url)
    except ValueError as exc:  # e.g. a refused PARIS_WEBHOOK_URLS entry: a clear message, not a traceback
        raise SystemExit(f"paris: {exc}") from None
    # uvicorn restores the previous handlers after shutdown and re-raises the signal; make that an
    # exception so the caller's `finally` stops the embedded Valkey and the worker subprocess.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    log.info(json.dumps({"event": "api_listening", "url": f"http://{settings.host}:{settings.port}",
                         "model": app.state.services.manifest.name, "auth": app.state.services.keys.enabled}))
    # Event streams stay open until their job ends: on shutdown, give them a few seconds, then close
    # them (the browser reconnects with Last-Event-ID, to another API process if need be).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=3)


def cmd_api(args) -> int:
    _setup_logging(args.log_level)
    settings = settings_from_args(args)
    _check_bind(settings)
    url, server = _redis_url(settings, start=True)
    try:
        _run_api(settings, url)
    finally:
        if server:
            server.stop()
    return 0


def cmd_worker(args) -> int:
    _setup_logging(args.log_level)
    settings = settings_from_args(args)
    url, _ = _redis_url(settings, start=False)
    from .worker import build_worker

    worker = build_worker(settings, url)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    worker.run()
    return 0


def _worker_argv(args, settings: Settings, url: str) -> list[str]:
    argv = [sys.executable, "-m", "client.cli", "worker", "--redis-url", url, "--model", str(settings.model),
            "--artifact-dir", str(settings.resolved_artifact_dir().resolve()), "--log-level", args.log_level]
    for flag in QUEUE_FLAGS + WORKER_FLAGS:
        value = getattr(settings, flag.field)
        if value is not None:
            argv += [flag.name, str(value)]
    return argv


def cmd_serve(args) -> int:
    """API + one worker (a supervised subprocess) + embedded Valkey unless --redis-url."""
    _setup_logging(args.log_level)
    settings = settings_from_args(args)
    _check_bind(settings)
    url, server = _redis_url(settings, start=True)
    stop = threading.Event()
    proc: list[subprocess.Popen] = []
    repo_root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}

    def supervise():
        while not stop.is_set():
            p = subprocess.Popen(_worker_argv(args, settings, url), env=env)
            proc[:] = [p]
            while p.poll() is None and not stop.is_set():
                time.sleep(0.5)
            if not stop.is_set():
                log.warning(json.dumps({"event": "worker_exited", "code": p.returncode, "restart_in_s": 2}))
                time.sleep(2)

    threading.Thread(target=supervise, daemon=True).start()
    try:
        _run_api(settings, url)
    finally:
        stop.set()
        for p in proc:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if server:
            server.stop()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="API + one worker + embedded Valkey (single machine)")
    _common(p, http=True, worker=True)
    p.set_defaults(run=cmd_serve)
    p = subparsers.add_parser("api", help="the HTTP API only (workers run separately)")
    _common(p, http=True, worker=False)
    p.set_defaults(run=cmd_api)
    p = subparsers.add_parser("worker", help="a GPU/CPU worker pulling jobs from Redis")
    _common(p, http=False, worker=True)
    p.set_defaults(run=cmd_worker)
