"""The HTTP and job-input schemas: one family per resource, one discriminated union over job kinds.

A job's `input` is validated here before any row exists; the worker re-reads the stored input with
`parse_input(kind, data)`, so the API and the worker agree on one typed shape per kind.
"""

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeAlias, cast
from uuid import UUID

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from blip2.decoding import DecodingOptions
from blip2.errors import InvalidArgument
from jobs.status import JobStatus

if TYPE_CHECKING:
    from jobs.models import Job

JobKind: TypeAlias = Literal["caption", "vqa", "instruct", "embed", "match"]
JOB_KINDS: tuple[JobKind, ...] = ("caption", "vqa", "instruct", "embed", "match")
# A static ceiling; the configured MAX_BATCH_SIZE (usually lower) is checked on submission.
_LIST_CEILING = 1024


class _Strict(BaseModel):
    """Unknown fields are errors, so a misspelt option fails loudly instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


# ---- images ---------------------------------------------------------------------------------


class ImageBase(BaseModel):
    """What the service knows about an uploaded image."""

    sha256: str
    width: int
    height: int
    format: str


class ImagePublic(ImageBase):
    """An uploaded image as the API returns it; the same bytes always give the same id."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID


# ---- job inputs -----------------------------------------------------------------------------


class DecodingInput(_Strict):
    """Text generation options, named as blip2's DecodingOptions; unset ones take the model's defaults.

    The bounds are the library's own: the options are checked by building a DecodingOptions.
    """

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    num_beams: int | None = None
    use_nucleus_sampling: bool | None = None
    top_p: float | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    num_captions: int | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _within_library_bounds(self) -> Self:
        try:
            DecodingOptions().with_overrides(**self.overrides())
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from exc
        return self

    def overrides(self) -> dict[str, Any]:
        """The options the request set, to apply over the model's defaults for the operation."""
        return self.model_dump(exclude_none=True)


class ImageFields(_Strict):
    """One image: `image_id` of an upload, or `image` inline as base64 (stored on submission)."""

    image_id: UUID | None = None
    image: Base64Bytes | None = None

    def referenced_image_ids(self) -> list[UUID]:
        """Every uploaded image this input names."""
        return [] if self.image_id is None else [self.image_id]


class _ImageRef(ImageFields):
    """An input about one image, given by exactly one of `image_id` or `image`."""

    @model_validator(mode="after")
    def _one_image(self) -> Self:
        if self.image_needed() and (self.image_id is None) == (self.image is None):
            raise ValueError("give exactly one of image_id or image")
        return self

    def image_needed(self) -> bool:
        """Whether this input must carry an image (embed in text mode does not)."""
        return True


_DECODING_FIELDS = frozenset(DecodingInput.model_fields)


