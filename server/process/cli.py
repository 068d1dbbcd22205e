"""`paris serve` (API + workers + embedded Valkey), `paris api`, `paris worker`."""

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

from pydantic import ValidationError

from .children import EXIT_REFUSED, die_with_parent
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
    Flag("--device-memory", "device_memory", str, "device memory the worker plans for (weights, activations, VAE "
         "decode, embeddings, reserve): e.g. 40GiB, or a fraction of free memory such as 0.8 (default on CUDA: the free "
         "memory; on CPU: no limit); the worker refuses to start when it cannot serve one request of the largest size"),
    Flag("--host-memory", "host_memory", str, "host memory for pinned copies of the weights kept off the device "
         "(default: 90%% of RAM)"),
    Flag("--reserve", "reserve", str, "device memory held back for CUDA workspaces and fragmentation (default: 5%% of "
         "the device memory, at least 2GiB)"),
    Flag("--threads", "threads", int, "torch CPU threads for the worker (default: torch's choice); 1 avoids thread "
         "stalls on a shared CPU"),
    Flag("--max-wait", "max_wait", int, "ticks a request may wait for its expert before it is served first "
         "(default 24)"),
    Flag("--worker-id", "worker_id"),
    Flag("--tick-delay", "tick_delay_s", float, "sleep after each step (debugging)"),
    Flag("--max-job-seconds", "max_job_seconds", float, "a job running longer than this fails with `timeout` "
         "(default 3600)"),
    Flag("--artifact-writers", "artifact_writers", int, "threads writing videos off the engine loop (default 2)"),
    Flag("--group-devices", "group_devices", str, "one worker over several devices, e.g. cuda:0,cuda:1: each expert's "
         "rows run on the devices holding it (a worker group; README: Several GPUs behind one worker)"),
    Flag("--group-timeout", "group_timeout_s", float, "seconds a rank of a worker group may stay silent before the "
         "group ends and the worker exits non-zero (default 60)"),
    Flag("--group-stream-copies", "group_stream_copies", str, "true: each device of a worker group also streams the "
         "experts it does not hold whole, so every request's guidance rows can split (pays on long clips)"),
)


def _add(p: argparse.ArgumentParser, flags: tuple[Flag, ...]) -> None:
    for flag in flags:
        p.add_argument(flag.name, dest=flag.field, type=flag.type, help=flag.help)


def _common(p: argparse.ArgumentParser, http: bool, worker: bool) -> None:
    p.add_argument("--model", help="model folder (default weights/paris-mini; env PARIS_MODEL)")
    p.add_argument("--redis-url", help="Redis >= 7.2 / Valkey URL (env PARIS_REDIS_URL keeps a password out of ps); "
                   "omitted: embedded Valkey with AOF in --data-dir")
    p.add_argument("--data-dir", type=Path, help="embedded Valkey data and default artifact dir (default .paris)")
    p.add_argument("--artifact-dir", type=Path, help="shared artifact directory (default DATA_DIR/artifacts)")
    p.add_argument("--artifact-url", help="s3://bucket/prefix: artifacts on S3-compatible storage (endpoint and "
                   "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or ~/.aws)")
    _add(p, QUEUE_FLAGS)
    p.add_argument("--log-level", default="INFO")
    if http:
        p.add_argument("--host", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 8000)")
        p.add_argument("--api-key-file", type=Path, help="accept the API keys in this file (one per line); "
                       "or env PARIS_API_KEYS=k1,k2; keys are kept only as sha256 digests")
        p.add_argument("--api-key", dest="api_keys", action="append",
                       help="accept this API key (repeatable); it shows in `ps`: prefer --api-key-file")
        p.add_argument("--allow-unauthenticated-public", action="store_true", default=None,
                       help="allow binding beyond 127.0.0.1 without API keys")
        p.add_argument("--max-upload-bytes", type=int)
        p.add_argument("--max-active-jobs-per-key", type=int)
    if worker:
        _add(p, WORKER_FLAGS)


# What `paris serve` passes on to its workers of the PARIS_* environment: the settings a worker
# reads, nothing else (no API keys, no webhook secrets: least privilege, issue 19 N9)
WORKER_SETTINGS = frozenset({"model", "redis_url", "data_dir", "artifact_dir", "artifact_url", "key_prefix",
                             "heartbeat_ttl_s", *(f.field for f in QUEUE_FLAGS + WORKER_FLAGS),
                             "max_storage_retries"})


def worker_environment(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items()
            if not k.upper().startswith("PARIS_") or k[len("PARIS_"):].lower() in WORKER_SETTINGS}


SECRETS = {"api_keys", "api_key_hashes", "redis_url", "webhook_key_secrets", "operator_key_hashes"}  # never echoed in an error


