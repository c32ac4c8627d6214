"""GET /v1/models/{name}/loss-curve: the PNG a training run saved beside its model, over HTTP.

A training job's result named the PNG by its path on the server's disk, which no client can read. Now
the API serves it, for the tenant's own trained models and the demo models, and /v1/models says which
have one. (tests/system/test_training_jobs.py fetches a real training job's curve through its result.)
"""

from pathlib import Path
from uuid import uuid4

from fastapi.testclient import TestClient

from blip2.registry import PRETRAINED_DIR
from blip2.training import plot_loss_curve
from jobs.db import SessionFactory, session_scope
from jobs.models import TrainedModel
from tests.support.auth import TENANT


def models(client: TestClient) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in client.get("/v1/models").json()["data"]}


def test_a_demo_models_curve_is_served_and_listed(client: TestClient) -> None:
    listed = models(client)
    assert listed["shapes-blip2"]["loss_curve_url"] == "/v1/models/shapes-blip2/loss-curve"
    assert listed["tiny-opt"]["loss_curve_url"] is None  # built offline, never trained: no curve
    served = client.get("/v1/models/shapes-blip2/loss-curve")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == (PRETRAINED_DIR / "shapes-blip2" / "loss_curve.png").read_bytes()


def test_a_trained_models_curve_is_its_tenants_alone(
    client: TestClient, other: TestClient, sessions: SessionFactory, tmp_path: Path
) -> None:
    name = f"curved-{uuid4().hex[:8]}"
    checkpoint = tmp_path / name
    checkpoint.mkdir()
    plot_loss_curve([2.0, 1.5, 1.1, 0.9, 0.8], checkpoint / "loss_curve.png")  # as a training run saves it
    with session_scope(sessions) as session:
        session.add(TrainedModel(tenant=TENANT, name=name, family="opt", path=str(checkpoint), base_model="tiny-opt",
                                 task="caption", dataset="shapes", metrics={}))  # fmt: skip

    assert models(client)[name]["loss_curve_url"] == f"/v1/models/{name}/loss-curve"
    served = client.get(f"/v1/models/{name}/loss-curve")
    assert served.status_code == 200, served.text
    assert served.content == (checkpoint / "loss_curve.png").read_bytes() and served.content.startswith(b"\x89PNG")

    refused = other.get(f"/v1/models/{name}/loss-curve")  # another tenant's model: as if there were none
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "loss_curve_not_found"
    assert name not in models(other)


def test_a_model_without_a_curve_is_404_with_a_code(client: TestClient) -> None:
    # A registry model with none, no model, and names no model could have: only names are looked up,
    # never files a client names, and a name Postgres cannot hold (a NUL) is not sent to it.
    for name in ("tiny-opt", "no-such-model", "a%00b", "x" * 500, "%F0%9F%98%80"):
        answer = client.get(f"/v1/models/{name}/loss-curve")
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "loss_curve_not_found"), answer.text
    assert "has no loss curve" in client.get("/v1/models/tiny-opt/loss-curve").json()["error"]["message"]