class _Generating(_ImageRef):
    """An input whose text is generated: decoding options go in `decoding`, or flat beside the other
    fields as the library names them (`{"num_beams": 3}` is `{"decoding": {"num_beams": 3}}`)."""

    decoding: DecodingInput = Field(default_factory=DecodingInput)

    @model_validator(mode="before")
    @classmethod
    def _gather_flat_decoding(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not _DECODING_FIELDS & data.keys():
            return data
        flat = {k: v for k, v in data.items() if k in _DECODING_FIELDS}
        nested = data.get("decoding") or {}
        if not isinstance(nested, dict):
            return data  # let field validation report the wrong type
        rest = {k: v for k, v in data.items() if k not in _DECODING_FIELDS}
        return rest | {"decoding": nested | flat}


class CaptionInput(_Generating):
    """Describe an image; `prompt` starts the caption, `style` picks short or detailed."""

    prompt: str | None = Field(default=None, max_length=2000)
    style: Literal["short", "detailed"] = "short"


class QAExampleInput(_Strict):
    """One few-shot example shown to the model before the question."""

    question: str = Field(min_length=1, max_length=2000)
    answer: str = Field(max_length=2000)


class VqaInput(_Generating):
    """Answer a question about an image, optionally after a few examples."""

    question: str = Field(min_length=1, max_length=2000)
    examples: list[QAExampleInput] = Field(default_factory=list, max_length=16)


class InstructInput(_Generating):
    """Follow a free-form instruction about an image (an InstructBLIP model)."""

    instruction: str = Field(min_length=1, max_length=4000)


class EmbedInput(_ImageRef):
    """An embedding of an image, a text, or both together (`mode`)."""

    mode: Literal["image", "text", "multimodal"] = "image"
    text: str | None = Field(default=None, min_length=1, max_length=2000)

    def image_needed(self) -> bool:
        return self.mode != "text"

    @model_validator(mode="after")
    def _fits_mode(self) -> Self:
        if self.mode == "text" and (self.image_id is not None or self.image is not None):
            raise ValueError("mode 'text' takes no image")
        if (self.mode == "image") != (self.text is None):
            raise ValueError("give text with mode 'text' or 'multimodal', and only with those")
        return self


class MatchInput(ImageFields):
    """Rank `texts` against one image, or `image_ids` against one `text`; best first."""

    texts: list[Annotated[str, Field(min_length=1, max_length=2000)]] | None = Field(
        default=None, min_length=1, max_length=_LIST_CEILING
    )
    text: str | None = Field(default=None, min_length=1, max_length=2000)
    image_ids: list[UUID] | None = Field(default=None, min_length=1, max_length=_LIST_CEILING)
    top_k: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_direction(self) -> Self:
        one_image = (self.image_id is not None) + (self.image is not None)
        if self.texts is not None and (self.text is None and self.image_ids is None):
            if one_image != 1:
                raise ValueError("give exactly one of image_id or image with texts")
        elif self.text is not None and self.image_ids is not None and self.texts is None:
            if one_image:
                raise ValueError("give image_ids, not image_id or image, with text")
        else:
            raise ValueError("give either an image with texts, or text with image_ids")
        return self

    @property
    def candidate_count(self) -> int:
        """How many texts or images are ranked."""
        return len(self.texts or self.image_ids or [])

    def referenced_image_ids(self) -> list[UUID]:
        return super().referenced_image_ids() + list(self.image_ids or [])


JobInput: TypeAlias = CaptionInput | VqaInput | InstructInput | EmbedInput | MatchInput
INPUT_TYPES: dict[JobKind, type[JobInput]] = {
    "caption": CaptionInput,
    "vqa": VqaInput,
    "instruct": InstructInput,
    "embed": EmbedInput,
    "match": MatchInput,
}


def parse_input(kind: JobKind, data: object) -> JobInput:
    """The typed input of a stored job."""
    return INPUT_TYPES[kind].model_validate(data)


# ---- job outputs ----------------------------------------------------------------------------


class CaptionOutput(BaseModel):
    """A caption job's result: one or more captions, best first."""

    captions: list[str]


class VqaOutput(BaseModel):
    """A VQA job's result."""

    answer: str


class InstructOutput(BaseModel):
    """An instruct job's result."""

    text: str


class EmbedOutput(BaseModel):
    """An embed job's result: the pooled embedding, and per-query-token embeddings where the mode has them."""

    embedding: list[float]
    dim: int
    query_embeddings: list[list[float]] | None = None


class MatchScoreOutput(BaseModel):
    """One ranked candidate: its index in the request, contrastive (itc) and matching (itm) scores."""

    index: int
    itc: float
    itm: float


class MatchOutput(BaseModel):
    """A match job's result, best first."""

    scores: list[MatchScoreOutput]


JobOutput: TypeAlias = CaptionOutput | VqaOutput | InstructOutput | EmbedOutput | MatchOutput
OUTPUT_TYPES: dict[JobKind, type[JobOutput]] = {
    "caption": CaptionOutput,
    "vqa": VqaOutput,
    "instruct": InstructOutput,
    "embed": EmbedOutput,
    "match": MatchOutput,
}


# ---- jobs -----------------------------------------------------------------------------------


class JobCreateBase(_Strict):
    """Fields every job request shares; `model` defaults to BLIP2_DEFAULT_MODEL."""

    kind: JobKind
    model: str | None = Field(default=None, min_length=1, max_length=500)
    input: JobInput


class CaptionJobCreate(JobCreateBase):
    """A request for a caption job."""

    kind: Literal["caption"]
    input: CaptionInput


class VqaJobCreate(JobCreateBase):
    """A request for a VQA job."""

    kind: Literal["vqa"]
    input: VqaInput


class InstructJobCreate(JobCreateBase):
    """A request for an instruct job."""

    kind: Literal["instruct"]
    input: InstructInput


class EmbedJobCreate(JobCreateBase):
    """A request for an embed job."""

    kind: Literal["embed"]
    input: EmbedInput


class MatchJobCreate(JobCreateBase):
    """A request for a match job."""

    kind: Literal["match"]
    input: MatchInput


# The body of POST /v1/jobs: `kind` picks which input schema validates `input`.
JobCreate: TypeAlias = Annotated[
    CaptionJobCreate | VqaJobCreate | InstructJobCreate | EmbedJobCreate | MatchJobCreate,
    Field(discriminator="kind"),
]
JOB_CREATE_ADAPTER: TypeAdapter[JobCreate] = TypeAdapter(JobCreate)


class JobErrorPublic(BaseModel):
    """Why a job failed: a stable code and a human message."""

    code: str
    message: str


class JobPublic(BaseModel):
    """A job as the API returns it."""

    id: UUID
    kind: JobKind
    model: str
    status: JobStatus
    input: JobInput
    result: JobOutput | None
    error: JobErrorPublic | None
    attempts: int
    progress: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: "Job") -> "JobPublic":
        """The public view of a job row, its input and result parsed by the job's kind."""
        kind = cast(JobKind, job.kind)
        error = None if job.error_code is None else JobErrorPublic(code=job.error_code, message=job.error_message or "")
        return cls(
            id=job.id,
            kind=kind,
            model=job.model,
            status=job.status,
            input=parse_input(kind, job.input),
            result=None if job.result is None else OUTPUT_TYPES[kind].model_validate(job.result),
            error=error,
            attempts=job.attempts,
            progress=job.progress,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobsPublic(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""

    data: list[JobPublic]
    next_cursor: str | None
