"""/v1/models and /v1/datasets: what jobs may name."""

from fastapi import APIRouter, Depends

from api.deps import ContextDep, CurrentPrincipal, SessionDep, get_principal
from api.responses import COMMON_ERRORS, error_responses
from blip2.registry import ModelSpec
from jobs.catalog import list_datasets, list_trained_models, trained_spec
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


def _public(spec: ModelSpec, *, trained: bool, metrics: dict[str, float | None] | None = None) -> ModelPublic:
    family = spec.family.value if spec.family else None
    return ModelPublic(
        name=spec.name,
        family=family,
        checkpoint=spec.checkpoint,
        description=spec.description,
        trained=trained,
        metrics=metrics,
    )


@router.get("/datasets")
def read_datasets(session: SessionDep, principal: CurrentPrincipal) -> DatasetsPublic:
    """The tenant's datasets by name."""
    return DatasetsPublic(data=[DatasetPublic.model_validate(d) for d in list_datasets(session, principal.tenant)])
