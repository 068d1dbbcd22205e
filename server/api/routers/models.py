"""/v1/models: the model this server serves."""

from fastapi import APIRouter, Depends

from ..dependencies import ServicesDep, require_owner
from server.errors import APIError
from ..schemas import Model, ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_owner)])


@router.get("/models", response_model=ModelList)
def list_models(services: ServicesDep):
    return ModelList(data=[Model.from_manifest(services.manifest, services.started_at)])


@router.get("/models/{model_id}", response_model=Model)
def get_model(model_id: str, services: ServicesDep):
    if model_id != services.manifest.name:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return Model.from_manifest(services.manifest, services.started_at)
