"""A worker resizes each image to its model's input size once (worker/batches.py `_fit`): the jobs of
a batch that name one image share one resized object, a later job finds it resized already, and the
model computes from it the same pixels, and the same caption, as from the decoded original."""

from pathlib import Path
from uuid import uuid4

import pytest
import torch
from PIL import Image

from blip2 import fitting
from blip2.caption import caption
from blip2.loading import LoadedModel, LoadOptions, load_model
from jobs.inputs import CaptionInput
from jobs.settings import Settings
from tests.support.auth import OTHER_TENANT, TENANT
from worker.batches import Item, _fit
from worker.decoded_images import DecodedImages
from worker.handlers import Work
from worker.runtime import WorkerRuntime

GREEDY = {"num_beams": 1, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def lm(models_dir: Path) -> LoadedModel:
    return load_model("tiny-opt", data_dir=models_dir, options=LoadOptions(device="cpu"))


class _Job:
    """What `_fit` reads of a job: its tenant."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant


def items(named: list[tuple[object, str, Image.Image]]) -> list[Item]:
    return [
        Item(job=_Job(tenant), work=Work(input=CaptionInput(image_id=image_id), images=[image]))  # type: ignore[arg-type]
        for image_id, tenant, image in named
    ]


def test_each_image_is_resized_once_and_computes_the_same(lm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    size = fitting.target(lm.processor.image_processor)
    assert size is not None, "the tiny model's processor is not one whose images can be fitted"
    runtime = WorkerRuntime(settings=Settings(), preload=None)
    runtime._fitted = DecodedImages(max_pixels=10_000_000)
    photo, other = list(photos.values())[:2]
    same, different = uuid4(), uuid4()

    first = items(
        [(same, TENANT, photo), (same, TENANT, photo), (different, TENANT, other), (same, OTHER_TENANT, photo)]
    )
    _fit(runtime, lm, first)
    images = [item.work.images[0] for item in first if item.work]
    assert {image.size for image in images} == {size[:2]}
    assert images[0] is images[1], "two jobs naming one image got two resized copies"
    assert images[3] is not images[0], "another tenant's image id shared a tenant's resized image"

    later = items([(same, TENANT, photo)])
    _fit(runtime, lm, later)
    assert later[0].work and later[0].work.images[0] is images[0], "the image was resized again"

    processor = lm.processor.image_processor
    from_original = processor(photo, return_tensors="pt")["pixel_values"]
    from_fitted = processor(images[0], return_tensors="pt")["pixel_values"]
    assert torch.equal(from_original, from_fitted)
    assert caption(lm, [images[0]], decoding=GREEDY) == caption(lm, [photo], decoding=GREEDY)


def test_a_worker_keeping_nothing_still_resizes_each_image_once_per_batch(
    lm: LoadedModel, photos: dict[str, Image.Image]
) -> None:
    runtime = WorkerRuntime(settings=Settings(), preload=None)
    runtime._fitted = DecodedImages(max_pixels=0)  # WORKER_IMAGE_CACHE_PIXELS=0
    photo = next(iter(photos.values()))
    image_id = uuid4()
    batch = items([(image_id, TENANT, photo), (image_id, TENANT, photo)])
    _fit(runtime, lm, batch)
    first, second = (item.work.images[0] for item in batch if item.work)
    assert first is second and first.size != photo.size
    assert len(runtime._fitted) == 0
