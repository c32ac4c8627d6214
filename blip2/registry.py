"""The model registry: every BLIP-2 family users run, as a small typed table.

A name resolves to a `ModelSpec` (checkpoint, family, prompt templates, decoding defaults).
Besides the built-in names, any local checkpoint directory or hub id in the Hugging Face
format works, and users add their own names in a TOML file without touching code:

    # models.toml
    [models.my-captioner]
    checkpoint = "/srv/models/blip2-opt-finetuned"   # a local directory or a hub id
    family = "opt"                                    # opt | t5 | instruct | itm
    description = "our fine-tuned product captioner"
    vqa_template = "Question: {} Answer:"             # optional; defaults come from the family

    [models."blip2-opt-2.7b"]                         # quote names with dots; overrides the built-in
    checkpoint = "/mirror/blip2-opt-2.7b"

Torch-free: the HTTP API validates model names with this module.
"""

import functools
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from blip2.decoding import DecodingOptions
from blip2.errors import InvalidArgument, ModelNotFound


class Family(StrEnum):
    """Which BLIP-2 architecture a checkpoint is; it decides the operations it offers."""

    OPT = "opt"  # BLIP-2 with a decoder-only language model (OPT; any causal LM)
    T5 = "t5"  # BLIP-2 with an encoder-decoder language model (Flan-T5)
    INSTRUCT = "instruct"  # InstructBLIP: the instruction also goes to the Q-Former
    ITM = "itm"  # BLIP-2 retrieval model: ITC/ITM heads, text and image features, no generation

    @property
    def generates(self) -> bool:
        return self is not Family.ITM

    # Why a model of this family cannot run an operation, or None: one wording for the library, which
    # checks a loaded model, and for what refuses a model before loading it (the API, the CLI).

    def cannot_generate(self) -> str | None:
        return None if self.generates else f"a {self.value} model is a retrieval model and cannot generate text"

    def cannot_match(self) -> str | None:
        if self is Family.ITM:
            return None
        return f"matching needs a retrieval model (family itm); this model is {self.value}"

    def cannot_embed(self, mode: str) -> str | None:
        """`mode`: image, text or multimodal features."""
        if mode != "image" and self is not Family.ITM:
            return f"{mode} embeddings need a retrieval model (family itm); this model is {self.value}"
        if self is Family.INSTRUCT:
            return "InstructBLIP's Q-Former reads the instruction; use a BLIP-2 model for embeddings"
        return None


@dataclass(frozen=True)
class Templates:
    """Prompts an operation builds from user input; `{}` marks where the question goes."""

    vqa: str
    short_caption: str  # "" means unconditional captioning
    detailed_caption: str


FAMILY_TEMPLATES = {
    Family.OPT: Templates("Question: {} Answer:", "", "A detailed description of the image:"),
    Family.T5: Templates("Question: {} Short answer:", "", "Describe the image in detail."),
    Family.INSTRUCT: Templates(
        "Question: {} Short answer:", "A short image description:", "Describe this image in detail."
    ),
    Family.ITM: Templates("{}", "", ""),
}

