"""OpenAI Videos routes this server does not implement answer 400 `unsupported` (not 404)."""

from fastapi import APIRouter, Depends

from ..auth import require_owner
from ..errors import APIError

router = APIRouter(prefix="/v1", tags=["unsupported"])


def _unsupported(what: str):
    raise APIError(400, f"{what} is not supported by this server.", code="unsupported")


@router.post("/videos/edits")
def edits(owner: str = Depends(require_owner)):
    _unsupported("Video edits")


@router.post("/videos/extensions")
def extensions(owner: str = Depends(require_owner)):
    _unsupported("Video extensions")


@router.post("/videos/characters")
def create_character(owner: str = Depends(require_owner)):
    _unsupported("Video characters")


@router.get("/videos/characters/{character_id}")
def get_character(character_id: str, owner: str = Depends(require_owner)):
    _unsupported("Video characters")


@router.post("/videos/{video_id}/remix")
def remix(video_id: str, owner: str = Depends(require_owner)):
    _unsupported("Video remix")
