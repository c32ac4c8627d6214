"""/v1/images: upload an image once, refer to it by id in any number of jobs of the same tenant."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, File, Query, UploadFile

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


# Where an uploaded image's id and hash lead (OpenAPI links: clients and schemathesis's stateful phase follow them).
_UPLOAD_LINKS = {
    "read": {"operationId": "read_image", "parameters": {"image_id": "$response.body#/id"}},
    "find": {"operationId": "find_images", "parameters": {"sha256": "$response.body#/sha256"}},
    "caption": {
        "operationId": "create_job",
        "requestBody": {"kind": "caption", "input": {"image_id": "$response.body#/id"}},
        "x-schemathesis": {"merge_body": False},
    },
}
# A non-empty file: an empty upload is refused (`invalid_image`), and the schema says so. `format: binary`
# besides 3.1's contentMediaType: client generators take it for a file upload.
ImageFile = Annotated[
    UploadFile, File(description="The image's bytes.", json_schema_extra={"format": "binary", "minLength": 1})
]


@router.post(
    "",
    status_code=201,
    operation_id="upload_image",
    responses=error_responses(413, 415),
    openapi_extra={"responses": {"201": {"links": _UPLOAD_LINKS}}},
)
def upload_image(
    file: ImageFile, session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal
) -> ImagePublic:
    """Validate and store an image (multipart field `file`); the same bytes give the same id."""
    # One byte past the limit is enough to know the upload is too large, without reading it all.
    data = file.file.read(settings.MAX_UPLOAD_BYTES + 1)
    image = store_image(session, principal.tenant, data, settings, claimed_type=file.content_type)
    session.commit()
    return ImagePublic.model_validate(image)


Sha256Query = Annotated[str, Query(pattern=r"^[0-9a-f]{64}$", description="The image's SHA-256, in lowercase hex.")]


@router.get("", operation_id="find_images")
def find_images(sha256: Sha256Query, session: SessionDep, principal: CurrentPrincipal) -> ImagesPublic:
    """The tenant's image with these bytes, if it uploaded them: check before uploading the same file again."""
    image = find_image(session, principal.tenant, sha256)
    return ImagesPublic(data=[] if image is None else [ImagePublic.model_validate(image)])


@router.get("/{image_id}", operation_id="read_image", responses=error_responses(404))
def read_image(image_id: UUID, session: SessionDep, principal: CurrentPrincipal) -> ImagePublic:
    """An uploaded image's size and format (404 for an id this tenant never uploaded)."""
    return ImagePublic.model_validate(get_image(session, image_id, principal.tenant))
