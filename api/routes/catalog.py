"""/v1/models and /v1/datasets: what jobs may name."""

from fastapi import APIRouter

from api.deps import ContextDep, SessionDep
from jobs.catalog import list_datasets, list_trained_models
from jobs.schemas import DatasetPublic, DatasetsPublic, ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/models")
def read_models(session: SessionDep, context: ContextDep) -> ModelsPublic:
    """Registry models, then trained ones, oldest first."""
    registry = [
        ModelPublic(
            name=spec.name,
            family=spec.family.value if spec.family else None,
            checkpoint=spec.checkpoint,
            description=spec.description,
            trained=False,
        )
        for spec in context.registry.specs()
    ]
    trained = [
        ModelPublic(
            name=m.name,
            family=m.family,
            checkpoint=m.path,
            description=f"trained from {m.base_model} on {m.dataset} ({m.task})",
            trained=True,
            metrics=m.metrics,
        )
        for m in list_trained_models(session)
    ]
    return ModelsPublic(data=registry + trained)


@router.get("/datasets")
def read_datasets(session: SessionDep) -> DatasetsPublic:
    """Registered datasets by name."""
    return DatasetsPublic(data=[DatasetPublic.model_validate(d) for d in list_datasets(session)])
