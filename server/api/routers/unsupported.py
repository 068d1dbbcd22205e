"""OpenAI Videos routes this server does not implement answer 400 `unsupported` (not 404)."""

from fastapi import APIRouter, Depends

from ..dependencies import require_owner
from server.errors import APIError

router = APIRouter(prefix="/v1", tags=["unsupported"], dependencies=[Depends(require_owner)])


def _unsupported(what: str):
    raise APIError(400, f"{what} is not supported by this server.", code="unsupported")


@router.post("/videos/edits")
def edits():
    _unsupported("Video edits")


@router.post("/videos/extensions")
def extensions():
    _unsupported("Video extensions")


@router.post("/videos/characters")
def create_character():
    _unsupported("Video characters")


@router.get("/videos/characters/{character_id}")
def get_character(character_id: str):
    _unsupported("Video characters")


@router.post("/videos/{video_id}/remix")
def remix(video_id: str):
    _unsupported("Video remix")
