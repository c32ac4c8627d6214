"""Uploaded images, stored once by content hash in Postgres so any worker on any machine reads them."""

import hashlib
from collections.abc import Iterable, Sequence
from uuid import UUID, uuid4

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from blip2.images import probe_image
from jobs.errors import ImageNotFound, UploadTooLarge
from jobs.models import Image
from jobs.settings import Settings


def store_image(session: Session, data: bytes, settings: Settings) -> Image:
    """Validate `data` as an image and store it; the same bytes always give the same row.

    Raises UploadTooLarge, or blip2's InvalidImage (or a subclass) for bytes that are not an
    acceptable image.
    """
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise UploadTooLarge(f"image is {len(data)} bytes, over the limit of {settings.MAX_UPLOAD_BYTES}")
    info = probe_image(data, max_pixels=settings.MAX_IMAGE_PIXELS)
    digest = hashlib.sha256(data).hexdigest()
    row = {"id": uuid4(), "sha256": digest, "data": data, "size_bytes": len(data)}
    info_row = {"width": info.width, "height": info.height, "format": info.format}
    # ON CONFLICT: two uploads of the same bytes at once both end with the one row.
    session.execute(insert(Image).values(**row, **info_row).on_conflict_do_nothing(index_elements=["sha256"]))
    return session.scalars(select(Image).where(Image.sha256 == digest)).one()


def missing_image_ids(session: Session, ids: Iterable[UUID]) -> set[UUID]:
    """The ids among `ids` that no uploaded image has."""
    wanted = set(ids)
    if not wanted:
        return set()
    found = session.scalars(select(Image.id).where(Image.id.in_(wanted)))
    return wanted - set(found)


def load_image_bytes(session: Session, ids: Sequence[UUID]) -> list[bytes]:
    """The stored bytes of each image, in the order asked (ids may repeat)."""
    rows = session.execute(select(Image.id, Image.data).where(Image.id.in_(set(ids))))
    by_id = {image_id: data for image_id, data in rows}
    missing = [str(image_id) for image_id in ids if image_id not in by_id]
    if missing:
        raise ImageNotFound(f"no uploaded image with id {', '.join(missing)}")
    return [by_id[image_id] for image_id in ids]
