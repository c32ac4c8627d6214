"""The HTTP and job-input schemas: one family per resource, one discriminated union over job kinds.

A job's `input` is validated here before any row exists; the worker re-reads the stored input with
`parse_input(kind, data)`, so the API and the worker agree on one typed shape per kind.
"""

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeAlias, cast
from uuid import UUID

from pydantic import (
    Base64Bytes,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from blip2.data.formats import option_names
from blip2.decoding import MAX_BEAMS, MAX_NEW_TOKENS, MAX_RETURN_SEQUENCES, DecodingOptions
from blip2.errors import InvalidArgument
from jobs.status import JobStatus

if TYPE_CHECKING:
    from jobs.models import Job

JobKind: TypeAlias = Literal["caption", "vqa", "instruct", "embed", "match", "download", "train", "evaluate"]
JOB_KINDS: tuple[JobKind, ...] = ("caption", "vqa", "instruct", "embed", "match", "download", "train", "evaluate")
# Kinds that run for minutes to hours on the `train` and `download` queues, reporting progress.
LONG_KINDS: frozenset[JobKind] = frozenset({"download", "train", "evaluate"})
# Names users give datasets and trained models: they become directory names and registry names.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
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

    # Per-field bounds, so a 422 names the field; the validator below adds the rules across fields.
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    min_new_tokens: int | None = Field(default=None, ge=0, le=MAX_NEW_TOKENS)
    num_beams: int | None = Field(default=None, ge=1, le=MAX_BEAMS)
    use_nucleus_sampling: bool | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
    temperature: float | None = Field(default=None, gt=0, le=10)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    length_penalty: float | None = Field(default=None, ge=-10, le=10)
    num_captions: int | None = Field(default=None, ge=1, le=MAX_RETURN_SEQUENCES)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

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
    """One image: `image_id` of an upload, `image` inline as base64, or `image_url` to fetch.

    An inline or fetched image is stored on submission like an upload, so a job runs on an image_id.
    """

    image_id: UUID | None = None
    image: Base64Bytes | None = None
    image_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)

    def images_given(self) -> int:
        """How many of image_id, image and image_url are set (one, for an input about one image)."""
        return sum(value is not None for value in (self.image_id, self.image, self.image_url))

    def referenced_image_ids(self) -> list[UUID]:
        """Every uploaded image this input names."""
        return [] if self.image_id is None else [self.image_id]


class _ImageRef(ImageFields):
    """An input about one image, given by exactly one of `image_id`, `image` or `image_url`."""

    @model_validator(mode="after")
    def _one_image(self) -> Self:
        if self.image_needed() and self.images_given() != 1:
            raise ValueError("give exactly one of image_id, image or image_url")
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
        if self.mode == "text" and self.images_given():
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
        if self.texts is not None and (self.text is None and self.image_ids is None):
            if self.images_given() != 1:
                raise ValueError("give exactly one of image_id, image or image_url with texts")
        elif self.text is not None and self.image_ids is not None and self.texts is None:
            if self.images_given():
                raise ValueError("give image_ids, not image_id, image or image_url, with text")
        else:
            raise ValueError("give either an image with texts, or text with image_ids")
        return self

    @property
    def candidate_count(self) -> int:
        """How many texts or images are ranked."""
        return len(self.texts or self.image_ids or [])

    def referenced_image_ids(self) -> list[UUID]:
        return super().referenced_image_ids() + list(self.image_ids or [])


