"""Datasets and trained models as rows: what download and training jobs produce, by name, per tenant.

A trained model is served by name like a registry entry, to its own tenant: `resolve_trained` adds
its row to the model registry the API validates names with and the workers load from. Names are
per tenant (two tenants may each have a `mine`); registry names are everyone's and cannot be taken.
Their files live in the tenant's own directory, `tenant_data_dir`.
"""

import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from blip2.registry import Family, ModelSpec, Registry
from jobs.errors import LossCurveNotFound
from jobs.inputs import NAME_PATTERN
from jobs.models import Dataset, TrainedModel

# What a training run saves beside its model (blip2/training.py), the demo models' too.
LOSS_CURVE_FILE = "loss_curve.png"


def tenant_data_dir(data_dir: Path, tenant: str) -> Path:
    """Where a tenant's datasets and trained models live: DATA_DIR/tenants/TENANT/{datasets,models}/."""
    return data_dir / "tenants" / tenant


def get_dataset(session: Session, tenant: str, name: str) -> Dataset | None:
    return session.get(Dataset, {"tenant": tenant, "name": name}, populate_existing=True)


def list_datasets(session: Session, tenant: str) -> list[Dataset]:
    return list(session.scalars(select(Dataset).where(Dataset.tenant == tenant).order_by(Dataset.name)))


def save_dataset(session: Session, dataset: Dataset) -> None:
    """Register a dataset, replacing the tenant's earlier registration of the same name (a re-download)."""
    values = {c.name: getattr(dataset, c.name) for c in Dataset.__table__.columns if c.name != "created_at"}
    statement = insert(Dataset).values(**values)
    session.execute(statement.on_conflict_do_update(index_elements=["tenant", "name"], set_=values))


def get_trained_model(session: Session, tenant: str, name: str) -> TrainedModel | None:
    return session.get(TrainedModel, {"tenant": tenant, "name": name}, populate_existing=True)


def list_trained_models(session: Session, tenant: str) -> list[TrainedModel]:
    query = select(TrainedModel).where(TrainedModel.tenant == tenant).order_by(TrainedModel.created_at)
    return list(session.scalars(query))


def save_trained_model(session: Session, model: TrainedModel) -> bool:
    """Register a trained model; False if the tenant took the name meanwhile (names are never overwritten)."""
    values = {c.name: getattr(model, c.name) for c in TrainedModel.__table__.columns if c.name != "created_at"}
    statement = insert(TrainedModel).values(**values).on_conflict_do_nothing(index_elements=["tenant", "name"])
    return session.execute(statement.returning(TrainedModel.name)).first() is not None


def trained_spec(model: TrainedModel) -> ModelSpec:
    return ModelSpec(
        name=model.name,
        checkpoint=model.path,
        family=Family(model.family),
        description=f"trained from {model.base_model} on {model.dataset} ({model.task})",
    )


def resolve_trained(session: Session, registry: Registry, name: str, tenant: str) -> Registry:
    """`registry`, plus `name` if it is a trained model of `tenant` that it does not know yet."""
    if registry.is_known(name):
        return registry
    model = get_trained_model(session, tenant, name)
    return registry if model is None else registry.with_spec(trained_spec(model))


def serving_model(session: Session, registry: Registry, name: str, tenant: str) -> str:
    """The model whose workers serve `name`: a trained model runs where its base model runs.

    A model trained here has no workers of its own on the day it is made; the workers of its
    base model (same family, same hardware) load it on its first job and keep it. A registry name
    is served by its own workers (and costs no query: no trained model takes a registry name).
    """
    if registry.is_known(name):
        return name
    for _ in range(16):  # a chain of fine-tunes of fine-tunes, never a cycle (names are never reused)
        model = get_trained_model(session, tenant, name)
        if model is None:
            return name
        name = model.base_model
    return name


def loss_curve_url(name: str) -> str:
    """Where the API serves a model's loss curve (api/routes/catalog.py)."""
    return f"/v1/models/{name}/loss-curve"


def loss_curve_file(checkpoint: str) -> Path | None:
    """The loss curve saved beside a local checkpoint, if it has one (a hub id has none)."""
    path = Path(checkpoint) / LOSS_CURVE_FILE
    return path if path.is_file() else None


def loss_curve_path(session: Session, registry: Registry, tenant: str, name: str) -> Path:
    """The PNG of the training run that made model `name`: a model of the tenant trained here, or a
    registry model with one (the demo models). Never a path a client names: those are the operator's."""
    spec = next((spec for spec in registry.specs() if spec.name == name), None)
    checkpoint = spec.checkpoint if spec is not None else None
    if spec is None and re.match(NAME_PATTERN, name):  # a name no training job could have is not looked up
        trained = get_trained_model(session, tenant, name)
        checkpoint = trained.path if trained is not None else None
    found = None if checkpoint is None else loss_curve_file(checkpoint)
    if found is None:
        raise LossCurveNotFound(
            f"model {name!r} has no loss curve: only models trained by this service, and the demo models, have one"
        )
    return found
