"""Datasets and trained models as rows: what download and training jobs produce, by name.

A trained model is served by name like a registry entry: `resolve_trained` adds its row to the
model registry the API validates names with and the workers load from.
"""

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from blip2.registry import Family, ModelSpec, Registry
from jobs.models import Dataset, TrainedModel


def get_dataset(session: Session, name: str) -> Dataset | None:
    return session.get(Dataset, name, populate_existing=True)


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def save_dataset(session: Session, dataset: Dataset) -> None:
    """Register a dataset, replacing an earlier registration of the same name (a re-download)."""
    values = {c.name: getattr(dataset, c.name) for c in Dataset.__table__.columns if c.name != "created_at"}
    statement = insert(Dataset).values(**values)
    session.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values))


def get_trained_model(session: Session, name: str) -> TrainedModel | None:
    return session.get(TrainedModel, name, populate_existing=True)


def list_trained_models(session: Session) -> list[TrainedModel]:
    return list(session.scalars(select(TrainedModel).order_by(TrainedModel.created_at)))


def save_trained_model(session: Session, model: TrainedModel) -> bool:
    """Register a trained model; False if the name was taken meanwhile (names are never overwritten)."""
    values = {c.name: getattr(model, c.name) for c in TrainedModel.__table__.columns if c.name != "created_at"}
    statement = insert(TrainedModel).values(**values).on_conflict_do_nothing(index_elements=["name"])
    return session.execute(statement.returning(TrainedModel.name)).first() is not None


def trained_spec(model: TrainedModel) -> ModelSpec:
    return ModelSpec(
        name=model.name,
        checkpoint=model.path,
        family=Family(model.family),
        description=f"trained from {model.base_model} on {model.dataset} ({model.task})",
    )


def resolve_trained(session: Session, registry: Registry, name: str) -> Registry:
    """`registry`, plus `name` if it is a trained model it does not know yet."""
    if registry.is_known(name):
        return registry
    model = get_trained_model(session, name)
    return registry if model is None else registry.with_spec(trained_spec(model))


def serving_model(session: Session, name: str) -> str:
    """The model whose workers serve `name`: a trained model runs where its base model runs.

    A model trained here has no workers of its own on the day it is made; the workers of its
    base model (same family, same hardware) load it on its first job and keep it.
    """
    for _ in range(16):  # a chain of fine-tunes of fine-tunes, never a cycle (names are never reused)
        model = get_trained_model(session, name)
        if model is None:
            return name
        name = model.base_model
    return name
