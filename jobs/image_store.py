"""Uploaded images, stored once per tenant by content hash in Postgres so any worker on any machine reads them."""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable
from uuid import UUID, uuid4

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from blip2.images import probe_image
from blip2.motion_photo import without_motion_video
from jobs.errors import ImageNotFound, UploadTooLarge
from jobs.models import Image
from jobs.settings import Settings


def store_image(
    session: Session, tenant: str, data: bytes, settings: Settings, claimed_type: str | None = None
) -> Image:
    """Validate `data` as an image and store it for `tenant`; the same bytes always give the same row.

    `claimed_type` is the content type the client declared, if any; bytes of another type are refused.
    A phone's motion photo is stored without its video (the JPEG alone, hashed as such), so the same
    photo with or without the video is one image; any other trailer is refused as a polyglot.

    Raises UploadTooLarge, or blip2's InvalidImage (or a subclass) for bytes that are not an
    acceptable image.
    """
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise UploadTooLarge(f"image is {len(data)} bytes, over the limit of {settings.MAX_UPLOAD_BYTES}")
    data = without_motion_video(data)
    info = probe_image(data, max_pixels=settings.MAX_IMAGE_PIXELS, claimed_type=claimed_type)
    digest = hashlib.sha256(data).hexdigest()
    row = {"id": uuid4(), "tenant": tenant, "sha256": digest, "data": data, "size_bytes": len(data)}
    info_row = {"width": info.width, "height": info.height, "format": info.format}
    # ON CONFLICT: two uploads of the same bytes at once both end with the one row.
    insert_row = insert(Image).values(**row, **info_row)
    session.execute(insert_row.on_conflict_do_nothing(index_elements=["tenant", "sha256"]))
    stored = find_image(session, tenant, digest)
    assert stored is not None  # inserted just now, or by whoever inserted it first
    return stored


def get_image(session: Session, image_id: UUID, tenant: str) -> Image:
    """The tenant's image with this id, or ImageNotFound (another tenant's image is not found either)."""
    image = session.scalars(select(Image).where(Image.id == image_id, Image.tenant == tenant)).one_or_none()
    if image is None:
        raise ImageNotFound(f"no image with id {image_id}")
    return image


def find_image(session: Session, tenant: str, sha256: str) -> Image | None:
    """The tenant's image with this content hash, if it uploaded those bytes."""
    return session.scalars(select(Image).where(Image.tenant == tenant, Image.sha256 == sha256)).one_or_none()


def image_hashes(session: Session, ids: Iterable[UUID], tenant: str) -> dict[UUID, str]:
    """The content hash of each image of `tenant` among `ids`; ids it has no image with are left out."""
    wanted = set(ids)
    if not wanted:
        return {}
    found = session.execute(select(Image.id, Image.sha256).where(Image.id.in_(wanted), Image.tenant == tenant))
    return {image_id: sha256 for image_id, sha256 in found}


class ImageHashes:
    """`image_hashes`, remembered: what a process has read of its tenants' images, the latest `size`.

    An image's row never changes and is never deleted (its id, tenant and bytes are fixed at upload), so
    what was read once stays true: a submission naming an image seen before reads nothing. Should
    images ever be deleted, this must hear of it (as api/key_cache.py hears of revoked keys).
    Shared by the threads of one process.
    """

    def __init__(self, size: int = 16_384) -> None:
        self._size = size
        self._known: OrderedDict[tuple[UUID, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, session: Session, ids: Iterable[UUID], tenant: str, *, remember: bool = True) -> dict[UUID, str]:
        """`image_hashes`; `remember=False` when the transaction stored one of them itself (it may yet
        roll back, and that row is then gone)."""
        wanted = set(ids)
        with self._lock:
            found = {
                image_id: self._known[(image_id, tenant)] for image_id in wanted if (image_id, tenant) in self._known
            }
            for image_id in found:
                self._known.move_to_end((image_id, tenant))
        if missing := wanted - found.keys():
            read = image_hashes(session, missing, tenant)  # those of another tenant or none stay missing
            found |= read
            if remember:
                with self._lock:
                    for image_id, sha256 in read.items():
                        self._known[(image_id, tenant)] = sha256
                    while len(self._known) > self._size:
                        self._known.popitem(last=False)
        return found


def missing_image_ids(session: Session, ids: Iterable[UUID], tenant: str) -> set[UUID]:
    """The ids among `ids` that no image of `tenant` has."""
    wanted = set(ids)
    return wanted - image_hashes(session, wanted, tenant).keys()


def load_images(session: Session, wanted: Collection[tuple[UUID, str]]) -> dict[UUID, bytes]:
    """The stored bytes of each (image id, tenant) that exists; ids of another tenant's images are left out."""
    if not wanted:
        return {}
    pairs = tuple_(Image.id, Image.tenant).in_(list(wanted))
    return {image_id: data for image_id, data in session.execute(select(Image.id, Image.data).where(pairs))}
