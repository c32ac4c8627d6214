"""Images stored once by content hash, in Postgres."""

from uuid import uuid4

import pytest

from blip2.errors import InvalidImage
from jobs.db import SessionFactory, session_scope
from jobs.errors import ImageNotFound, UploadTooLarge
from jobs.image_store import ImageHashes, get_image, load_images, missing_image_ids, store_image
from jobs.settings import Settings
from tests.support.auth import OTHER_TENANT, TENANT
from tests.support.db import statements
from tests.support.images import png_bytes


def test_same_bytes_same_row(sessions: SessionFactory, settings: Settings) -> None:
    data = png_bytes(width=17, height=9)
    with session_scope(sessions) as session:
        first = store_image(session, TENANT, data, settings)
    with session_scope(sessions) as session:
        again = store_image(session, TENANT, data, settings)
        assert again.id == first.id
        assert (again.width, again.height, again.format) == (17, 9, "png")
        assert load_images(session, {(first.id, TENANT)}) == {first.id: data}
        assert load_images(session, {(first.id, OTHER_TENANT)}) == {}  # another tenant's id reads as nothing


def test_refusals(sessions: SessionFactory, settings: Settings) -> None:
    with session_scope(sessions) as session:
        with pytest.raises(InvalidImage):
            store_image(session, TENANT, b"not an image", settings)
        with pytest.raises(UploadTooLarge):
            store_image(session, TENANT, png_bytes(), settings.model_copy(update={"MAX_UPLOAD_BYTES": 10}))
        unknown = uuid4()
        assert missing_image_ids(session, [unknown], TENANT) == {unknown}
        assert load_images(session, {(unknown, TENANT)}) == {}
        with pytest.raises(ImageNotFound):
            get_image(session, unknown, TENANT)


def test_image_hashes_remembered_per_tenant(sessions: SessionFactory, settings: Settings) -> None:
    """ImageHashes reads an image once and answers from memory after, for its own tenant only; what a
    transaction read of a row it may roll back (`remember=False`) is read again next time."""
    with session_scope(sessions) as session:
        image = store_image(session, TENANT, png_bytes(width=5, height=5), settings)
    other = uuid4()
    hashes = ImageHashes()
    with session_scope(sessions) as session, statements(session) as seen:
        assert hashes(session, [image.id, other], TENANT) == {image.id: image.sha256}
        assert len(seen) == 1
        assert hashes(session, [image.id], TENANT) == {image.id: image.sha256}
        assert len(seen) == 1, "a known image was read again"
        assert hashes(session, [image.id], OTHER_TENANT) == {}, "another tenant's image was found"
        assert hashes(session, [other], TENANT) == {}, "an unknown id was remembered"
        assert len(seen) == 3
    fresh = ImageHashes()
    with session_scope(sessions) as session, statements(session) as seen:
        fresh(session, [image.id], TENANT, remember=False)
        fresh(session, [image.id], TENANT)
        fresh(session, [image.id], TENANT)
        assert len(seen) == 2


def test_image_hashes_keep_the_latest(sessions: SessionFactory, settings: Settings) -> None:
    with session_scope(sessions) as session:
        images = [store_image(session, TENANT, png_bytes(width=3 + n, height=3), settings) for n in range(3)]
    hashes = ImageHashes(size=2)
    with session_scope(sessions) as session, statements(session) as seen:
        for image in images:
            hashes(session, [image.id], TENANT)
        hashes(session, [images[2].id], TENANT)  # kept
        assert len(seen) == 3
        hashes(session, [images[0].id], TENANT)  # the oldest, let go
        assert len(seen) == 4
