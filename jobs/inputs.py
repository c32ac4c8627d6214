"""What each kind of job takes: one pydantic model per kind, validated before any row exists.

The worker reads a stored input back with the same model (jobs/kinds.py names which), so the API and
the worker agree on one typed shape per kind. Unknown fields are errors, so a misspelt option fails
loudly instead of being ignored.
"""

import itertools
from collections.abc import Hashable
from typing import Annotated, Any, Literal, Self, TypeAlias
from uuid import UUID

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from blip2.data.formats import option_names
from blip2.decoding import LIMITS, DecodingOptions
from blip2.errors import InvalidArgument

# Names users give datasets and trained models: they become directory names and registry names.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Free text (a question, a prompt, a dataset's options) and URLs: anything but NUL, which Postgres
# cannot keep in JSON. A pattern of the schema, so a client (and the fuzz test) knows it: a NUL is a 422
# naming its field, never an INSERT that fails.
TEXT_PATTERN = r"^[^\x00]*$"
URL_PATTERN = r"^https?://[^\x00]*$"
# A static ceiling; the configured MAX_BATCH_SIZE (usually lower) is checked on submission.
LIST_CEILING = 1024
# Standard base64 with its padding: what `image` must be for its bytes to be read at all.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_IMAGE_FIELDS = ("image_id", "image", "image_url")
# One word of a caption, as training's swapped negatives match it: no spaces, lower case (captions
# are matched without regard to case, so "Circle" and "circle" would be one word). Plain ASCII, so
# that Python and JSON Schema (ECMAScript) read the pattern alike: their \s differ on some Unicode spaces.
SwapWord = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._'-]*$")]


# ---- what the OpenAPI schema says across fields ---------------------------------------------
# The validators below say the same in Python; these JSON Schema pieces say it in the OpenAPI
# document, so a client (or schemathesis) knows which combinations are accepted. "Exactly one of"
# is written as a `not` (none of them, or two at once) rather than as a `oneOf` beside `properties`:
# client generators read such a `oneOf` as a union of variants and lose the model's own fields,
# while they pass over a `not`, which validators apply in full.


def _given(*names: str) -> dict[str, Any]:
    """JSON Schema: every one of these fields is present and not null."""
    return {"required": list(names), "properties": {name: {"not": {"type": "null"}} for name in names}}


def _absent(*names: str) -> dict[str, Any]:
    """JSON Schema: none of these fields is present, except as null."""
    return {"properties": {name: {"type": "null"} for name in names}}


def _all_of(*schemas: dict[str, Any]) -> dict[str, Any]:
    return {"allOf": list(schemas)}