Task: TypeAlias = Literal["caption", "vqa", "caption_vqa", "match"]
Component: TypeAlias = Literal["vision", "qformer", "llm"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
_BLIP2_TRAINED_PARTS: list[Component] = ["qformer"]


class DownloadInput(_Strict):
    """Fetch a dataset: a manifest entry by `dataset`, or an archive at `url` with its `sha256`."""

    dataset: str | None = Field(default=None, min_length=1, max_length=64)
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    sha256: Sha256 | None = None
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    format: Literal["coco_captions", "coco_karpathy", "flickr30k", "vqav2", "jsonl"] | None = None
    # Which file is which (e.g. {"val_annotations": "annotations/captions.json", "val_images": "images"});
    # without any, files named as the public datasets name them are found. Names: blip2.data.formats.
    options: dict[str, Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=dict, max_length=40, description="The format's options (a url download only)."
    )

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if options and info.data.get("dataset") is not None:
            raise ValueError("options go with a url download; a manifest entry has its own")
        if not info.data.get("format"):
            return options  # no format: the model's own check says what is missing
        known = option_names(info.data["format"])
        if unknown := sorted(set(options) - set(known)):
            raise ValueError(
                f"{', '.join(unknown)}: not an option of {info.data['format']} (it has {', '.join(known)})"
            )
        return options

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.dataset is not None:
            if self.url is not None or self.sha256 is not None or self.format is not None:
                raise ValueError("give either dataset, or url with sha256, name and format")
        elif self.url is None or self.sha256 is None or self.name is None or self.format is None:
            raise ValueError("a url download needs url, sha256, name and format")
        return self

    @property
    def registered_name(self) -> str:
        """The name the dataset is registered under."""
        return self.name or str(self.dataset)


class TrainInput(_Strict):
    """Fine-tune the job's `model` on a registered dataset; the result is served as `output_model`."""

    dataset: str = Field(pattern=NAME_PATTERN)
    task: Task = "caption"
    output_model: str = Field(pattern=NAME_PATTERN)
    max_steps: int = Field(default=1000, ge=1, le=1_000_000)
    batch_size: int = Field(default=16, ge=1, le=512)
    lr: float = Field(default=1e-4, gt=0, le=1.0)
    warmup_steps: int | None = Field(default=None, ge=0)
    grad_accum_steps: int = Field(default=1, ge=1, le=256)
    checkpoint_every: int = Field(default=100, ge=1)
    # Which parts train; default as BLIP-2: vision encoder and language model frozen.
    train: list[Component] = Field(default_factory=lambda: _BLIP2_TRAINED_PARTS.copy(), min_length=1)
    seed: int = 0


class EvaluateInput(_Strict):
    """Score the job's `model` on a split of a registered dataset."""

    dataset: str = Field(pattern=NAME_PATTERN)
    split: Literal["train", "val", "test"] = "test"
    task: Task = "caption"
    batch_size: int = Field(default=16, ge=1, le=512)
    limit: int | None = Field(default=None, ge=1, description="Evaluate only the first N records.")


JobInput: TypeAlias = (
    CaptionInput | VqaInput | InstructInput | EmbedInput | MatchInput | DownloadInput | TrainInput | EvaluateInput
)
INPUT_TYPES: dict[JobKind, type[JobInput]] = {
    "caption": CaptionInput,
    "vqa": VqaInput,
    "instruct": InstructInput,
    "embed": EmbedInput,
    "match": MatchInput,
    "download": DownloadInput,
    "train": TrainInput,
    "evaluate": EvaluateInput,
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


class DownloadOutput(BaseModel):
    """A download job's result: the registered dataset."""

    dataset: str
    format: str
    tasks: list[str]
    splits: dict[str, int]


class TrainOutput(BaseModel):
    """A training job's result: the new model, servable by name at once, and how it scored."""

    model: str
    steps: int
    final_loss: float | None
    metrics: dict[str, float]
    loss_curve: str  # path of the PNG, under BLIP2_DATA_DIR
    resumed_from_step: int = 0  # > 0 when a worker died and the job went on from its last checkpoint


class EvaluateOutput(BaseModel):
    """An evaluation job's result: metrics by name (bleu_4, cider, vqa_accuracy, recall@1 ...)."""

    metrics: dict[str, float]
    records: int


JobOutput: TypeAlias = (
    CaptionOutput
    | VqaOutput
    | InstructOutput
    | EmbedOutput
    | MatchOutput
    | DownloadOutput
    | TrainOutput
    | EvaluateOutput
)
OUTPUT_TYPES: dict[JobKind, type[JobOutput]] = {
    "caption": CaptionOutput,
    "vqa": VqaOutput,
    "instruct": InstructOutput,
    "embed": EmbedOutput,
    "match": MatchOutput,
    "download": DownloadOutput,
    "train": TrainOutput,
    "evaluate": EvaluateOutput,
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


class DownloadJobCreate(JobCreateBase):
    """A request for a dataset download job (`model` is not used)."""

    kind: Literal["download"]
    input: DownloadInput


class TrainJobCreate(JobCreateBase):
    """A request for a training job; `model` is the base model."""

    kind: Literal["train"]
    input: TrainInput


class EvaluateJobCreate(JobCreateBase):
    """A request for an evaluation job of `model`."""

    kind: Literal["evaluate"]
    input: EvaluateInput


# The body of POST /v1/jobs: `kind` picks which input schema validates `input`.
JobCreate: TypeAlias = Annotated[
    CaptionJobCreate
    | VqaJobCreate
    | InstructJobCreate
    | EmbedJobCreate
    | MatchJobCreate
    | DownloadJobCreate
    | TrainJobCreate
    | EvaluateJobCreate,
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
    progress: float | None  # 0..1 while running
    progress_detail: dict[str, Any] | None  # step, epoch, loss, lr (train); bytes_done, bytes_total (download)
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
            progress_detail=job.progress_detail,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobsPublic(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""

    data: list[JobPublic]
    next_cursor: str | None


# ---- models and datasets --------------------------------------------------------------------


class ModelPublic(BaseModel):
    """A model jobs may name: a registry entry or one a training job produced."""

    name: str
    family: str | None
    checkpoint: str
    description: str
    trained: bool  # produced by a training job of this service
    metrics: dict[str, float] | None = None


class ModelsPublic(BaseModel):
    """Every model jobs may name (besides any hub id)."""

    data: list[ModelPublic]


class DatasetPublic(BaseModel):
    """A dataset a download job registered, for training and evaluation jobs."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    format: str
    tasks: list[str]
    splits: dict[str, int]
    source: str
    created_at: datetime


class DatasetsPublic(BaseModel):
    """Every registered dataset."""

    data: list[DatasetPublic]
