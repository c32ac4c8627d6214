"""Loading a BLIP-2 checkpoint: name -> weights on a device, at a dtype and quantization.

    model = load_model("blip2-opt-2.7b", data_dir=Path("data"), options=LoadOptions(quantize="int8"))

A name is a registry entry, a local checkpoint directory or a hub id; tiny checkpoints are
built into `data_dir` on first use and then load through the same `from_pretrained` path as
the real ones. A checkpoint that cannot be had fails at once with what to do about it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoProcessor,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    InstructBlipForConditionalGeneration,
    PreTrainedModel,
    ProcessorMixin,
)

from blip2.checkpoints import locate_checkpoint
from blip2.errors import CheckpointUnavailable, InvalidArgument, InvalidCheckpoint
from blip2.quantization import Precision, QuantizationPlan, bnb_config, quantize_remaining
from blip2.registry import (
    Family,
    ModelSpec,
    Registry,
    Templates,
    family_of_checkpoint_dir,
    family_of_config,
    is_checkpoint_dir,
)

MODEL_CLASSES: dict[Family, type[PreTrainedModel]] = {
    Family.OPT: Blip2ForConditionalGeneration,
    Family.T5: Blip2ForConditionalGeneration,
    Family.INSTRUCT: InstructBlipForConditionalGeneration,
    Family.ITM: Blip2ForImageTextRetrieval,
}
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip


# A model too large for one GPU: accelerate places its layers across every visible GPU.
SPLIT_DEVICE = "balanced"


@dataclass(frozen=True)
class LoadOptions:
    """Where and how to load: device `auto|cpu|cuda|cuda:N|balanced` (`balanced`: the layers spread over
    every visible GPU, for a model too large for one), dtype `auto|fp32|fp16|bf16`, a quantization plan."""

    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"  # see blip2.quantization.QuantizationPlan.parse


@dataclass
class LoadedModel:
    """A model ready for the operations: weights, processor, and what it was loaded as."""

    spec: ModelSpec
    family: Family
    # Typed Any: mypy sees nn.Module attributes (vision_model, qformer ...) as `Tensor | Module`.
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    quantization: QuantizationPlan
    source: str  # the directory or hub id the weights came from

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def templates(self) -> Templates:
        return self.spec.templates_for(self.family)

    @property
    def memory_footprint_bytes(self) -> int:
        return int(self.model.get_memory_footprint())

    @property
    def parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def describe(self) -> dict[str, object]:
        """What a log line or `--json` output says about this model."""
        return {
            "name": self.name,
            "family": self.family.value,
            "source": self.source,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "quantization": str(self.quantization),
            "memory_footprint_bytes": self.memory_footprint_bytes,
        }


def load_model(
    name: str, *, data_dir: Path, options: LoadOptions | None = None, registry: Registry | None = None
) -> LoadedModel:
    """Resolve `name`, find or build its checkpoint, and load model and processor."""
    options = options or LoadOptions()
    spec = (registry or Registry.load()).resolve(name)
    source = locate_checkpoint(spec, data_dir)
    family = spec.family or _family_of(source)
    device = resolve_device(options.device)
    plan = QuantizationPlan.parse(options.quantize)
    dtype = resolve_dtype(options.dtype, device, plan)
    device_map: str | dict[str, str] = SPLIT_DEVICE if options.device == SPLIT_DEVICE else {"": str(device)}
    model = _load_weights(MODEL_CLASSES[family], source, device_map, dtype, plan)
    processor = _load_processor(source)
    check_processor_matches(model, processor, source)
    return LoadedModel(spec, family, model, processor, _input_device(model, device), dtype, plan, source)


def _input_device(model: PreTrainedModel, device: torch.device) -> torch.device:
    """Where inputs go: the vision encoder's device (the first of several when the model is split)."""
    vision: torch.nn.Module = model.vision_model  # type: ignore[assignment]
    return next(vision.parameters()).device if hasattr(model, "hf_device_map") else device


def _family_of(source: str) -> Family:
    path = Path(source)
    if is_checkpoint_dir(path):
        return family_of_checkpoint_dir(path)
    from transformers import AutoConfig

    return family_of_config(AutoConfig.from_pretrained(source).to_dict())


def resolve_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; `balanced` needs CUDA (the first
    device stands for all of them)."""
    if name == SPLIT_DEVICE:
        if not torch.cuda.is_available():
            raise InvalidArgument(f"device {name!r} spreads a model over GPUs, but CUDA is not available here")
        return torch.device("cuda:0")
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidArgument(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device, plan: QuantizationPlan | None = None) -> torch.dtype:
    """`auto` is fp32 on CPU, bf16 on GPUs that support it, fp16 on older GPUs and with int8.

    bitsandbytes' LLM.int8() multiplies in fp16: with bf16 activations it casts them on every
    call (and warns each time), so an int8 model on a GPU runs in fp16 unless asked otherwise.
    """
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        if plan is not None and Precision.INT8 in plan.precisions():
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in _DTYPES:
        raise InvalidArgument(f"unknown dtype {name!r}; use auto, fp32, fp16 or bf16")
    return _DTYPES[name]


def _load_weights(
    model_class: type[PreTrainedModel],
    source: str,
    device_map: str | dict[str, str],
    dtype: torch.dtype,
    plan: QuantizationPlan,
) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device_map}
    quantization_config = bnb_config(plan, compute_dtype=dtype)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = model_class.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise CheckpointUnavailable(f"could not load weights from {source}: {exc}") from exc
    quantize_remaining(model, plan, compute_dtype=dtype)
    model.eval()
    return model


def _load_processor(source: str) -> ProcessorMixin:
    try:
        return AutoProcessor.from_pretrained(source)
    except OSError as exc:
        raise CheckpointUnavailable(f"could not load the processor from {source}: {exc}") from exc


def check_processor_matches(model: PreTrainedModel, processor: ProcessorMixin, source: str) -> None:
    """Fail loudly where transformers would fail silently: the processor must insert exactly
    `num_query_tokens` image tokens, with the id the model replaces by Q-Former outputs."""
    config = model.config
    expected = config.num_query_tokens
    got = getattr(processor, "num_query_tokens", None)
    if got != expected:
        raise InvalidCheckpoint(
            f"{source}: the processor inserts {got} image tokens but the model has {expected} query tokens; "
            "set num_query_tokens in processor_config.json"
        )
    image_token = getattr(processor, "image_token", None)
    token_id = processor.tokenizer.convert_tokens_to_ids(str(image_token))
    if config.image_token_index is not None and token_id != config.image_token_index:
        raise InvalidCheckpoint(
            f"{source}: the tokenizer's image token {image_token} has id {token_id} "
            f"but the model expects {config.image_token_index}"
        )
