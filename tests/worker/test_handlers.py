"""Handlers take lists: several jobs with equal batch keys run as one call into blip2."""

from pathlib import Path

from blip2.images import decode_image
from blip2.loading import load_model
from jobs.inputs import CaptionInput, EmbedInput, JobInput
from jobs.kinds import KINDS, JobKind, batch_key
from tests.support.images import png_bytes
from worker.handlers import HANDLERS, Work, run_batch
from worker.long_jobs import LONG_HANDLERS

IMAGE_ID = "6f1e0a31-3b0b-4f4e-9a2c-0c7e0e9b2a11"


def key(kind: JobKind, job_input: JobInput, model: str = "tiny-opt", owner: str = "") -> str | None:
    return batch_key(kind, job_input, model, owner)


def test_every_kind_has_exactly_one_handler() -> None:
    inference = {kind for kind, spec in KINDS.items() if not spec.long}
    assert set(HANDLERS) == inference, "an inference kind without a batch handler"
    assert set(LONG_HANDLERS) == set(KINDS) - inference, "a long kind without a handler"


def test_a_batch_of_captions_gives_one_result_each(models_dir: Path) -> None:
    lm = load_model("tiny-opt", data_dir=models_dir)
    inputs = [CaptionInput.model_validate({"image_id": IMAGE_ID, "decoding": {"max_new_tokens": 4}}) for _ in range(2)]
    assert key(JobKind.CAPTION, inputs[0]) == key(JobKind.CAPTION, inputs[1])
    images = [decode_image(png_bytes(color=(0, 0, 255))), decode_image(png_bytes())]
    outputs = run_batch(JobKind.CAPTION, lm, [Work(input=i, images=[im]) for i, im in zip(inputs, images, strict=True)])
    assert len(outputs) == 2


def test_batch_keys_separate_different_options() -> None:
    short = CaptionInput.model_validate({"image_id": IMAGE_ID})
    detailed = CaptionInput.model_validate({"image_id": IMAGE_ID, "style": "detailed"})
    assert key(JobKind.CAPTION, short) != key(JobKind.CAPTION, detailed)
    text = EmbedInput.model_validate({"mode": "text", "text": "a"})
    assert key(JobKind.EMBED, text) != key(JobKind.EMBED, EmbedInput.model_validate({"image_id": IMAGE_ID}))


def test_batch_keys_separate_models_and_their_owners() -> None:
    """Jobs of two models never share a pass, nor two tenants' trained models of one name; a registry
    model's jobs do, whichever tenant sent them."""
    job = CaptionInput.model_validate({"image_id": IMAGE_ID})
    assert key(JobKind.CAPTION, job, "tiny-opt") != key(JobKind.CAPTION, job, "shapes-blip2")
    assert key(JobKind.CAPTION, job, "mine", "acme") != key(JobKind.CAPTION, job, "mine", "globex")
    assert key(JobKind.CAPTION, job, "tiny-opt", "") == key(JobKind.CAPTION, job, "tiny-opt", "")