def describe_invalid(exc: ValidationError) -> str:
    """One line per invalid setting, naming its environment variable (and flag)."""
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            lines.append(msg)
            continue
        field = str(err["loc"][0])
        got = "" if field in SECRETS else f" (got {err['input']!r})"
        lines.append(f"{field} (PARIS_{field.upper()}): {msg}{got}")
    return "; ".join(lines)


def settings_from_args(args: argparse.Namespace) -> Settings:
    from pipeline.manifest import read_manifest

    fields = set(Settings.model_fields)
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if getattr(args, "api_keys", None):
        log.warning(json.dumps({"event": "api_key_on_command_line", "advice": "--api-key shows in `ps`: use "
                                "--api-key-file or PARIS_API_KEYS"}))
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:  # a clear message, not a traceback
        raise SystemExit(f"paris {args.command}: invalid settings: {describe_invalid(exc)}") from None
    try:
        read_manifest(settings.model)
    except Exception as exc:  # say what is wrong before starting anything
        raise SystemExit(f"paris {args.command}: cannot serve model folder {settings.model!r}: {exc}") from None
    return settings


def _private_files() -> None:
    """Files and directories this process makes (artifacts, uploads, data) are its user's only:
    0600 and 0700 (issue 19, N10); `paris serve`'s workers inherit it."""
    os.umask(0o077)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


def _redis_url(settings: Settings, command: str, start: bool):
    """(url, the embedded Valkey this process owns or None)."""
    if settings.redis_url:
        return settings.redis_url, None
    from .embedded import DataDirInUse, EmbeddedValkey, EmbeddedValkeyError, discover

    if start:
        valkey = EmbeddedValkey(settings.data_dir)
        try:
            valkey.start()
        except (DataDirInUse, EmbeddedValkeyError) as exc:
            raise SystemExit(f"paris {command}: {exc}") from None
        return valkey.url, valkey
    url = discover(settings.data_dir)
    if url is None:
        raise SystemExit(f"paris {command}: no --redis-url and no embedded Valkey found in {settings.data_dir}; "
                         "start `paris api` there first or pass --redis-url")
    return url, None


def _check_api_start(settings: Settings, command: str) -> None:
    """What the API needs before anything starts: keys unless on loopback, writable artifact storage."""
    from server.storage import StorageError, open_artifacts

    if settings.host not in LOOPBACK and not (settings.plain_api_keys() or settings.api_key_hashes) \
            and not settings.allow_unauthenticated_public:
        raise SystemExit(f"refusing to bind {settings.host} without API keys: pass --api-key-file FILE "
                         "(or PARIS_API_KEYS), or --allow-unauthenticated-public to serve without keys")
    try:
        open_artifacts(settings).check()
    except (StorageError, OSError) as exc:
        raise SystemExit(f"paris {command}: artifact storage: {exc}") from None


def _exit_on_signal(signum, frame):
    raise SystemExit(0)


def _run_api(settings: Settings, url: str, valkey) -> None:
    import uvicorn

    from server.api.app import create_app
    from server.api.header_timeout import with_header_timeout

    try:
        app = create_app(settings, redis_url=url, valkey=valkey)
    except ValueError as exc:  # e.g. a refused PARIS_WEBHOOK_URLS entry: a clear message, not a traceback
        raise SystemExit(f"paris: {exc}") from None
    # uvicorn restores the previous handlers after shutdown and re-raises the signal; make that an
    # exception so the caller's `finally` stops the embedded Valkey and the worker subprocesses.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    log.info(json.dumps({"event": "api_listening", "url": f"http://{settings.host}:{settings.port}",
                         "model": app.state.services.manifest.name, "auth": app.state.services.keys.enabled}))
    # Event streams stay open until their job ends: on shutdown, give them a few seconds, then close
    # them (the browser reconnects with Last-Event-ID, to another API process if need be).
    # proxy_headers off: uvicorn would take any X-Forwarded-For from a loopback peer as the client;
    # server/api/tenants.py reads it only from PARIS_TRUSTED_PROXIES
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                http=with_header_timeout(settings.header_timeout_s), timeout_graceful_shutdown=3,
                proxy_headers=False)


def cmd_api(args) -> int:
    _setup_logging(args.log_level)
    _private_files()
    settings = settings_from_args(args)
    _check_api_start(settings, "api")
    url, valkey = _redis_url(settings, "api", start=True)
    try:
        _run_api(settings, url, valkey)
    finally:
        if valkey:
            valkey.stop()
    return 0


