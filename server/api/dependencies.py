"""What routes receive from the app, as typed FastAPI dependencies: `create_app` builds one
`Services` and every route asks for the part it uses (a route whose owner it does not need
lists `require_owner` in its router's `dependencies`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio
from fastapi import Depends, Header, Request
from prometheus_client import CollectorRegistry

from pipeline.manifest import Manifest

from server.storage import ArtifactStore
from .auth import KeyRing
from .creation import JobCreation
from server.process.embedded import EmbeddedValkey
from server.notify.events import EventFeed
from server.process.settings import Settings
from server.queue.job_queue import JobQueue
from .stream_slots import StreamSlots
from .tenants import IPNetwork
from .owned_videos import OwnedVideos
from .uploads import ImageLimits, ImageSlots
from .webhook_service import WebhookService


@dataclass(frozen=True)
class Services:
    settings: Settings
    manifest: Manifest
    store: JobQueue
    artifacts: ArtifactStore
    keys: KeyRing
    operators: KeyRing  # keys that may read /metrics (none: the API's keys may)
    registry: CollectorRegistry
    started_at: int  # the models' `created`
    image_limits: ImageLimits
    image_slots: ImageSlots
    valkey: EmbeddedValkey | None  # the embedded Valkey this process supervises (its state is our health)
    webhooks: WebhookService
    event_reader: redis.asyncio.Redis  # /events: reads of job event logs and records, a small bounded pool
    event_feed: EventFeed              # /events: the process's one blocking read, waking the streams
    stream_slots: StreamSlots          # /events: open streams per tenant and in all
    trusted_proxies: tuple[IPNetwork, ...]  # whose X-Forwarded-For names the client (server/api/tenants.py)
    creation: JobCreation              # POST /v1/videos's work (server/api/creation.py)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


def get_manifest(services: Annotated[Services, Depends(get_services)]) -> Manifest:
    return services.manifest


def get_store(services: Annotated[Services, Depends(get_services)]) -> JobQueue:
    return services.store


def get_artifacts(services: Annotated[Services, Depends(get_services)]) -> ArtifactStore:
    return services.artifacts


def get_event_reader(services: Annotated[Services, Depends(get_services)]) -> redis.asyncio.Redis:
    return services.event_reader


def require_owner(services: Annotated[Services, Depends(get_services)],
                  authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> str:
    """The caller's owner id (from its API key), or 401."""
    return services.keys.owner(authorization)


def get_videos(services: Annotated[Services, Depends(get_services)],
               owner: Annotated[str, Depends(require_owner)]) -> OwnedVideos:
    return OwnedVideos(services.store, services.artifacts, services.settings.job_ttl_s, owner)


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ManifestDep = Annotated[Manifest, Depends(get_manifest)]
StoreDep = Annotated[JobQueue, Depends(get_store)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
Owner = Annotated[str, Depends(require_owner)]
Videos = Annotated[OwnedVideos, Depends(get_videos)]
EventReaderDep = Annotated[redis.asyncio.Redis, Depends(get_event_reader)]
