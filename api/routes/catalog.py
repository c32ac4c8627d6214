"""/v1/models and /v1/datasets: what jobs may name."""

from fastapi import APIRouter

from api.deps import ContextDep, SessionDep
from blip2.registry import ModelSpec
from jobs.catalog import list_datasets, list_trained_models, trained_spec
from jobs.schemas import DatasetPublic, DatasetsPublic, ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/models")
def read_models(session: SessionDep, context: ContextDep) -> ModelsPublic:
    """Registry models, then trained ones, oldest first."""
    registry = [_public(spec, trained=False) for spec in context.registry.specs()]
    trained = [_public(trained_spec(m), trained=True, metrics=m.metrics) for m in list_trained_models(session)]
    return ModelsPublic(data=registry + trained)


def _public(spec: ModelSpec, *, trained: bool, metrics: dict[str, float] | None = None) -> ModelPublic:
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
def read_datasets(session: SessionDep) -> DatasetsPublic:
    """Registered datasets by name."""
    return DatasetsPublic(data=[DatasetPublic.model_validate(d) for d in list_datasets(session)])
