"""The playground page: `GET /` and its files under `/static/` (plain HTML, CSS and JavaScript from
server/api/static; nothing is fetched from anywhere else). The page calls the public /v1 API with the
key the user types, so it needs no auth of its own."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# The page runs only its own files and talks only to this server; videos and thumbnails come in
# as blob: URLs because they are fetched with the Authorization header.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

router = APIRouter(tags=["playground"], include_in_schema=False)
_files = StaticFiles(directory=STATIC_DIR)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": CSP,
                                                            "Cache-Control": "no-cache"})


@router.get("/static/{path:path}")
async def static(path: str, request: Request):
    # StaticFiles does the path checks (no escaping the folder), ETags and 404s
    return await _files.get_response(path, request.scope)
