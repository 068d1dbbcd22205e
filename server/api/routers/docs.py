"""/openapi.json and /docs when the server has API keys: the same rule as the API (401 without a
key), where FastAPI's own routes would show the schema to anyone (issue 19, item 8). Without
keys FastAPI serves them as usual."""

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html

from ..dependencies import require_owner

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_owner)])


@router.get("/openapi.json")
def openapi(request: Request) -> dict:
    return request.app.openapi()


@router.get("/docs")
def docs():
    return get_swagger_ui_html(openapi_url="/openapi.json", title="Paris DDM video server")