CAPTION_DEFAULTS = DecodingOptions()  # LAVIS: 5 beams, 30 tokens
VQA_DEFAULTS = DecodingOptions(max_new_tokens=10, num_beams=5, length_penalty=-1.0)  # LAVIS predict_answers
INSTRUCT_DEFAULTS = DecodingOptions(max_new_tokens=256, num_beams=5, repetition_penalty=1.5)


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: where its weights are and how to prompt it."""

    name: str
    checkpoint: str  # a hub id, a local directory, or a tiny checkpoint's name
    family: Family | None  # None: read from the checkpoint's config when it loads
    description: str = ""
    tiny: bool = False  # built offline by blip2.tiny (tiny-* and small-*) instead of downloaded
    templates: Templates | None = None  # None: the family's templates
    caption_defaults: DecodingOptions = field(default=CAPTION_DEFAULTS)
    vqa_defaults: DecodingOptions = field(default=VQA_DEFAULTS)
    instruct_defaults: DecodingOptions = field(default=INSTRUCT_DEFAULTS)
    # The language model's positions (image tokens, prompt and new tokens together) and how many image
    # tokens it reads; None: no fixed limit (T5's relative positions), or read from a local config.json.
    text_positions: int | None = None
    query_tokens: int = 32

    def templates_for(self, family: Family) -> Templates:
        return self.templates or FAMILY_TEMPLATES[family]


def _hub(name: str, family: Family, description: str, positions: int | None = None) -> ModelSpec:
    return ModelSpec(
        name=name, checkpoint=f"Salesforce/{name}", family=family, description=description, text_positions=positions
    )


# Models trained by this project on the synthetic `shapes` data (scripts/train_demo_models.py).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def _pretrained(name: str, family: Family, description: str) -> ModelSpec:
    # Trained on the shapes grammar without a prompt, whose captions already name every shape, its
    # colour and place: a "detailed" caption is that one (a prompt it never saw garbles it).
    plain = FAMILY_TEMPLATES[family]
    templates = Templates(plain.vqa, plain.short_caption, plain.short_caption)
    return ModelSpec(name=name, checkpoint=str(PRETRAINED_DIR / name), family=family, description=description,
                     templates=templates)  # fmt: skip


# The tiny checkpoints' OPT reads this many positions, 8 of them image tokens; the small ones' 128,
# 16 of them image tokens (blip2/tiny.py builds them so).
TINY_TEXT_POSITIONS = 256
TINY_QUERY_TOKENS = 8
SMALL_TEXT_POSITIONS = 128
SMALL_QUERY_TOKENS = 16


def _tiny(family: Family, description: str) -> ModelSpec:
    return _built("tiny", family, description, TINY_TEXT_POSITIONS, TINY_QUERY_TOKENS)


def _small(family: Family, description: str) -> ModelSpec:
    return _built("small", family, description, SMALL_TEXT_POSITIONS, SMALL_QUERY_TOKENS)


def _built(size: str, family: Family, description: str, positions: int, query_tokens: int) -> ModelSpec:
    """A checkpoint blip2.tiny builds offline, named after its size and family."""
    name = f"{size}-{family.value}"
    return ModelSpec(
        name=name,
        checkpoint=name,
        family=family,
        description=description,
        tiny=True,
        text_positions=positions if family is Family.OPT else None,
        query_tokens=query_tokens,
    )


BUILTIN: tuple[ModelSpec, ...] = (
    _hub("blip2-opt-2.7b", Family.OPT, "BLIP-2, OPT-2.7b language model (pre-trained)", 2048),
    _hub("blip2-opt-6.7b", Family.OPT, "BLIP-2, OPT-6.7b language model (pre-trained)", 2048),
    _hub("blip2-opt-2.7b-coco", Family.OPT, "BLIP-2, OPT-2.7b, fine-tuned on COCO captions", 2048),
    _hub("blip2-flan-t5-xl", Family.T5, "BLIP-2, Flan-T5-XL language model"),
    _hub("blip2-flan-t5-xxl", Family.T5, "BLIP-2, Flan-T5-XXL language model"),
    _hub("blip2-itm-vit-g", Family.ITM, "BLIP-2 retrieval: ITC/ITM heads and features, ViT-g"),
    _hub("instructblip-flan-t5-xl", Family.INSTRUCT, "InstructBLIP, Flan-T5-XL"),
    _hub("instructblip-vicuna-7b", Family.INSTRUCT, "InstructBLIP, Vicuna-7b", 2048),
    _tiny(Family.OPT, "tiny BLIP-2 with OPT, random weights, built offline (tests, demos)"),
    _tiny(Family.T5, "tiny BLIP-2 with Flan-T5, random weights, built offline"),
    _tiny(Family.INSTRUCT, "tiny InstructBLIP with Flan-T5, random weights, built offline"),
    _tiny(Family.ITM, "tiny BLIP-2 retrieval model, random weights, built offline"),
    _small(Family.OPT, "small BLIP-2 with OPT, random weights, built offline (the demo models' base)"),
    _small(Family.ITM, "small BLIP-2 retrieval model, random weights, built offline (the demo models' base)"),
    _pretrained(
        "shapes-blip2", Family.OPT, "small-opt trained here on shapes: captions and answers (make demo-models)"
    ),
    _pretrained("shapes-itm", Family.ITM, "small-itm trained here on shapes: image-text matching (make demo-models)"),
)

# Language models read with an encoder and written by a decoder (configs do not always say so).
_ENCODER_DECODER_TYPES = {"t5", "mt5", "umt5", "bart", "mbart"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Registry:
    """Names -> ModelSpecs: the built-in table plus the user's file, which may override."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}

    @classmethod
    def load(cls, user_file: Path | None = None) -> "Registry":
        specs = list(BUILTIN)
        if user_file is not None:
            specs += read_user_file(user_file)
        return cls(specs)

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def with_spec(self, spec: ModelSpec) -> "Registry":
        """A registry that also knows `spec` (e.g. a model trained since start-up)."""
        return Registry([*self._specs.values(), spec])

    def resolve(self, name: str) -> ModelSpec:
        """The spec for a registry name, a local checkpoint directory, or a hub id."""
        if name in self._specs:
            return self._specs[name]
        if is_checkpoint_dir(Path(name)):
            return ModelSpec(name=name, checkpoint=str(Path(name).resolve()), family=None)
        if _HUB_ID.match(name) and not _exists(Path(name)):
            return ModelSpec(name=name, checkpoint=name, family=None)
        raise ModelNotFound(
            f"unknown model {name!r}: not a registry name ({', '.join(sorted(self._specs))}), "
            "a checkpoint directory with a config.json, or a hub id like 'Salesforce/blip2-opt-2.7b'"
        )

    def names_or_hub_id(self, name: str) -> bool:
        """Whether `name` is a registry name or a hub id: what a remote client may ask for.

        Local directories are for the operator (the CLI, the registry file): a service that loaded
        any path a client named would read whatever the server's disk holds, other tenants' too.
        """
        return name in self._specs or bool(_HUB_ID.match(name) and not _exists(Path(name)))

    def is_known(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ModelNotFound:
            return False
        return True


def generation_limit(spec: ModelSpec) -> int | None:
    """At most how many new tokens the model can generate after its image tokens (a prompt takes some
    of the rest), or None when it has no fixed limit or it is not known without loading the model."""
    positions, query_tokens = spec.text_positions, spec.query_tokens
    if positions is None and is_checkpoint_dir(Path(spec.checkpoint)):
        positions, query_tokens = _config_positions(str(Path(spec.checkpoint) / "config.json"))
    return None if positions is None else positions - query_tokens


@functools.lru_cache(maxsize=256)
def _config_positions(config_file: str) -> tuple[int | None, int]:
    """A local checkpoint's (decoder-only) language model positions and image tokens, from its config.json."""
    config = json.loads(Path(config_file).read_text())
    text = config.get("text_config") or {}
    if not isinstance(text, dict) or text.get("is_encoder_decoder") or text.get("model_type") in _ENCODER_DECODER_TYPES:
        return None, int(config.get("num_query_tokens", 32))
    positions = text.get("max_position_embeddings")
    return (int(positions) if positions else None), int(config.get("num_query_tokens", 32))


def is_checkpoint_dir(path: Path) -> bool:
    return _is_file(path / "config.json")


def _is_file(path: Path) -> bool:
    """Like Path.is_file, but False for a name the OS refuses outright (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def family_of_config(config: dict[str, object]) -> Family:
    """A checkpoint's family, from its config.json contents."""
    model_type = config.get("model_type")
    if model_type == "instructblip":
        return Family.INSTRUCT
    if model_type != "blip-2":
        raise InvalidArgument(f"not a BLIP-2 checkpoint: model_type is {model_type!r}")
    if "Blip2ForImageTextRetrieval" in (config.get("architectures") or []):  # type: ignore[operator]
        return Family.ITM
    text_config = config.get("text_config") or {}
    if not isinstance(text_config, dict):
        return Family.OPT
    if text_config.get("is_encoder_decoder") or text_config.get("model_type") in _ENCODER_DECODER_TYPES:
        return Family.T5
    return Family.OPT


def family_of_checkpoint_dir(path: Path) -> Family:
    return family_of_config(json.loads((path / "config.json").read_text()))


def read_user_file(path: Path) -> list[ModelSpec]:
    """The user's own entries, from a TOML file's `[models.NAME]` tables."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArgument(f"models file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"models file {path} is not valid TOML: {exc}") from exc
    return [_user_spec(name, entry, path) for name, entry in data.get("models", {}).items()]


def _user_spec(name: str, entry: dict[str, str], path: Path) -> ModelSpec:
    if "checkpoint" not in entry:
        raise InvalidArgument(f"models file {path}: model {name!r} needs a 'checkpoint'")
    family = _parse_family(entry.get("family"), name, path)
    spec = ModelSpec(name=name, checkpoint=entry["checkpoint"], family=family, description=entry.get("description", ""))
    if "vqa_template" in entry or "caption_prompt" in entry or "detailed_prompt" in entry:
        base = FAMILY_TEMPLATES[family or Family.OPT]
        templates = Templates(
            vqa=entry.get("vqa_template", base.vqa),
            short_caption=entry.get("caption_prompt", base.short_caption),
            detailed_caption=entry.get("detailed_prompt", base.detailed_caption),
        )
        spec = replace(spec, templates=templates)
    return spec


def _parse_family(value: str | None, name: str, path: Path) -> Family | None:
    if value is None:
        return None
    try:
        return Family(value)
    except ValueError as exc:
        choices = ", ".join(f.value for f in Family)
        raise InvalidArgument(f"models file {path}: model {name!r} has family {value!r}; use {choices}") from exc