def exactly_one(*alternatives: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema: exactly one of the alternatives holds (a `oneOf`, spelt as a `not`; see above)."""
    none_holds = _all_of(*({"not": alternative} for alternative in alternatives))
    two_hold = [_all_of(a, b) for a, b in itertools.combinations(alternatives, 2)]
    return {"not": {"anyOf": [none_holds, *two_hold]}}


ONE_IMAGE = exactly_one(*(_given(name) for name in _IMAGE_FIELDS))
NO_IMAGE = _absent(*_IMAGE_FIELDS)


class JobInput(BaseModel):
    """Base of every job kind's input."""

    model_config = ConfigDict(extra="forbid")

    def referenced_image_ids(self) -> list[UUID]:
        """Every uploaded image this input names, in the order the job reads them."""
        return []


# ---- decoding -------------------------------------------------------------------------------


def _bounded(name: str) -> Any:
    """An optional field bounded by blip2's own range for the option, so a 422 names the field."""
    limit = LIMITS[name]
    if limit.open_low:
        return Field(default=None, gt=limit.low, le=limit.high)
    return Field(default=None, ge=limit.low, le=limit.high)


_DEFAULTS = DecodingOptions()  # built once: every submission's options are checked over it


class DecodingInput(BaseModel):
    """Text generation options, named as blip2's DecodingOptions; unset ones take the model's defaults.

    Across fields, with unset ones at the model's defaults (30 new tokens, 5 beams): `min_new_tokens`
    at most `max_new_tokens`, and without sampling `num_captions` at most `num_beams`.
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = _bounded("max_new_tokens")
    min_new_tokens: int | None = _bounded("min_new_tokens")
    num_beams: int | None = _bounded("num_beams")
    use_nucleus_sampling: bool | None = None
    top_p: float | None = _bounded("top_p")
    temperature: float | None = _bounded("temperature")
    repetition_penalty: float | None = _bounded("repetition_penalty")
    length_penalty: float | None = _bounded("length_penalty")
    num_captions: int | None = _bounded("num_captions")
    seed: int | None = _bounded("seed")

    @model_validator(mode="after")
    def _within_library_rules(self) -> Self:
        # The rules across fields (min <= max, captions <= beams) are the library's, checked by building
        # options. JSON Schema cannot compare two values, so the schema cannot say them: their error has
        # its own type (and code, api/errors.py), `invalid_argument`, apart from a malformed request.
        try:
            _DEFAULTS.with_overrides(**self.overrides())
        except InvalidArgument as exc:
            raise PydanticCustomError(InvalidArgument.code, str(exc)) from exc
        return self

    def overrides(self) -> dict[str, Any]:
        """The options the request set, to apply over the model's defaults for the operation."""
        return self.model_dump(exclude_none=True)

    def frozen(self) -> Hashable:
        """The set options as a hashable value (batches share them)."""
        return tuple(sorted(self.overrides().items()))

    @property
    def sequences_per_input(self) -> int:
        """Sequences generated per input at most (beams or samples), with unset options at their widest default."""
        return _DEFAULTS.with_overrides(**self.overrides()).sequences_per_input

    @property
    def is_random(self) -> bool:
        """Sampling without a seed: the same request may give another answer."""
        return bool(self.use_nucleus_sampling) and self.seed is None


_DECODING_FIELDS = frozenset(DecodingInput.model_fields)


# ---- images ---------------------------------------------------------------------------------


class ImageFields(JobInput):
    """One image: `image_id` of an upload, `image` inline as base64, or `image_url` to fetch.

    An inline or fetched image is stored on submission like an upload, so a job runs on an image_id.
    """

    image_id: UUID | None = None
    image: Base64Bytes | None = Field(default=None, json_schema_extra={"pattern": BASE64_PATTERN, "minLength": 4})
    image_url: str | None = Field(default=None, pattern=URL_PATTERN, max_length=2000)

    def images_given(self) -> int:
        """How many of image_id, image and image_url are set (one, for an input about one image)."""
        return sum(value is not None for value in (self.image_id, self.image, self.image_url))

    def referenced_image_ids(self) -> list[UUID]:
        return [] if self.image_id is None else [self.image_id]


class _ImageRef(ImageFields):
    """An input about one image, given by exactly one of `image_id`, `image` or `image_url`."""

    model_config = ConfigDict(json_schema_extra=ONE_IMAGE)

    @model_validator(mode="after")
    def _one_image(self) -> Self:
        if self.image_needed() and self.images_given() != 1:
            raise ValueError("give exactly one of image_id, image or image_url")
        return self

    def image_needed(self) -> bool:
        """Whether this input must carry an image (embed in text mode does not)."""
        return True


class GeneratingInput(_ImageRef):
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


# ---- inference kinds ------------------------------------------------------------------------


class CaptionInput(GeneratingInput):
    """Describe an image; `prompt` starts the caption, `style` picks short or detailed."""

    prompt: str | None = Field(default=None, max_length=2000, pattern=TEXT_PATTERN)
    style: Literal["short", "detailed"] = "short"


class QAExampleInput(BaseModel):
    """One few-shot example shown to the model before the question."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000, pattern=TEXT_PATTERN)
    answer: str = Field(max_length=2000, pattern=TEXT_PATTERN)


class VqaInput(GeneratingInput):
    """Answer a question about an image, optionally after a few examples."""

    question: str = Field(min_length=1, max_length=2000, pattern=TEXT_PATTERN)
    examples: list[QAExampleInput] = Field(default_factory=list, max_length=16)


class InstructInput(GeneratingInput):
    """Follow a free-form instruction about an image (an InstructBLIP model)."""

    instruction: str = Field(min_length=1, max_length=4000, pattern=TEXT_PATTERN)


class EmbedInput(_ImageRef):
    """An embedding of an image, a text, or both together (`mode`): `image` takes one image and no
    text, `text` a text and no image, `multimodal` both."""

    model_config = ConfigDict(
        json_schema_extra=exactly_one(
            _all_of({"properties": {"mode": {"const": "image"}}}, _absent("text"), ONE_IMAGE),
            _all_of({"required": ["mode"], "properties": {"mode": {"const": "text"}}}, _given("text"), NO_IMAGE),
            _all_of({"required": ["mode"], "properties": {"mode": {"const": "multimodal"}}}, _given("text"), ONE_IMAGE),
        )
    )

    mode: Literal["image", "text", "multimodal"] = "image"
    text: str | None = Field(default=None, min_length=1, max_length=2000, pattern=TEXT_PATTERN)

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

    model_config = ConfigDict(
        json_schema_extra=exactly_one(
            _all_of(_given("texts"), _absent("text", "image_ids"), ONE_IMAGE),
            _all_of(_given("text", "image_ids"), _absent("texts"), NO_IMAGE),
        )
    )

    texts: list[Annotated[str, Field(min_length=1, max_length=2000, pattern=TEXT_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=LIST_CEILING
    )
    text: str | None = Field(default=None, min_length=1, max_length=2000, pattern=TEXT_PATTERN)
    image_ids: list[UUID] | None = Field(default=None, min_length=1, max_length=LIST_CEILING)
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

    @property
    def candidates_field(self) -> str:
        """The input field that lists the candidates."""
        return "input.texts" if self.texts is not None else "input.image_ids"

    def referenced_image_ids(self) -> list[UUID]:
        return super().referenced_image_ids() + list(self.image_ids or [])


# ---- long kinds -----------------------------------------------------------------------------

Task: TypeAlias = Literal["caption", "vqa", "caption_vqa", "match"]
Component: TypeAlias = Literal["vision", "qformer", "llm"]
DatasetFormat: TypeAlias = Literal["coco_captions", "coco_karpathy", "flickr30k", "vqav2", "jsonl"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
_OptionName = Annotated[str, Field(pattern=TEXT_PATTERN)]
_OptionValue = Annotated[str, Field(min_length=1, max_length=500, pattern=TEXT_PATTERN)]
_BLIP2_TRAINED_PARTS: list[Component] = ["qformer"]


class DownloadInput(JobInput):
    """Fetch a dataset: a manifest entry by `dataset`, or an archive at `url` with its `sha256`."""

    model_config = ConfigDict(
        json_schema_extra=exactly_one(
            _all_of(
                _given("dataset"),
                _absent("url", "sha256", "name", "format"),
                {"properties": {"options": {"maxProperties": 0}}},
            ),
            _all_of(_given("url", "sha256", "name", "format"), _absent("dataset")),
        )
    )

    dataset: str | None = Field(default=None, min_length=1, max_length=64, pattern=TEXT_PATTERN)
    url: str | None = Field(default=None, pattern=URL_PATTERN, max_length=2000)
    sha256: Sha256 | None = None
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    format: DatasetFormat | None = None
    # Which file is which (e.g. {"val_annotations": "annotations/captions.json", "val_images": "images"});
    # without any, files named as the public datasets name them are found. Names: blip2.data.formats.
    options: dict[_OptionName, _OptionValue] = Field(
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
            # Which names a format reads is the library's to say, not the schema's: a rule across fields.
            raise PydanticCustomError(
                InvalidArgument.code,
                f"{', '.join(unknown)}: not an option of {info.data['format']} (it has {', '.join(known)})",
            )
        return options

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.dataset is not None:
            # A manifest entry is registered under its own name: a `name` beside it would be ignored.
            if self.url is not None or self.sha256 is not None or self.name is not None or self.format is not None:
                raise ValueError("give either dataset, or url with sha256, name and format")
        elif self.url is None or self.sha256 is None or self.name is None or self.format is None:
            raise ValueError("a url download needs url, sha256, name and format")
        return self


class TrainInput(JobInput):
    """Fine-tune the job's `model` on a registered dataset; the result is served as `output_model`."""

    # The OpenAPI document's copy of `_swaps_for_matching`: no swap_negatives unless task is match.
    model_config = ConfigDict(
        json_schema_extra={
            "not": _all_of(
                {"required": ["swap_negatives"], "properties": {"swap_negatives": {"minItems": 1}}},
                {"anyOf": [{"not": {"required": ["task"]}}, {"properties": {"task": {"not": {"const": "match"}}}}]},
            )
        }
    )

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
    seed: int = Field(default=0, ge=LIMITS["seed"].low, le=LIMITS["seed"].high)  # as decoding's
    start_from: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=TEXT_PATTERN,
        description="A model (a retrieval one, say) whose vision encoder and Q-Former this one starts from: "
        "BLIP-2's generative stage starts from what its representation stage trained.",
    )
    swap_negatives: list[
        Annotated[list[SwapWord], Field(min_length=2, max_length=64, json_schema_extra={"uniqueItems": True})]
    ] = Field(
        default_factory=list,
        max_length=32,
        description='match only: groups of words that stand for each other, e.g. [["circle", "square"]]; '
        "each caption also trains as a negative with one such word swapped for another of its group.",
    )

    @model_validator(mode="after")
    def _swaps_for_matching(self) -> Self:
        if self.swap_negatives and self.task != "match":
            raise ValueError("swap_negatives are negatives for match training: give them with task match")
        if any(len(set(group)) < len(group) for group in self.swap_negatives):
            raise ValueError("a word appears twice in one swap_negatives group")
        return self


class EvaluateInput(JobInput):
    """Score the job's `model` on a split of a registered dataset."""

    dataset: str = Field(pattern=NAME_PATTERN)
    split: Literal["train", "val", "test"] = "test"
    task: Task = "caption"
    batch_size: int = Field(default=16, ge=1, le=512)
    limit: int | None = Field(default=None, ge=1, description="Evaluate only the first N records.")
