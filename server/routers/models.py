"""/v1/models: the model this server serves."""

from fastapi import APIRouter, Depends, Request

from ..auth import require_owner
from ..errors import APIError
from ..schemas import Model, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(request: Request, owner: str = Depends(require_owner)):
    st = request.app.state
    return ModelList(data=[Model(id=st.manifest.name, created=st.started_at)])


@router.get("/models/{model_id}", response_model=Model)
def get_model(model_id: str, request: Request, owner: str = Depends(require_owner)):
    st = request.app.state
    if model_id != st.manifest.name:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return Model(id=st.manifest.name, created=st.started_at)
