"""worker/decoded_images.py: decoded images kept by (id, tenant), least recently used out first, by pixels."""

from uuid import uuid4

from PIL import Image

from worker.decoded_images import DecodedImages


def picture(side: int) -> Image.Image:
    return Image.new("RGB", (side, side), (10, 20, 30))


def test_images_are_kept_per_tenant_and_the_least_recently_used_goes_first() -> None:
    kept = DecodedImages(max_pixels=3 * 100)
    a, b, c, d = (uuid4() for _ in range(4))
    first = picture(10)
    kept.put((a, "acme"), first)
    kept.put((b, "acme"), picture(10))
    assert kept.get((a, "acme")) is first
    assert kept.get((a, "globex")) is None, "another tenant's job found acme's image"
    kept.put((c, "acme"), picture(10))
    assert kept.pixels == 300
    kept.put((d, "acme"), picture(10))  # over the bound: b, used least lately, goes
    assert kept.get((b, "acme")) is None
    assert kept.get((a, "acme")) is first and kept.get((c, "acme")) is not None
    assert (len(kept), kept.pixels) == (3, 300)


def test_an_image_larger_than_the_bound_is_not_kept_and_none_is_with_a_bound_of_zero() -> None:
    kept = DecodedImages(max_pixels=99)
    kept.put((uuid4(), "acme"), picture(10))
    assert (len(kept), kept.pixels) == (0, 0)
    nothing = DecodedImages(max_pixels=0)
    key = (uuid4(), "acme")
    nothing.put(key, picture(1))
    assert nothing.get(key) is None
