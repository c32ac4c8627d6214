"""Images resized to the model's input size before the processor sees them, several at once.

    pixels = lm.processor.image_processor(fitted(lm.processor.image_processor, images), ...)

Hugging Face's PIL image processor resizes one image after another, and first turns each, at full
size, into an array and back into an image. Resizing to the processor's own size, with its own
filter, in a pool of threads (PIL lets go of the GIL while it resamples) gives it images it then
only copies (PIL's resize to the same size is a copy): the same pixel values, bit for bit, in less
time, most of it on the other cores. A batch of 16 photos of 300-640 px for a 64 px model takes
about half the time on two cores (`python -m bench.preprocess`).

Only what that holds for is fitted: the PIL processor, resizing to a fixed height and width and
nothing after that depends on the size it was given (no crop, no pad), RGB images not already that
size, more than one at a time.
"""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL.Image import Image

_MAX_THREADS = 8
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


Target = tuple[int, int, int]  # (width, height, resample) the processor resizes to


def fitted(image_processor: object, images: Sequence[Image]) -> list[Image]:
    """`images`, those the processor would resize resized by the same filter to the same size."""
    size = target(image_processor)
    if size is None or len(images) < 2:
        return list(images)
    return fit(size, images)


def fit(size: Target, images: Sequence[Image]) -> list[Image]:
    """`images` resized to `size` (a `target`), those already that size or not RGB as they are; several
    at once on the pool's threads. A processor given the result computes the same pixel values."""
    width, height, resample = size
    due = [i for i, image in enumerate(images) if image.mode == "RGB" and image.size != (width, height)]
    out = list(images)
    if len(due) == 1:
        out[due[0]] = images[due[0]].resize((width, height), resample)
    elif due:
        resized = _threads().map(lambda i: images[i].resize((width, height), resample), due)
        for i, image in zip(due, resized, strict=True):
            out[i] = image
    return out


def target(image_processor: object) -> Target | None:
    """(width, height, resample) of a PIL processor that resizes to a fixed size and does nothing after
    that depends on the size it was given; else None (its images are not to be fitted)."""
    from transformers.image_processing_backends import PilBackend

    if not isinstance(image_processor, PilBackend) or not getattr(image_processor, "do_resize", False):
        return None
    if getattr(image_processor, "do_center_crop", False) or getattr(image_processor, "do_pad", False):
        return None
    size = getattr(image_processor, "size", None)
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    resample = getattr(image_processor, "resample", None)
    if not (isinstance(height, int) and isinstance(width, int) and isinstance(resample, int)):
        return None
    return width, height, int(resample)


def _threads() -> ThreadPoolExecutor:
    """The pool, made in this process: a worker's job process is forked, and a forked pool has no threads."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(min(_MAX_THREADS, os.cpu_count() or 1), thread_name_prefix="blip2-fit")
        _pool_pid = os.getpid()
    return _pool
