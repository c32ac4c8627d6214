"""blip2/fitting.py: images resized before the processor sees them give it the same pixel values, bit for bit.

Run: .venv/bin/pytest tests/blip2/test_fitting.py -q
"""

import os
import select
import signal
import threading

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from blip2 import fitting
from blip2.caption import caption
from blip2.fitting import fitted
from blip2.loading import LoadedModel
from blip2.qformer import image_queries


@pytest.fixture(scope="module")
def mixed() -> list[Image.Image]:
    """Photographs larger than the 64 px the tiny models take, smaller ones, one already 64 px, one not
    square, and one greyscale (which the processor converts, so it is not fitted)."""
    astronaut, chelsea, coffee = (Image.fromarray(getattr(skdata, n)()) for n in ("astronaut", "chelsea", "coffee"))
    return [
        astronaut,
        chelsea,
        coffee.resize((40, 23)),
        astronaut.resize((64, 64)),
        chelsea.resize((64, 200)),
        Image.fromarray(skdata.camera()),
    ]


def test_fitted_images_give_the_same_pixel_values(opt: LoadedModel, mixed: list[Image.Image]) -> None:
    processor = opt.processor.image_processor
    images = fitted(processor, mixed)
    assert [i.size for i in images[:5]] == [(64, 64)] * 5, "the RGB images were not fitted to 64 px"
    assert images[5] is mixed[5], "a greyscale image was fitted"
    assert images[3] is mixed[3], "an image already the model's size was resized again"
    as_given = processor(mixed, return_tensors="pt")["pixel_values"]
    assert torch.equal(processor(images, return_tensors="pt")["pixel_values"], as_given)


def test_captions_and_image_features_are_those_of_the_images_as_given(
    opt: LoadedModel, mixed: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoding = {"max_new_tokens": 8, "num_beams": 1}
    captions, queries = caption(opt, mixed, decoding=decoding), image_queries(opt, mixed).queries
    given: list[list[Image.Image]] = []
    monkeypatch.setattr(fitting, "fitted", lambda processor, images: given.append(list(images)) or list(images))
    assert caption(opt, mixed, decoding=decoding) == captions
    assert torch.equal(image_queries(opt, mixed).queries, queries)
    assert given == [mixed, mixed], "the model did not take its images through blip2.fitting"


def test_one_image_alone_is_left_to_the_processor(opt: LoadedModel, mixed: list[Image.Image]) -> None:
    assert fitted(opt.processor.image_processor, mixed[:1])[0] is mixed[0]


def test_a_forked_process_fits_with_a_pool_of_its_own(opt: LoadedModel, mixed: list[Image.Image]) -> None:
    processor = opt.processor.image_processor
    fitted(processor, mixed)  # the pool exists in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked child (a Celery job process): its pool must be its own, with threads
        ok = [i.size for i in fitted(processor, mixed[:2])] == [(64, 64)] * 2 and threading.active_count() > 1
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    # A pool made before the fork has no threads in the child: a map on it would never end.
    answered, _, _ = select.select([read], [], [], 120)
    if not answered:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert answered and os.read(read, 1) == b"1" and status == 0, "the forked process could not fit images"
