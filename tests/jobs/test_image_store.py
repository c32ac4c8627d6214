"""Images stored once by content hash, in Postgres."""

from uuid import uuid4

import pytest

from blip2.errors import InvalidImage
from jobs.db import SessionFactory, session_scope
from jobs.errors import ImageNotFound, UploadTooLarge
from jobs.image_store import get_image, load_images, missing_image_ids, store_image
from jobs.settings import Settings
from tests.support.auth import OTHER_TENANT, TENANT
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
