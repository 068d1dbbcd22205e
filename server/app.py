"""The FastAPI app: one APIRouter per resource, state built from Settings (no globals)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry

from pipeline.manifest import read_manifest

from .artifacts import ArtifactStore
from .auth import KeyRing
from .errors import install_handlers
from .metrics import RedisCollector
from .queue import JobStore
from .routers import health, models, playground, unsupported, videos
from .settings import Settings

log = logging.getLogger("paris.api")


def sweep_expired(store: JobStore, artifacts: ArtifactStore, ttl_s: int) -> int:
    """Delete records and files of finished jobs past expires_at."""
    n = 0
    for job_id in store.expired():
        store.delete(job_id, ttl_s)
        store.r.zrem(store.expiry, job_id)
        try:
            artifacts.remove(job_id)
        except ValueError:
            pass
        n += 1
        log.info(json.dumps({"event": "job_expired", "job": job_id}))
    return n


def create_app(settings: Settings, redis_url: str | None = None) -> FastAPI:
    url = redis_url or settings.redis_url
    if not url:
        raise ValueError("create_app needs a Redis URL (the CLI starts an embedded Valkey when none is given)")
    manifest = read_manifest(settings.model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(app.state.store.ensure_group)

        async def sweeper():
            while True:
                try:
                    await run_in_threadpool(sweep_expired, app.state.store, app.state.artifacts, settings.job_ttl_s)
                except Exception as exc:  # Redis briefly away: try again next round
                    log.warning(json.dumps({"event": "sweep_failed", "error": str(exc)}))
                await asyncio.sleep(min(60.0, max(1.0, settings.job_ttl_s / 10)))

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="Paris DDM video server", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.manifest = manifest
    app.state.store = JobStore.from_url(url, settings.key_prefix)
    app.state.artifacts = ArtifactStore(settings.resolved_artifact_dir())
    app.state.keys = KeyRing(settings.api_keys, settings.api_key_hashes)
    app.state.started_at = int(time.time())
    registry = CollectorRegistry()
    registry.register(RedisCollector(app.state.store, settings.heartbeat_ttl_s))
    app.state.registry = registry
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(unsupported.router)  # before videos: /videos/characters must not match /videos/{id}
    app.include_router(videos.router)
    app.include_router(playground.router)
    return app
