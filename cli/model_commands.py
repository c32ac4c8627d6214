"""Model commands: run BLIP-2 directly, without the queue.

    blip2-jobs caption photo.jpg --style detailed
    blip2-jobs vqa photo.jpg --question "what is the cat lying on?" --json
    blip2-jobs match photo.jpg --text "a cat" --text "a dog" --model blip2-itm-vit-g
    blip2-jobs models

Torch and transformers are imported inside the commands, so `--help` stays instant.
"""

import json
import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from blip2.decoding import resolve
from blip2.errors import Blip2Error, UnsupportedOperation
from blip2.registry import Family, ModelSpec, is_checkpoint_dir

if TYPE_CHECKING:
    from blip2.loading import LoadedModel

log = logging.getLogger("blip2_jobs.cli")


class Style(StrEnum):
    short = "short"
    detailed = "detailed"


class Mode(StrEnum):
    image = "image"
    text = "text"
    multimodal = "multimodal"


Images = Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, WebP, GIF, BMP).", show_default=False)]
OptionalImages = Annotated[list[Path] | None, typer.Argument(help="Image files.", show_default=False)]
Model = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Registry name, hub id or checkpoint directory.", show_default=False),
]
Quantize = Annotated[str, typer.Option(help="none, int8, int4 (nf4/fp4), or per component: llm=int4,vision=int8.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, or balanced (spread over every GPU).")]
Dtype = Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, fp16 or bf16.")]
DataDir = Annotated[Path, typer.Option(envvar="BLIP2_DATA_DIR", help="Where tiny checkpoints are built.")]
ModelsFile = Annotated[
    Path | None, typer.Option(envvar="BLIP2_MODELS_FILE", help="TOML file with your own registry entries.")
]
DefaultModel = Annotated[str, typer.Option(envvar="BLIP2_DEFAULT_MODEL", hidden=True)]
DEFAULT_MODEL = "shapes-blip2"  # captions and answers, trained by this project (blip2/pretrained/)
DEFAULT_MATCH_MODEL = "shapes-itm"  # matching and embeddings, as the API's BLIP2_DEFAULT_MATCH_MODEL
DefaultMatchModel = Annotated[str, typer.Option(envvar="BLIP2_DEFAULT_MATCH_MODEL", hidden=True)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Texts = Annotated[list[str] | None, typer.Option("--text", "-t", help="A text (repeat for several).")]


class Loader:
    """The options every model command shares, and the one way they become a loaded model.

    What can be checked without torch is checked first, so that an unknown model, a checkpoint that
    cannot be had, a model that cannot run the command (`refuse`: why a family cannot, or None) or
    a bad option fails in a fraction of a second, before torch and transformers are imported.
    """

    def __init__(
        self,
        model: str,
        quantize: str,
        device: str,
        dtype: str,
        data_dir: Path,
        models_file: Path | None,
        refuse: Callable[[Family], str | None],
    ):
        from blip2.checkpoints import require_checkpoint
        from blip2.quantization import QuantizationPlan
        from blip2.registry import Registry

        self.registry = Registry.load(models_file)
        self.spec = self.registry.resolve(model)
        if self.spec.family is not None and (refusal := refuse(self.spec.family)) is not None:
            raise UnsupportedOperation(f"model {self.spec.name!r}: {refusal}")
        if not self.spec.tiny:  # a tiny checkpoint is built on first use, with torch
            require_checkpoint(self.spec)
        QuantizationPlan.parse(quantize)
        self.model, self.quantize, self.device, self.dtype, self.data_dir = model, quantize, device, dtype, data_dir

    def load(self) -> "LoadedModel":
        from blip2.loading import LoadOptions, load_model

        options = LoadOptions(device=self.device, dtype=self.dtype, quantize=self.quantize)
        lm = load_model(self.model, data_dir=self.data_dir, options=options, registry=self.registry)
        log.info("loaded %s", " ".join(f"{k}={v}" for k, v in lm.describe().items()))
        return lm


def register(app: typer.Typer) -> None:
    """Attach the model commands to the root app."""
    for command in (caption, vqa, instruct, embed, match, models, build_tiny):
        app.command(name=command.__name__.replace("_", "-"))(_reporting_errors(command))


def _reporting_errors(command: Callable[..., None]) -> Callable[..., None]:
    """One line on stderr and exit status 2 for a library error, instead of a traceback."""
    import functools

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        _quiet_libraries()
        try:
            command(*args, **kwargs)
        except Blip2Error as exc:
            typer.echo(f"error: {exc.code}: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _quiet_libraries() -> None:
    """Our own log lines on stderr; transformers' and bitsandbytes' chatter only when it matters."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "bitsandbytes", "accelerate", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise for a tiny or cached model


def caption(
    images: Images,
    prompt: Annotated[str | None, typer.Option(help="Continue this prompt instead of the style's.")] = None,
    style: Annotated[Style, typer.Option(help="short or detailed.")] = Style.short,
    max_new_tokens: Annotated[int | None, typer.Option(help="Default 30.")] = None,
    min_new_tokens: Annotated[int | None, typer.Option(help="Default 1.")] = None,
    num_beams: Annotated[int | None, typer.Option(help="Default 5.")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Nucleus sampling instead of beam search.")] = False,
    top_p: float | None = None,
    temperature: float | None = None,
    repetition_penalty: float | None = None,
    length_penalty: float | None = None,
    num_captions: Annotated[int | None, typer.Option(help="Captions per image.")] = None,
    seed: int | None = None,
    model: Model = None,
    default_model: DefaultModel = DEFAULT_MODEL,
    quantize: Quantize = "none",
    device: Device = "auto",
    dtype: Dtype = "auto",
    data_dir: DataDir = Path("data"),
    models_file: ModelsFile = None,
    json_output: Json = False,
) -> None:
    """Caption images."""
    pictures = _read_images(images)
    loader = Loader(model or default_model, quantize, device, dtype, data_dir, models_file, Family.cannot_generate)
    decoding = resolve(loader.spec.caption_defaults, dict(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams,
        use_nucleus_sampling=sample or None, top_p=top_p, temperature=temperature,
        repetition_penalty=repetition_penalty, length_penalty=length_penalty, num_captions=num_captions, seed=seed,
    ))  # fmt: skip
    from blip2.caption import caption as run

    lm = loader.load()
    results = run(lm, pictures, prompts=[prompt] * len(pictures), style=style.value, decoding=decoding)
    rows = [{"image": str(p), "captions": r.captions, "prompt": r.prompt} for p, r in zip(images, results, strict=True)]
    _emit(lm, rows, json_output, lambda row: "\n".join(f"{row['image']}: {c}" for c in row["captions"]))


def vqa(
    images: Images,
    question: Annotated[str, typer.Option(help="The question, asked of every image.")],
    example: Annotated[
        list[str] | None, typer.Option(help="A few-shot example 'question=answer' (repeat for several).")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Default 10.")] = None,
    num_beams: Annotated[int | None, typer.Option(help="Default 5.")] = None,
    model: Model = None,
    default_model: DefaultModel = DEFAULT_MODEL,
    quantize: Quantize = "none",
    device: Device = "auto",
    dtype: Dtype = "auto",
    data_dir: DataDir = Path("data"),
    models_file: ModelsFile = None,
    json_output: Json = False,
) -> None:
    """Answer a question about each image."""
    pictures = _read_images(images)
    examples = [_parse_example(e) for e in example or []]
    loader = Loader(model or default_model, quantize, device, dtype, data_dir, models_file, Family.cannot_generate)
    decoding = resolve(loader.spec.vqa_defaults, {"max_new_tokens": max_new_tokens, "num_beams": num_beams})
    from blip2.vqa import answer

    lm = loader.load()
    results = answer(lm, pictures, [question] * len(pictures), examples=examples, decoding=decoding)
    rows = [{"image": str(p), "question": question, "answer": r.text} for p, r in zip(images, results, strict=True)]
    _emit(lm, rows, json_output, lambda row: f"{row['image']}: {row['answer']}")


def instruct(
    images: Images,
    instruction: Annotated[str, typer.Option(help="The instruction, given for every image.")],
    max_new_tokens: Annotated[int | None, typer.Option(help="Default 256.")] = None,
    num_beams: Annotated[int | None, typer.Option(help="Default 5.")] = None,
    model: Model = None,
    quantize: Quantize = "none",
    device: Device = "auto",
    dtype: Dtype = "auto",
    data_dir: DataDir = Path("data"),
    models_file: ModelsFile = None,
    json_output: Json = False,
) -> None:
    """Follow an instruction about each image (InstructBLIP models pass it to the Q-Former too)."""
    pictures = _read_images(images)
    loader = Loader(model or "tiny-instruct", quantize, device, dtype, data_dir, models_file, Family.cannot_generate)
    decoding = resolve(loader.spec.instruct_defaults, {"max_new_tokens": max_new_tokens, "num_beams": num_beams})
    from blip2.instruct import instruct as run

    lm = loader.load()
    results = run(lm, pictures, [instruction] * len(pictures), decoding=decoding)
    rows = [{"image": str(p), "text": r.text} for p, r in zip(images, results, strict=True)]
    _emit(lm, rows, json_output, lambda row: f"{row['image']}: {row['text']}")


def embed(
    images: OptionalImages = None,
    text: Texts = None,
    mode: Annotated[Mode, typer.Option(help="image, text, or multimodal (image/text pairs).")] = Mode.image,
    model: Model = None,
    quantize: Quantize = "none",
    device: Device = "auto",
    dtype: Dtype = "auto",
    data_dir: DataDir = Path("data"),
    models_file: ModelsFile = None,
    json_output: Json = False,
    default_model: DefaultMatchModel = DEFAULT_MATCH_MODEL,
) -> None:
    """Embed images, texts, or image-text pairs."""
    paths, texts = images or [], text or []
    pictures = _read_images(paths) if paths else []
    loader = Loader(model or default_model, quantize, device, dtype, data_dir, models_file,
                    lambda family: family.cannot_embed(mode.value))  # fmt: skip
    from blip2.features import extract_features

    lm = loader.load()
    features = extract_features(lm, images=pictures, texts=texts, mode=mode.value)
    labels = [str(p) for p in paths] if mode is not Mode.text else texts
    rows = [
        {"input": label, "dim": f.dim, "embedding": f.embedding} for label, f in zip(labels, features, strict=False)
    ]
    _emit(lm, rows, json_output, lambda row: f"{row['input']}: dim={row['dim']} {_preview(row['embedding'])}")


def match(
    images: Images,
    text: Annotated[list[str], typer.Option("--text", "-t", help="A text (repeat for several).")],
    top_k: Annotated[int | None, typer.Option(help="Re-rank only the ITC top k with ITM.")] = None,
    model: Model = None,
    quantize: Quantize = "none",
    device: Device = "auto",
    dtype: Dtype = "auto",
    data_dir: DataDir = Path("data"),
    models_file: ModelsFile = None,
    json_output: Json = False,
    default_model: DefaultMatchModel = DEFAULT_MATCH_MODEL,
) -> None:
    """Rank texts for each image (or, with one text and several images, images for the text)."""
    pictures = _read_images(images)
    loader = Loader(model or default_model, quantize, device, dtype, data_dir, models_file, Family.cannot_match)
    from blip2.matching import rank_images, rank_texts

    lm = loader.load()
    rows: list[dict[str, Any]]
    if len(text) == 1 and len(images) > 1:
        scores = rank_images(lm, text[0], pictures, top_k=top_k)
        rows = [{"text": text[0], "scores": [_score(s, str(images[s.index])) for s in scores]}]
    else:
        rows = [
            {
                "image": str(path),
                "scores": [_score(s, text[s.index]) for s in rank_texts(lm, pic, text, top_k=top_k)],
            }
            for path, pic in zip(images, pictures, strict=True)
        ]
    _emit(lm, rows, json_output, _format_ranking)


def models(
    data_dir: DataDir = Path("data"),
    models_file: ModelsFile = None,
    json_output: Json = False,
) -> None:
    """List the registry and which checkpoints are present locally."""
    from blip2.registry import Registry

    rows = [_model_row(spec, data_dir) for spec in Registry.load(models_file).specs()]
    if json_output:
        typer.echo(json.dumps({"models": rows}, indent=2))
        return
    for row in rows:
        mark = "present" if row["present"] else "absent"
        typer.echo(f"{row['name']:<26} {row['family'] or '?':<9} {mark:<8} {row['checkpoint']}")


def build_tiny(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="tiny-opt, tiny-t5, tiny-instruct, tiny-itm (all by default), small-opt, small-itm."),
    ] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Build the tiny (or small) checkpoints into the data directory (they are also built on first use)."""
    from blip2.tiny import TINY_NAMES, ensure_tiny_checkpoint

    for name in names or TINY_NAMES:
        typer.echo(ensure_tiny_checkpoint(name, data_dir))


def _model_row(spec: ModelSpec, data_dir: Path) -> dict[str, Any]:
    return {
        "name": spec.name,
        "family": spec.family.value if spec.family else None,
        "checkpoint": spec.checkpoint,
        "present": _present(spec, data_dir),
        "description": spec.description,
    }


def _present(spec: ModelSpec, data_dir: Path) -> bool:
    if spec.tiny:
        return is_checkpoint_dir(data_dir / "models" / spec.checkpoint)
    if is_checkpoint_dir(Path(spec.checkpoint).expanduser()):
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(spec.checkpoint, "config.json"), str)


def _read_images(paths: list[Path]) -> list[Any]:
    from blip2.images import load_image_file

    return [load_image_file(p) for p in paths]


def _parse_example(text: str) -> Any:
    from blip2.errors import InvalidArgument
    from blip2.vqa import QAExample

    question, sep, answer = text.partition("=")
    if not sep or not question.strip() or not answer.strip():
        raise InvalidArgument(f"few-shot example {text!r} must be 'question=answer'")
    return QAExample(question.strip(), answer.strip())


def _score(s: Any, label: str) -> dict[str, Any]:
    return {"index": s.index, "label": label, "itc": round(s.itc, 6), "itm": round(s.itm, 6)}


def _format_ranking(row: dict[str, Any]) -> str:
    head = row.get("image") or row.get("text")
    lines = [f"{head}:"]
    lines += [f"  itm={s['itm']:.4f} itc={s['itc']:+.4f}  {s['label']}" for s in row["scores"]]
    return "\n".join(lines)


def _preview(values: list[float], n: int = 4) -> str:
    return "[" + ", ".join(f"{v:+.4f}" for v in values[:n]) + (", ...]" if len(values) > n else "]")


def _emit(lm: "LoadedModel", rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        typer.echo(json.dumps({"model": lm.describe(), "results": rows}))
        return
    for row in rows:
        typer.echo(line(row))
