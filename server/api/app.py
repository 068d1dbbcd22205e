"""The FastAPI app: one APIRouter per resource, its Services built from Settings (no globals)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import redis.asyncio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry

from pipeline.manifest import read_manifest

from server.storage import open_artifacts
from .auth import KeyRing
from .browser_guard import BrowserGuard, default_hosts
from .creation import JobCreation
from .dependencies import Services
from server.process.embedded import EmbeddedValkey
from server.notify.events import EventFeed
from server.errors import install_handlers
from .metrics_scrape import RedisCollector
from .owned_videos import sweep_expired
from .routers import docs as docs_router
from .routers import events, health, models, playground, unsupported, videos
from server.process.settings import Settings
from server.queue.job_queue import JobQueue
from .stream_slots import StreamSlots
from .tenants import parse_networks
from .uploads import ImageLimits, ImageSlots
from .webhook_service import WebhookService

log = logging.getLogger("paris.api")
EVENT_READ_CONNECTIONS = 16  # Redis connections the /events streams of one API process share


def create_app(settings: Settings, redis_url: str | None = None, valkey: EmbeddedValkey | None = None) -> FastAPI:
    url = redis_url or settings.redis_url
    if not url:
        raise ValueError("create_app needs a Redis URL (the CLI starts an embedded Valkey when none is given)")
    manifest = read_manifest(settings.model)
    store = JobQueue.from_url(url, settings.key_prefix)
    artifacts = open_artifacts(settings)
    registry = CollectorRegistry()
    registry.register(RedisCollector(store, settings.heartbeat_ttl_s))
    webhooks = WebhookService(settings)
    webhooks.check_server_urls()
    # /events: short reads on a bounded pool (a stream waits its turn rather than open a
    # connection per stream), and the one blocking read of the process on a connection of its own
    event_reader = redis.asyncio.Redis(connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=10, max_connections=EVENT_READ_CONNECTIONS, timeout=10))
    feed_client = redis.asyncio.Redis.from_url(url, decode_responses=True, health_check_interval=10,
                                               max_connections=1)
    event_feed = EventFeed(feed_client, store.notices.events)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(store.ensure_group)

        async def sweeper():
            while True:
                try:
                    await run_in_threadpool(sweep_expired, store, artifacts, settings.job_ttl_s)
                except Exception as exc:  # Redis briefly away: try again next round
                    log.warning(json.dumps({"event": "sweep_failed", "error": str(exc)}))
                await asyncio.sleep(min(60.0, max(1.0, settings.job_ttl_s / 10)))

        task = asyncio.create_task(sweeper())
        stop_deliverer = webhooks.start_deliverer(store.redis, settings.key_prefix)
        try:
            yield
        finally:
            task.cancel()
            if stop_deliverer:
                stop_deliverer.set()
            await event_feed.aclose()
            await feed_client.aclose()
            await event_reader.aclose()

    # redirect_slashes off: its redirects are absolute URLs built from the client's Host header
    keys = KeyRing(settings.plain_api_keys(), settings.api_key_hashes)
    # with keys, the schema and its pages follow the API's rule (server/api/routers/docs.py), not FastAPI's open ones
    docs = {"docs_url": None, "redoc_url": None, "openapi_url": None} if keys.enabled else {}
    app = FastAPI(title="Paris DDM video server", version="0.1.0", lifespan=lifespan, redirect_slashes=False, **docs)
    limits = ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels,
                         max_side=settings.max_image_side, max_aspect_ratio=settings.max_image_aspect_ratio)
    image_slots = ImageSlots(settings.image_decode_concurrency)
    app.state.services = Services(settings=settings, manifest=manifest, store=store, artifacts=artifacts,
                                  keys=keys, registry=registry,
                                  operators=KeyRing([], settings.operator_key_hashes),
                                  started_at=int(time.time()), image_limits=limits,
                                  image_slots=image_slots, valkey=valkey,
                                  webhooks=webhooks, event_reader=event_reader, event_feed=event_feed,
                                  stream_slots=StreamSlots(settings.max_event_streams_per_key,
                                                           settings.max_event_streams),
                                  trusted_proxies=parse_networks(settings.trusted_proxies),
                                  creation=JobCreation(settings, manifest, store, artifacts, webhooks, image_slots,
                                                       limits))
    install_handlers(app)
    app.add_middleware(BrowserGuard, allowed_hosts=None if keys.enabled else
                       frozenset(h.lower() for h in settings.allowed_hosts) or default_hosts(settings.host))
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(unsupported.router)  # before videos: /videos/characters must not match /videos/{id}
    app.include_router(videos.router)
    app.include_router(events.router)
    app.include_router(playground.router)
    if keys.enabled:
        app.include_router(docs_router.router)
    return app
