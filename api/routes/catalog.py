"""/v1/models and /v1/datasets: what jobs may name."""

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from api.deps import ContextDep, CurrentPrincipal, SessionDep, get_principal
from api.responses import COMMON_ERRORS, error_responses
from blip2.registry import ModelSpec
from jobs.catalog import (
    list_datasets,
    list_trained_models,
    loss_curve_file,
    loss_curve_path,
    loss_curve_url,
    trained_spec,
)
from jobs.schemas import DatasetPublic, DatasetsPublic, ModelPublic, ModelsPublic

router = APIRouter(
    prefix="/v1",
    tags=["catalog"],
    dependencies=[Depends(get_principal)],
    responses=error_responses(*COMMON_ERRORS),
)


@router.get("/models")
def read_models(session: SessionDep, context: ContextDep, principal: CurrentPrincipal) -> ModelsPublic:
    """Registry models, then the tenant's trained ones, oldest first."""
    registry = [_public(spec, trained=False) for spec in context.registry.specs()]
    trained_models = list_trained_models(session, principal.tenant)
    trained = [_public(trained_spec(m), trained=True, metrics=m.metrics) for m in trained_models]
    return ModelsPublic(data=registry + trained)


@router.get(
    "/models/{name}/loss-curve",
    operation_id="read_loss_curve",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "A PNG"},
        **error_responses(404),
    },
)
def read_loss_curve(name: str, session: SessionDep, context: ContextDep, principal: CurrentPrincipal) -> FileResponse:
    """The training loss, step by step, of a model this service trained (or a demo model), as a PNG."""
    path = loss_curve_path(session, context.registry, principal.tenant, name)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-cache"})


def _public(spec: ModelSpec, *, trained: bool, metrics: dict[str, float | None] | None = None) -> ModelPublic:
    family = spec.family.value if spec.family else None
    return ModelPublic(
        name=spec.name,
        family=family,
        checkpoint=spec.checkpoint,
        description=spec.description,
        trained=trained,
        metrics=metrics,
        loss_curve_url=loss_curve_url(spec.name) if loss_curve_file(spec.checkpoint) else None,
    )


@router.get("/datasets")
def read_datasets(session: SessionDep, principal: CurrentPrincipal) -> DatasetsPublic:
    """The tenant's datasets by name."""
    return DatasetsPublic(data=[DatasetPublic.model_validate(d) for d in list_datasets(session, principal.tenant)])
