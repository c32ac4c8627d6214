"""The images a worker decoded lately, kept decoded, and fitted to its models' input size: a picture
asked about again (a VQA session's next question, a caption and its embedding, a re-run) is neither
read from Postgres, nor decoded, nor resized again.

Keyed by (image id, tenant), and for a fitted image also by the size it was fitted to
(blip2/fitting.py): an image's bytes never change under its id, and a job only ever finds its own
tenant's images, from here as from Postgres. Bounded by pixels, oldest use first out; an image larger
than the whole bound is not kept.
"""

from collections import OrderedDict
from collections.abc import Hashable
from uuid import UUID

from PIL.Image import Image

Key = tuple[UUID, str]  # (image id, tenant)


class DecodedImages:
    """A least-recently-used set of decoded images, at most `max_pixels` in all."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._images: OrderedDict[Hashable, Image] = OrderedDict()
        self._pixels = 0

    @property
    def pixels(self) -> int:
        return self._pixels

    def get(self, key: Hashable) -> Image | None:
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
        return image

    def put(self, key: Hashable, image: Image) -> None:
        size = image.width * image.height
        if size > self.max_pixels or key in self._images:
            return
        self._images[key] = image
        self._pixels += size
        while self._pixels > self.max_pixels:
            _, oldest = self._images.popitem(last=False)
            self._pixels -= oldest.width * oldest.height

    def __len__(self) -> int:
        return len(self._images)
