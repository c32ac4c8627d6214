"""Handlers take lists: several jobs with equal batch keys run as one call into blip2."""

from pathlib import Path

from blip2.images import decode_image
from blip2.loading import load_model
from jobs.schemas import CaptionInput, EmbedInput
from tests.support.images import png_bytes
from worker.handlers import Work, batch_key, run_batch

IMAGE_ID = "6f1e0a31-3b0b-4f4e-9a2c-0c7e0e9b2a11"


def test_a_batch_of_captions_gives_one_result_each(models_dir: Path) -> None:
    lm = load_model("tiny-opt", data_dir=models_dir)
    inputs = [CaptionInput.model_validate({"image_id": IMAGE_ID, "decoding": {"max_new_tokens": 4}}) for _ in range(2)]
    assert batch_key("caption", inputs[0]) == batch_key("caption", inputs[1])
    images = [decode_image(png_bytes(color=(0, 0, 255))), decode_image(png_bytes())]
    outputs = run_batch("caption", lm, [Work(input=i, images=[im]) for i, im in zip(inputs, images, strict=True)])
    assert len(outputs) == 2


def test_batch_keys_separate_different_options() -> None:
    short = CaptionInput.model_validate({"image_id": IMAGE_ID})
    detailed = CaptionInput.model_validate({"image_id": IMAGE_ID, "style": "detailed"})
    assert batch_key("caption", short) != batch_key("caption", detailed)
    text = EmbedInput.model_validate({"mode": "text", "text": "a"})
    assert batch_key("embed", text) != batch_key("embed", EmbedInput.model_validate({"image_id": IMAGE_ID}))
