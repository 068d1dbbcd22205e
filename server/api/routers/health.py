"""/health (liveness: this process, and the embedded Valkey it supervises), /ready (Redis reachable
and a fresh heartbeat of a worker that can store videos), /metrics."""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..dependencies import ServicesDep, SettingsDep, StoreDep
from server.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep):
    if services.valkey is not None and not await run_in_threadpool(services.valkey.alive):
        return error_response(503, "The embedded Valkey is down; it is being restarted.", code="valkey_down")
    return {"status": "ok"}


@router.get("/ready")
async def ready(store: StoreDep, settings: SettingsDep):
    if not await run_in_threadpool(store.ping):
        return error_response(503, "Redis is not reachable.", code="redis_unavailable")
    workers, storing = await run_in_threadpool(store.worker_counts, settings.heartbeat_ttl_s)
    if workers == 0:
        return error_response(503, f"No worker heartbeat in the last {settings.heartbeat_ttl_s:g} s.",
                              code="no_workers")
    if storing == 0:
        return error_response(503, "No worker can store videos (artifact storage is failing); jobs wait in the "
                              "queue until it works again.", code="storage_unavailable")
    return {"status": "ready", "workers": storing}


def require_operator(services: ServicesDep,
                     authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
    """With PARIS_OPERATOR_KEY_HASHES, an operator's key (a tenant's is a 403); else the API's rule.
    The figures are totals over every tenant (no job ids, no owners), which is why they are the
    operator's to read when tenants should not see each other's load."""
    if not services.operators.enabled:
        services.keys.owner(authorization)
        return
    services.operators.owner(authorization)


@router.get("/metrics", dependencies=[Depends(require_operator)])
async def metrics(services: ServicesDep):
    data = await run_in_threadpool(generate_latest, services.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
