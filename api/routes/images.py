"""/v1/images: upload an image once, refer to it by id in any number of jobs of the same tenant."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, UploadFile

from api.deps import CurrentPrincipal, SessionDep, SettingsDep, get_principal
from api.responses import COMMON_ERRORS, error_responses
from jobs.image_store import find_image, get_image, store_image
from jobs.schemas import ImagePublic, ImagesPublic

router = APIRouter(
    prefix="/v1/images",
    tags=["images"],
    dependencies=[Depends(get_principal)],
    responses=error_responses(*COMMON_ERRORS),
)


@router.post("", status_code=201, responses=error_responses(413, 415))
def upload_image(
    file: UploadFile, session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal
) -> ImagePublic:
    """Validate and store an image (multipart field `file`); the same bytes give the same id."""
    # One byte past the limit is enough to know the upload is too large, without reading it all.
    data = file.file.read(settings.MAX_UPLOAD_BYTES + 1)
    image = store_image(session, principal.tenant, data, settings, claimed_type=file.content_type)
    session.commit()
    return ImagePublic.model_validate(image)


Sha256Query = Annotated[str, Query(pattern=r"^[0-9a-f]{64}$", description="The image's SHA-256, in lowercase hex.")]


@router.get("")
def find_images(sha256: Sha256Query, session: SessionDep, principal: CurrentPrincipal) -> ImagesPublic:
    """The tenant's image with these bytes, if it uploaded them: check before uploading the same file again."""
    image = find_image(session, principal.tenant, sha256)
    return ImagesPublic(data=[] if image is None else [ImagePublic.model_validate(image)])


@router.get("/{image_id}", responses=error_responses(404))
def read_image(image_id: UUID, session: SessionDep, principal: CurrentPrincipal) -> ImagePublic:
    """An uploaded image's size and format (404 for an id this tenant never uploaded)."""
    return ImagePublic.model_validate(get_image(session, image_id, principal.tenant))
