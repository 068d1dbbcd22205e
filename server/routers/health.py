"""/health (liveness), /ready (Redis reachable and a fresh worker heartbeat), /metrics."""

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..auth import require_owner
from ..errors import error_response

router = APIRouter(tags=["health"])


@router.get("/health")
def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    st = request.app.state
    if not await run_in_threadpool(st.store.ping):
        return error_response(503, "Redis is not reachable.", code="redis_unavailable")
    workers = await run_in_threadpool(st.store.fresh_workers, st.settings.heartbeat_ttl_s)
    if workers == 0:
        return error_response(503, f"No worker heartbeat in the last {st.settings.heartbeat_ttl_s:g} s.",
                              code="no_workers")
    return {"status": "ready", "workers": workers}


@router.get("/metrics")
async def metrics(request: Request, owner: str = Depends(require_owner)):
    data = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