def cmd_worker(args) -> int:
    _setup_logging(args.log_level)
    _private_files()
    settings = settings_from_args(args)
    from server.worker.group import in_group, run_group_worker

    if in_group(settings):  # ranks other than 0 never talk to Redis: the URL is looked up on rank 0 only
        return run_group_worker(settings, lambda: _redis_url(settings, "worker", start=False)[0])
    url, _ = _redis_url(settings, "worker", start=False)
    from server.worker.build import WorkerRefused, build_worker

    try:
        worker = build_worker(settings, url)
    except WorkerRefused as exc:
        print(f"paris worker: refusing to start: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    worker.run()
    return 0


def worker_devices(settings: Settings) -> list[str]:
    """The device of each worker `paris serve` starts: `workers` of them (default: one per named
    device, or one), worker i on devices[i % len(devices)] (default: `device`)."""
    devices = settings.devices or [settings.device]
    return [devices[i % len(devices)] for i in range(settings.workers or len(devices))]


def _worker_argv(args, settings: Settings, device: str) -> list[str]:
    """The worker's command line. The Redis URL (it may hold a password) goes in its environment."""
    argv = [sys.executable, "-m", "client.cli", "worker", "--model", str(settings.model),
            "--log-level", args.log_level]
    if settings.artifact_url:
        argv += ["--artifact-url", settings.artifact_url]
    else:
        argv += ["--artifact-dir", str(settings.resolved_artifact_dir().resolve())]
    for flag in QUEUE_FLAGS + WORKER_FLAGS:
        value = device if flag.field == "device" else getattr(settings, flag.field)
        if isinstance(value, list):  # a comma list (group devices)
            value = ",".join(value) or None
        if value is not None:
            argv += [flag.name, str(value)]
    return argv


def worker_launch(args, settings: Settings, device: str, env: dict) -> tuple[list[str], dict]:
    """One worker's command line and environment: it sees only its own GPU (as cuda:0) and runs
    with the allocator configuration the memory plan assumes (pipeline/cuda_env.py)."""
    from pipeline.cuda_env import allocator_env, child_env

    if settings.group_devices:  # a group spans its devices: each rank makes its own current
        return _worker_argv(args, settings, device), {**env, **allocator_env(env)}
    worker_env, name = child_env(device, env)
    return _worker_argv(args, settings, name), worker_env


def _supervise_worker(argv: list[str], env: dict, stop: threading.Event, refused: threading.Event,
                      procs: dict[int, subprocess.Popen], slot: int) -> None:
    """Run one worker, restarting it when it exits, until `stop`. The worker gets SIGTERM if this
    process dies (even by kill -9): the parent-death signal is tied to this thread, which lives
    as long as the worker should."""
    while not stop.is_set():
        p = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent())
        procs[slot] = p
        while p.poll() is None and not stop.is_set():
            time.sleep(0.5)
        if p.returncode == EXIT_REFUSED:  # its message is on stderr; the API stops too
            log.error(json.dumps({"event": "worker_refused", "code": p.returncode, "slot": slot}))
            refused.set()
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not stop.is_set():
            log.warning(json.dumps({"event": "worker_exited", "code": p.returncode, "restart_in_s": 2}))
            stop.wait(2)


def cmd_serve(args) -> int:
    """API + workers (supervised subprocesses) + embedded Valkey unless --redis-url. A worker that
    refuses to start (it cannot serve the model within the budget) stops the whole server."""
    _setup_logging(args.log_level)
    _private_files()
    settings = settings_from_args(args)
    _check_api_start(settings, "serve")
    url, valkey = _redis_url(settings, "serve", start=True)
    stop, refused = threading.Event(), threading.Event()
    procs: dict[int, subprocess.Popen] = {}  # the current process of each worker slot
    repo_root = Path(__file__).resolve().parents[2]
    env = {**worker_environment(dict(os.environ)), "PARIS_REDIS_URL": url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    signal.signal(signal.SIGTERM, _exit_on_signal)  # before a worker can refuse
    for slot, device in enumerate(worker_devices(settings)):
        threading.Thread(target=_supervise_worker, args=(*worker_launch(args, settings, device, env), stop, refused,
                                                         procs, slot),
                         name=f"worker-{slot}", daemon=True).start()
    try:
        _run_api(settings, url, valkey)
    except SystemExit:
        if not refused.is_set():
            raise
    finally:
        stop.set()
        for p in list(procs.values()):
            p.terminate()
        for p in list(procs.values()):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if valkey:
            valkey.stop()
    return EXIT_REFUSED if refused.is_set() else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="API + workers + embedded Valkey (single machine)")
    _common(p, http=True, worker=True)
    p.add_argument("--workers", dest="workers", type=int, help="worker processes (default: one per --devices "
                   "entry, or one)")
    p.add_argument("--devices", dest="devices", help="comma-separated devices, one worker each (e.g. "
                   "cuda:0,cuda:1); with --workers N, worker i runs on device i mod the count")
    p.set_defaults(run=cmd_serve)
    p = subparsers.add_parser("api", help="the HTTP API only (workers run separately)")
    _common(p, http=True, worker=False)
    p.set_defaults(run=cmd_api)
    p = subparsers.add_parser("worker", help="a GPU/CPU worker pulling jobs from Redis")
    _common(p, http=False, worker=True)
    p.set_defaults(run=cmd_worker)
