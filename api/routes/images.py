"""POST /v1/images: upload an image once, refer to it by id in any number of jobs."""

from fastapi import APIRouter, UploadFile

from api.deps import SessionDep, SettingsDep
from jobs.image_store import store_image
from jobs.schemas import ImagePublic

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.post("", status_code=201)
def upload_image(file: UploadFile, session: SessionDep, settings: SettingsDep) -> ImagePublic:
    """Validate and store an image (multipart field `file`); the same bytes give the same id."""
    # One byte past the limit is enough to know the upload is too large, without reading it all.
    data = file.file.read(settings.MAX_UPLOAD_BYTES + 1)
    image = store_image(session, data, settings)
    session.commit()
    return ImagePublic.model_validate(image)
