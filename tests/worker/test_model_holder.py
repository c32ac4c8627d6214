"""A worker holds its registry models for good, and only the trained models its tenants used last
(WORKER_MAX_TRAINED_MODELS): real loads of real checkpoints, through the worker's own holder."""

from pathlib import Path
from uuid import uuid4

import pytest

from jobs.catalog import save_trained_model
from jobs.db import SessionFactory, session_scope
from jobs.models import TrainedModel
from jobs.settings import Settings
from tests.support.auth import TENANT
from worker.model_holder import ModelHolder, ModelLoadOptions


@pytest.fixture
def trained(sessions: SessionFactory, models_dir: Path) -> list[str]:
    """Three trained models of the tests' tenant (the tiny OPT checkpoint, under three names)."""
    names = [f"held-{n}-{uuid4().hex[:6]}" for n in range(3)]
    checkpoint = str(models_dir / "models" / "tiny-opt")
    with session_scope(sessions) as session:
        for name in names:
            row = TrainedModel(tenant=TENANT, name=name, family="opt", path=checkpoint, base_model="tiny-opt",
                               task="caption", dataset="none", metrics={}, job_id=None)  # fmt: skip
            assert save_trained_model(session, row)
    return names


def test_the_trained_models_used_last_are_held_and_registry_models_always(
    worker_settings: Settings, sessions: SessionFactory, trained: list[str]
) -> None:
    settings = worker_settings.model_copy(update={"WORKER_MAX_TRAINED_MODELS": 2})
    holder = ModelHolder(settings, ModelLoadOptions(device="cpu"), sessions)
    a, b, c = trained
    base = holder.get("tiny-opt", TENANT)
    first_a = holder.get(a, TENANT)
    holder.get(b, TENANT)
    assert holder.get(a, TENANT) is first_a, "a held model was loaded again"
    holder.get(c, TENANT)  # b was used least recently: let go
    assert holder.held() == [("", "tiny-opt"), (TENANT, a), (TENANT, c)]
    assert holder.get("tiny-opt", TENANT) is base, "a registry model was let go"
    holder.get(b, TENANT)  # loaded again, and a goes
    assert holder.held() == [("", "tiny-opt"), (TENANT, c), (TENANT, b)]
